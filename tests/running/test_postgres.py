"""reslock runs on PostgreSQL as well as on SQLite: migrations apply and the app reads and writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import postgres
from tests.support.paths import BASE_DIR

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def database_url():
    with postgres.fresh_database("reslock_pg") as url:
        yield url


def manage(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DATABASE_URL=database_url, SECRET_KEY="pg-test", RESLOCK_ADMIN_PASSWORD="pg-pass-123"
    )
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )


def test_migrations_apply_and_the_admin_command_works_on_postgresql(database_url):
    migrated = manage(database_url, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr
    said = manage(database_url, "reslock_admin").stdout.strip()
    assert said == "log in as admin with the password in RESLOCK_ADMIN_PASSWORD"
    with psycopg.connect(database_url) as db:
        assert db.execute(
            "SELECT is_superuser FROM auth_user WHERE username = 'admin'"
        ).fetchone() == (True,)
        tables = {
            row[0]
            for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert "reslock_heartbeat" in tables
    assert manage(database_url, "makemigrations", "--check", "--dry-run").returncode == 0
