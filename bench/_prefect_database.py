"""A fresh PostgreSQL database for a benchmark's own Prefect server.

Prefect on SQLite refuses writes under load (503 "database is busy"); a benchmark that asks
whether reslock keeps up, rather than Prefect, runs Prefect on PostgreSQL as production does.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def fresh_prefect_database(server_url: str, name: str) -> str:
    """Drop and create database `name` on the PostgreSQL server of `server_url`
    (`postgresql://user@host:port/any-existing-db`); returns its URL for Prefect (asyncpg)."""
    parts = urlsplit(server_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise SystemExit(f"--prefect-postgres wants a postgresql:// URL, not {server_url!r}")
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{name}", "", ""))
