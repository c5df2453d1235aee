"""How long a sync takes against a real Prefect 3.9 holding 5,000 limits, next to paging them.

Run by hand (not a test):

    .venv/bin/python bench/sync_bench.py                  # SQLite under var/bench
    .venv/bin/python bench/sync_bench.py --postgres postgresql://postgres@127.0.0.1:5432
    .venv/bin/python bench/sync_bench.py --reps 3 --profile

It starts its own Prefect server whose home (var/bench/prefect) is kept between runs: the first
run creates 3,000 global, 1,900 tag and 100 deployment limits, ~500 holders and ~60 waiters
(a few minutes); later runs reuse them and only re-take the in-memory leases. Then, against a
fresh reslock database, it times (median and min of --reps):

  paging       PrefectAPI(url).list_limits(), the floor any sync pays
  full sync    sync_all() into empty tables (the first sync reads 7 days of events)
  resync       sync_all() again at once, nothing changed in Prefect
  resync+tags  the same with every tag limit due for its 60 s holder re-check

and checks full <= 2x paging and resync <= 1.2x paging. Peak memory of a full sync is taken in
a child process that imports nothing but Django and reslock. With --profile (automatic when a
target is missed), one full sync and one resync run under cProfile (saved under var/bench),
followed by timings of cheaper Prefect reads the sync could make instead.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH_DIR = ROOT / "var" / "bench"
SQLITE_DB = BENCH_DIR / "bench.sqlite3"
TARGET_FULL = 2.0
TARGET_RESYNC = 1.2
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
KINDS = ("paging", "full sync", "resync", "resync+tags")


# --- Django ----------------------------------------------------------------------------------
def setup_django(database_url: str, migrate: bool) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "reslock_web.settings"
    os.environ.setdefault("SECRET_KEY", "reslock-bench-only")
    os.environ["RESLOCK_VAR_DIR"] = str(BENCH_DIR)
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)


def flush() -> None:
    """Empty every table the sync writes, so that the next sync is a first one."""
    from django.db import connection, transaction

    from reslock_web.models import Holder, Limit, LockEvent, SyncRun, SyncState, Waiter

    with transaction.atomic(), connection.cursor() as cursor:
        for model in (Waiter, Holder, Limit, LockEvent, SyncState, SyncRun):
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")


def make_tags_due() -> None:
    """Every tag limit looks checked over a minute ago: the next sync re-reads its holders."""
    from django.utils import timezone

    from reslock_web.models import Limit

    past = timezone.now() - timedelta(seconds=61)
    Limit.objects.exclude(holders_checked_at=None).update(holders_checked_at=past)


# --- instrumentation -------------------------------------------------------------------------
def endpoint(method: str, path: str) -> str:
    path = path.lstrip("/").split("?", 1)[0]
    path = re.sub(r"^concurrency_limits/tag/.*", "concurrency_limits/tag/{tag}", path)
    return f"{method} /api/{UUID_RE.sub('{id}', path)}"


class Meter:
    """Wall time per sync phase and per Prefect endpoint, by wrapping functions in memory."""

    # Each phase is wrapped where its caller looks it up: in the module that imported it by
    # name (run's `gather`, gather's `find_claims`, store's `judge_limit`), else where it lives.
    PHASES = (
        ("reslock_web.sync.run", "gather"),
        ("reslock_web.prefect_io.api", "PrefectAPI.list_limits"),
        ("reslock_web.sync.gather", "_tag_holders"),
        ("reslock_web.sync.gather", "find_claims"),
        ("reslock_web.sync.prefect_runs", "resolve_runs"),
        ("reslock_web.sync.store", "write"),
        ("reslock_web.sync.store", "_store_events"),
        ("reslock_web.sync.store", "judge_limit"),
        ("reslock_web.sync.store", "_write_people"),
        ("reslock_web.sync.store", "_mark_gone"),
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.http: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.sql: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.phases: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.http.clear()
        self.sql.clear()
        self.phases.clear()

    def sql_wrapper(self, execute: Callable, sql: str, params: Any, many: bool, context: Any):
        """A Django execute wrapper: time spent in the database driver, per statement kind."""
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - started
            verb = sql.lstrip().split(None, 1)[0].upper()
            table = re.search(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', sql, re.IGNORECASE)
            entry = self.sql[f"{verb} {table.group(1) if table else ''}"]
            entry[0] += 1
            entry[1] += elapsed

    def install(self) -> None:
        import importlib

        from reslock_web.prefect_io.api import PrefectAPI

        for module_name, attr in self.PHASES:
            owner: Any = importlib.import_module(module_name)
            name = attr
            if "." in attr:
                owner, name = getattr(owner, attr.split(".")[0]), attr.split(".")[1]
            if not hasattr(owner, name):  # a phase the code no longer has
                continue
            setattr(owner, name, self._timed(attr.split(".")[-1], getattr(owner, name)))

        original = PrefectAPI.request
        meter = self

        def request(api: Any, method: str, path: str, json: Any = None) -> Any:
            started = time.perf_counter()
            try:
                return original(api, method, path, json)
            finally:
                elapsed = time.perf_counter() - started
                with meter.lock:
                    entry = meter.http[endpoint(method, path)]
                    entry[0] += 1
                    entry[1] += elapsed

        PrefectAPI.request = request

    def _timed(self, label: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.phases[label] += time.perf_counter() - started

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def snapshot(self) -> dict[str, Any]:
        return {
            "phases": dict(self.phases),
            "http": {key: tuple(value) for key, value in self.http.items()},
            "sql": {key: tuple(value) for key, value in self.sql.items()},
        }


# --- measurements ----------------------------------------------------------------------------
def measure_once(api_url: str, kind: str, meter: Meter) -> tuple[float, dict[str, Any], Any]:
    from django.db import connection

    from reslock_web.prefect_io.api import PrefectAPI
    from reslock_web.sync.run import sync_all

    if kind == "full sync":
        flush()
    elif kind == "resync+tags":
        make_tags_due()
    meter.reset()
    started = time.perf_counter()
    with connection.execute_wrapper(meter.sql_wrapper), PrefectAPI(api_url) as api:
        result = api.list_limits() if kind == "paging" else sync_all(api)
    elapsed = time.perf_counter() - started
    if kind != "paging" and (result is None or not result.ok):
        raise SystemExit(f"{kind} failed: {getattr(result, 'error', 'lock taken')}")
    return elapsed, meter.snapshot(), result


def run_reps(api_url: str, reps: int, warmup: int, meter: Meter) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for rep in range(-warmup, reps):
        line = []
        for kind in KINDS:
            elapsed, detail, result = measure_once(api_url, kind, meter)
            if rep >= 0:
                results[kind].append({"seconds": elapsed, **detail, "run": result})
            line.append(f"{kind} {elapsed:.2f} s")
        print(f"  {'warm-up' if rep < 0 else f'rep {rep + 1}'}: " + ", ".join(line), flush=True)
    return results


def _vm() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, in kB."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) for line in lines if line.startswith("Vm")}


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
        return True
    except OSError:
        return False


def memory_child(api_url: str, mode: str) -> dict[str, Any]:
    """Run in a fresh process that loads only Django and reslock (no Prefect package).

    mode "paging" / "full sync": peak resident size (VmHWM, reset before the step) over the RSS
    before it; Python keeps freed memory, so each needs its own process. Mode "traced": the
    tracemalloc peak (Python allocations only) of a full sync and then of a resync."""
    setup_django(os.environ["DATABASE_URL"], migrate=False)
    from reslock_web.prefect_io.api import PrefectAPI
    from reslock_web.sync.run import sync_all

    def step(kind: str) -> None:
        if kind == "full sync":
            flush()
        with PrefectAPI(api_url) as api:
            if kind == "paging":
                api.list_limits()
            else:
                sync_all(api)

    flush()  # also opens the database connection before the baseline
    if mode == "traced":
        out: dict[str, Any] = {}
        for kind in ("paging", "full sync", "resync"):
            tracemalloc.start()
            step(kind)
            out[kind] = tracemalloc.get_traced_memory()[1] // 1024
            tracemalloc.stop()
        return out
    before = _vm()["VmRSS"]
    reset = _reset_peak()
    step(mode)
    return {"before": before, "peak": _vm()["VmHWM"] if reset else None}


def measure_memory(api_url: str, database_url: str) -> None:
    def child(mode: str) -> dict[str, Any] | None:
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", api_url, mode],
            env={**os.environ, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"memory probe {mode!r} failed:\n{done.stderr[-2000:]}")
            return None
        return json.loads(done.stdout.strip().splitlines()[-1])

    print("\n== Memory (fresh child processes with only Django + reslock loaded) ==")
    traced = child("traced") or {}
    print(f"{'':11}{'tracemalloc peak':>17}{'RSS before':>12}{'peak RSS':>10}{'growth':>9}")
    for kind in ("paging", "full sync", "resync"):
        rss = child(kind) if kind != "resync" else None
        cells = f"{traced.get(kind, 0) / 1024:14.1f} MB"
        if rss and rss["peak"]:
            cells += (
                f"{rss['before'] / 1024:9.1f} MB{rss['peak'] / 1024:7.1f} MB"
                f"{(rss['peak'] - rss['before']) / 1024:6.1f} MB"
            )
        print(f"{kind:11}{cells}")
    print(
        "(peak RSS = VmHWM, reset just before the step. getrusage's ru_maxrss is not shown: "
        "a child inherits its parent's value across fork/exec.)"
    )


def profile(api_url: str, path: Path) -> str:
    """cProfile of one full sync and one resync; returns the printed top costs."""
    from reslock_web.prefect_io.api import PrefectAPI
    from reslock_web.sync.run import sync_all

    out = io.StringIO()
    for kind in ("full sync", "resync"):
        if kind == "full sync":
            flush()
        profiler = cProfile.Profile()
        with PrefectAPI(api_url) as api:
            profiler.runcall(sync_all, api)
        profiler.dump_stats(path.with_name(f"{path.stem}-{kind.replace(' ', '-')}.prof"))
        stats = pstats.Stats(profiler, stream=out)
        print(f"\n--- cProfile, {kind}: top 25 by cumulative time ---", file=out)
        stats.sort_stats("cumulative").print_stats(25)
        print(f"--- cProfile, {kind}: top 15 by own time ---", file=out)
        stats.sort_stats("tottime").print_stats(15)
    return out.getvalue()


def what_if(api_url: str) -> str:
    """Cheaper Prefect reads the sync could make instead, timed against the same server.

    Only Prefect is called here; reslock's code is not changed or patched."""
    import httpx

    from reslock_web.sync.events import EVENT_PREFIXES

    out = io.StringIO()
    http = httpx.Client(base_url=api_url + "/", timeout=60)

    def timed(fn: Callable[[], tuple[int, int]]) -> tuple[int, int, float]:
        started = time.perf_counter()
        requests, items = fn()
        return requests, items, time.perf_counter() - started

    def events(exclude: list[str] | None) -> tuple[int, int]:
        now = datetime.now(UTC)
        name_filter: dict[str, Any] = {"prefix": EVENT_PREFIXES}
        if exclude:
            name_filter["exclude_name"] = exclude
        body = {
            "filter": {
                "occurred": {
                    "since": (now - timedelta(days=7)).isoformat(),
                    "until": now.isoformat(),
                },
                "event": name_filter,
                "order": "ASC",
            },
            "limit": 50,
        }
        data = http.post("events/filter", json=body).json()
        requests, items = 1, len(data["events"])
        while data.get("next_page"):
            data = http.get(data["next_page"]).json()
            requests, items = requests + 1, items + len(data["events"])
        return requests, items

    def tag_limits() -> list[str]:
        names, offset = [], 0
        while True:
            page = http.post(
                "v2/concurrency_limits/filter", json={"limit": 200, "offset": offset}
            ).json()
            names += [
                d["name"][4:] for d in page if d["name"].startswith("tag:") and d["active_slots"]
            ]
            if len(page) < 200:
                return names
            offset += 200

    held_tags = tag_limits()

    def per_tag() -> tuple[int, int]:
        from concurrent.futures import ThreadPoolExecutor

        def one(tag: str) -> int:
            return len(http.get(f"concurrency_limits/tag/{tag}").json()["active_slots"])

        with ThreadPoolExecutor(6) as pool:
            return len(held_tags), sum(pool.map(one, held_tags))

    def running_tagged() -> tuple[int, int]:
        requests, items, offset = 0, 0, 0
        while True:
            body = {
                "task_runs": {
                    "tags": {"is_null_": False},
                    "state": {"type": {"any_": ["RUNNING"]}},
                },
                "limit": 200,
                "offset": offset,
            }
            page = http.post("task_runs/filter", json=body).json()
            requests, items, offset = requests + 1, items + len(page), offset + 200
            if len(page) < 200:
                return requests, items

    lifecycle = [
        f"prefect.concurrency-limit.{action}" for action in ("created", "updated", "deleted")
    ]
    rows = [
        ("7-day events backfill, as the sync reads it", timed(lambda: events(None))),
        ("  ...without limit lifecycle events", timed(lambda: events(lifecycle))),
        (f"tag holders: one GET per held tag ({len(held_tags)}), 6 threads", timed(per_tag)),
        ("  ...vs one paged filter of Running tagged task runs", timed(running_tagged)),
    ]
    http.close()
    print("\n--- What-if: cheaper Prefect reads (Prefect API only) ---", file=out)
    print(f"{'':62}{'requests':>9}{'items':>7}{'ms':>7}", file=out)
    for label, (requests, items, seconds) in rows:
        print(f"{label:62}{requests:9}{items:7}{seconds * 1000:7.0f}", file=out)
    return out.getvalue()


