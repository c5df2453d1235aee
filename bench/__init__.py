"""Benchmarks, run by hand (`.venv/bin/python bench/<name>.py`); not part of the test suite."""
