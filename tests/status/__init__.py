"""Tests of reslock_web.status: the diagnosis rules, and the evidence behind a zombie verdict."""
