"""The sync at 20,000 limits and a million backfilled lock events: first sync, resync, board.

Run by hand (not a test):

    .venv/bin/python bench/scale_bench.py                                   # 20,000 / 1,000,000
    .venv/bin/python bench/scale_bench.py --limits 500 --events 10000       # a smoke run
    .venv/bin/python bench/scale_bench.py --postgres postgresql://postgres@127.0.0.1:5432
    .venv/bin/python bench/scale_bench.py --before     # the baseline also read as before

Prefect runs on PostgreSQL (`--prefect-postgres`, database `reslock_scale_prefect`), kept
between runs with its home (var/bench/prefect-scale) as the sync bench keeps its own: the
limits (60 % global, 1 % deployment, the rest tag; one in ten held, with its holder's runs and
acquire event), and the generated lock events in staging tables (bench/_event_seed.py). A run
creates or regenerates only what differs from what is asked (`--reseed`: all of it; `--drop`:
drop the database at the end). The events are written into Prefect's tables directly, not
through its events socket: the bench measures Prefect's read API and reslock, not Prefect's
ingestion.

Two rounds, in this order, each into a fresh set of reslock's tables (SQLite under var/bench
or `--postgres`), in a child process that loads only Django and reslock:

  baseline   a tenth of the events in Prefect's 7-day window
  full       all of them (the other nine tenths loaded on top)

and in each: the first sync (the backfill of the window, then the complete pass), timed, with
Prefect requests and event pages counted, and the peak RSS (VmHWM, reset before the step)
over the RSS before it; then the resync at once (nothing changed in Prefect). Ratios: full
against baseline (time should grow with the events, memory not at all), and against the
paging floor (`list_limits()` of every limit, the least any sync pays). Last, the board's p95
over the synced resources, with board_bench's request loop. Before each round, what one page
of events costs Prefect at some depths of the window (its events API pages by offset).
`--before`: the baseline is also synced following Prefect's next_page only, however deep, as
the sync read events before 2026-12-07.

reslock's Prefect request budget is raised to RESLOCK_PREFECT_MAX_REQUESTS_PER_MINUTE=1000000
here (a self-hosted Prefect has none by default; Prefect Cloud's smallest plan would make a
million events a matter of days): what is measured is reslock, not the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._prefect_database import (  # noqa: E402
    drop_prefect_database,
    kept_prefect_database,
    libpq_url,
)
from bench.sync_bench import (  # noqa: E402
    BENCH_DIR,
    _reset_peak,
    _vm,
    database,
    endpoint,
    flush,
    setup_django,
)

HOME = BENCH_DIR / "prefect-scale"
SQLITE_DB = BENCH_DIR / "scale.sqlite3"
PREFECT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"
PREFECT_DATABASE = "reslock_scale_prefect"
WINDOW = timedelta(days=7) - timedelta(hours=2)  # inside the 7-day backfill, with a margin
BUDGET = 1_000_000  # requests a minute: reslock's budget out of the way
EVENT_PAGES = ("POST /api/events/filter", "GET /api/events/filter/next")


def scale_layout(limits: int) -> Any:
    from bench._prefect_fixture import Layout

    deployments = max(1, limits // 100)
    gcls = limits * 3 // 5
    return Layout(gcls=gcls, tags=limits - gcls - deployments, deployments=deployments)


# --- the child: one round's syncs ------------------------------------------------------------
def child(api_url: str) -> dict[str, Any]:
    """First sync into emptied tables, then the resync; in this fresh process."""
    setup_django(os.environ["DATABASE_URL"], migrate=False)
    from django.db.models import Count

    from reslock_web.models import Holder, LockEvent, Waiter
    from reslock_web.prefect_io import api as api_module
    from reslock_web.prefect_io.api import PrefectAPI
    from reslock_web.sync.events import ACQUIRES, EVENT_WAITING
    from reslock_web.sync.run import sync_all

    if os.environ.get("SCALE_BENCH_AS_BEFORE"):  # only next_page, however deep (see --before)
        api_module.EVENTS_PAGES_PER_QUERY = 2**62

    requests: dict[str, list[float]] = {}
    original = PrefectAPI.request

    def counted(api: Any, method: str, path: str, json: Any = None) -> Any:
        started = time.perf_counter()
        try:
            return original(api, method, path, json)
        finally:
            entry = requests.setdefault(endpoint(method, path), [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - started

    PrefectAPI.request = counted  # type: ignore[method-assign]
    flush()  # also opens the database connection before the baseline
    out: dict[str, Any] = {}
    for step in ("first sync", "resync"):
        requests.clear()
        trail: list[tuple[float, int, int]] = []  # seconds, events read, RSS kB
        started = time.perf_counter()

        def progress(text: str, started: float = started, trail: list = trail) -> None:
            words = text.split()
            if words[0] == "read" and words[1].isdigit():
                trail.append((time.perf_counter() - started, int(words[1]), _vm()["VmRSS"]))

        before = _vm()["VmRSS"]
        reset = _reset_peak()
        with PrefectAPI.for_url(api_url) as api:
            run = sync_all(api, progress)
        seconds = time.perf_counter() - started
        if run is None or not run.ok:
            raise SystemExit(f"{step} failed: {getattr(run, 'error', 'lock taken')}")
        out[step] = {
            "seconds": seconds,
            "before": before,
            "peak": _vm()["VmHWM"] if reset else None,
            "requests": requests.copy(),
            "trail": trail,
            "run": {
                name: getattr(run, name)
                for name in ("limits", "created", "holders", "waiters", "events", "duration_ms")
            },
        }
    out["rows"] = {
        "lock events": LockEvent.objects.count(),
        # Acquires and waits not ended (releases and the like are never "open"): the holds
        # and waits of now only, every backfilled one having ended.
        "open acquires and waits": dict(
            LockEvent.objects.filter(
                closed_at__isnull=True,
                event__in=[*ACQUIRES, EVENT_WAITING],
            )
            .values_list("event")
            .annotate(n=Count("id"))
        ),
        "holders": dict(Holder.objects.values_list("source").annotate(n=Count("id"))),
        "waiters": Waiter.objects.count(),
    }
    return out


def run_child(api_url: str, database_url: str, as_before: bool = False) -> dict[str, Any]:
    env = {**os.environ, "DATABASE_URL": database_url}
    if as_before:
        env["SCALE_BENCH_AS_BEFORE"] = "1"
    done = subprocess.run(
        [sys.executable, __file__, "--child", api_url],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the measuring child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- seeding ---------------------------------------------------------------------------------
def seed_limits(prefect: Any) -> list[Any]:
    from bench._event_seed import SeedLimit

    layout = prefect.layout
    ids = prefect.limit_ids
    limits = [SeedLimit(ids[name], name, 1, helper=True) for name in layout.gcl_names()]
    limits += [SeedLimit(ids[f"tag:{t}"], f"tag:{t}", 1, helper=False) for t in layout.tag_names()]
    return limits


def kept_home(limits: int, reseed: bool) -> bool:
    """Whether the kept Prefect database must be made anew (asked, or other limits)."""
    marker = HOME / "scale.json"
    try:
        kept = json.loads(marker.read_text())
    except (OSError, ValueError):
        kept = {}
    fresh = reseed or kept.get("limits") != limits
    HOME.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"limits": limits}))
    return fresh


def load_tier(prefect: Any, seed: Any, tier: int) -> tuple[int, float]:
    """Prefect's event tables: tier 0 alone (after emptying them), or tier 1 on top."""
    if tier == 0:
        seed.clear()
    copied, seconds = seed.load(tier)
    if tier == 0:  # the held limits' own acquires, emptied with the rest: sent again
        prefect.state["events"] = {}
        prefect._ensure_events()
        prefect._save_state()
    return copied, seconds


