"""How many requests reslock sends to Prefect when nothing changes, and how fresh the board is.

Run by hand (not a test):

    .venv/bin/python bench/prefect_load_bench.py                # 5,000 limits, about 15 min
    .venv/bin/python bench/prefect_load_bench.py --minutes 10   # longer phases

It starts the kept benchmark Prefect (bench/_prefect_fixture.py: 3,000 global, 1,900 tag and
100 deployment limits, one in ten held), puts a counting proxy in front of it that also
carries the event stream (tests/support/cloud_standin.py, with no rate limit), and runs reslock's background
processes against the proxy as `make run` does: a Celery worker with beat (sync every 10 s,
heartbeat, sweep, prune) and the live listener. The web process sends Prefect nothing at rest,
so it is left out. Each phase counts the requests Prefect received:

  listener up    the defaults: a complete sync every RESLOCK_FULL_SYNC_SECONDS (300 s), only
                 the limits whose verdict is due in between; counted for at least 5.5 min, so
                 that a complete sync falls inside
  listener down  the listener stopped: every 10 s tick is a complete sync, as before the
                 listener carried the board: the baseline, measured in the same run

and then, with the listener up, the freshness of 20 takes and give-backs of one resource by a
real flow through reslock's helper (as bench/freshness_bench.py measures it): the delay from
the event to the board's refresh endpoint showing it.

Prints requests a minute per phase, by kind of request, and their ratio.
Target (listener up): <= 20 requests a minute at 5,000 limits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._board_watch import BoardWatcher, delays, event_times, summary, sync_once  # noqa: E402
from bench._prefect_fixture import BenchPrefect  # noqa: E402
from bench.freshness_bench import run_cycles  # noqa: E402
from tests.support.cloud_standin import CloudStandIn  # noqa: E402
from tests.support.redis_server import ensure_redis_url  # noqa: E402

WORK = ROOT / "var" / "bench" / "prefect-load"
TARGET_PER_MINUTE = 20
KINDS = [
    ("limits", "/v2/concurrency_limits/filter"),
    ("limit", "/v2/concurrency_limits/"),
    ("tag holders", "/concurrency_limits/tag/"),
    ("events", "/events/filter"),
    ("events page", "/events/filter/next"),
    ("flow runs", "/flow_runs/filter"),
    ("task runs", "/task_runs/filter"),
    ("deployments", "/deployments/"),
    ("flows", "/flows/"),
]


def kind_of(path: str) -> str:
    for name, part in sorted(KINDS, key=lambda kind: -len(kind[1])):
        if part in path:
            return name
    return path.split("?")[0]


KEY = "pnu_bench0123456789abcdefghijklmnopqrstuvw"


def setup(proxy_url: str) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "reslock_web.settings",
        "SECRET_KEY": "reslock-bench-only",
        "RESLOCK_VAR_DIR": str(WORK),
        "DATABASE_URL": f"sqlite:///{WORK / 'reslock.sqlite3'}",
        # Its own Redis database (RESLOCK_TEST_REDIS_DB, as the safety soak): a test run on the
        # same machine must not consume its worker's messages, nor it theirs.
        "REDIS_URL": ensure_redis_url().rsplit("/", 1)[0]
        + "/"
        + os.environ.get("RESLOCK_TEST_REDIS_DB", "11"),
        "PREFECT_API_URL": proxy_url,
        "PREFECT_API_KEY": KEY,
        "RESLOCK_SECURE_COOKIES": "false",
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return {**os.environ, **env}


def start(args: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=open(WORK / log, "ab"),
        stderr=subprocess.STDOUT,  # noqa: SIM115
    )


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def worker(env: dict[str, str], full_sync_seconds: int) -> subprocess.Popen:
    env = {**env, "RESLOCK_FULL_SYNC_SECONDS": str(full_sync_seconds)}
    return start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "reslock_web.celery",
            "worker",
            "--beat",
            "-P",
            "solo",
            "--loglevel",
            "WARNING",
            "--without-mingle",
            "--without-gossip",
            "--schedule",
            str(WORK / "beat-schedule"),
        ],
        env,
        "worker.log",
    )


def wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def first_full_sync() -> bool:
    from reslock_web.models import SyncRun

    return SyncRun.objects.filter(scope="all", ok=True).exists()


def listener_current() -> bool:
    from reslock_web.models import Heartbeat

    return Heartbeat.objects.listener_is_current()


def count(proxy: CloudStandIn, minutes: float, label: str) -> tuple[float, Counter]:
    start_at = time.time()
    time.sleep(minutes * 60)
    seen = ["/" + path for at, _, path, _ in list(proxy.requests) if at >= start_at]
    per_minute = len(seen) / minutes
    kinds = Counter(kind_of(path) for path in seen)
    detail = ", ".join(f"{n / minutes:.0f} {kind}" for kind, n in kinds.most_common(6))
    print(f"{label:>14}: {per_minute:7.1f} requests a minute ({detail or 'none'})", flush=True)
    return per_minute, kinds


def freshness(prefect: BenchPrefect, cycles: int) -> dict[str, float]:
    from django.utils import timezone

    name = f"load-fresh-{int(time.time())}"
    since = timezone.now()
    with BoardWatcher(name) as watcher:
        run_cycles(prefect.server, name, 1, 0.2, 0.5)
        sync_once(prefect.server.api_url)  # the row exists before the first cycle
        time.sleep(2)
        first = len(watcher.flips_of(name))
        run_cycles(prefect.server, name, cycles, hold=1.5, gap=1.5)
        time.sleep(3)
        flips = watcher.flips_of(name)[first:]
    events = event_times(prefect.server.api_url, [name], since).get(name, [])[2:]
    found, missed = delays(events, flips)
    return summary("freshness", found, missed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of a phase")
    parser.add_argument("--cycles", type=int, default=20, help="freshness cycles")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    with BenchPrefect() as prefect:
        prefect.prepare()
        proxy = CloudStandIn(prefect.api_url, KEY)
        env = setup(proxy.api_url)
        os.environ["PREFECT_API_URL"] = prefect.api_url  # the bench's own reads go direct
        os.environ.pop("PREFECT_API_KEY")
        print(
            f"{prefect.layout.total:,} limits; {os.cpu_count()} cores; {args.minutes:g} min a phase"
        )
        listener = beat = None
        try:
            listener = start([sys.executable, "manage.py", "reslock_listen"], env, "listener.log")
            beat = worker(env, full_sync_seconds=300)
            wait(first_full_sync, 900, "the first complete sync")
            wait(listener_current, 120, "the listener to connect")
            time.sleep(20)
            live, _ = count(proxy, max(args.minutes, 5.5), "listener up")
            fresh = freshness(prefect, args.cycles)
            stop(listener)
            listener = None
            wait(lambda: not listener_current(), 60, "the listener to be seen stopped")
            down, _ = count(proxy, args.minutes, "listener down")
        finally:
            stop(beat)
            stop(listener)
            proxy.close()
    print(f"    ratio: listener up / listener down {live / down:.3f}x")
    verdict = "PASS" if live <= TARGET_PER_MINUTE else "MISS"
    print(
        f"   target: listener up <= {TARGET_PER_MINUTE} a minute: {verdict}; "
        f"freshness p95 {fresh['p95'] * 1000:,.0f} ms"
    )


if __name__ == "__main__":
    main()
