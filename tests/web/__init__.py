"""Tests of reslock_web.web: the JSON API, login, security, /metrics and its alert rules, every
endpoint and bad input, and the operation pages in a real Chromium."""
