"""A PostgreSQL database for a benchmark's own Prefect server: fresh, or kept between runs.

Prefect on SQLite refuses writes under load (503 "database is busy"); a benchmark that asks
whether reslock keeps up, rather than Prefect, runs Prefect on PostgreSQL as production does.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def _server(server_url: str) -> str:
    parts = urlsplit(server_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise SystemExit(f"--prefect-postgres wants a postgresql:// URL, not {server_url!r}")
    return server_url


def fresh_prefect_database(server_url: str, name: str) -> str:
    """Drop and create database `name` on the PostgreSQL server of `server_url`
    (`postgresql://user@host:port/any-existing-db`); returns its URL for Prefect (asyncpg)."""
    return kept_prefect_database(server_url, name, fresh=True)[0]


def kept_prefect_database(server_url: str, name: str, fresh: bool = False) -> tuple[str, bool]:
    """Database `name` on the server of `server_url`, created if missing (dropped first if
    `fresh`). Returns its URL for Prefect (asyncpg) and whether it was created now."""
    with psycopg.connect(_server(server_url), autocommit=True) as connection:
        if fresh:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if not exists:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return prefect_url(server_url, name), not exists


def drop_prefect_database(server_url: str, name: str) -> None:
    with psycopg.connect(_server(server_url), autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def prefect_url(server_url: str, name: str) -> str:
    """Database `name` on that server, as Prefect's SQLAlchemy (asyncpg) connects to it."""
    return urlunsplit(("postgresql+asyncpg", urlsplit(server_url).netloc, f"/{name}", "", ""))


def libpq_url(server_url: str, name: str) -> str:
    """Database `name` on that server, as psycopg connects to it."""
    return urlunsplit(("postgresql", urlsplit(server_url).netloc, f"/{name}", "", ""))
