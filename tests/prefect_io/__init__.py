"""Tests of reslock_web.prefect_io: Prefect Cloud's addresses, key and rate limit (the request
budget), and odd data from Prefect."""
