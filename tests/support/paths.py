"""Where the project is: its root, for the tests that read its files or run its commands."""

from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]
