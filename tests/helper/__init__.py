"""Tests of the flow-side helper, the `reslock` package, against a real Prefect server."""
