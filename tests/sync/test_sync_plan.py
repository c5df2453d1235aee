"""What beat's periodic sync does: everything, the limits whose verdict is due, or nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from reslock_web.models import Condition, Heartbeat, Holder, SyncRun
from reslock_web.sync import plan as sync_plan
from reslock_web.sync.run import sync_with_settings
from tests.support.board_data import make_limit
from tests.support.listener_process import ListenerProcess
from tests.support.net import wait_for
from tests.support.operating import unique

pytestmark = pytest.mark.django_db


def live_listener(lag: float = 0.2, connected: bool = True) -> None:
    Heartbeat.objects.beat("listener", connected=connected, lag_seconds=lag, last_event_at=None)


def full_sync(seconds_ago: float) -> None:
    at = timezone.now() - timedelta(seconds=seconds_ago)
    SyncRun.objects.create(scope="all", ok=True, started_at=at, finished_at=at)


def test_without_a_live_listener_every_tick_is_a_complete_sync(settings):
    settings.FULL_SYNC_SECONDS = 300
    full_sync(5)
    assert sync_plan.plan(timezone.now()).kind == sync_plan.FULL  # no listener at all
    live_listener(connected=False)
    assert sync_plan.plan(timezone.now()).kind == sync_plan.FULL
    live_listener(lag=45)  # connected, but the board is 45 s behind
    assert sync_plan.plan(timezone.now()).kind == sync_plan.FULL
    live_listener()
    Heartbeat.objects.filter(service="listener").update(
        last_seen=timezone.now() - timedelta(seconds=20)
    )  # three beats missed: it died without a word
    assert sync_plan.plan(timezone.now()).kind == sync_plan.FULL


def test_a_live_listener_leaves_only_the_safety_net(settings):
    settings.FULL_SYNC_SECONDS = 300
    live_listener()
    full_sync(60)
    assert sync_plan.plan(timezone.now()).kind == sync_plan.NOTHING
    SyncRun.objects.all().delete()
    full_sync(301)
    assert sync_plan.plan(timezone.now()).kind == sync_plan.FULL


def test_verdicts_that_wait_on_the_clock_are_re_synced_once_when_due(settings):
    settings.FULL_SYNC_SECONDS, settings.GRACE_SECONDS = 300, 20
    now = timezone.now()
    live_listener()
    full_sync(100)
    leaving = make_limit(unique("leaving"))
    Holder.objects.create(
        limit=leaving,
        key="a",
        source="event",
        condition=Condition.LEAVING,
        flow_run_id=uuid.uuid4(),
        slot_lost_at=now - timedelta(seconds=25),
    )
    not_yet = make_limit(unique("not-yet"))
    Holder.objects.create(
        limit=not_yet,
        key="b",
        source="event",
        condition=Condition.LEAVING,
        flow_run_id=uuid.uuid4(),
        slot_lost_at=now - timedelta(seconds=5),
    )
    missing = make_limit(unique("missing"))
    Holder.objects.create(
        limit=missing,
        key="c",
        source="event",
        condition=Condition.HOLDING,
        flow_run_id=uuid.uuid4(),
        run_missing_since=now - timedelta(seconds=30),
    )
    drifting = make_limit(unique("drifting"), drift_since=now - timedelta(seconds=21))
    make_limit(unique("drift-shown"), drift_since=now - timedelta(minutes=9), has_drift=True)
    judged_before = make_limit(unique("old"))
    Holder.objects.create(
        limit=judged_before, key="d", source="event", condition=Condition.LEAVING,
        flow_run_id=uuid.uuid4(), slot_lost_at=now - timedelta(seconds=200),
    )  # fmt: skip  # due before the last complete sync, which judged it

    todo = sync_plan.plan(now)
    assert todo.kind == sync_plan.SOME
    assert todo.names == sorted([leaving.name, missing.name, drifting.name])
    # Once re-synced after its moment, a limit is not due again.
    SyncRun.objects.create(scope=leaving.name, ok=True, started_at=now, finished_at=now)
    assert sync_plan.plan(now).names == sorted([missing.name, drifting.name])


@pytest.mark.django_db(transaction=True)
def test_the_periodic_sync_asks_prefect_nothing_while_the_listener_is_live(
    prefect_server, proxy, settings
):
    """The request count at rest, through a real listener; bench/prefect_load_bench.py
    measures it per minute on a large workspace."""
    settings.FULL_SYNC_SECONDS = 300
    assert sync_with_settings(periodic=True).ok  # the first one is complete
    listener = ListenerProcess(prefect_server)  # straight to Prefect, not through the proxy
    try:
        before = len(proxy.received)
        ran = [run for _ in range(5) if (run := sync_with_settings(periodic=True)) is not None]
        # This worker's Prefect keeps what earlier tests left, and a lost slot of theirs may
        # come due meanwhile: that limit alone is re-synced, once. Nothing else is asked.
        assert all(run.scope != "all" for run in ran), [run.scope for run in ran]
        names = [name for run in ran for name in run.scope.split(", ")]
        assert len(names) == len(set(names)), names
        if not ran:
            assert len(proxy.received) == before
    finally:
        assert listener.stop() == 0
    # Stopped: the board can no longer count on it, and the complete sync is back.
    wait_for(lambda: not Heartbeat.objects.listener_is_current(), 30, what="the listener to stop")
    run = sync_with_settings(periodic=True)
    assert run is not None and run.ok and run.scope == "all"
    assert len(proxy.received) > before