# --- Prefect's own cost per events page -------------------------------------------------------
def page_costs(api_url: str) -> None:
    """What one events page costs Prefect with reslock's filter over the whole window: the
    first (POST, which also counts the matching events) and a next_page at some depths.

    Prefect's page token is its own JSON of the filter, the count and the offset, in base64
    twice (prefect/server/events/storage/__init__.py, api/events.py); it is built here to ask for deep pages
    directly, as following next_page would reach them."""
    import base64

    import httpx

    from reslock_web.prefect_io.api import _events_body
    from reslock_web.sync.events import EVENT_PREFIXES, LIFECYCLE_EVENTS

    now = datetime.now(UTC)
    body = _events_body(now - timedelta(days=7), now, EVENT_PREFIXES, LIFECYCLE_EVENTS, None)
    with httpx.Client(base_url=api_url + "/", timeout=300) as http:

        def timed(fn: Any) -> tuple[float, Any]:
            times, answer = [], None
            for _ in range(3):
                started = time.perf_counter()
                answer = fn()
                times.append(time.perf_counter() - started)
            return statistics.median(times) * 1000, answer

        first_ms, first = timed(lambda: http.post("events/filter", json=body).json())
        total = first["total"]
        link = httpx.URL(first["next_page"]).params["page-token"]
        token = json.loads(base64.b64decode(base64.b64decode(link)))  # base64 of base64
        cells = [f"first page (and the count of {total:,}) {first_ms:,.0f} ms"]
        for depth in (0.001, 0.01, 0.1, 0.5, 0.9):
            offset = int(total * depth) // 50 * 50
            if offset < 50:
                continue
            raw = base64.b64encode(json.dumps({**token, "offset": offset}).encode())
            url = "events/filter/next?page-token=" + base64.b64encode(raw).decode()
            ms, _ = timed(lambda url=url: http.get(url).json())
            cells.append(f"offset {offset:,}: {ms:,.0f} ms")
    print("Prefect's events pages (median of 3): " + "; ".join(cells), flush=True)


