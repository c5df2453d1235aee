"""A PostgreSQL server for the suite: the one given or answering on 127.0.0.1:5432, else our own.

`RESLOCK_TEST_POSTGRES` names a server (`postgresql://user@host:port`) to use as it is. Without
it, the usual local server is used when it answers; otherwise, where PostgreSQL is installed
(`initdb` and `pg_ctl`), a throw-away cluster is started for this run on a free port, with
trust authentication on 127.0.0.1 only, and stopped when the run ends. As root it runs as the
`postgres` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.net import free_port

DEFAULT = "postgresql://postgres@127.0.0.1:5432"
NO_POSTGRES = "no PostgreSQL at"  # how a test skips where none answers (conftest counts it apart)


def answers(server: str) -> bool:
    import psycopg

    try:
        psycopg.connect(f"{server}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


@functools.cache
def server_url() -> str:
    """The server the PostgreSQL tests use; it may still not answer (they then do not run)."""
    given = os.environ.get("RESLOCK_TEST_POSTGRES", "").strip()
    if given:
        return given
    if answers(DEFAULT):
        return DEFAULT
    return start_server() or DEFAULT


def start_server() -> str | None:
    """Start a cluster of our own; its URL, or None where PostgreSQL is not installed."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        return None
    folder = tempfile.mkdtemp(prefix="reslock-test-postgres-")
    run_as: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            return None
        os.chown(folder, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(folder, "data"), free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    steps = [
        [initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        [pg_ctl, "-D", data, "-o", options, "-l", os.path.join(folder, "log"), "-w", "start"],
    ]
    for step in steps:
        if subprocess.run([*run_as, *step], capture_output=True, check=False).returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def stop() -> None:
        command = [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"]
        subprocess.run([*run_as, *command], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql://postgres@127.0.0.1:{port}"


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty database on the suite's server, dropped afterwards. Where no
    server answers, the test is skipped with NO_POSTGRES."""
    import psycopg

    server = server_url()  # the usual one, or one started for this run
    try:
        admin = psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.skip(f"{NO_POSTGRES} {server}: {error}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
