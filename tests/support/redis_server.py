"""Make sure the suite has a Redis: the one on 127.0.0.1:6379 if it answers, else our own."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time

from tests.support.net import free_port

# Two suites on one machine (say, a full run and a single file) each need a database of their
# own: RESLOCK_TEST_REDIS_DB picks it.
# Under pytest-xdist each worker (gw0, gw1...) takes the database below the previous one's, so
# that one worker's Celery jobs and locks never reach another's.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
DB = (int(os.environ.get("RESLOCK_TEST_REDIS_DB", "15")) - WORKER) % 16


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis_url() -> str:
    if _answers(6379):
        return f"redis://127.0.0.1:6379/{DB}"
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "the tests need Redis: start one on 127.0.0.1:6379 or install redis-server"
        )
    port = free_port()
    folder = tempfile.mkdtemp(prefix="reslock-test-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            folder,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(process.terminate)
    deadline = time.monotonic() + 10
    while not _answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError("redis-server started for the tests did not answer")
        time.sleep(0.1)
    return f"redis://127.0.0.1:{port}/{DB}"
