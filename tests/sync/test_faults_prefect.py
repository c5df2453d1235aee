"""Prefect down, failing or slow during a sync: the board keeps its last good state, says since
when syncs fail, periodic syncs back off, and everything recovers by itself. Prefect is the
real test server behind a real HTTP hop (tests/support/fault_proxy.py) switched to misbehave."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from reslock_web.models import Limit, SyncRun
from reslock_web.sync.health import BACKOFF_AFTER, backoff_wait, freshness, sync_backoff
from reslock_web.sync.run import sync_with_settings
from tests.support.net import wait_for
from tests.support.operating import unique
from tests.support.prefect_limits import create_limits
from tests.support.readouts import banner

pytestmark = pytest.mark.django_db(transaction=True)


def board_state() -> list[dict]:
    """Everything a failed sync must leave alone."""
    return list(
        Limit.objects.order_by("pk").values(
            "pk",
            "name",
            "limit",
            "active",
            "active_slots",
            "gone_at",
            "status",
            "holder_count",
            "waiter_count",
            "changed_at",
        )
    )


def good_sync() -> SyncRun:
    run = sync_with_settings()
    assert run is not None and run.ok, run and run.error
    return run


def test_prefect_answering_500_keeps_the_last_good_state_and_the_banner_says_since_when(
    prefect_server, proxy, viewer_client
):
    name = unique("resource:five-hundred")
    create_limits(prefect_server, [name])
    good_sync()
    before = board_state()
    assert any(row["name"] == name for row in before)
    proxy.fail(500)
    first = sync_with_settings()
    second = sync_with_settings()
    assert first.ok is False and "Prefect answered 500" in first.error
    assert second.ok is False and proxy.forwarded["POST"] + proxy.forwarded["GET"] > 0
    assert board_state() == before  # nothing changed, nothing marked gone
    text = banner(viewer_client)
    # Since the first failure, not the latest one.
    assert f"Sync failing since {first.started_at:%Y-%m-%d %H:%M:%S} UTC" in text
    assert "Prefect answered 500" in text and "The board shows the state of" in text
    proxy.ok()
    good_sync()
    text = banner(viewer_client)
    assert "Sync failing" not in text and "Synced" in text


def test_prefect_down_keeps_the_last_good_state_and_the_next_sync_catches_up(
    prefect_server, proxy, viewer_client
):
    kept = unique("resource:kept")
    create_limits(prefect_server, [kept])
    good_sync()
    before = board_state()
    proxy.down()  # the port refuses connections
    failed = sync_with_settings()
    assert failed.ok is False and "cannot reach Prefect" in failed.error
    assert board_state() == before
    assert "Sync failing since" in banner(viewer_client)
    # Created while reslock could not see Prefect: the first sync after it is back shows it.
    added = unique("resource:added")
    create_limits(prefect_server, [added])
    proxy.up()
    good_sync()
    assert Limit.objects.named(added) is not None
    assert Limit.objects.named(kept).gone_at is None


def test_a_slow_prefect_is_given_up_on_after_the_configured_timeout(
    prefect_server, proxy, settings
):
    create_limits(prefect_server, [unique("resource:slow")])
    good_sync()
    before = board_state()
    settings.PREFECT_TIMEOUT_SECONDS = 1
    proxy.slow(60)  # Prefect answers after a minute
    started = time.monotonic()
    failed = sync_with_settings()
    took = time.monotonic() - started
    assert failed.ok is False and "did not answer" in failed.error and "in time" in failed.error
    # Requests run in parallel, each abandoned after 1 s: far from the minute Prefect takes.
    assert 1 <= took < 10, took
    assert board_state() == before
    proxy.ok()
    good_sync()


def test_periodic_syncs_back_off_while_prefect_fails_and_recover_by_themselves(
    prefect_server, proxy, settings, viewer_client
):
    settings.SYNC_SECONDS = 2
    settings.SYNC_BACKOFF_MAX_SECONDS = 4
    create_limits(prefect_server, [unique("resource:backoff")])
    good_sync()
    proxy.fail(502)
    for _ in range(BACKOFF_AFTER):  # beat's copies run as usual at first
        run = sync_with_settings(periodic=True)
        assert run is not None and run.ok is False
    backoff = sync_backoff()
    assert backoff.failures == BACKOFF_AFTER and backoff.wait == timedelta(seconds=4)
    assert freshness().retry_at == backoff.retry_at  # for the banner
    assert f"the next try is at {backoff.retry_at:%H:%M:%S} UTC" in banner(viewer_client)
    runs = SyncRun.objects.count()
    asked = proxy.forwarded.total()
    assert sync_with_settings(periodic=True) is None  # skipped: Prefect is left alone
    assert SyncRun.objects.count() == runs
    # One asked for by hand always runs.
    by_hand = sync_with_settings()
    assert by_hand is not None and by_hand.ok is False and SyncRun.objects.count() == runs + 1
    proxy.ok()
    assert sync_with_settings(periodic=True) is None  # still inside the back-off
    assert proxy.forwarded.total() == asked  # the skipped ones sent nothing
    # Beat keeps ticking; the first tick after the back-off syncs, and it is good again.
    recovered = wait_for(
        lambda: sync_with_settings(periodic=True), timeout=15, interval=0.5, what="a periodic sync"
    )
    assert recovered.ok, recovered.error
    assert sync_backoff().failures == 0 and sync_backoff().retry_at is None
    assert sync_with_settings(periodic=True).ok  # normal cadence again
    assert "Sync failing" not in banner(viewer_client)


def test_the_back_off_doubles_from_one_period_up_to_its_cap():
    waits = [backoff_wait(n, period=10, cap=300).total_seconds() for n in range(0, 12)]
    assert waits[:BACKOFF_AFTER] == [0] * BACKOFF_AFTER
    assert waits[BACKOFF_AFTER : BACKOFF_AFTER + 4] == [20, 40, 80, 160]
    assert max(waits) == 300 and waits[-1] == 300
    assert backoff_wait(10_000, period=10, cap=300) == timedelta(seconds=300)


def test_beat_sends_periodic_syncs_and_the_sweep():
    from reslock_web.celery import app

    schedule = app.conf.beat_schedule
    assert schedule["reslock-sync"]["kwargs"] == {"periodic": True}
    sweep = schedule["reslock-sweep"]
    assert sweep["task"] == "reslock.sweep" and sweep["schedule"] == 30.0
    assert sweep["options"]["expires"] < 30
