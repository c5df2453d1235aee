"""The board from the lock events the listener has just recorded, before Prefect is read again.

The listener re-syncs every limit an event touches from Prefect's REST API, and under churn
that read takes seconds: Prefect answers slowly while the flows load it (bench/churn_bench.py,
20 events a second on 2 cores: a pass of a hundred limits took 1 to 13 s). An acquire, a
release, a wait or a time-out already says what changed, so `show` writes it at once and the
re-sync confirms it, or corrects it, moments later.

It writes only what needs no verdict. A limit is touched only when the last pass left it
clean (`_clean`): a global limit, active and enforced, every holder holding by an event, the
count equal to their slots, no flag but held and waiting, no evidence, no cycle. It leaves
it clean: holders whose acquire a release closed leave, open acquires among these events
join, waits come and go, the count moves with their slots, never past the limit (the re-sync
then decides). Stale, zombie, drift, uncounted, over the limit and deadlocked come only from
a pass that read Prefect, and every operation reads Prefect again before it decides
(`run.sync_limit_or_raise`): nothing written here can free a slot or call a run dead.

Only acquires among the events given are added, never every open acquire stored: a pass has
judged those already, and its verdict stands until the next pass.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings

from reslock.protocol import EVENT_RELEASED, EVENT_TIMED_OUT, EVENT_WAITING
from reslock_web.models import (
    LIMIT_FLAGS,
    Condition,
    Holder,
    Kind,
    Limit,
    LockEvent,
    Source,
    Status,
    Waiter,
)
from reslock_web.prefect_io.records import EventInfo, parse_uuid
from reslock_web.status.diagnosis import status_of
from reslock_web.sync.events import ACQUIRES, PREFECT_RELEASED
from reslock_web.sync.queries import chunked
from reslock_web.sync.store import RUN_FIELDS, raise_board_version

# What `show` writes: holds and waits beginning and ending. A limit created, changed or deleted,
# a lease lost (`stopping`): the board shows those from the re-sync, and is behind until then.
SHOWN = frozenset({*ACQUIRES, PREFECT_RELEASED, EVENT_RELEASED, EVENT_WAITING, EVENT_TIMED_OUT})
# The badges of a clean limit: anything else was concluded by a pass, and only a pass ends it.
CLEAN = (Status.FREE, Status.HELD, Status.WAITING, Status.CONTENDED)
EVENT_SOURCES = (Source.HELPER, Source.EVENT)
# Every flag but held and waiting: each is a verdict.
QUIET_FLAGS = tuple(flag for flag in LIMIT_FLAGS if flag not in ("is_held", "has_waiters"))
# What a lock event says of its run (its state comes from Prefect, with the re-sync).
EVENT_RUN_FIELDS = tuple(name for name in RUN_FIELDS if not name.startswith("state_"))


def show(events: list[EventInfo], now: datetime) -> set[str]:
    """Write what these lock events (recorded already, `events.record_events`) change on the
    clean limits they name; returns the names of the limits whose rows now say what the events
    of the kinds in SHOWN say (changed, or already so). Called inside a transaction, between
    passes (`run.write_between_passes`)."""
    rows = [
        row
        for chunk in chunked([event.id for event in events if event.event in SHOWN])
        for row in LockEvent.objects.filter(event_id__in=chunk).exclude(limit_prefect_id=None)
    ]
    if not rows:
        return set()
    by_limit: dict[UUID, list[LockEvent]] = defaultdict(list)
    for row in rows:
        by_limit[row.limit_prefect_id].append(row)
    limits = [
        limit
        for chunk in chunked(list(by_limit))
        for limit in Limit.objects.present().filter(prefect_id__in=chunk, kind=Kind.GLOBAL)
    ]
    holders = _grouped(Holder, [limit.pk for limit in limits])
    waiters = _grouped(Waiter, [limit.pk for limit in limits])
    limits = [
        limit
        for limit in limits
        if _clean(limit, holders.get(limit.pk, []), waiters.get(limit.pk, []))
    ]
    closed = _closed_keys(
        [h.key for limit in limits for h in holders.get(limit.pk, [])],
        [w.key for limit in limits for w in waiters.get(limit.pk, [])],
    )
    shown: set[str] = set()
    moved = False
    for limit in limits:
        outcome = _move(limit, by_limit[limit.prefect_id], holders, waiters, closed, now)
        if outcome is not None:
            shown.add(limit.name)
            moved = moved or outcome
    if moved:
        raise_board_version()
    return shown


def _grouped(model: type[Holder] | type[Waiter], pks: list[int]) -> dict[int, list]:
    grouped: dict[int, list] = defaultdict(list)
    for chunk in chunked(pks):
        for row in model.objects.filter(limit_id__in=chunk):
            grouped[row.limit_id].append(row)
    return grouped


def _clean(limit: Limit, holders: list[Holder], waiters: list[Waiter]) -> bool:
    """Whether the last pass left this limit in a state that needs no verdict (see above)."""
    return (
        limit.active
        and limit.slot_decay_per_second == 0
        and limit.limit > 0
        and limit.status in CLEAN
        and not any(getattr(limit, flag) for flag in QUIET_FLAGS)
        and not limit.evidence
        and not limit.deadlock_cycle
        and limit.drift_since is None
        and limit.active_slots == sum(h.slots for h in holders)
        and all(
            h.source in EVENT_SOURCES
            and h.condition == Condition.HOLDING
            and h.slot_lost_at is None
            and h.run_missing_since is None
            and parse_uuid(h.key) is not None
            for h in holders
        )
        and all(
            w.source == Source.HELPER and w.deadlocked_by_id is None and w.key.startswith("wait:")
            for w in waiters
        )
    )


def _closed_keys(holder_keys: list[str], waiter_keys: list[str]) -> set[str]:
    """The holder and waiter keys whose acquire or wait a recorded event has ended."""
    closed: set[str] = set()
    acquires = [event_id for key in holder_keys if (event_id := parse_uuid(key))]
    for chunk in chunked(acquires):
        ended = LockEvent.objects.filter(event_id__in=chunk, closed_at__isnull=False)
        closed |= {str(event_id) for event_id in ended.values_list("event_id", flat=True)}
    waits = [wait for key in waiter_keys if (wait := parse_uuid(key.removeprefix("wait:")))]
    for chunk in chunked(waits):
        ended = LockEvent.objects.filter(event=EVENT_WAITING, closed_at__isnull=False)
        for wait_id, event_id in ended.filter(wait_id__in=chunk).values_list("wait_id", "event_id"):
            closed.add(f"wait:{wait_id}")
            closed.add(f"wait:{event_id}")
        for event_id in ended.filter(event_id__in=chunk).values_list("event_id", flat=True):
            closed.add(f"wait:{event_id}")
    return closed


def _move(
    limit: Limit,
    rows: list[LockEvent],
    holders: dict[int, list[Holder]],
    waiters: dict[int, list[Waiter]],
    closed: set[str],
    now: datetime,
) -> bool | None:
    """Move one clean limit to what its events say, if that is clean again: whether it moved,
    or None when a pass must decide."""
    kept = [h for h in holders.get(limit.pk, []) if h.key not in closed]
    known = {h.key for h in holders.get(limit.pk, [])}
    joining = [
        _holder(limit, row, now)
        for row in rows
        if row.event in ACQUIRES and row.closed_at is None and str(row.event_id) not in known
    ]
    # An acquire or a time-out closes its wait when it is recorded (`events._ends`).
    staying = [w for w in waiters.get(limit.pk, []) if w.key not in closed]
    queued = {w.key for w in waiters.get(limit.pk, [])}
    position = max((w.position for w in staying), default=0)
    arriving = []
    for row in sorted(rows, key=lambda r: r.occurred):
        key = f"wait:{row.wait_id or row.event_id}"
        if row.event == EVENT_WAITING and row.closed_at is None and key not in queued:
            position += 1
            arriving.append(_waiter(limit, row, key, position))
    leaving = [h for h in holders.get(limit.pk, []) if h.key in closed]
    gone_waiters = [w for w in waiters.get(limit.pk, []) if w not in staying]
    if not (joining or leaving or arriving or gone_waiters):
        return False
    holding = kept + joining
    slots = sum(h.slots for h in holding)
    long_hold = timedelta(seconds=settings.LONG_HOLD_SECONDS)
    if slots > limit.limit or any(
        h.acquired_at and now - h.acquired_at > long_hold for h in holding
    ):
        return None  # more than the limit, or a hold long enough to warn of: a pass decides
    Holder.objects.filter(pk__in=[h.pk for h in leaving]).delete()
    Holder.objects.bulk_create(joining)
    Waiter.objects.filter(pk__in=[w.pk for w in gone_waiters]).delete()
    Waiter.objects.bulk_create(arriving)
    limit.active_slots = limit.holder_slots = slots
    limit.holder_count = len(holding)
    limit.waiter_count = len(staying) + len(arriving)
    limit.is_held, limit.has_waiters = bool(holding), bool(limit.waiter_count)
    flags = {flag: getattr(limit, flag) for flag in ("is_held", "has_waiters", *QUIET_FLAGS)}
    limit.status = status_of(flags, active=True)
    starts = [h.acquired_at for h in holding if h.acquired_at]
    limit.held_since = min(starts) if starts else None
    limit.changed_at = now
    limit.save(
        update_fields=[
            "active_slots",
            "holder_slots",
            "holder_count",
            "waiter_count",
            "is_held",
            "has_waiters",
            "status",
            "held_since",
            "changed_at",
        ]
    )
    return True


def _holder(limit: Limit, row: LockEvent, now: datetime) -> Holder:
    return Holder(
        limit=limit,
        key=str(row.event_id),
        source=Source.HELPER if row.event.startswith("reslock.") else Source.EVENT,
        condition=Condition.HOLDING,
        acquired_at=row.occurred,
        lease_id=row.lease_id,
        lease_seconds=row.lease_seconds,
        slots=row.slots,
        process=row.process or {},
        first_seen=now,
        **{name: getattr(row, name) for name in EVENT_RUN_FIELDS},
    )


def _waiter(limit: Limit, row: LockEvent, key: str, position: int) -> Waiter:
    return Waiter(
        limit=limit,
        key=key,
        source=Source.HELPER,
        waiting_since=row.occurred,
        position=position,
        **{name: getattr(row, name) for name in EVENT_RUN_FIELDS},
    )
