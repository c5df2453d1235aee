"""What Celery beat does in production, in a thread: sync everything every `period` seconds."""

from __future__ import annotations

import threading
import time


class PeriodicSync:
    def __init__(self, api_url: str, period: float = 1.0) -> None:
        self.api_url, self.period = api_url, period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        from reslock_web.prefect_io.api import PrefectAPI
        from reslock_web.sync.run import sync_all

        try:
            with PrefectAPI(self.api_url) as api:
                while not self.stop.is_set():
                    started = time.monotonic()
                    sync_all(api)
                    self.stop.wait(max(0.0, self.period - (time.monotonic() - started)))
        finally:
            connection.close()  # the thread's own connection

    def __enter__(self) -> PeriodicSync:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
