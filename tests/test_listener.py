"""The live listener: changes in Prefect reach our tables within two seconds, without a sync."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection

from reslock_web.models import (
    AppliedEvent,
    Condition,
    Heartbeat,
    Holder,
    Limit,
    LockEvent,
    Status,
)
from tests.support.net import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
BASE_DIR = Path(__file__).resolve().parent.parent


class ListenerProcess:
    def __init__(self, server, **extra_env: str) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PREFECT_API_URL": server.api_url,
            "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
            **extra_env,
        }
        # A file, not a pipe: a listener that logs a lot must never block on a full pipe.
        self.log = tempfile.NamedTemporaryFile(prefix="reslock-listener-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "reslock_listen"],
            cwd=BASE_DIR, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(
            lambda: (
                (beat := Heartbeat.objects.filter(service="listener").first())
                and beat.pid == self.process.pid
                and beat.detail.get("connected")
            ),
            60,
            what="the listener to connect",
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)


def seconds_until(check, since: float, timeout: float = 20) -> float:
    wait_for(check, timeout, interval=0.05, what="the board to follow Prefect")
    return time.time() - since


def test_acquire_release_and_queue_reach_the_board_within_two_seconds(prefect_server, flows):
    name = f"db-live-{uuid.uuid4().hex[:8]}"
    listener = ListenerProcess(prefect_server)
    try:
        holder = flows.start("helper_holder", name=name, flow_run_name="live-holder")
        acquired = holder.wait_event("acquired")
        took = seconds_until(
            lambda: Holder.objects.filter(
                limit__name=name, condition=Condition.HOLDING, flow_run_name="live-holder"
            ).exists(),
            acquired["t"],
        )
        assert took <= 2.0, took
        waiter = flows.start("helper_holder", name=name, flow_run_name="live-waiter")
        want = waiter.wait_event("want")
        took = seconds_until(
            lambda: Limit.objects.filter(name=name, waiter_count=1).exists(), want["t"]
        )
        # The waiting event is sent once the helper has checked the limit and been refused a
        # slot (two requests after "want"), which takes longer on a busy machine.
        assert took <= 5.0, took
        holder.release()
        released = holder.wait_event("released")
        took = seconds_until(
            lambda: (
                not Holder.objects.filter(limit__name=name, flow_run_name="live-holder").exists()
            ),
            released["t"],
        )
        assert took <= 2.0, took
        waiter.wait_event("acquired", timeout=30)
        waiter.release()
        done = waiter.wait_event("released")
        took = seconds_until(
            lambda: Limit.objects.filter(name=name, status=Status.FREE).exists(), done["t"]
        )
        assert took <= 2.0, took
        beat = Heartbeat.objects.get(service="listener")
        assert (
            beat.detail["connected"]
            and beat.detail["last_event_at"]
            # How fast events arrive is what the timings above check; the lag is reported.
            and beat.detail["lag_seconds"] >= 0
        )
    finally:
        assert listener.stop() == 0


def test_a_killed_listener_catches_up_on_restart_without_duplicates(prefect_server, flows):
    name = f"db-restart-{uuid.uuid4().hex[:8]}"
    listener = ListenerProcess(prefect_server)
    listener.stop(signal.SIGKILL)
    holder = flows.start("helper_holder", name=name, flow_run_name="while-away")
    holder.wait_event("acquired")
    time.sleep(2)
    assert not Holder.objects.filter(limit__name=name).exists()  # nobody applied it yet
    applied = AppliedEvent.objects.count()
    listener = ListenerProcess(prefect_server)
    try:
        wait_for(
            lambda: (
                Holder.objects.filter(limit__name=name, flow_run_name="while-away").count() == 1
            ),
            60,  # a start (Django, Prefect's client) plus the catch-up read, on a loaded machine
            what="the missed acquire to be applied after the restart",
        )
        assert AppliedEvent.objects.count() > applied
        second = ListenerProcess.__new__(ListenerProcess)  # a second listener at the same time
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PREFECT_API_URL": prefect_server.api_url,
               "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}"}  # fmt: skip
        second.process = subprocess.Popen(
            [sys.executable, "manage.py", "reslock_listen"], cwd=BASE_DIR, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(
            lambda: Heartbeat.objects.filter(service="listener", pid=second.process.pid).exists(),
            60,
            what="the second listener to start",
        )
        holder.release()
        holder.wait_event("released")
        wait_for(
            lambda: not Holder.objects.filter(limit__name=name).exists(), 20, what="the release"
        )
        assert second.stop() == 0
    finally:
        assert listener.stop() == 0
    ids = list(AppliedEvent.objects.values_list("event_id", flat=True))
    assert len(ids) == len(set(ids))


def test_a_release_without_follows_ends_its_hold_on_the_live_board(prefect_server, flows, tmp_path):
    """Prefect's release of a hold longer than five minutes names no acquire (`follows`): the
    listener pairs it with its acquire by limit and run, and the run going on is no holder."""
    name = f"db-long-{uuid.uuid4().hex[:8]}"
    listener = ListenerProcess(prefect_server, RESLOCK_GRACE_SECONDS="1")
    try:
        linger = tmp_path / "linger"
        holder = flows.start("gcl_holder", name=name, follows_window=0, linger_file=str(linger))
        holder.wait_event("acquired")
        wait_for(
            lambda: Holder.objects.filter(limit__name=name, condition=Condition.HOLDING).exists(),
            20,
            what="the holder on the board",
        )
        holder.release()
        holder.wait_event("lingering")
        wait_for(
            lambda: LockEvent.objects.filter(
                event="prefect.concurrency-limit.acquired",
                limit_name=name,
                closed_reason="released",
            ).exists(),
            20,
            what="the acquire to be closed by its release",
        )
        wait_for(
            lambda: Limit.objects.filter(name=name, status=Status.FREE, active_slots=0).exists(),
            20,
            what="the board to show the limit free",
        )
        assert not Holder.objects.filter(limit__name=name).exists()
        release = LockEvent.objects.get(event="prefect.concurrency-limit.released", limit_name=name)
        assert release.follows is not None  # the acquire it was paired with
        linger.touch()
        assert holder.wait() == 0
    finally:
        assert listener.stop() == 0