# --- report ----------------------------------------------------------------------------------
def mb(kb: float | None) -> str:
    return "—" if kb is None else f"{kb / 1024:.1f} MB"


def summary(result: dict[str, Any], step: str) -> dict[str, Any]:
    data = result[step]
    requests = data["requests"]
    pages = sum(requests.get(name, (0, 0.0))[0] for name in EVENT_PAGES)
    page_seconds = sum(requests.get(name, (0, 0.0))[1] for name in EVENT_PAGES)
    return {
        "seconds": data["seconds"],
        "requests": sum(n for n, _ in requests.values()),
        "pages": pages,
        "page seconds": page_seconds,
        "growth": None if data["peak"] is None else data["peak"] - data["before"],
        "before": data["before"],
        "peak": data["peak"],
    }


def print_round(label: str, events: int, result: dict[str, Any], paging: float) -> None:
    print(f"\n== {label}: {events:,} lock events in the window ==")
    for step in ("first sync", "resync"):
        s = summary(result, step)
        print(
            f"{step:11} {s['seconds']:9.1f} s = {s['seconds'] / paging:7.1f}x paging;"
            f" {s['requests']:,} requests, {s['pages']:,} event pages"
            f" ({s['page seconds']:.1f} s waiting on them);"
            f" peak RSS +{mb(s['growth'])} (from {mb(s['before'])} to {mb(s['peak'])})"
        )
    first = result["first sync"]
    print(f"  first sync run: {first['run']}")
    print(f"  resync run: {result['resync']['run']}")
    print(f"  rows after: {result['rows']}")
    endpoints = sorted(first["requests"].items(), key=lambda item: -item[1][1])
    print("  first sync's requests (count / s):")
    for name, (count, seconds) in endpoints:
        print(f"    {name:48} {count:7,} / {seconds:8.1f}")
    trail = first["trail"]
    if len(trail) >= 2:
        print("  backfill as it went (s, events read, RSS):")
        step = max(1, len(trail) // 10)
        previous = (0.0, 0)
        for seconds, read, rss in [*trail[step - 1 :: step], trail[-1]][:11]:
            rate = (read - previous[1]) / max(1e-9, seconds - previous[0])
            print(f"    {seconds:8.1f} s {read:10,} events {mb(rss):>10}  ({rate:,.0f} events/s)")
            previous = (seconds, read)


def print_ratios(base: dict[str, Any], full: dict[str, Any], events: tuple[int, int]) -> None:
    print(f"\n== Full against baseline ({events[1] / max(1, events[0]):.1f}x the events) ==")
    for step in ("first sync", "resync"):
        b, f = summary(base, step), summary(full, step)
        growth = (
            f"{f['growth'] / b['growth']:.2f}x" if b["growth"] and f["growth"] is not None else "—"
        )
        print(
            f"{step:11} time {f['seconds'] / b['seconds']:6.2f}x, requests "
            f"{f['requests'] / max(1, b['requests']):6.2f}x, peak RSS growth {growth}"
            f" ({mb(b['growth'])} -> {mb(f['growth'])})"
        )


# --- main ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limits", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="board requests per kind")
    parser.add_argument("--postgres", default="", help="reslock on this PostgreSQL server")
    parser.add_argument("--prefect-postgres", default=PREFECT_SERVER, metavar="URL")
    parser.add_argument("--reseed", action="store_true", help="make Prefect's database anew")
    parser.add_argument("--drop", action="store_true", help="drop Prefect's database at the end")
    parser.add_argument("--no-board", action="store_true", help="skip the board's p95")
    parser.add_argument(
        "--before",
        action="store_true",
        help="also sync the baseline reading events as before 2026-12-07 (only next_page)",
    )
    parser.add_argument("--workers", type=int, default=4, help="parallel requests during setup")
    parser.add_argument("--child", metavar="API_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()

    os.environ["RESLOCK_PREFECT_MAX_REQUESTS_PER_MINUTE"] = str(BUDGET)
    os.environ["CELERY_BROKER_URL"] = "memory://"  # the budget kept per process, not in Redis
    os.environ["RESLOCK_SYNC_SECONDS"] = "3600"  # the board's banner stays "fresh" (board_bench)
    os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1")
    if args.child:
        print(json.dumps(child(args.child)))
        return

    from bench._event_seed import EventSeed
    from bench._prefect_fixture import BenchPrefect

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fresh = kept_home(args.limits, args.reseed)
    prefect_url, created = kept_prefect_database(args.prefect_postgres, PREFECT_DATABASE, fresh)
    seed = EventSeed(libpq_url(args.prefect_postgres, PREFECT_DATABASE))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    print(f"Prefect on PostgreSQL {PREFECT_DATABASE} ({'new' if created else 'kept'})")
    try:
        with BenchPrefect(
            layout=scale_layout(args.limits),
            home=HOME,
            workers=args.workers,
            database_url=prefect_url,
            new_database=created,
        ) as prefect:
            timings = prefect.prepare()
            print(
                f"Prefect ready in {time.monotonic() - started:.0f} s: "
                + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items())
            )
            stored, limits = seed.stored(), seed_limits(prefect)
            if stored is None or stored.limits != len(limits) or stored.asked != args.events:
                seed.generate(limits, args.events, WINDOW.total_seconds())
                stored = seed.stored()
            else:
                print(f"  kept staging: {stored.total:,} events ({stored.events[0]:,} baseline)")
            measure(args, prefect, seed)
    finally:
        if args.drop:
            drop_prefect_database(args.prefect_postgres, PREFECT_DATABASE)
            (HOME / "scale.json").unlink(missing_ok=True)
            print(f"dropped {PREFECT_DATABASE}")


def measure(args: argparse.Namespace, prefect: Any, seed: Any) -> None:
    database_url, drop = database(args, SQLITE_DB)
    try:
        setup_django(database_url, migrate=True)
        from django.db import connection

        from reslock_web.prefect_io.api import PrefectAPI
        from reslock_web.sync.events import EVENT_PREFIXES, LIFECYCLE_EVENTS

        print(f"reslock database: {connection.vendor}")
        connection.close()
        results: dict[str, dict[str, Any]] = {}
        events: dict[str, int] = {}
        paging: list[float] = []
        for tier, label in ((0, "baseline"), (1, "full")):
            copied, seconds = load_tier(prefect, seed, tier)
            since = datetime.now(UTC) - timedelta(days=7)
            week = {
                name: n
                for prefix in EVENT_PREFIXES
                for name, n in prefect.event_counts(since, prefix).items()
            }
            events[label] = sum(n for name, n in week.items() if name not in LIFECYCLE_EVENTS)
            print(
                f"\nloaded tier {tier}: {copied:,} events in {seconds:.0f} s; lock events in the "
                f"7-day window: {events[label]:,}; load average {os.getloadavg()}",
                flush=True,
            )
            page_costs(prefect.api_url)
            with PrefectAPI(prefect.api_url) as api:
                for _ in range(3):
                    begun = time.perf_counter()
                    api.list_limits()
                    paging.append(time.perf_counter() - begun)
            if tier == 0 and args.before:
                before = run_child(prefect.api_url, database_url, as_before=True)
                print_round(
                    "baseline, events read as before (following next_page only)",
                    events[label],
                    before,
                    statistics.median(paging),
                )
            results[label] = run_child(prefect.api_url, database_url)
            print_round(label, events[label], results[label], statistics.median(paging))
        floor = statistics.median(paging)
        print(f"\npaging floor: list_limits() of {args.limits:,} limits, median {floor:.2f} s")
        print_ratios(results["baseline"], results["full"], (events["baseline"], events["full"]))
        print(f"load average after the syncs: {os.getloadavg()}", flush=True)
        if not args.no_board:
            from django.core.management import call_command

            from bench.board_bench import measure as board

            call_command("collectstatic", interactive=False, verbosity=0)
            board(prefect.api_url, args.requests, connection.vendor)
    finally:
        drop()


if __name__ == "__main__":
    main()
