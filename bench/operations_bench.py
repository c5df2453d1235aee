"""Click → change visible in Prefect: how long an operation takes end to end.

Run by hand (not a test):

    .venv/bin/python bench/operations_bench.py [--rounds 40]

It starts a Prefect 3.9 server (fresh, from the migrated template), uses Redis on 127.0.0.1:6379
(database 14; or a redis-server of its own when nothing answers) and a real Celery worker in a
subprocess, and sets up reslock on a fresh SQLite database under var/bench/ops. Each round:

  direct   PATCH the limit straight to Prefect, then poll Prefect until it shows the value:
           the floor (one HTTP round trip plus the poll)
  click    an operator posts the confirmation form (the Django view records the operation,
           Redis carries it to the worker, the worker re-reads Prefect and PATCHes), polled
           the same way until Prefect shows the value
  board    the same click, until the operation is finished and the board's row shows the value
           (the worker syncs the limit after acting)

Rounds alternate the three so that machine noise hits them alike. Prints p50/p95/max and the
ratios to the direct floor.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.prefect_server import PrefectServer  # noqa: E402
from tests.support.redis_server import ensure_redis_url  # noqa: E402

OPS_DIR = ROOT / "var" / "bench" / "ops"
POLL = 0.01


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def wait(check, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the change never became visible")
        time.sleep(POLL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    shutil.rmtree(OPS_DIR, ignore_errors=True)
    OPS_DIR.mkdir(parents=True)
    redis_url = ensure_redis_url().rsplit("/", 1)[0] + "/14"
    server = PrefectServer.create()
    server.start()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "reslock_web.settings",
        "SECRET_KEY": "reslock-bench-only",
        "RESLOCK_VAR_DIR": str(OPS_DIR),
        "DATABASE_URL": f"sqlite:///{OPS_DIR / 'ops.sqlite3'}",
        "REDIS_URL": redis_url,
        "PREFECT_API_URL": server.api_url,
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "testserver,127.0.0.1",
    }
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    worker = None
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        call_command("collectstatic", interactive=False, verbosity=0)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "reslock_web.celery",
                "worker",
                "-P",
                "solo",
                "--loglevel",
                "WARNING",
                "--without-mingle",
                "--without-gossip",
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        run(server, args.rounds)
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        server.stop()


def run(server: PrefectServer, rounds: int) -> None:
    from django.contrib.auth.models import Group, User
    from django.test import Client

    from reslock_web.celery import app
    from reslock_web.models import Limit, Operation
    from reslock_web.prefect_io.api import PrefectAPI
    from reslock_web.sync.run import sync_all

    app.control.purge()
    operator = User.objects.create_user("bench-operator", password="x")
    operator.groups.add(Group.objects.get(name="Lock operators"))
    client = Client()
    client.force_login(operator)
    http = httpx.Client(base_url=server.api_url, timeout=10)
    names = [f"resource:ops-bench-{i:03}" for i in range(3)]
    for name in names:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    with PrefectAPI(server.api_url) as api:
        sync_all(api)

    def shown(name: str, value: int) -> bool:
        return http.get(f"/v2/concurrency_limits/{name}").json()["limit"] == value

    def click(name: str, value: int) -> int:
        url = f"/operate/set-limit/{name}"
        page = client.get(url).content.decode()
        fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page))
        response = client.post(url, {**fields, "value": str(value)})
        assert response.status_code == 302, response.content[:500]
        return int(response["Location"].rsplit("/", 1)[1])

    timings: dict[str, list[float]] = {"direct": [], "click": [], "board": []}
    # The worker warms up (imports, first connections) on a first, unmeasured operation.
    op = click(names[1], 2)
    wait(lambda: Operation.objects.get(pk=op).finished, 60)
    values = {name: Limit.objects.get(name=name).limit for name in names}
    values[names[1]] = 2
    for index in range(rounds):
        for kind, name in zip(("direct", "click", "board"), names, strict=True):
            value = 3 + index % 5
            if value == values[name]:
                value += 5  # always a real change
            values[name] = value
            started = time.perf_counter()
            if kind == "direct":
                http.patch(
                    f"/v2/concurrency_limits/{name}", json={"limit": value}
                ).raise_for_status()
                wait(lambda name=name, value=value: shown(name, value))
            elif kind == "click":
                click(name, value)
                wait(lambda name=name, value=value: shown(name, value))
            else:
                op = click(name, value)
                wait(
                    lambda op=op, name=name, value=value: (
                        Operation.objects.get(pk=op).finished
                        and Limit.objects.get(name=name).limit == value
                    )
                )
            timings[kind].append((time.perf_counter() - started) * 1000)
        # The "direct" limit changed behind reslock's back: a sync catches up, as beat would.
        with PrefectAPI(server.api_url) as api:
            sync_all(api)
    failed = Operation.objects.exclude(status="succeeded").count()
    print(f"\n{rounds} rounds; operations not succeeded: {failed}")
    print(f"{'':8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'p50 ratio':>10}")
    floor = statistics.median(timings["direct"])
    for kind, values_ms in timings.items():
        p50 = statistics.median(values_ms)
        print(
            f"{kind:8} {p50:8.1f} {percentile(values_ms, 0.95):8.1f} {max(values_ms):8.1f} {p50 / floor:9.1f}x"
        )
    print("\nclick  = operator's POST -> Celery job -> Prefect shows the new limit")
    print("board  = the same, until the operation is finished and the board row shows it")
    print("direct = PATCH to Prefect -> Prefect shows it (the floor)")


if __name__ == "__main__":
    main()
