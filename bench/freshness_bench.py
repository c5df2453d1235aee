"""How soon a lock change in Prefect shows on the board: the live listener against periodic sync.

Run by hand (not a test):

    .venv/bin/python bench/freshness_bench.py                 # 100 live cycles, 12 periodic
    .venv/bin/python bench/freshness_bench.py --cycles 20 --periodic-cycles 4

It starts its own Prefect 3.9 server and a reslock database under var/bench/freshness. A real
flow (bench/freshness_flow.py) takes and gives back one resource through reslock's helper,
over and over. Each take and each give-back is a Prefect event (`reslock.lock.acquired`,
`reslock.lock.released`, sent by the helper as it happens); its time is read back from Prefect
afterwards. Meanwhile a logged-in
client polls the board's own refresh endpoint (`/board/changes`, as the page does every
second) every 50 ms and notes when the row turns held or free. Delay = that moment minus the
event's time.

  live      the listener (`manage.py reslock_listen`) applies events as they stream in;
            no periodic sync at all
  periodic  no listener; a sync of everything every RESLOCK_SYNC_SECONDS (10 s), as Celery
            beat runs it; holds last longer than a period, or most would never be seen

Prints p50/p95/max for both, the ratio periodic/live, and how many changes never showed
(the row was already back before anyone saw it). Targets for live: p50 <= 1 s, p95 <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.periodic_sync import PeriodicSync  # noqa: E402
from tests.support.prefect_server import PrefectServer  # noqa: E402

WORK = ROOT / "var" / "bench" / "freshness"
SYNC_SECONDS = 10.0
POLL = 0.05
TARGET_P50, TARGET_P95 = 1.0, 2.0
# The helper's own events: Prefect itself emits `prefect.concurrency-limit.acquired` only from
# its client-side `concurrency()`, not for the lease calls the helper makes.
PREFIX = "reslock.lock."
ACQUIRED, RELEASED = f"{PREFIX}acquired", f"{PREFIX}released"
ROW = re.compile(r'<tr id="limit-(\d+)" class="row-(\w+)"')


def setup_django(database: Path) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "reslock_web.settings"
    os.environ.setdefault("SECRET_KEY", "reslock-bench-only")
    os.environ["RESLOCK_VAR_DIR"] = str(WORK)
    os.environ["DATABASE_URL"] = f"sqlite:///{database}"
    os.environ["RESLOCK_SECURE_COOKIES"] = "false"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


class BoardWatcher:
    """Polls /board/changes like the page does, and notes each time the row's status flips."""

    def __init__(self, name: str) -> None:
        from django.contrib.auth import get_user_model
        from django.test import Client

        user, _ = get_user_model().objects.get_or_create(username="bench-viewer")
        self.client = Client(SERVER_NAME="localhost")
        self.client.force_login(user)
        self.name = name
        self.seen = ""
        self.status = ""
        self.flips: list[tuple[float, str]] = []  # (time, "held" or "free")
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self.stop.is_set():
                try:
                    self._poll()
                except Exception as error:  # noqa: BLE001 - counted, the watch goes on
                    self.errors.append(repr(error))
                self.stop.wait(POLL)
        finally:
            connection.close()

    def _poll(self) -> None:
        response = self.client.get(
            "/board/changes", {"q": self.name, "seen": self.seen}, HTTP_HX_REQUEST="true"
        )
        at = time.time()
        if response.status_code == 204:
            return
        html = response.content.decode()
        state = re.search(r'id="live-state" name="seen" value="([^"]*)"', html)
        if state:
            self.seen = state.group(1)
        rows = ROW.findall(html)
        if rows:
            status = "free" if rows[0][1] == "free" else "held"
            if status != self.status:
                self.status = status
                self.flips.append((at, status))

    def __enter__(self) -> BoardWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def run_cycles(server: PrefectServer, name: str, cycles: int, hold: float, gap: float) -> None:
    env = server.client_env()
    env["PREFECT_HOME"] = str(WORK / "client")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "freshness_flow.py"), json.dumps(
            {"name": name, "cycles": cycles, "hold": hold, "gap": gap}
        )],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=cycles * (hold + gap) + 300,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(
            f"the cycling flow failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
        )


