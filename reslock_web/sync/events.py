"""Prefect's lock events: which of them a sync reads, from when, and how they are recorded.

Every acquire, release and helper wait is stored once (by event id) as a LockEvent row, and the
rows it ends are closed: a complete pass, a re-sync of a few limits, the backfill and the live
listener all record through `record_events`. The rows left open are where `claims` finds the
holders and waiters of global limits.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db.models import Case, CharField, DateTimeField, Value, When

from reslock.process import valid_identity
from reslock.protocol import (
    EVENT_ACQUIRED,
    EVENT_PREFIX,
    EVENT_RELEASED,
    EVENT_TIMED_OUT,
    EVENT_WAITING,
)
from reslock_web.models import LockEvent, SyncState
from reslock_web.prefect_io.records import EventInfo, parse_uuid
from reslock_web.sync.queries import BATCH, chunked

PREFECT_ACQUIRED = "prefect.concurrency-limit.acquired"
PREFECT_RELEASED = "prefect.concurrency-limit.released"
# reslock's flow-side helper (the reslock package) announces its waits and leases.
ACQUIRES = (PREFECT_ACQUIRED, EVENT_ACQUIRED)
EVENT_PREFIXES = ["prefect.concurrency-limit.", EVENT_PREFIX]
# Emitted for every limit created or changed: many, and nothing here needs them.
LIFECYCLE_EVENTS = [
    "prefect.concurrency-limit.created",
    "prefect.concurrency-limit.updated",
    "prefect.concurrency-limit.deleted",
]
# Events reach Prefect's REST API a few seconds after they occur: re-read this much each time
# (duplicates are dropped by event id).
EVENTS_OVERLAP = timedelta(seconds=60)


def events_since(now: datetime) -> datetime:
    state, _ = SyncState.objects.get_or_create(name=SyncState.EVENTS)
    backfill = now - timedelta(days=settings.EVENTS_BACKFILL_DAYS)
    if state.events_until is None:
        return backfill
    # Never further back than the backfill, even after a long stop: events older than that may
    # have been pruned (retention.py), and an acquire read again without its release would show
    # a holder that left long ago.
    return max(backfill, state.events_until - EVENTS_OVERLAP)


def limit_id_of(event: EventInfo) -> UUID | None:
    return parse_uuid(
        event.resource.get("prefect.resource.id", "").removeprefix("prefect.concurrency-limit.")
    )


def event_row(event: EventInfo) -> LockEvent:
    flow_run_id, flow_run_name = event.related_id("flow-run", "prefect.flow-run.")
    task_run_id, task_run_name = event.related_id("task-run", "prefect.task-run.")
    flow_id, flow_name = event.related_id("flow", "prefect.flow.")
    deployment_id, deployment_name = event.related_id("deployment", "prefect.deployment.")
    lease_seconds = event.payload.get("lease_duration")
    return LockEvent(
        slots=_slots_of(event),
        event_id=event.id,
        event=event.event[:80],
        occurred=event.occurred,
        received=event.received,
        limit_prefect_id=limit_id_of(event),
        limit_name=event.resource.get("prefect.resource.name", "")[:500],
        follows=event.follows,
        flow_run_id=flow_run_id,
        flow_run_name=flow_run_name,
        flow_id=flow_id,
        flow_name=flow_name,
        task_run_id=task_run_id,
        task_run_name=task_run_name,
        deployment_id=deployment_id,
        deployment_name=deployment_name,
        lease_id=parse_uuid(event.payload.get("lease_id")),
        wait_id=parse_uuid(event.payload.get("wait_id")),
        # Any JSON number may come: NaN, infinity or 1e300 would not fit the column.
        lease_seconds=int(lease_seconds)
        if isinstance(lease_seconds, int | float) and 0 < lease_seconds < 2**31
        else None,
        process=_process_of(event),
    )


def _slots_of(event: EventInfo) -> int:
    """The slots an acquire (or release) is for: Prefect puts `occupy` in the resource's
    "slots-acquired", as a string. Anything unreadable counts as one."""
    value = event.resource.get("slots-acquired", event.payload.get("slots"))
    try:
        slots = int(str(value).strip())
    except ValueError:
        return 1
    return slots if 0 < slots < 2**31 else 1


def pair_release(release: LockEvent, acquires: Iterable[LockEvent]) -> LockEvent | None:
    """The open acquire that a Prefect release without `follows` ends, or None.

    Prefect sets `follows` only when the release comes less than five minutes after the
    acquire. Without it, a release ends the oldest open acquire of the same limit by the same
    run (flow run and task run alike), made before it, one with the same slots first. A
    release outside any run names nothing to pair it with, and is left alone.
    """
    if release.flow_run_id is None and release.task_run_id is None:
        return None
    candidates = [
        row
        for row in acquires
        if row.event == PREFECT_ACQUIRED
        and row.limit_prefect_id == release.limit_prefect_id
        and row.flow_run_id == release.flow_run_id
        and row.task_run_id == release.task_run_id
        and row.occurred <= release.occurred
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda row: (row.slots != release.slots, row.occurred))


def _process_of(event: EventInfo) -> dict[str, Any]:
    """The holder's process identity from a helper acquire, checked (Prefect's data is not
    ours to trust): a malformed one is dropped, and the holder is then never "provably dead"."""
    if event.event != EVENT_ACQUIRED:
        return {}
    return valid_identity(event.payload.get("process")) or {}


def record_events(events: list[EventInfo]) -> int:
    """Store lock events (idempotent by event id) and close what they end. Returns how many
    were new. The sync and the live listener both call this, with every event of a read or a
    flush at once: a few statements per call, however many events (a pass re-reads a window
    it has mostly recorded already, and one statement per event made that cost grow with the
    rate of events)."""
    events = list({event.id: event for event in events}.values())  # each event once
    if not events:
        return 0
    known: set[UUID] = set()
    for chunk in chunked([event.id for event in events]):
        known |= set(
            LockEvent.objects.filter(event_id__in=chunk).values_list("event_id", flat=True)
        )
    new = [event_row(event) for event in events if event.id not in known]
    LockEvent.objects.bulk_create(new, batch_size=BATCH, ignore_conflicts=True)
    ends = _ends(events)
    unfollowed = [e for e in events if e.event == PREFECT_RELEASED and not e.follows]
    if unfollowed:
        _pair_releases(unfollowed, ends)
    _close(ends)
    _lost_leases(events)
    return len(new)


def _lost_leases(events: list[EventInfo]) -> None:
    """Name the end of a helper hold that lost its lease, when the board had already closed it
    as "ended" (its slot gone before the helper's release arrived): the helper's own word is
    the better one, and it is what lease health shows (status/leases.py)."""
    for event in events:
        lease = parse_uuid(event.payload.get("lease_id"))
        if event.event == EVENT_RELEASED and lease and event.payload.get("reason") == "lease_lost":
            LockEvent.objects.filter(
                event=EVENT_ACQUIRED,
                lease_id=lease,
                limit_prefect_id=limit_id_of(event),
                closed_reason="ended",
            ).update(closed_reason="lease_lost")


End = tuple[datetime, str]  # when a hold or a wait ended, and why


def _ends(events: list[EventInfo]) -> dict[UUID, End]:
    """The open acquires and waits these events end: event id -> (when, why). The first
    event to end one wins, as when they were applied one by one."""
    ends: dict[UUID, End] = {}
    leases: dict[tuple[UUID, UUID | None], End] = {}
    waits: dict[tuple[UUID, UUID | None], End] = {}
    for event in events:
        limit_id = limit_id_of(event)
        if event.event == PREFECT_RELEASED and event.follows:
            ends.setdefault(event.follows, (event.occurred, "released"))
        elif event.event == EVENT_RELEASED and (lease := parse_uuid(event.payload.get("lease_id"))):
            reason = str(event.payload.get("reason") or "released")[:40]
            leases.setdefault((lease, limit_id), (event.occurred, reason))
        elif event.event in (EVENT_ACQUIRED, EVENT_TIMED_OUT) and (
            wait := parse_uuid(event.payload.get("wait_id"))
        ):
            waits.setdefault((wait, limit_id), (event.occurred, event.event.rsplit(".", 1)[1]))
    open_rows = LockEvent.objects.filter(closed_at__isnull=True)
    for kind, by, wanted in (
        (EVENT_ACQUIRED, "lease_id", leases),
        (EVENT_WAITING, "wait_id", waits),
    ):
        ids = sorted({key for key, _ in wanted}, key=str)
        for chunk in chunked(ids):
            rows = open_rows.filter(event=kind, **{f"{by}__in": chunk})
            for event_id, key, limit_id in rows.values_list("event_id", by, "limit_prefect_id"):
                end = wanted.get((key, limit_id))
                if end is not None:
                    ends.setdefault(event_id, end)
    return ends


def _close(ends: dict[UUID, End]) -> None:
    """Close these rows, those still open only, in one UPDATE per few hundred."""
    items = sorted(ends.items(), key=lambda item: str(item[0]))
    # Each row costs five parameters; SQLite takes at most 999 in one statement.
    for chunk in chunked(items, 150):
        ids = [event_id for event_id, _ in chunk]
        LockEvent.objects.filter(event_id__in=ids, closed_at__isnull=True).update(
            closed_at=Case(
                *(When(event_id=event_id, then=Value(at)) for event_id, (at, _) in chunk),
                output_field=DateTimeField(),
            ),
            closed_reason=Case(
                *(When(event_id=event_id, then=Value(why)) for event_id, (_, why) in chunk),
                output_field=CharField(),
            ),
        )


def _pair_releases(events: list[EventInfo], ends: dict[UUID, End]) -> None:
    """Add to `ends` the acquires that Prefect releases without `follows` end (see
    `pair_release`). The pairing is written on the release's row, in its `follows`: a release
    read again (the sync re-reads a minute of events; the listener and the sync both record)
    ends the same acquire, never a second one. A release not paired yet is tried again when
    read again. An acquire that another event of this batch ends is not a candidate."""
    rows = {
        row.event_id: row
        for chunk in chunked([e.id for e in events])
        for row in LockEvent.objects.filter(event_id__in=chunk)
    }
    for event in sorted(events, key=lambda e: e.occurred):
        release = rows.get(event.id)
        if release is None:
            continue
        target = release.follows
        if target is None:
            candidates = LockEvent.objects.filter(
                event=PREFECT_ACQUIRED,
                closed_at__isnull=True,
                limit_prefect_id=release.limit_prefect_id,
                flow_run_id=release.flow_run_id,
                task_run_id=release.task_run_id,
                occurred__lte=release.occurred,
            )
            match = pair_release(release, (c for c in candidates if c.event_id not in ends))
            if match is None:
                continue
            target = match.event_id
            LockEvent.objects.filter(pk=release.pk).update(follows=target)
        ends.setdefault(target, (release.occurred, "released"))


def release_pairs(release_ids: list[UUID]) -> dict[UUID, UUID]:
    """Releases without `follows` of their own already paired with an acquire: their ids ->
    that acquire's id."""
    pairs: dict[UUID, UUID] = {}
    for chunk in chunked(release_ids):
        pairs.update(
            LockEvent.objects.filter(event_id__in=chunk, follows__isnull=False).values_list(
                "event_id", "follows"
            )
        )
    return pairs
