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
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._board_watch import (  # noqa: E402
    BoardWatcher,
    delays,
    event_times,
    setup_django,
    start_listener,
    summary,
    sync_once,
)
from tests.support.periodic_sync import PeriodicSync  # noqa: E402
from tests.support.prefect_server import PrefectServer  # noqa: E402

WORK = ROOT / "var" / "bench" / "freshness"
SYNC_SECONDS = 10.0
TARGET_P50, TARGET_P95 = 1.0, 2.0


def run_cycles(server: PrefectServer, name: str, cycles: int, hold: float, gap: float) -> None:
    env = server.client_env()
    env["PREFECT_HOME"] = str(WORK / "client")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "freshness_flow.py"),
            json.dumps({"name": name, "cycles": cycles, "hold": hold, "gap": gap}),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=cycles * (hold + gap) + 300,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"the cycling flow failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
        )


def measure(server: PrefectServer, mode: str, cycles: int, hold: float, gap: float):
    from django.utils import timezone

    name = f"fresh-{mode}-{int(time.time())}"
    since = timezone.now() - timedelta(seconds=5)
    listener = None
    if mode == "live":
        listener = start_listener(server.api_url, WORK / "listener.log")
    periodic = PeriodicSync(server.api_url, SYNC_SECONDS) if mode == "periodic" else None
    try:
        if periodic:
            periodic.__enter__()
        with BoardWatcher(name) as watcher:
            # The resource exists before the first cycle: its first take is a change of a row.
            run_cycles(server, name, 1, 0.2, 0.5)
            sync_once(server.api_url)
            time.sleep(1.5)
            first = len(watcher.flips_of(name))
            run_cycles(server, name, cycles, hold, gap)
            time.sleep(SYNC_SECONDS + 3 if mode == "periodic" else 3)
        flips = watcher.flips_of(name)[first:]
        if watcher.errors:
            print(f"{mode}: {len(watcher.errors)} polls failed, first: {watcher.errors[0]}")
    finally:
        if periodic:
            periodic.__exit__()
        if listener:
            listener.terminate()
            listener.wait(timeout=30)
    events = event_times(server.api_url, [name], since).get(name, [])[2:]  # the warm-up
    (WORK / f"{mode}-timeline.json").write_text(json.dumps({"events": events, "flips": flips}))
    return delays(events, flips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=100, help="live take/give-back cycles")
    parser.add_argument("--periodic-cycles", type=int, default=12)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    setup_django(WORK, WORK / "reslock.sqlite3")
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
