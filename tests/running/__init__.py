"""Tests of running reslock: the launcher, the demo, settings, the deployment files, the
machine `make test` needs, scale-out, PostgreSQL, the management commands, database faults."""
