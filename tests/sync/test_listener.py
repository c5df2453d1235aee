"""The live listener: changes in Prefect reach our tables without a sync (how fast is measured
by bench/freshness_bench.py, not here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from reslock.protocol import EVENT_ACQUIRED
from reslock_web.models import (
    AppliedEvent,
    Condition,
    Heartbeat,
    Holder,
    Limit,
    LockEvent,
    Status,
    SyncRun,
)
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.prefect_io.records import EventInfo
from reslock_web.sync.listener import CONFIRM_AFTER, FULL_RESYNC_OVER, Listener
from reslock_web.sync.lock import try_lock, unlock
from tests.support.listener_process import (
    ListenerProcess,
    assert_each_applied_once,
    change_a_quiet_limit,
)
from tests.support.net import wait_for
from tests.support.paths import BASE_DIR
from tests.support.patient import patient_client
from tests.support.prefect_events import lock_event_in_prefect
from tests.support.prefect_limits import create_limits

pytestmark = pytest.mark.django_db(transaction=True)


def arrives(check, what: str) -> None:
    # Generous: a loaded two-core machine runs Prefect, flows and the listener at once.
    wait_for(check, 60, interval=0.05, what=what)


def test_acquire_release_and_queue_reach_the_board_without_a_sync(prefect_server, flows):
    name = f"db-live-{uuid.uuid4().hex[:8]}"
    listener = ListenerProcess(prefect_server)
    try:
        holder = flows.start("helper_holder", name=name, flow_run_name="live-holder")
        holder.wait_event("acquired")
        arrives(
            lambda: Holder.objects.filter(
                limit__name=name, condition=Condition.HOLDING, flow_run_name="live-holder"
            ).exists(),
            "the holder",
        )
        waiter = flows.start("helper_holder", name=name, flow_run_name="live-waiter")
        waiter.wait_event("want")
        arrives(lambda: Limit.objects.filter(name=name, waiter_count=1).exists(), "the waiter")
        holder.release()
        holder.wait_event("released")
        arrives(
            lambda: (
                not Holder.objects.filter(limit__name=name, flow_run_name="live-holder").exists()
            ),
            "the release",
        )
        waiter.wait_event("acquired", timeout=30)
        waiter.release()
        waiter.wait_event("released")
        arrives(lambda: Limit.objects.filter(name=name, status=Status.FREE).exists(), "free")
        # Written every 5 s: the changes above can all be on the board before the next one.
        beat = wait_for(
            lambda: (b := Heartbeat.objects.get(service="listener")).detail["last_event_at"] and b,
            30,
            what="a heartbeat since the changes",
        )
        assert beat.detail["connected"]
        assert beat.detail["lag_seconds"] is not None and beat.detail["lag_seconds"] >= 0
    finally:
        assert listener.stop() == 0


def test_an_event_whose_resync_finds_the_sync_lock_busy_still_reaches_the_board(
    prefect_server, flows
):
    """The event is applied (recorded) at once; its re-sync waits for the lock and is tried
    again until it gets through, while the reported lag says how far behind the board is."""
    name = f"db-busy-{uuid.uuid4().hex[:8]}"
    listener = ListenerProcess(prefect_server)
    token = try_lock(timezone.now())  # this test process holds the lock: alive, so kept
    assert token is not None
    locked_at = time.time()
    try:
        holder = flows.start("helper_holder", name=name, flow_run_name="busy-holder")
        acquired = holder.wait_event("acquired")
        wait_for(
            lambda: (Heartbeat.objects.get(service="listener").detail.get("lag_seconds") or 0) >= 8,
            60,
            what="the listener to report that the board is behind",
        )
        assert not Holder.objects.filter(limit__name=name).exists()
        unlock(token)
        token = None
        arrives(
            lambda: Holder.objects.filter(limit__name=name, flow_run_name="busy-holder").exists(),
            "the holder, once the lock is free",
        )
        shown_at = time.time()
        # The delay reported is the board's own: from the acquire to its row, not the age of
        # the last event received. It is the oldest change the re-sync carried: other tests'
        # runs may have changed their limits while the lock was held, before this acquire, so
        # the bound runs from when the lock was taken.
        beat = wait_for(
            lambda: (
                (b := Heartbeat.objects.get(service="listener")).detail.get("lag_seconds")
                and b.detail["lag_seconds"] >= 8
                and b
            ),
            30,
            what="the lag of the change just applied",
        )
        assert (
            shown_at - acquired["t"] - 2 <= beat.detail["lag_seconds"] <= shown_at - locked_at + 6
        )
        holder.release()
        holder.wait_event("released")
    finally:
        if token:
            unlock(token)
        assert listener.stop() == 0


def test_a_catch_up_over_many_limits_resyncs_them_in_one_pass(prefect_server):
    prefix = f"many-{uuid.uuid4().hex[:6]}"
    names = create_limits(prefect_server, [f"{prefix}-{i}" for i in range(FULL_RESYNC_OVER + 1)])
    with PrefectAPI(prefect_server.api_url) as api:  # once Prefect shows them all by REST
        wait_for(
            lambda: (
                sum(
                    e.resource.get("prefect.resource.name", "").startswith(prefix)
                    for e in api.events(
                        timezone.now() - timedelta(minutes=5),
                        timezone.now(),
                        ["prefect.concurrency-limit.created"],
                    )
                )
                == len(names)
            ),
            60,
            what="Prefect to store the creation events",
        )
    started = timezone.now()
    listener = ListenerProcess(prefect_server)
    try:
        arrives(
            lambda: Limit.objects.filter(name__startswith=prefix).count() == len(names),
            "the new limits",
        )
    finally:
        assert listener.stop() == 0
    assert SyncRun.objects.filter(started_at__gte=started, scope="all").exists()
    assert not SyncRun.objects.filter(started_at__gte=started, scope__in=names).exists()


def test_events_published_while_the_listener_connects_are_not_lost(prefect_server):
    """Published after the catch-up read Prefect's REST API, stored after the stream began:
    neither brought them, until the listener read that window again once Prefect stored it."""
    prefix = f"gap-{uuid.uuid4().hex[:6]}"
    listener = ListenerProcess(prefect_server)
    listener.stop(signal.SIGKILL)
    names = create_limits(prefect_server, [f"{prefix}-{i}" for i in range(10)])
    listener = ListenerProcess(prefect_server)  # at once: Prefect has not stored them yet
    try:
        arrives(
            lambda: Limit.objects.filter(name__startswith=prefix).count() == len(names),
            "every limit created while the listener connected",
        )
    finally:
        assert listener.stop() == 0


def test_a_killed_listener_catches_up_on_restart_without_duplicates(prefect_server, flows):
    name = f"db-restart-{uuid.uuid4().hex[:8]}"
    listener = ListenerProcess(prefect_server)
    listener.stop(signal.SIGKILL)
    holder = flows.start("helper_holder", name=name, flow_run_name="while-away")
    acquired = holder.wait_event("acquired")
    with patient_client(prefect_server.api_url) as http:  # Prefect has it: a catch-up finds it
        lock_event_in_prefect(
            http, EVENT_ACQUIRED, acquired["limit_ids"][name], lease_id=acquired["lease_id"]
        )
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
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PREFECT_API_URL": prefect_server.api_url,
            "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
        }
        second.process = subprocess.Popen(
            [sys.executable, "manage.py", "reslock_listen"],
            cwd=BASE_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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
        # Two listeners on one stream: each event re-syncs its limit once, not once each.
        quiet = change_a_quiet_limit(prefect_server)
        assert_each_applied_once(quiet, [listener.process.pid, second.process.pid])
        assert second.stop() == 0
    finally:
        assert listener.stop() == 0


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


def test_the_heartbeat_reports_the_worst_delay_since_the_last_one_not_only_the_last():
    listener = Listener("http://127.0.0.1:9/api")
    listener._applied(39.0)  # a re-sync that waited for the sync lock
    listener._applied(0.3)  # a quick change right after it
    assert listener._take_lag() == 39.0
    # The next heartbeat reports what came since: the last change, nothing slower.
    assert listener._take_lag() == 0.3
    listener.pending["db-late"] = timezone.now() - timedelta(seconds=12)
    assert 12 <= listener._take_lag() < 20  # a change still waiting counts as far as it has
    listener.pending["db-late"] = None  # shown already (provisional.py): not behind on it
    assert listener._take_lag() == 0.3


def test_limits_the_board_shows_are_confirmed_in_batches_and_the_others_at_once():
    listener = Listener("http://127.0.0.1:9/api")
    with listener._state:
        listener._behind("db-shown", None)
    assert not listener._resync_due()  # the board shows it: its confirmation can wait
    listener.shown_at -= CONFIRM_AFTER
    assert listener._resync_due()
    listener.shown_at += CONFIRM_AFTER
    with listener._state:
        listener._behind("db-behind", timezone.now())
        listener._behind("db-behind", None)  # shown later: still behind since the first event
    assert listener.pending["db-behind"] is not None
    assert listener._resync_due()  # the board is behind on one: now


def test_events_prefect_sends_again_on_connecting_are_late_from_the_connection_on():
    """Prefect's stream replays the last minute on connecting: what came while nobody
    listened has kept the board behind since the listener connected, not since it occurred
    (a catch-up counts the same way); a change that occurs later counts from its own time."""
    listener = Listener("http://127.0.0.1:9/api")
    listener.connected_at = timezone.now()

    def event(seconds: float):
        occurred = listener.connected_at + timedelta(seconds=seconds)
        return EventInfo.parse(
            {"id": str(uuid.uuid4()), "event": EVENT_ACQUIRED, "occurred": occurred.isoformat()}
        )

    listener._handle(event(-50))
    listener._handle(event(+1))
    assert [since for _, since in listener.inbox] == [listener.connected_at, None]
