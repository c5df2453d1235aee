"""Tests of reslock_web.operations: the operations, fences and safety checks, the adversarial
suite, and workers and the broker failing under them."""
