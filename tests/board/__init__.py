"""Tests of reslock_web.board: the board's pages, parts, cache and live updates, and the board
in a real Chromium."""
