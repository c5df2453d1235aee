"""Write a sync snapshot into our tables: only what changed, in one transaction.

Rows are matched by stable keys (a limit by its Prefect id, a holder or waiter by its claim
key) and updated in place, so that ids stay put for operations and the board redraws only
the rows that changed.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any
from uuid import UUID

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Case, CharField, DateTimeField, F, Field, Model, Value, When

from reslock.process import describe, process_alive, process_gone, valid_identity
from reslock.protocol import (
    EVENT_ACQUIRED,
    EVENT_RELEASED,
    EVENT_STOPPING,
    EVENT_TIMED_OUT,
    EVENT_WAITING,
)
from reslock_web.models import (
    Condition,
    Holder,
    Kind,
    Limit,
    LockEvent,
    Source,
    Status,
    SyncState,
    Waiter,
    search_text,
)
from reslock_web.prefect_io.api import EventInfo, LimitInfo, RunInfo, _uuid
from reslock_web.status import diagnosis
from reslock_web.status.diagnosis import (
    ALIVE,
    GONE,
    Claim,
    Context,
    HolderVerdict,
    Life,
    Previous,
    Queued,
    WaiterVerdict,
)
from reslock_web.sync.snapshot import Snapshot, Stored, StoredRuns

BATCH = 500
PREFECT_ACQUIRED = "prefect.concurrency-limit.acquired"
PREFECT_RELEASED = "prefect.concurrency-limit.released"
NEVER_READ = datetime(1970, 1, 1, tzinfo=UTC)  # holders_checked_at of counted tag holders
# The helper announces `stopping` every 5 s while a block whose lease was lost is still
# inside; one Prefect received within this long shows it alive.
STOPPING_FRESH = timedelta(seconds=30)
LIMIT_FIELDS = [
    "name", "kind", "resource", "search_text", "deployment_id", "limit", "active", "active_slots",
    "slot_decay_per_second", "prefect_created", "prefect_updated", "gone_at",
    "status", "is_held", "has_waiters", "is_stale", "has_zombie", "is_deadlocked", "has_drift",
    "has_long_hold", "is_over_limit", "holder_count", "holder_slots", "waiter_count",
    "held_since", "drift_since", "holders_checked_at", "evidence", "changed_at",
]  # fmt: skip
# Fields whose change makes a row "recently changed" on the board.
VISIBLE_FIELDS = {
    "limit",
    "active",
    "active_slots",
    "status",
    "holder_count",
    "waiter_count",
    "evidence",
}
RUN_FIELDS = [
    "flow_run_id", "flow_run_name", "flow_id", "flow_name", "task_run_id", "task_run_name",
    "deployment_id", "deployment_name", "state_type", "state_name", "state_at",
]  # fmt: skip
HOLDER_FIELDS = [
    *RUN_FIELDS,
    "source",
    "condition",
    "acquired_at",
    "lease_id",
    "lease_seconds",
    "slots",
    "process",
    "slot_lost_at",
    "run_missing_since",
    "evidence",
]
WAITER_FIELDS = [*RUN_FIELDS, "source", "waiting_since", "position", "deadlocked_by_id", "evidence"]


# --- events ----------------------------------------------------------------------------
def limit_id_of(event: EventInfo) -> UUID | None:
    return _uuid(
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
        lease_id=_uuid(event.payload.get("lease_id")),
        wait_id=_uuid(event.payload.get("wait_id")),
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


def queued_from_row(row: LockEvent) -> Queued:
    return Queued(
        key=f"wait:{row.wait_id or row.event_id}",
        source=Source.HELPER,
        flow_run_id=row.flow_run_id,
        task_run_id=row.task_run_id,
        waiting_since=row.occurred,
    )


def claim_from_row(row: LockEvent) -> Claim:
    return Claim(
        key=str(row.event_id),
        source=Source.HELPER if row.event.startswith("reslock.") else Source.EVENT,
        certain=False,
        flow_run_id=row.flow_run_id,
        task_run_id=row.task_run_id,
        acquired_at=row.occurred,
        received=row.received,
        lease_id=row.lease_id,
        lease_seconds=row.lease_seconds,
        slots=row.slots,
        process=row.process or {},
        names={
            "flow_run_name": row.flow_run_name,
            "task_run_name": row.task_run_name,
            "flow_name": row.flow_name,
        },
    )


def _store_events(snapshot: Snapshot) -> int:
    return record_events(snapshot.events)


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
    for chunk in _chunked([event.id for event in events]):
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
    return len(new)


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
        elif event.event == EVENT_RELEASED and (lease := _uuid(event.payload.get("lease_id"))):
            reason = str(event.payload.get("reason") or "released")[:40]
            leases.setdefault((lease, limit_id), (event.occurred, reason))
        elif event.event in (EVENT_ACQUIRED, EVENT_TIMED_OUT) and (
            wait := _uuid(event.payload.get("wait_id"))
        ):
            waits.setdefault((wait, limit_id), (event.occurred, event.event.rsplit(".", 1)[1]))
    open_rows = LockEvent.objects.filter(closed_at__isnull=True)
    for kind, by, wanted in (
        (EVENT_ACQUIRED, "lease_id", leases),
        (EVENT_WAITING, "wait_id", waits),
    ):
        ids = sorted({key for key, _ in wanted}, key=str)
        for chunk in _chunked(ids):
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
    for chunk in _chunked(items, 150):
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
        for chunk in _chunked([e.id for e in events])
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
    for chunk in _chunked(release_ids):
        pairs.update(
            LockEvent.objects.filter(event_id__in=chunk, follows__isnull=False).values_list(
                "event_id", "follows"
            )
        )
    return pairs


# --- what the last pass stored ---------------------------------------------------------
def stored_tag_holders(names: set[str]) -> dict[str, list[UUID]]:
    held: dict[str, list[UUID]] = defaultdict(list)
    rows = Holder.objects.filter(
        limit__name__in=names,
        limit__gone_at__isnull=True,
        source="tag_lease",
        condition__in=[Condition.HOLDING, Condition.STALE],
    ).values_list("limit__name", "task_run_id")
    for name, task_run_id in rows:
        if task_run_id:
            held[name].append(task_run_id)
    return held


def stored_runs(limit_pks: list[int] | None = None) -> StoredRuns:
    """Of every limit, or of these limits only (a single-limit pass)."""
    tasks: dict[UUID, RunInfo] = {}
    flows: dict[UUID, RunInfo] = {}
    missing_tasks: dict[UUID, datetime] = {}
    missing_flows: dict[UUID, datetime] = {}
    rows = _of_limits(Holder.objects.filter(run_missing_since__isnull=False), limit_pks)
    for task_id, run_id, since in rows.values_list(
        "task_run_id", "flow_run_id", "run_missing_since"
    ):
        missing = missing_tasks if task_id else missing_flows
        run = task_id or run_id
        missing[run] = min(since, missing.get(run, since))
    fields = ["task_run_id", "task_run_name", "flow_run_id", "flow_run_name", "flow_id",
              "deployment_id", "state_type", "state_name", "state_at"]  # fmt: skip
    for model in (Holder, Waiter):
        for (
            task_id,
            task_name,
            run_id,
            run_name,
            flow_id,
            deployment_id,
            state,
            name,
            at,
        ) in _of_limits(model.objects.exclude(state_type=""), limit_pks).values_list(*fields):
            if task_id:
                tasks[task_id] = RunInfo(
                    task_id, task_name, state, name, at, None, None, None, flow_run_id=run_id
                )
                if run_id and run_id not in flows:  # names only: the state above is the task's
                    flows[run_id] = RunInfo(
                        run_id,
                        run_name,
                        "",
                        "",
                        None,
                        None,
                        None,
                        None,
                        flow_id=flow_id,
                        deployment_id=deployment_id,
                    )
            elif run_id:
                flows[run_id] = RunInfo(
                    run_id,
                    run_name,
                    state,
                    name,
                    at,
                    None,
                    None,
                    None,
                    flow_id=flow_id,
                    deployment_id=deployment_id,
                )
    return StoredRuns(tasks, flows, missing_tasks, missing_flows)


# --- the write -------------------------------------------------------------------------


def _of_limits(rows: Any, limit_pks: list[int] | None, field: str = "limit_id") -> Any:
    if limit_pks is None:
        return rows
    return rows.filter(**{f"{field}__in": limit_pks})


def read_stored(limit_pks: list[int] | None = None) -> Stored:
    """Every stored limit with its holders and waiters, or these limits only (a single-limit
    pass compares and writes nothing else)."""
    compact = {
        row[1]: row for row in _of_limits(Limit.objects, limit_pks, "pk").values_list(*COMPACT)
    }
    holders = _grouped(_of_limits(Holder.objects.all(), limit_pks))
    waiters = _grouped(_of_limits(Waiter.objects.all(), limit_pks))
    people = holders.keys() | waiters.keys()
    quiet = (Status.FREE, Status.INACTIVE)
    # (pk, _, _, _, _, slots, _, _, status, drift_since, gone_at, ...): likely busy again.
    likely = [
        row[0]
        for row in compact.values()
        if row[5] or row[8] not in quiet or row[9] is not None or row[10] or row[0] in people
    ]
    rows = {
        row.prefect_id: row
        for pk_chunk in _chunked(likely)
        for row in Limit.objects.filter(pk__in=pk_chunk)
    }
    return Stored(compact, holders, waiters, rows)


def write(snapshot: Snapshot, *, grace: timedelta, long_hold: timedelta) -> dict[str, int]:
    now = snapshot.now
    counts = {"events": _store_events(snapshot), "created": 0, "updated": 0, "gone": 0}
    stored = snapshot.stored or read_stored()
    compact, holders, waiters = stored.compact, stored.holders, stored.waiters
    ctx = Context(
        now,
        grace,
        long_hold,
        snapshot.task_runs,
        snapshot.flow_runs,
        _released(holders),
        snapshot.missing_since,
        life=life_reader(now, snapshot.heartbeats),
    )
    busy = [
        info
        for info in snapshot.listing
        if not _quiet(info, compact.get(info.id), snapshot, holders, waiters)
    ]
    limits = {info.id: row for info in busy if (row := stored.rows.get(info.id)) is not None}
    pks = [compact[info.id][0] for info in busy if info.id in compact and info.id not in limits]
    limits.update(
        (row.prefect_id, row)
        for pk_chunk in _chunked(pks)
        for row in Limit.objects.filter(pk__in=pk_chunk)
    )
    new_limits: list[Limit] = []
    new_limit = _NewLimits()
    alike: dict[tuple, diagnosis.Verdict] = {}
    changed: list[Limit] = []
    holder_plan: list[tuple[Limit, list[HolderVerdict], list[WaiterVerdict]]] = []
    closed_events: list[str] = []
    for info in busy:
        row = limits.get(info.id)
        if row is None:
            row = new_limit(info.id, now)
            verdict = _judge(info, row, snapshot, {}, ctx, alike)
            _apply(row, info, verdict, snapshot, now)
            closed_events += verdict.closed_claims
            holder_plan.append((row, verdict.holders, verdict.waiters))
            new_limits.append(row)
            continue
        before = {name: getattr(row, name) for name in LIMIT_FIELDS}
        verdict = _judge(info, row, snapshot, holders.get(row.pk, {}), ctx, alike)
        _apply(row, info, verdict, snapshot, now)
        closed_events += verdict.closed_claims
        holder_plan.append((row, verdict.holders, verdict.waiters))
        after = {name: getattr(row, name) for name in LIMIT_FIELDS}
        if before != after:
            if any(before[name] != after[name] for name in VISIBLE_FIELDS) or _holders_moved(
                holders.get(row.pk, {}), verdict.holders
            ):
                row.changed_at = now
            changed.append(row)
    _insert_limits(new_limits)
    Limit.objects.bulk_update(changed, LIMIT_FIELDS, batch_size=BATCH)
    counts["created"], counts["updated"] = len(new_limits), len(changed)

    counts["holders"], counts["waiters"], touched = _write_people(
        holder_plan, holders, waiters, snapshot
    )
    # A holder or waiter that came, went or changed (a name resolved, a place in the queue)
    # is a change the board must redraw, even when the limit's own columns stayed the same.
    touched -= {row.pk for row in new_limits}
    touched -= {row.pk for row in changed if row.changed_at == now}
    for pk_chunk in _chunked(sorted(touched)):
        Limit.objects.filter(pk__in=pk_chunk).update(changed_at=now)
    counts["gone"] = _mark_gone(snapshot, compact, now)
    if closed_events:
        LockEvent.objects.filter(event_id__in=closed_events, closed_at__isnull=True).update(
            closed_at=now, closed_reason="ended"
        )
    if snapshot.only is None:
        SyncState.objects.update_or_create(
            name="events", defaults={"events_until": snapshot.events_until}
        )
    else:
        # A pass over a few limits read their events only: its mark is theirs, and the mark
        # of how far every limit's events were read moves with complete passes alone.
        listed = [info.id for info in snapshot.listing]
        Limit.objects.filter(prefect_id__in=listed).update(events_read_until=snapshot.events_until)
    counts["limits"] = len(snapshot.listing)
    if new_limits or changed or touched or counts["gone"]:
        raise_board_version()
    return counts


class _NewLimits:
    """Limits with their fields' defaults, built the way rows read from the database are:
    keyword construction looks every field's default up one by one, a cost at thousands."""

    def __init__(self) -> None:
        fields = Limit._meta.concrete_fields
        self._values = [None if callable(f.default) else f.get_default() for f in fields]
        # Callable defaults (a new list, the current time) are called for each row.
        self._made = [(i, f) for i, f in enumerate(fields) if callable(f.default)]

    def __call__(self, prefect_id: UUID, now: datetime) -> Limit:
        values = list(self._values)
        for index, field in self._made:
            values[index] = field.get_default()
        row = Limit(*values)
        row.prefect_id, row.first_seen, row.changed_at = prefect_id, now, now
        return row