# --- report ----------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.0f}"


def print_report(results: dict[str, list[dict]]) -> dict[str, float]:
    medians = {
        kind: statistics.median(r["seconds"] for r in rows) for kind, rows in results.items()
    }
    mins = {kind: min(r["seconds"] for r in rows) for kind, rows in results.items()}
    base = medians["paging"]
    print("\n== Timings (ms) ==")
    print(f"{'':14}{'median':>9}{'min':>9}{'x paging':>10}")
    for kind in KINDS:
        print(f"{kind:14}{ms(medians[kind])} {ms(mins[kind])}{medians[kind] / base:9.2f}x")
    print("\n== Targets (medians) ==")
    for kind, target in (("full sync", TARGET_FULL), ("resync", TARGET_RESYNC)):
        ratio = medians[kind] / base
        verdict = "PASS" if ratio <= target else "MISS"
        print(f"{kind + ' / paging':20} {ratio:5.2f}x  target <= {target}x  {verdict}")
    print(
        f"{'resync+tags / paging':20} {medians['resync+tags'] / base:5.2f}x  "
        "(informative: each tag limit's holders are re-read once a minute)"
    )

    print("\n== Where the time goes (median over reps, ms; HTTP time is summed over threads) ==")
    phase_names = [attr.split(".")[-1] for _, attr in Meter.PHASES]
    print(f"{'phase':22}" + "".join(f"{k:>13}" for k in KINDS[1:]))
    for phase in phase_names:
        values = [
            statistics.median(r["phases"].get(phase, 0.0) for r in results[k]) for k in KINDS[1:]
        ]
        print(f"{phase:22}" + "".join(f"{ms(v):>13}" for v in values))
    endpoints = sorted({e for k in KINDS for r in results[k] for e in r["http"]})
    print(f"\n{'endpoint (requests / ms)':48}" + "".join(f"{k:>16}" for k in KINDS))
    for name in endpoints:
        cells = []
        for kind in KINDS:
            counts = [r["http"].get(name, (0, 0.0)) for r in results[kind]]
            n = statistics.median(c[0] for c in counts)
            t = statistics.median(c[1] for c in counts)
            cells.append(f"{n:6.0f} /{t * 1000:7.0f}" if n else f"{'-':>14}")
        print(f"{name:48}" + "".join(f"{c:>16}" for c in cells))
    statements = sorted({e for k in KINDS[1:] for r in results[k] for e in r["sql"]})
    print(f"\n{'SQL execute() (statements / ms)':40}" + "".join(f"{k:>16}" for k in KINDS[1:]))
    print(
        "(time inside cursor.execute only: a SELECT's rows are fetched and turned into objects later)"
    )
    for name in statements:
        cells = []
        for kind in KINDS[1:]:
            counts = [r["sql"].get(name, (0, 0.0)) for r in results[kind]]
            n = statistics.median(c[0] for c in counts)
            t = statistics.median(c[1] for c in counts)
            cells.append(f"{n:6.0f} /{t * 1000:7.0f}" if n else f"{'-':>14}")
        print(f"{name:40}" + "".join(f"{c:>16}" for c in cells))
    return {"full": medians["full sync"] / base, "resync": medians["resync"] / base}


