"""A limit's counter in Prefect, polled throughout a test: the proof that no operation ever
let more runs in than the limit allows."""

from __future__ import annotations

import threading
import time

from tests.support.patient import patient_client


class CounterWatch:
    """Polls one limit's active_slots in Prefect throughout a test (every 0.1 s)."""

    def __init__(self, server, name: str) -> None:
        self.server, self.name = server, name
        self.samples: list[tuple[float, int]] = []  # (time.time(), active_slots)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with patient_client(self.server.api_url, timeout=5) as http:
            while not self.stop.is_set():
                response = http.get(f"/v2/concurrency_limits/{self.name}")
                if response.status_code == 200:
                    self.samples.append((time.time(), response.json()["active_slots"]))
                self.stop.wait(0.1)

    def between(self, start: float, end: float) -> list[int]:
        return [slots for t, slots in self.samples if start <= t <= end]

    @property
    def counts(self) -> list[int]:
        return [slots for _, slots in self.samples]

    def __enter__(self) -> CounterWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
