"""A worker killed with SIGKILL in the middle of an operation: the message comes back after the
visibility timeout and does nothing the second time (the claim), the sweep ends the operation
once, with the reason and what Prefect shows, and Prefect saw the change at most once. A worker
only stalled past its time (stopped with SIGSTOP, or stuck in a call to Prefect) changes
nothing in Prefect and rewrites nothing once the sweep has taken its operation over.

Real `celery worker` processes on the real Redis; Prefect is the real test server, reached by
the first worker through an HTTP hop that holds one kind of request (a slow step) so that the
kill lands while the operation is inside it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.urls import reverse

from reslock_web.models import Limit, Operation, OperationStatus
from reslock_web.operations.sweep import WORKER_STOPPED
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.run import sync_all
from tests.support.fault_proxy import FaultProxy
from tests.support.net import wait_for
from tests.support.operating import ask_release, form, holder_and_waiter, unique
from tests.support.paths import BASE_DIR
from tests.support.patient import patient_client

pytestmark = pytest.mark.django_db(transaction=True)


class WorkerProcess:
    """`celery -A reslock_web.celery worker` in a subprocess, on the test's database and Redis."""

    def __init__(self, log: Path, **env: str) -> None:
        from django.db import connection

        from reslock_web.celery import app

        self.log = log
        environ = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
            "CELERY_BROKER_URL": app.conf.broker_url,
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "reslock_web.celery",
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"faults-{uuid.uuid4().hex[:6]}@%h",
            ],
            cwd=BASE_DIR,
            env=environ,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        wait_for(lambda: " ready." in self.output(), 60, what=f"the worker to start: {self.log}")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.mark.parametrize(
    ("held", "outcome", "patches", "limit_after", "words"),
    [
        # Killed after Prefect applied the change, before the answer came back.
        ("PATCH", OperationStatus.SUCCEEDED, 1, 3, "That is what was asked for"),
        # Killed while re-reading Prefect, before changing anything.
        ("GET", OperationStatus.FAILED, 0, 1, "ask again if it is still needed"),
    ],
)
def test_a_worker_killed_mid_operation_ends_it_once_and_prefect_changed_at_most_once(
    prefect_server, operator_client, tmp_path, held, outcome, patches, limit_after, words
):
    from reslock_web.celery import app

    app.control.purge()
    name = unique("resource:killed")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    with PrefectAPI(prefect_server.api_url) as api:
        assert sync_all(api).ok
    proxy = FaultProxy(prefect_server.api_url)
    proxy.slow(600, methods={held})
    workers: list[WorkerProcess] = []
    try:
        first = WorkerProcess(
            tmp_path / "first.log", PREFECT_API_URL=proxy.url, RESLOCK_PREFECT_TIMEOUT="300"
        )
        workers.append(first)
        first.wait_ready()
        url = reverse("operate", args=["set-limit", name])
        response = operator_client.post(url, {**form(operator_client, url), "value": "3"})
        assert response.status_code == 302
        operation = Operation.objects.get(limit_name=name)
        wait_for(lambda: proxy.forwarded[held] >= 1, 60, what=f"the worker's {held} to Prefect")
        sent_at = time.monotonic()
        first.kill()
        operation.refresh_from_db()
        assert operation.status == OperationStatus.RUNNING and operation.attempts == 1

        # The message was never acknowledged: once its visibility timeout has passed, the next
        # worker gets it again, and the claim makes that delivery do nothing.
        time.sleep(max(0.0, 3 - (time.monotonic() - sent_at)))
        second = WorkerProcess(
            tmp_path / "second.log",
            PREFECT_API_URL=prefect_server.api_url,
            RESLOCK_VISIBILITY_TIMEOUT="2",
            RESLOCK_OPERATION_TIMEOUT="10",
        )
        workers.append(second)
        second.wait_ready()
        wait_for(
            lambda: f"operation {operation.pk} is not pending: nothing to do" in second.output(),
            60,
            what="the redelivered message",
        )
        operation.refresh_from_db()
        assert operation.status == OperationStatus.RUNNING and operation.attempts == 1

        # Beat's sweep (sent here every 2 s) ends it once its deadline has passed.
        def ended():
            app.send_task("reslock.sweep")
            op = Operation.objects.get(pk=operation.pk)
            return op.finished and op

        done = wait_for(ended, 90, interval=2, what="the sweep to end the operation")
        assert done.status == outcome, done.message
        assert WORKER_STOPPED in done.message and words in done.message
        assert f"Prefect now shows limit {limit_after}" in done.message
        assert done.after["limit"] == limit_after and done.attempts == 1

        # Later sweeps and another copy of the message change nothing.
        app.send_task("reslock.sweep")
        app.send_task("reslock.operate", args=[operation.pk])
        time.sleep(3)
        again = Operation.objects.get(pk=operation.pk)
        assert (again.status, again.finished_at, again.attempts) == (
            done.status,
            done.finished_at,
            1,
        )
    finally:
        for worker in workers:
            worker.stop()
        proxy.close()
    assert proxy.forwarded["PATCH"] == patches  # Prefect saw the change at most once
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["limit"] == limit_after


