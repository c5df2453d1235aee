"""The event tables stay bounded: what is past the retention goes, what still holds stays."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from reslock_web.models import AppliedEvent, LockEvent, SyncRun, SyncState
from reslock_web.prefect_io.records import EventInfo
from reslock_web.sync import retention
from reslock_web.sync.events import events_since, record_events

LIMIT = uuid.uuid4()


def helper_event(phase: str, days_ago: float, *, lease: uuid.UUID, run: uuid.UUID) -> EventInfo:
    """A `reslock.lock.<phase>` event as the flow helper sends it."""
    return EventInfo.parse(
        {
            "id": str(uuid.uuid4()),
            "event": f"reslock.lock.{phase}",
            "occurred": (timezone.now() - timedelta(days=days_ago)).isoformat(),
            "resource": {
                "prefect.resource.id": f"prefect.concurrency-limit.{LIMIT}",
                "prefect.resource.name": "db-42",
            },
            "related": [
                {
                    "prefect.resource.id": f"prefect.flow-run.{run}",
                    "prefect.resource.role": "flow-run",
                    "prefect.resource.name": "nightly",
                }
            ],
            "payload": {"lease_id": str(lease), "wait_id": str(uuid.uuid4()), "reason": "exit"},
        }
    )


def hold(days_ago: float, *, released_days_ago: float | None) -> uuid.UUID:
    """Records a helper hold (and its release, if any); returns the acquire's event id."""
    lease, run = uuid.uuid4(), uuid.uuid4()
    acquired = helper_event("acquired", days_ago, lease=lease, run=run)
    events = [acquired]
    if released_days_ago is not None:
        events.append(helper_event("released", released_days_ago, lease=lease, run=run))
    record_events(events)
    return acquired.id


@pytest.mark.django_db
def test_the_prune_removes_old_finished_holds_and_keeps_every_open_one(settings):
    settings.EVENTS_RETENTION_DAYS = 8
    old_finished = hold(20, released_days_ago=19)
    old_still_held = hold(30, released_days_ago=None)  # a hold longer than the retention
    recent_finished = hold(2, released_days_ago=1)
    assert LockEvent.objects.get(event_id=old_finished).closed_at is not None

    pruned = retention.prune()

    left = set(LockEvent.objects.values_list("event_id", flat=True))
    assert old_finished not in left
    assert old_still_held in left
    assert LockEvent.objects.get(event_id=old_still_held).closed_at is None
    assert recent_finished in left
    assert pruned.lock_events == 2  # the old acquire and its release
    assert LockEvent.objects.count() == 3  # the open acquire, the recent pair


@pytest.mark.django_db
def test_the_prune_removes_applied_event_ids_past_the_retention_only(settings):
    settings.EVENTS_RETENTION_DAYS = 8
    now = timezone.now()
    old = AppliedEvent.objects.create(event_id=uuid.uuid4(), applied_at=now - timedelta(days=9))
    young = AppliedEvent.objects.create(event_id=uuid.uuid4(), applied_at=now - timedelta(days=7))

    assert retention.prune(now).applied_events == 1
    assert list(AppliedEvent.objects.values_list("pk", flat=True)) == [young.pk]
    assert not AppliedEvent.objects.filter(pk=old.pk).exists()


@pytest.mark.django_db
def test_old_sync_runs_go_but_the_last_success_and_the_failures_after_it_stay(settings):
    settings.EVENTS_RETENTION_DAYS = 8
    now = timezone.now()

    def run(days_ago: float, ok: bool, scope: str = "all") -> SyncRun:
        at = now - timedelta(days=days_ago)
        return SyncRun.objects.create(started_at=at, finished_at=at, ok=ok, scope=scope)

    old = [run(20, True), run(19, False, scope="db-42")]
    last_full_ok = run(12, True)  # every full sync since has failed: the back-off counts them
    failures = [run(11, False), run(3, False)]
    recent_resync = run(1, True, scope="db-42")

    assert retention.prune(now).sync_runs == 2
    assert set(SyncRun.objects.values_list("pk", flat=True)) == {
        last_full_ok.pk,
        *(f.pk for f in failures),
        recent_resync.pk,
    }
    assert not SyncRun.objects.filter(pk__in=[o.pk for o in old]).exists()


@pytest.mark.django_db
def test_a_large_prune_goes_in_batches_and_misses_nothing(settings, monkeypatch):
    settings.EVENTS_RETENTION_DAYS = 8
    monkeypatch.setattr(retention, "BATCH", 7)
    for _ in range(20):
        hold(10, released_days_ago=10)
    kept = hold(10, released_days_ago=None)

    assert retention.prune().lock_events == 40
    assert list(LockEvent.objects.values_list("event_id", flat=True)) == [kept]


@pytest.mark.django_db
def test_the_sync_never_reads_events_older_than_the_backfill_even_after_a_long_stop(settings):
    settings.EVENTS_BACKFILL_DAYS = 7
    now = timezone.now()
    SyncState.objects.update_or_create(
        name=SyncState.EVENTS, defaults={"events_until": now - timedelta(days=30)}
    )
    # Older events may have been pruned: reading them again would reopen finished holds.
    assert events_since(now) == now - timedelta(days=7)
    SyncState.objects.filter(name=SyncState.EVENTS).update(events_until=now - timedelta(minutes=5))
    assert events_since(now) == now - timedelta(minutes=6)


def test_the_prune_runs_in_the_worker(celery_worker, settings):
    from reslock_web.tasks import prune

    settings.EVENTS_RETENTION_DAYS = 8
    old = hold(12, released_days_ago=12)
    prune.delay()
    deadline = time.monotonic() + 60
    while LockEvent.objects.filter(event_id=old).exists():
        assert time.monotonic() < deadline, "the worker did not prune the old hold"
        time.sleep(0.2)
