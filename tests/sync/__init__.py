"""Tests of reslock_web.sync: the sync and its plan, backfill, fast paths and store, the
listener, retention, and Prefect failing under them."""
