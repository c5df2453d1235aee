"""A real Prefect server for the test session: a subprocess on a free loopback port.

Migrating a fresh Prefect database takes most of a server's start-up, so a migrated template
is made once per Prefect version (kept under var/cache) and copied into each session's home.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import prefect

from tests.support.net import free_port, wait_for
from tests.support.paths import BASE_DIR

CACHE_DIR = BASE_DIR / "var" / "cache"


def server_env(home: Path, db: Path, database_url: str | None = None) -> dict[str, str]:
    """`database_url`: a PostgreSQL database for Prefect (SQLAlchemy's asyncpg form) instead of
    the SQLite file `db`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREFECT_") or key == "PREFECT_HOME"
    }
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url or f"sqlite+aiosqlite:///{db}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
    )
    return env


def migrated_template() -> Path:
    template = CACHE_DIR / f"prefect-{prefect.__version__}.db"
    if template.exists():
        return template
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prefect-template-") as home:
        db = Path(home) / "prefect.db"
        subprocess.run(
            [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
            env=server_env(Path(home), db),
            check=True,
            capture_output=True,
            timeout=300,
        )
        partial = template.with_suffix(".partial")
        shutil.copyfile(db, partial)
        partial.rename(template)  # atomic: a concurrent session never copies half a file
    return template


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class PrefectServer:
    home: Path
    port: int
    process: subprocess.Popen | None = None
    database_url: str | None = None  # PostgreSQL (benchmarks); None: SQLite in `home`

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.home / "prefect.db"

    @classmethod
    def create(cls, database_url: str | None = None) -> PrefectServer:
        """A server with a fresh home; its SQLite database copied from the migrated template,
        or, given `database_url`, that PostgreSQL database (which Prefect migrates on start)."""
        home = Path(tempfile.mkdtemp(prefix="reslock-prefect-"))
        if database_url is None:
            shutil.copyfile(migrated_template(), home / "prefect.db")
        return cls(home=home, port=free_port(), database_url=database_url)

    def start(self, timeout: float = 120) -> None:
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=server_env(self.home, self.db, self.database_url),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for(lambda: self._up_or_dead(), timeout, 0.25, f"Prefect at {self.api_url}")
        except AssertionError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"Prefect server exited; see {self.home / 'server.log'}")

    def _up_or_dead(self) -> bool:
        return self.process.poll() is not None or _healthy(self.api_url)

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        self.process = None

    def client_env(self) -> dict[str, str]:
        """Environment for a flow subprocess that talks to this server."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.home / "client"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        return env
