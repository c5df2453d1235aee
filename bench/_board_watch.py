"""What the freshness benchmarks share: a reslock database, the listener, a watch on the board's
refresh endpoint, and the delay from each lock event to the board showing it.

Used by freshness_bench.py (one resource), prefect_load_bench.py and churn_bench.py (200).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLL = 0.05
# The helper's own events: Prefect itself emits `prefect.concurrency-limit.acquired` only from
# its client-side `concurrency()`, not for the lease calls the helper makes.
PREFIX = "reslock.lock."
ACQUIRED, RELEASED = f"{PREFIX}acquired", f"{PREFIX}released"
ROW = re.compile(r'<tr id="limit-(\d+)" class="row-(\w+)"')
Flips = list[tuple[float, str]]  # (time, "held" or "free")


def setup_django(work: Path, database: Path) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "reslock_web.settings"
    os.environ.setdefault("SECRET_KEY", "reslock-bench-only")
    os.environ["RESLOCK_VAR_DIR"] = str(work)
    os.environ["DATABASE_URL"] = f"sqlite:///{database}"
    os.environ["RESLOCK_SECURE_COOKIES"] = "false"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


class BoardWatcher:
    """Polls /board/changes like the page does (for the rows a search shows: one page, so at
    most 50), and notes each time a row's status flips between held and free."""

    def __init__(self, query: str, poll: float = POLL) -> None:
        from django.contrib.auth import get_user_model
        from django.test import Client

        user, _ = get_user_model().objects.get_or_create(username="bench-viewer")
        self.client = Client(SERVER_NAME="localhost")
        self.client.force_login(user)
        self.query = query
        self.poll = poll
        self.seen = ""
        self.status: dict[int, str] = {}  # row pk -> what the board shows
        self.flips: dict[int, Flips] = {}
        self.polls = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def flips_of(self, name: str) -> Flips:
        from reslock_web.models import Limit

        row = Limit.objects.named(name)
        return list(self.flips.get(row.pk, [])) if row is not None else []

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self.stop.is_set():
                try:
                    self._poll()
                except Exception as error:  # noqa: BLE001 - counted, the watch goes on
                    self.errors.append(repr(error))
                self.stop.wait(self.poll)
        finally:
            connection.close()

    def _poll(self) -> None:
        response = self.client.get(
            "/board/changes", {"q": self.query, "seen": self.seen}, HTTP_HX_REQUEST="true"
        )
        at = time.time()
        self.polls += 1
        if response.status_code == 204:
            return
        html = response.content.decode()
        state = re.search(r'id="live-state" name="seen" value="([^"]*)"', html)
        if state:
            self.seen = state.group(1)
        for pk_text, row_class in ROW.findall(html):
            pk, status = int(pk_text), "free" if row_class == "free" else "held"
            if status != self.status.get(pk):
                self.status[pk] = status
                self.flips.setdefault(pk, []).append((at, status))

    def __enter__(self) -> BoardWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def event_times(api_url: str, names: Iterable[str], since: datetime) -> dict[str, Flips]:
    """(time, "held"/"free") of each take and give-back of these resources, as Prefect
    recorded them, by resource name."""
    from django.utils import timezone

    from reslock_web.prefect_io.api import PrefectAPI

    names = set(names)
    wanted = {ACQUIRED: "held", RELEASED: "free"}
    with PrefectAPI(api_url, timeout=60) as api:
        deadline = time.monotonic() + 30
        while True:  # Prefect writes events a moment after they stream
            events = [
                e
                for e in api.events(since, timezone.now() + timedelta(seconds=5), [PREFIX])
                if e.event in wanted and e.resource.get("prefect.resource.name") in names
            ]
            by_name: dict[str, Flips] = {}
            for e in events:
                by_name.setdefault(e.resource["prefect.resource.name"], []).append(
                    (e.occurred.timestamp(), wanted[e.event])
                )
            settled = all(len(times) % 2 == 0 for times in by_name.values())
            if (events and settled) or time.monotonic() > deadline:
                return {name: sorted(times) for name, times in by_name.items()}
            time.sleep(1)


def delays(events: Flips, flips: Flips) -> tuple[list[float], int]:
    """For each event, seconds until the board first showed its state; an event is missed
    when the board never showed it before the next event of the same kind."""
    found, missed = [], 0
    for index, (at, status) in enumerate(events):
        until = events[index + 2][0] if index + 2 < len(events) else float("inf")
        shown = next((t for t, s in flips if s == status and at - 0.05 <= t < until), None)
        if shown is None:
            missed += 1
        else:
            found.append(max(0.0, shown - at))
    return found, missed


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(label: str, values: list[float], missed: int) -> dict[str, float]:
    if not values:
        print(f"{label:>9}: nothing seen ({missed} missed)")
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    figures = {
        "p50": statistics.median(values),
        "p95": percentile(values, 0.95),
        "max": max(values),
    }
    print(
        f"{label:>9}: {len(values)} changes seen, {missed} never shown; "
        f"p50 {figures['p50'] * 1000:,.0f} ms  p95 {figures['p95'] * 1000:,.0f} ms  "
        f"max {figures['max'] * 1000:,.0f} ms"
    )
    return figures


def sync_once(api_url: str) -> None:
    from reslock_web.prefect_io.api import PrefectAPI
    from reslock_web.sync.run import sync_all

    with PrefectAPI(api_url, timeout=60) as api:
        sync_all(api)


def start_listener(api_url: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`manage.py reslock_listen` against this Prefect, once it says it is connected."""
    listener = subprocess.Popen(
        [sys.executable, "manage.py", "reslock_listen"],
        cwd=ROOT,
        env={**os.environ, **(env or {}), "PREFECT_API_URL": api_url},
        stdout=open(log, "ab"),  # noqa: SIM115 - written to as long as the listener runs
        stderr=subprocess.STDOUT,
    )
    wait_connected(listener.pid)
    return listener


def wait_connected(pid: int) -> None:
    from reslock_web.models import Heartbeat

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        beat = Heartbeat.objects.filter(service="listener", pid=pid).first()
        if beat and beat.detail.get("connected"):
            return
        time.sleep(0.2)
    raise RuntimeError("the listener did not connect within 60 s")
