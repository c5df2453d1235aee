"""Does the board keep up when many resources change at once? The listener under churn.

Run by hand (not a test):

    .venv/bin/python bench/churn_bench.py                   # 1, 5 and 20 events a second
    .venv/bin/python bench/churn_bench.py --rates 5 20 --seconds 120
    .venv/bin/python bench/churn_bench.py --prefect-postgres postgresql://127.0.0.1:5432/postgres

It starts its own Prefect 3.9 server and a reslock database under var/bench/churn, creates
2,000 idle limits and 200 resources, and starts the live listener (`manage.py
reslock_listen`; no periodic sync). For each rate, real processes (bench/churn_flow.py, each a
Prefect flow) take and give back the 200 resources through reslock's helper, each resource on
its own schedule (held HOLD seconds, staggered so that the takes and give-backs together make
the rate). Meanwhile the board's refresh endpoint (`/board/changes`, as the page polls it) is
read every 100 ms, one search per 50 resources (one page each), and each row's flips between
held and free are noted. Afterwards each take and give-back is read back from Prefect:

  freshness    from the event's time to the board first showing it (p50 / p95 / max)
  missed       changes the board never showed (the row went back before anyone saw it)
  lag          the lag the listener reports (its heartbeat, read every second: what the
               banner and /metrics show) against the board's real delay above
  cpu          the listener process's CPU time over the level's wall time

The baseline is the 1 event/s level of the same run: each level's p95 is printed as a ratio
of it. Target: p95 <= 2 s at every rate, nothing missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._board_watch import (  # noqa: E402
    BoardWatcher,
    delays,
    event_times,
    percentile,
    setup_django,
    start_listener,
    summary,
    sync_once,
)
from bench._prefect_database import fresh_prefect_database  # noqa: E402
from tests.support.prefect_server import PrefectServer  # noqa: E402

WORK = ROOT / "var" / "bench" / "churn"
RESOURCES = 200
IDLE = 2000
GROUP = 50  # resources a watcher follows: one page of the board
PROCESSES = 4
HOLD = 2.5
POLL = 0.1
TARGET_P95 = 2.0


def names(group: int) -> list[str]:
    return [f"churn-g{group}-{i:03d}" for i in range(GROUP)]


RESOURCE_NAMES = [name for group in range(RESOURCES // GROUP) for name in names(group)]


def create_limits(api_url: str) -> None:
    import httpx

    todo = [f"idle-{i:04d}" for i in range(IDLE)] + RESOURCE_NAMES
    with httpx.Client(base_url=api_url + "/", timeout=60) as http:

        def create(name: str) -> None:
            response = http.post("v2/concurrency_limits/", json={"name": name, "limit": 1})
            if response.status_code not in (200, 201, 409):
                response.raise_for_status()

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(create, todo))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class LagWatch:
    """Reads the lag the listener reports (its heartbeat, written every 5 s) every second."""

    def __init__(self) -> None:
        self.values: list[tuple[float, float]] = []  # (time, lag)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        from reslock_web.models import Heartbeat

        try:
            while not self.stop.wait(1.0):
                beat = Heartbeat.objects.filter(service="listener").first()
                lag = beat.detail.get("lag_seconds") if beat else None
                # Each heartbeat once, at its own time: one written before a level began
                # still reports the previous level's last change.
                at = beat.last_seen.timestamp() if beat else 0.0
                if isinstance(lag, int | float) and (not self.values or at > self.values[-1][0]):
                    self.values.append((at, float(lag)))
        finally:
            connection.close()

    def __enter__(self) -> LagWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def churn(server: PrefectServer, rate: float, seconds: float) -> float:
    """Start the processes: `rate` events a second over `seconds`; returns when it ends."""
    period = 2 * RESOURCES / rate  # each resource: a take and a give-back per period
    start = time.time() + 20  # the processes start their flows meanwhile
    until = start + seconds
    firsts = {name: start + i * period / RESOURCES for i, name in enumerate(RESOURCE_NAMES)}
    env = server.client_env()
    processes = []
    for p in range(PROCESSES):
        mine = RESOURCE_NAMES[p::PROCESSES]
        params = {
            "names": mine,
            "firsts": [firsts[n] for n in mine],
            "period": period,
            "hold": HOLD,
            "until": until,
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "churn_flow.py"), json.dumps(params)],
                env=env,
                cwd=ROOT,
                stdout=open(WORK / f"flow-{p}.log", "ab"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )
        )
    for process in processes:
        if process.wait(timeout=seconds + 300) != 0:
            raise RuntimeError(f"a churn flow failed: see {WORK}/flow-*.log")
    return start


def failed_takes() -> int:
    """Takes Prefect failed to answer, as the flows reported them (their logs are kept)."""
    from bench.churn_flow import FAILED_TAKES

    total = 0
    for log in WORK.glob("flow-*.log"):
        lines = [line for line in log.read_text().splitlines() if line.startswith(FAILED_TAKES)]
        total += int(lines[-1].removeprefix(FAILED_TAKES)) if lines else 0
    return total


def level(server: PrefectServer, listener: subprocess.Popen, rate: float, seconds: float):
    from django.utils import timezone

    since = timezone.now()
    watchers = [BoardWatcher(f"churn-g{g}-", poll=POLL) for g in range(RESOURCES // GROUP)]
    cpu_before, wall_before = cpu_seconds(listener.pid), time.monotonic()
    watched = time.monotonic()
    with LagWatch() as lag:
        for watcher in watchers:
            watcher.__enter__()
        try:
            for log in WORK.glob("flow-*.log"):
                log.unlink()
            start = churn(server, rate, seconds)
            time.sleep(5)  # the last give-backs reach the board
        finally:
            for watcher in watchers:
                watcher.__exit__()
            watched = time.monotonic() - watched
    cpu = (cpu_seconds(listener.pid) - cpu_before) / (time.monotonic() - wall_before)
    times = event_times(server.api_url, RESOURCE_NAMES, since)
    found: list[float] = []
    missed = events = 0
    for name in RESOURCE_NAMES:
        flips = [f for w in watchers for f in w.flips_of(name) if f[0] >= start - 1]
        seen, lost = delays(times.get(name, []), flips)
        found += seen
        missed += lost
        events += len(times.get(name, []))
    polls = sum(w.polls for w in watchers) / watched / len(watchers)
    errors = sum(len(w.errors) for w in watchers)
    print(
        f"{rate:g} events/s asked, {events / seconds:.1f} made ({events} events, "
        f"{failed_takes()} takes Prefect failed); board read {polls:.1f} times a second per "
        f"search, {errors} failed reads"
    )
    (WORK / f"timeline-{rate:g}.json").write_text(
        json.dumps(
            {
                "events": times,
                "flips": {n: [f for w in watchers for f in w.flips_of(n)] for n in RESOURCE_NAMES},
                "lag": lag.values,
            }
        )
    )
    figures = summary("freshness", found, missed)
    # From the level's first event on: before it, the lag is still that of the last change.
    reported = [value for at, value in lag.values if at >= start] or [float("nan")]
    figures.update(
        missed=missed,
        events=events,
        cpu=cpu,
        lag_p95=percentile(reported, 0.95),
        lag_max=max(reported),
    )
    print(
        f"      lag: listener reported p95 {figures['lag_p95']:.1f} s, max "
        f"{figures['lag_max']:.1f} s; the board's real delay p95 {figures['p95']:.1f} s, "
        f"max {figures['max']:.1f} s"
    )
    print(f"      cpu: listener {cpu:.0%} of one core")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 5, 20])
    parser.add_argument("--seconds", type=float, default=90, help="length of a level")
    parser.add_argument(
        "--prefect-postgres",
        metavar="URL",
        help="run Prefect on PostgreSQL: a fresh database reslock_churn_prefect is made on the "
        "server of URL (postgresql://user@host:port/db); default: SQLite",
    )
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    setup_django(WORK, WORK / "reslock.sqlite3")
    database_url = None
    if args.prefect_postgres:
        database_url = fresh_prefect_database(args.prefect_postgres, "reslock_churn_prefect")
    server = PrefectServer.create(database_url)
    server.start(timeout=300)  # a fresh PostgreSQL database is migrated on start
    os.environ["PREFECT_API_URL"] = server.api_url
    listener = None
    try:
        began = time.monotonic()
        create_limits(server.api_url)
        sync_once(server.api_url)
        print(
            f"Prefect at {server.api_url} on {'PostgreSQL' if database_url else 'SQLite'}; "
            f"{IDLE:,} idle limits and {RESOURCES} resources "
            f"made and synced in {time.monotonic() - began:.0f} s; {os.cpu_count()} cores; "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        listener = start_listener(server.api_url, WORK / "listener.log")
        time.sleep(20)  # its catch-up of the limits just made
        results = {}
        for rate in args.rates:
            results[rate] = level(server, listener, rate, args.seconds)
            print(f"      load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if listener is not None:
            listener.terminate()
            listener.wait(timeout=30)
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)
    base = results[min(results)]
    print(f"baseline: the {min(results):g} events/s level of this run")
    for rate, figures in results.items():
        ok = figures["p95"] <= TARGET_P95 and not figures["missed"]
        print(
            f"  {rate:>4g}/s  p95 {figures['p95']:.2f} s ({figures['p95'] / base['p95']:.1f}x), "
            f"missed {figures['missed']} of {figures['events']}, "
            f"cpu {figures['cpu']:.0%}: {'PASS' if ok else 'MISS'}"
        )


if __name__ == "__main__":
    main()
