"""The board's first viewer at 20,000 resources and a million lock events, against 5,000.

Run by hand (not a test):

    .venv/bin/python bench/board_scale_bench.py
    .venv/bin/python bench/board_scale_bench.py --resources 20000 --lock-events 1000000 \\
        --baseline 5000 --requests 100

No Prefect: reslock's own tables are filled directly in the shape the sync leaves them
(`_board_seed.py`), in one SQLite database per size under var/bench (kept for an hour, so a
second run within it reuses them; `--reseed` makes them anew). The baseline has as many lock
events per resource as the full size. Then, as `board_bench.py` does, full requests through
Django as a logged-in viewer, each "cold" (board cache emptied), "after a sync" (board version
raised and 50 rows stamped anew) and served again:

  board     GET /
  search    GET /?q=gcl-01
  facet     GET /?status=held

The sizes are measured in alternating blocks (`--blocks`), each after a few unmeasured
requests, so that both see the same machine. Prints p50/p95/max per size, the ratio of the
full size's p95 to the baseline's, and whether p95 <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.board_bench import TARGET_P95_MS, as_after_a_sync, percentile  # noqa: E402
from bench.sync_bench import BENCH_DIR, setup_django  # noqa: E402

KEEP_SECONDS = 3600  # the lost leases are the last 24 h's: a seed older than this is redone
REQUESTS = {
    "board": "/",
    "search": "/?q=gcl-01",
    "facet": "/?status=held",
}
WAYS = ("cold", "after sync", "served again")


def database_path(resources: int, events: int) -> Path:
    return BENCH_DIR / f"board-scale-{resources}-{events}.sqlite3"


def use_database(path: Path) -> None:
    """Point Django's connection at this SQLite file (closing the one open)."""
    from django.db import connections

    connection = connections["default"]
    connection.close()
    connection.settings_dict["NAME"] = str(path)


def prepare(resources: int, events: int, reseed: bool) -> Path:
    """The seeded, migrated database for this size: kept from a recent run, or made now."""
    from django.core.management import call_command

    from reslock_web.models import Limit

    path = database_path(resources, events)
    about = path.with_suffix(".json")
    kept = json.loads(about.read_text()) if about.exists() and path.exists() else {}
    fresh = time.time() - kept.get("seeded_at", 0) < KEEP_SECONDS
    if reseed or not fresh:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        about.unlink(missing_ok=True)
    use_database(path)
    call_command("migrate", verbosity=0, interactive=False)  # also a kept one: new indexes
    if not fresh or reseed:
        from bench._board_seed import seed

        print(f"  seeding {resources:,} resources and {events:,} lock events into {path.name}")
        made = seed(resources, events, log=lambda line: print(line, flush=True))
        about.write_text(json.dumps({"seeded_at": time.time(), **made}))
    else:
        print(f"  reusing {path.name} (seeded {time.time() - kept['seeded_at']:.0f} s ago)")
    assert Limit.objects.present().count() == resources
    return path


def measure(paths: dict[int, Path], rounds: int, blocks: int) -> dict[int, dict[str, list]]:
    from django.contrib.auth.models import User
    from django.core.cache import caches
    from django.test import Client

    from reslock_web.models import Limit

    timings = {size: {f"{k}, {w}": [] for k in REQUESTS for w in WAYS} for size in paths}
    per_block = max(1, rounds // blocks)
    for block in range(blocks):
        for size, path in paths.items():
            use_database(path)
            caches["board"].clear()
            viewer, _ = User.objects.get_or_create(username="bench-viewer")
            client = Client()
            client.force_login(viewer)
            pks = list(Limit.objects.present().values_list("pk", flat=True))
            for path_ in REQUESTS.values():  # warm the connection, templates and page cache
                assert client.get(path_).status_code == 200
            for _ in range(per_block):
                for kind, url in REQUESTS.items():
                    for way in WAYS:
                        if way == "cold":
                            caches["board"].clear()
                        elif way == "after sync":
                            as_after_a_sync(pks)
                        started = time.perf_counter()
                        response = client.get(url)
                        timings[size][f"{kind}, {way}"].append(
                            (time.perf_counter() - started) * 1000
                        )
                        assert response.status_code == 200
            print(f"  block {block + 1}/{blocks}: {size:,} resources done", flush=True)
    return timings


def report(timings: dict[int, dict[str, list]], baseline: int, full: int) -> None:
    print(
        f"\n{'':26} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'p95 / baseline':>15}"
        f"  target p95 <= {TARGET_P95_MS:.0f} ms"
    )
    for kind in timings[full]:
        for size in (baseline, full):
            values = timings[size][kind]
            p95 = percentile(values, 0.95)
            ratio = (
                f"{p95 / percentile(timings[baseline][kind], 0.95):14.2f}x" if size == full else ""
            )
            verdict = "PASS" if p95 <= TARGET_P95_MS else "MISS"
            label = f"{kind} @ {size:,}"
            print(
                f"{label:26} {statistics.median(values):8.1f} {p95:8.1f} {max(values):8.1f}"
                f" {ratio:>15}  {verdict}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resources", type=int, default=20_000)
    parser.add_argument("--lock-events", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=5_000, help="resources of the baseline")
    parser.add_argument("--requests", type=int, default=100, help="requests per kind and size")
    parser.add_argument("--blocks", type=int, default=2, help="alternations of the two sizes")
    parser.add_argument("--reseed", action="store_true", help="seed anew even if kept")
    args = parser.parse_args()
    os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1")  # Django's test client
    os.environ["RESLOCK_SYNC_SECONDS"] = "3600"  # no sync runs: the seeded board stays fresh
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    baseline_events = args.lock_events * args.baseline // args.resources
    setup_django(f"sqlite:///{database_path(args.baseline, baseline_events)}", migrate=False)
    from django.core.management import call_command

    call_command("collectstatic", interactive=False, verbosity=0)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    paths = {
        args.baseline: prepare(args.baseline, baseline_events, args.reseed),
        args.resources: prepare(args.resources, args.lock_events, args.reseed),
    }
    print(f"load average after seeding: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    timings = measure(paths, args.requests, args.blocks)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"\nsqlite: {args.baseline:,} resources / {baseline_events:,} lock events (baseline) and "
        f"{args.resources:,} / {args.lock_events:,}, {args.requests} requests of each kind"
    )
    report(timings, args.baseline, args.resources)


if __name__ == "__main__":
    main()
