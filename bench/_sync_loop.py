"""The load benchmark's stand-in for Celery beat: change a few limits in Prefect, then sync.

    python -m bench._sync_loop <prefect api url> [--every 10] [--churn 50]

Django's settings come from the environment (DATABASE_URL, SECRET_KEY, ...), as for any reslock
process. Every `--every` seconds it sets `--churn` free global limits of the bench workspace to
1 or 2 (alternating), so that each sync has real rows to write, then runs `sync_all` against
that Prefect: the same read-everything-then-write-in-one-transaction pass the board gets from
beat. Prints one JSON line per sync. On SIGTERM it puts those limits back to 1 and exits.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._prefect_fixture import Layout  # noqa: E402
from tests.support.patient import patient_client  # noqa: E402


def churned(count: int) -> list[str]:
    """Free global limits (one in ten is held: those at 0, 10, 20, ... are skipped)."""
    names = Layout().gcl_names()
    return [name for index, name in enumerate(names) if index % 10 == 5][:count]


def set_limits(http: httpx.Client, names: list[str], value: int) -> None:
    for name in names:
        http.patch(f"/v2/concurrency_limits/{name}", json={"limit": value}).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("api_url")
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--churn", type=int, default=50)
    args = parser.parse_args()

    import django

    django.setup()
    from reslock_web.prefect_io.api import PrefectAPI
    from reslock_web.sync.run import sync_all

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    names = churned(args.churn)
    # Prefect on SQLite answers 503 while busy: the changes wait and retry, as the tests' do.
    with patient_client(args.api_url, timeout=30) as http, PrefectAPI(args.api_url) as api:
        round_ = 0
        while not stop.is_set():
            started = time.monotonic()
            round_ += 1
            set_limits(http, names, 2 if round_ % 2 else 1)
            run = sync_all(api)
            line = {"at": time.time(), "round": round_, "ok": False, "ms": None, "updated": 0}
            if run is not None:
                line.update(
                    ok=bool(run.ok), ms=run.duration_ms, updated=run.updated, error=run.error[:200]
                )
            print(json.dumps(line), flush=True)
            stop.wait(max(0.0, args.every - (time.monotonic() - started)))
        set_limits(http, names, 1)  # the kept workspace stays as other benchmarks expect it


if __name__ == "__main__":
    main()
