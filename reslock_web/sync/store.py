"""Write a sync snapshot into our tables: only what changed, in one transaction.

Rows are matched by stable keys (a limit by its Prefect id, a holder or waiter by its claim
key) and updated in place, so that ids stay put for operations and the board redraws only
the rows that changed. The verdicts come from `verdicts`, the lock events are recorded by
`events`, and the shortcuts for thousands of limits are in `fast_paths`.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.db.models import F, Model

from reslock_web.alerts import webhook
from reslock_web.models import (
    LIMIT_FLAGS,
    Condition,
    Holder,
    Limit,
    LockEvent,
    Status,
    SyncState,
    Waiter,
)
from reslock_web.status import diagnosis
from reslock_web.status.diagnosis import Context, HolderVerdict, WaiterVerdict
from reslock_web.sync.deadlocks import mark_cycles
from reslock_web.sync.events import record_events
from reslock_web.sync.fast_paths import COMPACT, NewLimits, insert_limits, is_quiet, read_stored
from reslock_web.sync.queries import BATCH, chunked
from reslock_web.sync.snapshot import Snapshot
from reslock_web.sync.verdicts import apply_verdict, judge_limit, life_reader, released_keys

LIMIT_FIELDS = [
    "name",
    "kind",
    "resource",
    "search_text",
    "deployment_id",
    "limit",
    "active",
    "active_slots",
    "slot_decay_per_second",
    "prefect_created",
    "prefect_updated",
    "gone_at",
    "status",
    *LIMIT_FLAGS,
    "holder_count",
    "holder_slots",
    "waiter_count",
    "held_since",
    "drift_since",
    "holders_checked_at",
    "evidence",
    "changed_at",
]
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
    "flow_run_id",
    "flow_run_name",
    "flow_id",
    "flow_name",
    "task_run_id",
    "task_run_name",
    "deployment_id",
    "deployment_name",
    "state_type",
    "state_name",
    "state_at",
]
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
WAITER_FIELDS = [
    *RUN_FIELDS,
    "source",
    "waiting_since",
    "position",
    "deadlocked_by_id",
    "evidence",
    "parent_flow_run_id",
    "parent_flow_run_name",
]


def _store_events(snapshot: Snapshot) -> int:
    return record_events(snapshot.events)


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
        released_keys(holders),
        snapshot.missing_since,
        life=life_reader(now, snapshot.heartbeats),
    )
    busy = [
        info
        for info in snapshot.listing
        if not is_quiet(info, compact.get(info.id), snapshot, holders, waiters)
    ]
    limits = {info.id: row for info in busy if (row := stored.rows.get(info.id)) is not None}
    pks = [compact[info.id][0] for info in busy if info.id in compact and info.id not in limits]
    limits.update(
        (row.prefect_id, row)
        for pk_chunk in chunked(pks)
        for row in Limit.objects.filter(pk__in=pk_chunk)
    )
    new_limits: list[Limit] = []
    new_limit = NewLimits()
    alike: dict[tuple, diagnosis.Verdict] = {}
    changed: list[Limit] = []
    holder_plan: list[tuple[Limit, list[HolderVerdict], list[WaiterVerdict]]] = []
    closed_events: list[str] = []
    news: list[tuple[Limit, str]] = []  # rows whose status moved, and from what
    for info in busy:
        row = limits.get(info.id)
        if row is None:
            row = new_limit(info.id, now)
            verdict = judge_limit(info, row, snapshot, {}, ctx, alike)
            apply_verdict(row, info, verdict, snapshot, now)
            closed_events += verdict.closed_claims
            holder_plan.append((row, verdict.holders, verdict.waiters))
            new_limits.append(row)
            news.append((row, ""))
            continue
        before = {name: getattr(row, name) for name in LIMIT_FIELDS}
        verdict = judge_limit(info, row, snapshot, holders.get(row.pk, {}), ctx, alike)
        apply_verdict(row, info, verdict, snapshot, now)
        closed_events += verdict.closed_claims
        holder_plan.append((row, verdict.holders, verdict.waiters))
        after = {name: getattr(row, name) for name in LIMIT_FIELDS}
        if before["status"] != after["status"]:
            news.append((row, before["status"]))
        if before != after:
            if any(before[name] != after[name] for name in VISIBLE_FIELDS) or _holders_moved(
                holders.get(row.pk, {}), verdict.holders
            ):
                row.changed_at = now
            changed.append(row)
    insert_limits(new_limits)
    Limit.objects.bulk_update(changed, LIMIT_FIELDS, batch_size=BATCH)
    for row, previous in news:  # after the insert: a new row has its id now
        webhook.record(row, previous)
    counts["created"], counts["updated"] = len(new_limits), len(changed)

    counts["holders"], counts["waiters"], touched = _write_people(
        holder_plan, holders, waiters, snapshot
    )
    # A holder or waiter that came, went or changed (a name resolved, a place in the queue)
    # is a change the board must redraw, even when the limit's own columns stayed the same.
    touched -= {row.pk for row in new_limits}
    touched -= {row.pk for row in changed if row.changed_at == now}
    for pk_chunk in chunked(sorted(touched)):
        Limit.objects.filter(pk__in=pk_chunk).update(changed_at=now)
    counts["gone"] = _mark_gone(snapshot, compact, now)
    if closed_events:
        LockEvent.objects.filter(event_id__in=closed_events, closed_at__isnull=True).update(
            closed_at=now, closed_reason="ended"
        )
    if snapshot.only is None:
        SyncState.objects.update_or_create(
            name=SyncState.EVENTS, defaults={"events_until": snapshot.events_until}
        )
    else:
        # A pass over a few limits read their events only: its mark is theirs, and the mark
        # of how far every limit's events were read moves with complete passes alone.
        listed = [info.id for info in snapshot.listing]
        Limit.objects.filter(prefect_id__in=listed).update(events_read_until=snapshot.events_until)
    counts["limits"] = len(snapshot.listing)
    # After the people are written: a cycle spans limits this pass may not have read.
    cycles_moved = mark_cycles(now)
    if new_limits or changed or touched or counts["gone"] or cycles_moved:
        raise_board_version()
    return counts


def raise_board_version() -> None:
    """Tell polling pages that the board changed. Called inside the write's transaction: the
    row lock (PostgreSQL) or the write lock (SQLite) orders versions as the commits."""
    if not SyncState.objects.filter(name=SyncState.BOARD).update(version=F("version") + 1):
        # A random first version: a database made anew (tests, a restore) does not repeat
        # versions that running web processes have drawn pages for (board_cache).
        SyncState.objects.get_or_create(
            name=SyncState.BOARD, defaults={"version": secrets.randbelow(2**40) + 1}
        )


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
        Holder,
        HOLDER_FIELDS,
        holders,
        (
            (row, [(v.claim.key, _holder_values(v, snapshot)) for v in verdicts])
            for row, verdicts, _ in plan
        ),
    )
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
    run = _run_values(item.flow_run_id, item.task_run_id, {}, snapshot)
    return {
        **run,
        **_parent_values(run["flow_run_id"], snapshot),
        "source": item.source,
        "waiting_since": since,
        "position": verdict.position,
        "deadlocked_by_id": _pk(holders_by_key.get((limit.pk, verdict.deadlocked_by))),
        "evidence": verdict.evidence,
    }


def _parent_values(flow_run_id: UUID | None, snapshot: Snapshot) -> dict[str, Any]:
    """The flow run that started this one, through the task run that stands for it there."""
    flow_run = snapshot.flow_runs.get(flow_run_id) if flow_run_id else None
    started_by = flow_run.parent_task_run_id if flow_run else None
    task_run = snapshot.task_runs.get(started_by) if started_by else None
    parent_id = task_run.flow_run_id if task_run else None
    parent = snapshot.flow_runs.get(parent_id) if parent_id else None
    return {"parent_flow_run_id": parent_id, "parent_flow_run_name": parent.name if parent else ""}


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
    gone = [row for chunk in chunked(gone_pks) for row in Limit.objects.filter(pk__in=chunk)]
    for row in gone:
        row.gone_at, row.status, row.changed_at = now, Status.GONE, now
        row.is_held = row.has_waiters = row.is_stale = row.has_zombie = False
        row.is_deadlocked = row.has_drift = row.has_long_hold = row.is_over_limit = False
        row.holder_count = row.holder_slots = row.waiter_count = 0
    Limit.objects.bulk_update(gone, LIMIT_FIELDS, batch_size=BATCH)
    Holder.objects.filter(limit__in=gone).delete()
    Waiter.objects.filter(limit__in=gone).delete()
    return len(gone)
