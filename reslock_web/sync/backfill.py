"""Reading a long window of past lock events ahead of a complete pass, in batches (`backfill`):
a first sync, or one after a long stop, neither holds days of events in memory nor outlasts the
sync lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import transaction

from reslock_web.models import SyncState
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.prefect_io.records import EventInfo
from reslock_web.sync.events import (
    EVENT_PREFIXES,
    EVENTS_OVERLAP,
    LIFECYCLE_EVENTS,
    events_since,
    record_events,
)
from reslock_web.sync.lock import keep_lock

log = logging.getLogger(__name__)

Progress = Callable[[str], None]  # told how a long read goes, in words

# A pass whose events window is longer than this reads it ahead in batches (`backfill`).
BACKFILL_AFTER = timedelta(minutes=10)
BACKFILL_BATCH = 1000  # events recorded per step: 20 of Prefect's pages


def backfill(api: PrefectAPI, token: str, now: datetime, progress: Progress | None) -> None:
    """Read a long window of past lock events ahead of the pass, in order, recording each
    batch as it comes and moving the watermark after it.

    A first sync reads RESLOCK_EVENTS_BACKFILL_DAYS of events, and one after a long stop all
    it missed. Read whole, that is unbounded memory and a pass longer than the sync lock. Read
    in batches, memory stays flat, the lock is extended after each batch, a pass stopped
    half-way (an error, a restart) resumes from the last batch recorded, and the banner and
    `manage.py reslock_sync` show how far it got. The pass itself then reads only the last
    minute, and finds the holds in the stored open acquires as it always does.
    """
    since = events_since(now)
    if now - since <= BACKFILL_AFTER:
        return
    window, _ = SyncState.objects.get_or_create(name=SyncState.BACKFILL)
    if window.window_start is None or window.window_end is None:  # else: resuming
        window.window_start = since
    window.window_end = now
    window.events_until = since
    window.save()
    read = 0
    batch: list[EventInfo] = []
    try:
        for event in api.events(since, now, EVENT_PREFIXES, LIFECYCLE_EVENTS):
            batch.append(event)
            if len(batch) >= BACKFILL_BATCH:
                read += _record_batch(batch, token, window, progress, read)
                batch = []
        read += _record_batch(batch, token, window, progress, read)
    except BaseException:
        log.warning("reading past events stopped after %d; the next sync resumes", read)
        raise
    SyncState.objects.filter(name=SyncState.EVENTS).update(events_until=now - EVENTS_OVERLAP)
    SyncState.objects.filter(name=SyncState.BACKFILL).update(window_start=None, window_end=None)
    if progress:
        progress(f"read {read} past lock events from {_at(since)} to {_at(now)}")


def _record_batch(
    batch: list[EventInfo],
    token: str,
    window: SyncState,
    progress: Progress | None,
    read: int,
) -> int:
    if not batch:
        return 0
    until = batch[-1].occurred
    with transaction.atomic():
        record_events(batch)
        # The watermark: a pass that stops later resumes EVENTS_OVERLAP before this.
        SyncState.objects.filter(name=SyncState.EVENTS).update(events_until=until)
        SyncState.objects.filter(name=SyncState.BACKFILL).update(events_until=until)
        keep_lock(token)
    window.events_until = until
    share = window.backfill_share or 0.0
    log.info(
        "read %d past lock events, up to %s (%.0f%%)", read + len(batch), _at(until), 100 * share
    )
    if progress:
        progress(f"read {read + len(batch)} past lock events, up to {_at(until)} ({share:.0%})")
    return len(batch)


def _at(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")
