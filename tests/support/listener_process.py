"""The live listener as a process of its own (`manage.py reslock_listen`), for the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from django.db import connection

from reslock_web.models import Heartbeat
from tests.support.net import wait_for

BASE_DIR = Path(__file__).resolve().parent.parent.parent


class ListenerProcess:
    def __init__(self, server, **extra_env: str) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PREFECT_API_URL": server.api_url,
            "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
            **extra_env,
        }
        # A file, not a pipe: a listener that logs a lot must never block on a full pipe.
        self.log = tempfile.NamedTemporaryFile(prefix="reslock-listener-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "reslock_listen"],
            cwd=BASE_DIR, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(
            lambda: (
                (beat := Heartbeat.objects.filter(service="listener").first())
                and beat.pid == self.process.pid
                and beat.detail.get("connected")
            ),
            60,
            what="the listener to connect",
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)