def event_times(server: PrefectServer, name: str, since: datetime) -> list[tuple[float, str]]:
    """(time, "held"/"free") of each take and give-back, as Prefect recorded them."""
    from django.utils import timezone

    from reslock_web.prefect_api import PrefectAPI

    wanted = {ACQUIRED: "held", RELEASED: "free"}
    with PrefectAPI(server.api_url) as api:
        deadline = time.monotonic() + 30
        while True:  # Prefect writes events a moment after they stream
            events = [
                e
                for e in api.events(since, timezone.now() + timedelta(seconds=5), [PREFIX])
                if e.event in wanted and e.resource.get("prefect.resource.name") == name
            ]
            if len(events) % 2 == 0 and events or time.monotonic() > deadline:
                break
            time.sleep(1)
    return sorted((e.occurred.timestamp(), wanted[e.event]) for e in events)


def delays(events: list[tuple[float, str]], flips: list[tuple[float, str]]) -> tuple[list, int]:
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


def summary(label: str, values: list[float], missed: int) -> dict[str, float]:
    if not values:
        print(f"{label:>9}: nothing seen ({missed} missed)")
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    figures = {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1]}
    print(
        f"{label:>9}: {len(values)} changes seen, {missed} never shown; "
        f"p50 {figures['p50'] * 1000:,.0f} ms  p95 {figures['p95'] * 1000:,.0f} ms  "
        f"max {figures['max'] * 1000:,.0f} ms"
    )
    return figures


def measure(server: PrefectServer, mode: str, cycles: int, hold: float, gap: float):
    from django.utils import timezone

    name = f"fresh-{mode}-{int(time.time())}"
    since = timezone.now() - timedelta(seconds=5)
    listener = None
    if mode == "live":
        listener = subprocess.Popen(
            [sys.executable, "manage.py", "reslock_listen"], cwd=ROOT,
            env={**os.environ, "PREFECT_API_URL": server.api_url},
            stdout=open(WORK / "listener.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )  # fmt: skip
        _wait_connected(listener.pid)
    periodic = PeriodicSync(server.api_url, SYNC_SECONDS) if mode == "periodic" else None
    try:
        if periodic:
            periodic.__enter__()
        with BoardWatcher(name) as watcher:
            # The resource exists before the first cycle: its first take is a change of a row.
            run_cycles(server, name, 1, 0.2, 0.5)
            _sync_once(server)
            time.sleep(1.5)
            first = len(watcher.flips)
            run_cycles(server, name, cycles, hold, gap)
            time.sleep(SYNC_SECONDS + 3 if mode == "periodic" else 3)
        flips = watcher.flips[first:]
        if watcher.errors:
            print(f"{mode}: {len(watcher.errors)} polls failed, first: {watcher.errors[0]}")
    finally:
        if periodic:
            periodic.__exit__()
        if listener:
            listener.terminate()
            listener.wait(timeout=30)
    events = event_times(server, name, since)[2:]  # the warm-up take and give-back
    (WORK / f"{mode}-timeline.json").write_text(json.dumps({"events": events, "flips": flips}))
    return delays(events, flips)


def _sync_once(server: PrefectServer) -> None:
    from reslock_web.prefect_api import PrefectAPI
    from reslock_web.sync import sync_all

    with PrefectAPI(server.api_url) as api:
        sync_all(api)


def _wait_connected(pid: int) -> None:
    from reslock_web.models import Heartbeat

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        beat = Heartbeat.objects.filter(service="listener", pid=pid).first()
        if beat and beat.detail.get("connected"):
            return
        time.sleep(0.2)
    raise RuntimeError("the listener did not connect within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=100, help="live take/give-back cycles")
    parser.add_argument("--periodic-cycles", type=int, default=12)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    setup_django(WORK / "reslock.sqlite3")
    server = PrefectServer.create()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        print(f"Prefect at {server.api_url}; {os.cpu_count()} cores")
        live, live_missed = measure(server, "live", args.cycles, hold=1.5, gap=1.5)
        live_fig = summary("live", live, live_missed)
        hold = SYNC_SECONDS + 1
        periodic, periodic_missed = measure(server, "periodic", args.periodic_cycles, hold, hold)
        periodic_fig = summary("periodic", periodic, periodic_missed)
        if live:
            print(
                f"    ratio: periodic/live p50 {periodic_fig['p50'] / live_fig['p50']:.1f}x, "
                f"p95 {periodic_fig['p95'] / live_fig['p95']:.1f}x"
            )
            ok = live_fig["p50"] <= TARGET_P50 and live_fig["p95"] <= TARGET_P95
            verdict = "PASS" if ok and not live_missed else "MISS"
            print(f"   target: live p50 <= {TARGET_P50:g} s, p95 <= {TARGET_P95:g} s: {verdict}")
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)


if __name__ == "__main__":
    main()
