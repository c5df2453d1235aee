"""What reslock's flow-side helper costs next to Prefect's own `concurrency()`.

Run by hand (not a test):

    .venv/bin/python bench/helper_bench.py            # N=200 of each, outside and inside a flow
    .venv/bin/python bench/helper_bench.py -n 500 --where outside

It starts its own Prefect server (a copy of the migrated template database, SQLite, on a free
loopback port), creates two free limits of 1 and times, N times each and interleaved so that
both see the same server state, one acquire + release of a free resource:

  helper    `with resource_lock("bench-helper"): pass`      (lease 60 s, holder = the run)
  prefect   `with concurrency("bench-plain", lease_duration=60, strict=True): pass`

first in a plain script (no run: no holder) and then inside one flow run (the helper's holder
is the flow run). It prints median, p95, mean and max in milliseconds, how many took over a
second, and the ratio of medians. The rare 2 s outliers of both are Prefect's client retrying a
503 from a busy SQLite server (its retry backoff), not the lock itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.prefect_server import PrefectServer  # noqa: E402

HELPER_NAME = "bench-helper"
PLAIN_NAME = "bench-plain"
WARMUP = 10


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(n: int, helper: Callable[[], None], plain: Callable[[], None]) -> dict[str, list]:
    """Interleaved: helper, plain, helper, plain... after a warm-up of both."""
    for _ in range(WARMUP):
        helper()
        plain()
    timings: dict[str, list[float]] = {"helper": [], "prefect": []}
    for _ in range(n):
        for key, fn in (("helper", helper), ("prefect", plain)):
            started = time.perf_counter()
            fn()
            timings[key].append((time.perf_counter() - started) * 1000)
    return timings


def report(title: str, timings: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    print(
        f"  {'':8} {'median':>9} {'p95':>9} {'mean':>9} {'max':>9} {'>1 s':>5}"
        "   (ms per acquire + release)"
    )
    for key, values in timings.items():
        print(
            f"  {key:8} {statistics.median(values):9.2f} {percentile(values, 0.95):9.2f} "
            f"{statistics.mean(values):9.2f} {max(values):9.2f} {sum(v > 1000 for v in values):5}"
        )
    ratio = statistics.median(timings["helper"]) / statistics.median(timings["prefect"])
    print(f"  helper / prefect (medians): {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="iterations of each (default 200)")
    parser.add_argument("--where", choices=["outside", "flow", "both"], default="both")
    args = parser.parse_args()

    server = PrefectServer.create()
    print(f"Prefect server under {server.home} ...", flush=True)
    started = time.monotonic()
    server.start()
    print(f"up at {server.api_url} in {time.monotonic() - started:.1f} s ({os.cpu_count()} CPUs)")
    try:
        run(server, args.n, args.where)
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)


def run(server: PrefectServer, n: int, where: str) -> None:
    import httpx
    from prefect import __version__, flow
    from prefect.concurrency.sync import concurrency
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from reslock import resource_lock

    for name in (HELPER_NAME, PLAIN_NAME):
        response = httpx.post(
            f"{server.api_url}/v2/concurrency_limits/", json={"name": name, "limit": 1}
        )
        assert response.status_code in (201, 409), response.text

    def helper() -> None:
        with resource_lock(HELPER_NAME):
            pass

    def plain() -> None:
        with concurrency(PLAIN_NAME, occupy=1, lease_duration=60, strict=True):
            pass

    print(f"Prefect {__version__}, N={n} of each, interleaved, after {WARMUP} warm-up rounds")
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        if where in ("outside", "both"):
            report("Outside a flow run (no holder)", measure(n, helper, plain))
        if where in ("flow", "both"):

            @flow(name="helper-bench")
            def in_a_flow() -> dict[str, list[float]]:
                return measure(n, helper, plain)

            report("Inside one flow run (holder = the flow run)", in_a_flow())
        for name in (HELPER_NAME, PLAIN_NAME):
            left = httpx.get(f"{server.api_url}/v2/concurrency_limits/{name}").json()
            assert left["active_slots"] == 0, left
        # Send the events and logs still queued while the server is up.
        EventsWorker.drain_all(timeout=10)
        APILogWorker.drain_all(timeout=10)


if __name__ == "__main__":
    main()
