"""Keeping the tables bounded: lock events, applied-event ids and sync runs past the retention go.

What is never pruned, however old: an acquire that is still open (its holder has not been seen
to leave: a hold may last longer than any retention) and a helper wait still open (its waiter
is still queued). Everything else older than `RESLOCK_EVENTS_RETENTION_DAYS` only draws old
timelines. Sync runs go too, except the last successful ones and every run after them: the
back-off (`health`) and the metrics count the failures since the last success. The sync never
reads events older than `RESLOCK_EVENTS_BACKFILL_DAYS`, which the settings keep shorter than the
retention, so an event pruned here is never recorded again.

Rows go in batches of `BATCH`, each its own short transaction, so that a first prune of a large
table neither holds a long lock nor loads the ids of millions of rows at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from reslock.protocol import EVENT_WAITING
from reslock_web.models import AppliedEvent, LockEvent, SyncRun
from reslock_web.sync.events import ACQUIRES

log = logging.getLogger(__name__)

BATCH = 5000


@dataclass(frozen=True)
class Pruned:
    lock_events: int
    applied_events: int
    sync_runs: int
    cutoff: datetime


def cutoff(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(days=settings.EVENTS_RETENTION_DAYS)


def prunable_lock_events(before: datetime) -> QuerySet[LockEvent]:
    still_open = Q(event__in=(*ACQUIRES, EVENT_WAITING), closed_at__isnull=True)
    return LockEvent.objects.filter(occurred__lt=before).exclude(still_open)


def prune(now: datetime | None = None) -> Pruned:
    before = cutoff(now)
    lock_events = _delete_in_batches(prunable_lock_events(before))
    applied = _delete_in_batches(AppliedEvent.objects.filter(applied_at__lt=before))
    sync_runs = _delete_in_batches(prunable_sync_runs(before))
    if lock_events or applied or sync_runs:
        log.info(
            "pruned %d lock events, %d applied-event ids and %d sync runs older than %s",
            lock_events,
            applied,
            sync_runs,
            before.isoformat(timespec="seconds"),
        )
    return Pruned(lock_events, applied, sync_runs, before)


def prunable_sync_runs(before: datetime) -> QuerySet[SyncRun]:
    kept_from = [before]
    for runs in (SyncRun.objects.all(), SyncRun.objects.filter(scope="all")):
        last_ok = runs.filter(ok=True).order_by("-started_at").first()
        if last_ok is not None:
            kept_from.append(last_ok.started_at)
    return SyncRun.objects.filter(started_at__lt=min(kept_from))


def _delete_in_batches(rows: QuerySet) -> int:
    total = 0
    while True:
        ids = list(rows.order_by("pk").values_list("pk", flat=True)[:BATCH])
        if not ids:
            return total
        deleted, _ = rows.model.objects.filter(pk__in=ids).delete()
        total += deleted
