"""The adversarial soak: hundreds of seeded scenarios against "never two holders".

Run by hand (not a test; tests/operations/test_safety_suite.py runs a fixed-seed slice in
`make test`):

    .venv/bin/python bench/safety_soak.py [--scenarios 500] [--first-seed 1]

It starts a Prefect 3.9 server, uses Redis on 127.0.0.1:6379 (database 13, or the one
RESLOCK_TEST_REDIS_DB names; or a redis-server of its own when nothing answers), runs a real
Celery worker in a subprocess whose every call to Prefect goes through a FaultProxy, runs the
event listener (`--no-listener` leaves it out), and sets up reslock on a fresh SQLite database under
var/bench/safety. Each scenario (tests/support/safety.py) starts real holders and waiters,
injects one fault (a holder killed with SIGKILL, Prefect's events failing to the worker, a
revoke whose answer is lost, the worker killed with SIGKILL mid-operation and restarted) and
takes one operator action through the board's pages. It prints, per scenario and in total:
operations applied and refused, double admissions (must be 0: from the bodies' own enter and
leave times) and false stale/zombie verdicts (must be 0), and exits 1 if either is not 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.fault_proxy import FaultProxy  # noqa: E402
from tests.support.flows import FlowRunner  # noqa: E402
from tests.support.prefect_server import PrefectServer  # noqa: E402
from tests.support.redis_server import ensure_redis_url  # noqa: E402

SOAK_DIR = ROOT / "var" / "bench" / "safety"


class Worker:
    """A Celery worker in a subprocess that can be killed with SIGKILL and started again."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = (SOAK_DIR / "worker.log").open("ab")
        self.process = subprocess.Popen(
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
            env=self.env,
            start_new_session=True,
            stdout=log,
            stderr=log,
        )

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()

    def stop(self, how: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, how)
            self.process.wait(timeout=60)


class ListenerProcess:
    """`manage.py reslock_listen` as `make run` starts it, straight to Prefect (the fault proxy
    carries no event stream, and its faults are aimed at the worker): its per-limit re-syncs
    run beside the operations and the complete syncs, as on a live board."""

    def __init__(self, env: dict[str, str], api_url: str) -> None:
        log = (SOAK_DIR / "listener.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "reslock_listen"],
            cwd=ROOT,
            env={**env, "PREFECT_API_URL": api_url},
            start_new_session=True,
            stdout=log,
            stderr=log,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)


def _interrupt(signum: int, frame: object) -> None:
    # The worker, listener and Prefect run in sessions of their own (a fault kills the worker
    # alone): a SIGTERM to this process must stop them too, as Ctrl-C does.
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", type=int, default=500)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument(
        "--auto-release",
        action="store_true",
        help="with the auto-release policy on (RESLOCK_AUTO_RELEASE=stale, 1 min grace), "
        "looking after every sync of the watch",
    )
    parser.add_argument(
        "--no-listener",
        action="store_true",
        help="complete syncs only, without the event listener's per-limit re-syncs",
    )
    args = parser.parse_args()

    shutil.rmtree(SOAK_DIR, ignore_errors=True)
    SOAK_DIR.mkdir(parents=True)
    # A database of its own: a worker on the same database would take its jobs.
    redis_url = (
        ensure_redis_url().rsplit("/", 1)[0] + "/" + os.environ.get("RESLOCK_TEST_REDIS_DB", "13")
    )
    server = PrefectServer.create()
    server.start()
    proxy = FaultProxy(server.api_url)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "reslock_web.settings",
        "SECRET_KEY": "reslock-bench-only",
        "RESLOCK_VAR_DIR": str(SOAK_DIR),
        "DATABASE_URL": f"sqlite:///{SOAK_DIR / 'soak.sqlite3'}",
        "REDIS_URL": redis_url,
        "PREFECT_API_URL": proxy.url,
        "RESLOCK_OPERATION_TIMEOUT": "40",  # fences go on in the sweep: the soft-limit path
        "RESLOCK_VISIBILITY_TIMEOUT": "10",  # a killed worker's job comes back soon
        "RESLOCK_PREFECT_TIMEOUT": "3",
        "RESLOCK_GRACE_SECONDS": "5",
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "testserver,127.0.0.1",
        "RESLOCK_AUTO_RELEASE": "stale" if args.auto_release else "",
        "RESLOCK_AUTO_RELEASE_GRACE_MINUTES": "1",
    }
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    worker = listener = None
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        call_command("collectstatic", interactive=False, verbosity=0)  # the pages' assets
        worker = Worker(env)
        if not args.no_listener:
            listener = ListenerProcess(env, server.api_url)
        print(f"listener: {'off' if listener is None else 'on'}", flush=True)
        print(f"auto-release policy: {'on' if args.auto_release else 'off'}", flush=True)
        return soak(server, proxy, worker, args.first_seed, args.scenarios)
    finally:
        if listener is not None:
            listener.stop()
        if worker is not None:
            worker.stop()
        proxy.close()
        server.stop()


def soak(server, proxy, worker: Worker, first: int, count: int) -> int:
    from django.contrib.auth.models import Group, User
    from django.test import Client

    from reslock_web.celery import app
    from reslock_web.operations import policy
    from reslock_web.prefect_io.api import PrefectAPI
    from reslock_web.sync.run import sync_all
    from tests.support.safety import Runner, generate

    app.control.purge()
    operator = User.objects.create_user("soak-operator", password="x")
    operator.groups.add(Group.objects.get(name="Lock operators"))
    client = Client()
    client.force_login(operator)

    def sync() -> None:
        with PrefectAPI(server.api_url) as api:
            sync_all(api)
        policy.run()  # nothing unless --auto-release

    flows = FlowRunner(server, SOAK_DIR / "flows")
    runner = Runner(
        server,
        flows,
        client,
        proxy,
        sync=sync,
        sweep=lambda: app.send_task("reslock.sweep"),
        restart_worker=worker.restart,
    )
    totals = {"scenarios": 0, "applied": 0, "refused": 0, "double": 0, "false": 0}
    started = time.monotonic()
    interrupted = False
    try:
        for seed in range(first, first + count):
            scenario = generate(seed)
            outcome = runner.run(scenario)
            totals["scenarios"] += 1
            totals["applied"] += outcome.applied
            totals["refused"] += len(outcome.refused) + sum(
                status == "skipped" for _, status, _ in outcome.operations
            )
            totals["double"] += len(outcome.double_admissions)
            totals["false"] += len(outcome.false_verdicts)
            print(
                f"{scenario}: {outcome.seconds:.0f} s, {outcome.applied} applied, "
                f"{len(outcome.refused)} refused on the page, "
                f"{[status for _, status, _ in outcome.operations]}"
                + "".join(f"\n    DOUBLE {text}" for text in outcome.double_admissions)
                + "".join(f"\n    FALSE {text}" for text in outcome.false_verdicts),
                flush=True,
            )
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C or SIGTERM: the scenario under way is not counted
    finally:
        flows.stop_all()
    minutes = (time.monotonic() - started) / 60
    print(
        ("\ninterrupted: " if interrupted else "\n")
        + f"scenarios run: {totals['scenarios']} in {minutes:.0f} min\n"
        f"operations applied: {totals['applied']}, refused or skipped: {totals['refused']}\n"
        f"double admissions: {totals['double']} (must be 0)\n"
        f"false stale/zombie verdicts: {totals['false']} (must be 0)"
    )
    return 1 if totals["double"] or totals["false"] else 0


if __name__ == "__main__":
    sys.exit(main())