def test_a_stalled_worker_woken_after_the_sweep_took_over_its_fence_changes_nothing_more(
    prefect_server, flows, operator_client, tmp_path, settings, proxy
):
    """A worker that is alive but stuck (SIGSTOP) in the middle of a fenced release, past its
    time: the sweep resumes the fence and lifts it once the holder has stopped; the worker,
    woken afterwards, must not remove the placeholder a second time (that would free the next
    holder's slot) nor rewrite what the sweep recorded."""
    from reslock_web.celery import app
    from reslock_web.operations import sweep

    app.control.purge()
    settings.OPERATION_TIMEOUT_SECONDS = 30  # its job watches 9 s; the sweep takes over at 45 s
    name = unique("db-stalled")
    holder, waiter, limit = holder_and_waiter(flows, prefect_server, name)
    worker = WorkerProcess(
        tmp_path / "stalled.log", PREFECT_API_URL=proxy.url, RESLOCK_OPERATION_TIMEOUT="30"
    )
    stopped = False
    try:
        worker.wait_ready()
        operation = ask_release(operator_client, limit)

        def watching() -> bool:  # a look at the holder's events after the revoke
            revoked = proxy.received_at("/decrement-with-lease")
            return bool(revoked) and any(t > revoked[0] for t in proxy.received_at("/events/"))

        wait_for(watching, 90, interval=0.05, what="the worker to watch the revoked holder")
        os.kill(worker.process.pid, signal.SIGSTOP)
        stopped = True
        stalled = Operation.objects.get(pk=operation.pk)
        assert stalled.status == OperationStatus.RUNNING, stalled.message
        assert stalled.params["fence"]["stage"] == "revoking"
        holder.kill()  # the holder stops for good while the worker is stuck

        def swept(status: str):
            sweep.sweep()
            op = Operation.objects.get(pk=operation.pk)
            return op.status == status and op

        resumed = wait_for(
            lambda: swept(OperationStatus.FENCING), 90, interval=2, what="the sweep to resume it"
        )
        assert WORKER_STOPPED in resumed.message
        done = wait_for(
            lambda: swept(OperationStatus.SUCCEEDED), 60, interval=2, what="the fence to lift"
        )
        assert "has ended" in done.message and "open again" in done.message, done.message
        waiter.wait_event("acquired", timeout=60)

        os.kill(worker.process.pid, signal.SIGCONT)
        stopped = False
        wait_for(
            lambda: "reslock.operate" in worker.output() and " succeeded in " in worker.output(),
            60,
            what=f"the woken worker's job to end: {worker.log}",
        )
        # Where it was stopped decides how it notices: a step it would take (ClaimLost), or the
        # outcome it would record (dropped); either way it writes nothing, as checked below.
        output = worker.output()
        assert "changes and records nothing more" in output or re.search(
            r"operation \d+ was ended meanwhile; its late outcome \w+ is dropped", output
        ), output[-2000:]
        after = Operation.objects.get(pk=operation.pk)
        assert (after.status, after.message, after.finished_at) == (
            done.status,
            done.message,
            done.finished_at,
        )
        assert after.params["fence"]["stage"] == "removed"
        # The placeholder was removed once: the next holder's slot is still counted.
        by_name = [p for _, _, p in proxy.received if p.endswith("/concurrency_limits/decrement")]
        assert len(by_name) == 1, by_name
        with patient_client(prefect_server.api_url) as http:
            assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 1
    finally:
        if stopped:
            os.kill(worker.process.pid, signal.SIGCONT)
        worker.stop()
    waiter.release()
    assert waiter.wait() == 0


def test_a_worker_stuck_in_a_prefect_call_past_the_sweep_sends_no_change_when_it_wakes(
    prefect_server, operator_client, tmp_path, settings, proxy
):
    """Its re-read of the limit answers only after the sweep has ended the operation as
    failed ("ask again"): the worker must not set the limit then, behind that record."""
    from reslock_web.celery import app
    from reslock_web.operations import sweep

    app.control.purge()
    settings.OPERATION_TIMEOUT_SECONDS = 10  # the sweep takes over 25 s after the claim
    name = unique("resource:stuck")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    with PrefectAPI(prefect_server.api_url) as api:
        assert sync_all(api).ok
    limit_id = Limit.objects.named(name).prefect_id
    proxy.route(f"/v2/concurrency_limits/{limit_id}", "hold", seconds=35, times=1)
    worker = WorkerProcess(
        tmp_path / "stuck.log",
        PREFECT_API_URL=proxy.url,
        RESLOCK_OPERATION_TIMEOUT="10",
        RESLOCK_PREFECT_TIMEOUT="120",
    )
    try:
        worker.wait_ready()
        url = reverse("operate", args=["set-limit", name])
        response = operator_client.post(url, {**form(operator_client, url), "value": "3"})
        assert response.status_code == 302
        operation = Operation.objects.get(limit_name=name)

        def ended():
            sweep.sweep()
            op = Operation.objects.get(pk=operation.pk)
            return op.finished and op

        done = wait_for(ended, 60, interval=2, what="the sweep to end the operation")
        assert done.status == OperationStatus.FAILED, done.message
        assert "ask again if it is still needed" in done.message
        wait_for(
            lambda: " succeeded in " in worker.output(),
            60,
            what=f"the stuck worker's job to end: {worker.log}",
        )
    finally:
        worker.stop()
    assert proxy.forwarded["PATCH"] == 0  # Prefect never saw the change the record denies
    assert "changes and records nothing more" in worker.output()
    after = Operation.objects.get(pk=operation.pk)
    assert (after.status, after.message, after.finished_at) == (
        done.status,
        done.message,
        done.finished_at,
    )
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["limit"] == 1