def _insert_limits(rows: list[Limit]) -> None:
    """Insert new limits, then read back their ids by Prefect id.

    A first sync inserts thousands: bulk_create passes every value of every row through the
    field API one call at a time, which costs more than the database's own work. Here each
    column's conversion is chosen once, and plain values (text, numbers, flags) go as they are.
    """
    if not rows:
        return
    db = connections[DEFAULT_DB_ALIAS]
    fields = [field for field in Limit._meta.concrete_fields if not field.primary_key]
    convert = [(i, how) for i, field in enumerate(fields) if (how := _db_value(field, db))]
    read = attrgetter(*(field.attname for field in fields))
    params = []
    for row in rows:
        values = list(read(row))
        for index, how in convert:
            if values[index] is not None:
                values[index] = how(values[index])
        params.append(values)
    quote = db.ops.quote_name
    table, pk = quote(Limit._meta.db_table), quote(Limit._meta.pk.column)
    sql = (
        f"INSERT INTO {table} ({', '.join(quote(field.column) for field in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    with db.cursor() as cursor:
        # Only the sync writes limits, one at a time (its lock): every id above the highest
        # one now is a row inserted here.
        cursor.execute(f"SELECT MAX({pk}) FROM {table}")
        highest = cursor.fetchone()[0] or 0
        for chunk in _chunked(params, BATCH):
            cursor.executemany(sql, chunk)
        cursor.execute(
            f"SELECT {quote(Limit._meta.get_field('prefect_id').column)}, {pk} FROM {table} "
            f"WHERE {pk} > %s",
            [highest],
        )
        pks = dict(cursor.fetchall())  # keyed by the stored form of the Prefect id
    stored_id = fields.index(Limit._meta.get_field("prefect_id"))
    for row, values in zip(rows, params, strict=True):
        row.pk = pks[values[stored_id]]
        row._state.adding = False
        row._state.db = db.alias


# Columns whose Python value is what every database driver takes as it is.
_PLAIN = {"CharField", "TextField", "BooleanField", "FloatField", "PositiveIntegerField"}


def _db_value(field: Field, db: Any) -> Callable[[Any], Any] | None:
    """How one column's (non-null) values become what the driver takes, as the field would
    turn them; None for a column whose values go as they are."""
    kind = field.get_internal_type()
    if kind in _PLAIN:
        return None
    if kind == "UUIDField" and not db.features.has_native_uuid_field:
        return lambda value: value.hex
    if kind == "DateTimeField":
        adapt = db.ops.adapt_datetimefield_value
        seen: dict[datetime, Any] = {}  # first_seen and changed_at are one value for all rows

        def moment(value: datetime) -> Any:
            if value not in seen:
                seen[value] = adapt(value)
            return seen[value]

        return moment
    prepare = field.get_db_prep_save
    return lambda value: prepare(value, db)


def raise_board_version() -> None:
    """Tell polling pages that the board changed. Called inside the write's transaction: the
    row lock (PostgreSQL) or the write lock (SQLite) orders versions as the commits."""
    if not SyncState.objects.filter(name="board").update(version=F("version") + 1):
        # A random first version: a database made anew (tests, a restore) does not repeat
        # versions that running web processes have drawn pages for (board_cache).
        SyncState.objects.get_or_create(
            name="board", defaults={"version": secrets.randbelow(2**40) + 1}
        )


COMPACT = [
    "pk", "prefect_id", "name", "limit", "active", "active_slots", "slot_decay_per_second",
    "prefect_updated", "status", "drift_since", "gone_at", "holders_checked_at", "deployment_id",
]  # fmt: skip


def _released(holders: dict[int, dict[str, Holder]]) -> frozenset[str]:
    """Keys of stored event-backed holders whose acquire a release has closed (the events of
    this pass are recorded before this is asked)."""
    keys = [
        key
        for by_key in holders.values()
        for key, holder in by_key.items()
        if holder.source in (Source.HELPER, Source.EVENT)
    ]
    ids = [event_id for key in keys if (event_id := _uuid(key)) is not None]
    released: set[str] = set()
    for chunk in _chunked(ids):
        released |= {
            str(event_id)
            for event_id in LockEvent.objects.filter(
                event_id__in=chunk, closed_at__isnull=False
            ).values_list("event_id", flat=True)
        }
    return frozenset(released)


def life_reader(
    now: datetime, heartbeats: dict[UUID, datetime] | None = None
) -> Callable[[Claim], Life]:
    """What shows whether a claim's process still runs, looked up when a rule asks: its
    process on this machine (reslock/process.py), else its helper's recent `stopping` announcements,
    and its flow run's last heartbeat (`Life.as_of` weighs it against when the slot was lost).
    Nothing else counts: a claim made earlier or later than another says nothing of either."""
    heartbeats = heartbeats or {}
    stopping: dict[UUID, datetime] | None = None

    def heard(lease_id: UUID) -> datetime | None:
        nonlocal stopping
        if stopping is None:
            stopping = {}
            rows = LockEvent.objects.filter(
                event=EVENT_STOPPING, occurred__gte=now - timedelta(hours=1)
            ).values_list("lease_id", "received", "occurred")
            for lease, received, occurred in rows:
                heard_at = received or occurred  # the server's clock, when Prefect gave it
                if lease is not None and heard_at > stopping.get(lease, NEVER_READ):
                    stopping[lease] = heard_at
        return stopping.get(lease_id)

    def life(claim: Claim) -> Life:
        if claim.process:
            where = describe(claim.process)
            if process_gone(claim.process):
                return Life(GONE, f"its process ({where}) has ended")
            if process_alive(claim.process):
                return Life(ALIVE, f"its process ({where}) still runs")
        last = heard(claim.lease_id) if claim.lease_id else None
        if last is not None and now - last <= STOPPING_FRESH:
            return Life(
                ALIVE,
                f"its helper announced at {last:%H:%M:%S} UTC that its block is still inside",
            )
        return Life(beat=heartbeats.get(claim.flow_run_id) if claim.flow_run_id else None)

    return life


def _quiet(info: LimitInfo, stored: tuple | None, snapshot: Snapshot, holders, waiters) -> bool:
    """A free limit that nothing touched since the last pass: no need to judge or write it."""
    if (
        stored is None
        or info.active_slots
        or snapshot.claims.get(info.id)
        or snapshot.queued.get(info.id)
    ):
        return False
    pk, _, name, limit, active, slots, decay, updated, status, drift_since, gone_at, *_ = stored
    return (
        not holders.get(pk)
        and not waiters.get(pk)
        and gone_at is None
        and drift_since is None
        and (name, limit, active, slots, decay, updated)
        == (
            info.name,
            info.limit,
            info.active,
            info.active_slots,
            info.slot_decay_per_second,
            info.updated,
        )
        and status == (Status.FREE if info.active else Status.INACTIVE)
    )


def _chunked(items: list, size: int = 900):
    # SQLite allows at most 999 parameters in one query.
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _grouped(rows: Any) -> dict[int, dict[str, Model]]:
    grouped: dict[int, dict[str, Model]] = defaultdict(dict)
    for row in rows:
        grouped[row.limit_id][row.key] = row
    return grouped


def _judge(
    info: LimitInfo,
    row: Limit,
    snapshot: Snapshot,
    stored: dict[str, Holder],
    ctx: Context,
    alike: dict[tuple, diagnosis.Verdict] | None = None,
):
    """The verdict on one limit. Limits that nobody claims, waits for or held last time are
    judged on a few of their values only: `alike` keeps one verdict per such set of values
    (thousands of free limits share a handful), to be read, never changed."""
    kind, _, _ = diagnosis.kind_of(info.name)
    drift_since = row.drift_since if row.pk else None
    tag_count = len(snapshot.tag_holders.get(info.name, [])) if kind == Kind.TAG else None
    key = None
    if alike is not None and not (
        stored or snapshot.claims.get(info.id) or snapshot.queued.get(info.id)
    ):
        key = (kind, info.active, info.slot_decay_per_second == 0, info.active_slots, tag_count)
        key += (drift_since,)
        if key in alike:
            return alike[key]
    previous = {
        key: Previous(
            condition=holder.condition,
            slot_lost_at=holder.slot_lost_at,
            acquired_at=holder.acquired_at,
            flow_run_id=holder.flow_run_id,
            task_run_id=holder.task_run_id,
            source=holder.source,
            names={"flow_run_name": holder.flow_run_name, "task_run_name": holder.task_run_name},
            slots=holder.slots,
            lease_id=holder.lease_id,
            lease_seconds=holder.lease_seconds,
            process=holder.process or {},
        )
        for key, holder in stored.items()
    }
    claims = snapshot.claims.get(info.id, [])
    for claim in claims:
        if claim.lease_seconds is None and kind == Kind.TAG:
            claim.lease_seconds = diagnosis.TAG_LEASE_SECONDS
        kept = stored.get(claim.key)
        if claim.acquired_at is None:
            # Tag leases carry no time: the task run's start, else when we first saw the claim.
            run = ctx.run_of(claim.flow_run_id, claim.task_run_id)
            claim.acquired_at = (
                (run.start_time if run else None) or (kept.acquired_at if kept else None) or ctx.now
            )
    holder_verdicts, closed = diagnosis.classify_holders(kind, info, claims, previous, ctx)
    waiter_verdicts = diagnosis.order_waiters(
        snapshot.queued.get(info.id, []), holder_verdicts, snapshot.ancestors, ctx
    )
    verdict = diagnosis.judge(
        kind, info, holder_verdicts, waiter_verdicts, closed, drift_since, tag_count, ctx
    )
    if key is not None:
        alike[key] = verdict
    return verdict


def _apply(
    row: Limit, info: LimitInfo, verdict: diagnosis.Verdict, snapshot: Snapshot, now: datetime
) -> None:
    kind, resource, deployment_id = diagnosis.kind_of(info.name)
    if deployment_id is not None and deployment_id in snapshot.deployments:
        deployment_name, flow_id = snapshot.deployments[deployment_id]
        flow_name = snapshot.flow_names.get(flow_id, "") if flow_id else ""
        resource = f"{flow_name}/{deployment_name}" if flow_name else deployment_name
    row.name, row.kind, row.deployment_id = info.name, kind, deployment_id
    row.resource = (resource or info.name)[:500]  # "tag:" alone names no tag: show the name
    row.search_text = search_text(row.name, row.resource)
    row.limit, row.active, row.active_slots = info.limit, info.active, info.active_slots
    row.slot_decay_per_second = info.slot_decay_per_second
    row.prefect_created, row.prefect_updated = info.created, info.updated
    row.gone_at = None
    row.status = verdict.status
    for flag, value in verdict.flags.items():
        setattr(row, flag, value)
    row.holder_count = sum(
        1 for v in verdict.holders if v.condition in (Condition.HOLDING, Condition.STALE)
    )
    row.holder_slots = verdict.holder_slots
    row.waiter_count = len(verdict.waiters)
    row.held_since = verdict.held_since
    row.drift_since = verdict.drift_since
    row.evidence = verdict.evidence
    if info.name in snapshot.tag_checked:
        row.holders_checked_at = now
    elif info.name in snapshot.tag_counted and row.holders_checked_at is None:
        # Holders found by counting Running task runs, not yet read from Prefect's own list:
        # kept while the counter stands still (as a read list is), and first in line for
        # the per-pass check against that list.
        row.holders_checked_at = NEVER_READ


def _holders_moved(stored: dict[str, Holder], verdicts: list[HolderVerdict]) -> bool:
    return {(k, h.condition) for k, h in stored.items()} != {
        (v.claim.key, v.condition) for v in verdicts
    }


def _write_people(
    plan: list[tuple[Limit, list[HolderVerdict], list[WaiterVerdict]]],
    holders: dict[int, dict[str, Holder]],
    waiters: dict[int, dict[str, Waiter]],
    snapshot: Snapshot,
) -> tuple[int, int, set[int]]:
    """Write each limit's holders and waiters; return their counts and the limits touched."""
    holder_rows, touched = _reconcile(
        Holder, HOLDER_FIELDS, holders,
        ((row, [(v.claim.key, _holder_values(v, snapshot)) for v in verdicts]) for row, verdicts, _ in plan),
    )  # fmt: skip
    by_key = {(row.limit_id, row.key): row for row in holder_rows}
    waiter_rows = []
    for row, _, verdicts in plan:
        waiter_rows.append(
            (
                row,
                [
                    (v.queued.key, _waiter_values(v, row, by_key, waiters, snapshot))
                    for v in verdicts
                ],
            )
        )
    _, waiters_touched = _reconcile(Waiter, WAITER_FIELDS, waiters, waiter_rows)
    visible = [h for h in holder_rows if h.condition != Condition.LEAVING]
    return (
        len(visible),
        sum(len(items) for _, items in waiter_rows),
        touched | waiters_touched,
    )


def _reconcile(model, fields, existing, desired) -> tuple[list[Model], set[int]]:
    """Create, update or delete rows so that each limit has exactly the desired keys.

    Returns the rows kept and the pks of the limits whose rows changed in any way.
    """
    create, update, keep, delete = [], [], [], []
    touched: set[int] = set()
    for limit, items in desired:
        stored = dict(existing.get(limit.pk, {}))
        for key, values in items:
            row = stored.pop(key, None)
            if row is None:
                row = model(limit=limit, key=key, **values)
                create.append(row)
                touched.add(limit.pk)
            elif any(getattr(row, name) != value for name, value in values.items()):
                for name, value in values.items():
                    setattr(row, name, value)
                update.append(row)
                touched.add(limit.pk)
            keep.append(row)
        if stored:
            touched.add(limit.pk)
        delete.extend(row.pk for row in stored.values())
    if delete:
        model.objects.filter(pk__in=delete).delete()
    model.objects.bulk_create(create, batch_size=BATCH)
    model.objects.bulk_update(update, fields, batch_size=BATCH)
    return keep, touched


def _run_values(
    flow_run_id: UUID | None, task_run_id: UUID | None, names: dict[str, str], snapshot: Snapshot
) -> dict[str, Any]:
    task_run = snapshot.task_runs.get(task_run_id) if task_run_id else None
    flow_run_id = flow_run_id or (task_run.flow_run_id if task_run else None)
    flow_run = snapshot.flow_runs.get(flow_run_id) if flow_run_id else None
    flow_id = flow_run.flow_id if flow_run else None
    deployment_id = flow_run.deployment_id if flow_run else None
    deployment_name = (
        snapshot.deployments.get(deployment_id, ("", None))[0] if deployment_id else ""
    )
    # A task run's own state only: one Prefect has not recorded yet shows none (and is asked
    # for again next time), never its flow run's.
    state = task_run if task_run_id else flow_run
    return {
        "flow_run_id": flow_run_id,
        "flow_run_name": (flow_run.name if flow_run else "") or names.get("flow_run_name", ""),
        "flow_id": flow_id,
        "flow_name": snapshot.flow_names.get(flow_id, "")
        if flow_id
        else names.get("flow_name", ""),
        "task_run_id": task_run_id,
        "task_run_name": (task_run.name if task_run else "") or names.get("task_run_name", ""),
        "deployment_id": deployment_id,
        "deployment_name": deployment_name,
        "state_type": state.state_type if state else "",
        "state_name": state.state_name if state else "",
        "state_at": state.state_at if state else None,
    }


def _holder_values(verdict: HolderVerdict, snapshot: Snapshot) -> dict[str, Any]:
    claim = verdict.claim
    return {
        **_run_values(claim.flow_run_id, claim.task_run_id, claim.names, snapshot),
        "source": claim.source,
        "condition": verdict.condition,
        "acquired_at": claim.acquired_at,
        "lease_id": claim.lease_id,
        "lease_seconds": claim.lease_seconds,
        "slots": claim.slots,
        "process": claim.process,
        "slot_lost_at": verdict.slot_lost_at,
        "run_missing_since": snapshot.missing_since.get(claim.task_run_id or claim.flow_run_id),
        "evidence": verdict.evidence,
    }


def _waiter_values(
    verdict: WaiterVerdict, limit: Limit, holders_by_key, waiters, snapshot
) -> dict[str, Any]:
    item = verdict.queued
    kept = waiters.get(limit.pk, {}).get(item.key)
    since = item.waiting_since
    if kept is not None and kept.waiting_since and (since is None or kept.waiting_since < since):
        since = kept.waiting_since  # the earliest sighting: a re-proposed run keeps its place
    return {
        **_run_values(item.flow_run_id, item.task_run_id, {}, snapshot),
        "source": item.source,
        "waiting_since": since,
        "position": verdict.position,
        "deadlocked_by_id": _pk(holders_by_key.get((limit.pk, verdict.deadlocked_by))),
        "evidence": verdict.evidence,
    }


def _pk(row: Model | None) -> int | None:
    return row.pk if row is not None else None


def _mark_gone(snapshot: Snapshot, compact: dict[UUID, tuple], now: datetime) -> int:
    """What a complete listing lacks is gone from Prefect; a read of a few limits only speaks
    for those names."""
    present = {info.id for info in snapshot.listing}
    gone_pks = [
        row[0]
        for prefect_id, row in compact.items()
        if prefect_id not in present
        and row[COMPACT.index("gone_at")] is None
        and (snapshot.only is None or row[COMPACT.index("name")] in snapshot.only)
    ]
    gone = [row for chunk in _chunked(gone_pks) for row in Limit.objects.filter(pk__in=chunk)]
    for row in gone:
        row.gone_at, row.status, row.changed_at = now, Status.GONE, now
        row.is_held = row.has_waiters = row.is_stale = row.has_zombie = False
        row.is_deadlocked = row.has_drift = row.has_long_hold = row.is_over_limit = False
        row.holder_count = row.holder_slots = row.waiter_count = 0
    Limit.objects.bulk_update(gone, LIMIT_FIELDS, batch_size=BATCH)
    Holder.objects.filter(limit__in=gone).delete()
    Waiter.objects.filter(limit__in=gone).delete()
    return len(gone)