def print_counts(run: Any) -> None:
    from django.db.models import Count

    from reslock_web.models import Holder, Limit, Waiter

    print("\n== What a full sync found (SyncRun of the last full sync) ==")
    print(
        f"limits {run.limits}, created {run.created}, holders {run.holders}, "
        f"waiters {run.waiters}, new events {run.events}, duration_ms {run.duration_ms}"
    )

    def grouped(model: Any, *fields: str) -> str:
        rows = model.objects.values(*fields).annotate(n=Count("id")).order_by(*fields)
        return ", ".join(f"{'/'.join(str(r[f]) for f in fields)} {r['n']}" for r in rows)

    print(f"limits by kind: {grouped(Limit, 'kind')}")
    print(f"limits by status: {grouped(Limit, 'status')}")
    print(f"holders by source/condition: {grouped(Holder, 'source', 'condition')}")
    print(f"waiters by source: {grouped(Waiter, 'source')}")
    deadlocked = Waiter.objects.exclude(deadlocked_by=None).count()
    print(f"deadlocked waiters: {deadlocked}")


# --- main ------------------------------------------------------------------------------------
def database(args: argparse.Namespace, sqlite: Path = SQLITE_DB) -> tuple[str, Callable[[], None]]:
    """A fresh, empty database URL and a function that removes it."""
    if not args.postgres:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sqlite}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{sqlite}", lambda: None
    import psycopg

    server = args.postgres.rstrip("/")
    name = f"reslock_bench_{os.getpid()}"
    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{server}/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="measured repetitions (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument(
        "--postgres", metavar="URL", help="server URL, e.g. postgresql://postgres@127.0.0.1:5432"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile even if targets pass")
    parser.add_argument("--workers", type=int, default=4, help="parallel requests during setup")
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("API_URL", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child)))
        return

    from bench._prefect_fixture import BenchPrefect

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with BenchPrefect(workers=args.workers) as prefect:
        print("Setting up the Prefect workspace (kept in var/bench/prefect)...", flush=True)
        timings = prefect.prepare()
        setup = time.monotonic() - started
        print(
            f"Setup {setup:.1f} s: "
            + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items())
        )
        week = prefect.event_counts(datetime.now(UTC) - timedelta(days=7))
        print(f"concurrency-limit events in the 7-day window: {week}")
        lifecycle = sum(n for name, n in week.items() if name.rsplit(".", 1)[-1] != "acquired")
        if lifecycle:
            print(
                f"  note: {lifecycle} of them are limit lifecycle events from the setup (created/"
                "updated); the first sync reads and stores them until they leave the window, "
                "7 days after the limits were created"
            )
        print(f"load average before measuring: {os.getloadavg()} on {os.cpu_count()} CPUs")

        database_url, drop = database(args)
        try:
            setup_django(database_url, migrate=True)
            from django.db import connection

            print(f"reslock database: {connection.vendor} {connection.settings_dict['NAME']}")
            meter = Meter()
            meter.install()
            print(f"Measuring ({args.warmup} warm-up round, {args.reps} reps)...", flush=True)
            results = run_reps(prefect.api_url, args.reps, args.warmup, meter)
            ratios = print_report(results)
            print(f"\nload average after measuring: {os.getloadavg()}")
            full_run = results["full sync"][-1]["run"]
            measure_once(prefect.api_url, "full sync", meter)  # leave the tables as a full sync
            print_counts(full_run)

            measure_memory(prefect.api_url, database_url)

            missed = ratios["full"] > TARGET_FULL or ratios["resync"] > TARGET_RESYNC
            if args.profile or missed:
                path = BENCH_DIR / ("sync-postgres" if args.postgres else "sync-sqlite")
                print(profile(prefect.api_url, path))
                print(what_if(prefect.api_url))
                print(f"(profiles saved as {path}-*.prof)")
        finally:
            drop()


if __name__ == "__main__":
    main()
