"""Board rows as the sync writes them, and a small sample board for view tests.

A limit's derived fields (its flags, counts, `held_since` and status badge) are never written
by hand next to the holders and waiters a test makes: `settle` derives them from those rows,
by the rules the sync's verdict follows (`status.diagnosis.judge`, `sync.verdicts.apply_verdict`),
and `make_limit` gives a limit made without people the status its flags call for. A test only
states what no one limit's people show (`MARKS`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.utils import timezone

from reslock.protocol import EVENT_ACQUIRED, EVENT_STOPPING
from reslock_web.models import (
    COUNTED,
    LIMIT_FLAGS,
    Condition,
    Holder,
    Limit,
    LockEvent,
    Source,
    Status,
    SyncRun,
    Waiter,
)
from reslock_web.status.diagnosis import status_of
from reslock_web.status.wait_for import with_cycle

XSS = "<img src=x onerror=alert(1)>"

# Flags a test states as its premise: what the sync finds beyond one limit's holders and
# waiters (a cycle through other limits, drift past its grace, a hold past the long-hold
# threshold, more runs inside than the limit for reasons the rows do not keep).
MARKS = frozenset({"is_deadlocked", "has_drift", "is_over_limit", "has_long_hold"})
# What `settle` derives and `make_limit` refuses alongside flags: a limit's people say it.
DERIVED_COUNTS = ("holder_count", "holder_slots", "waiter_count", "held_since")


def make_limit(name: str, **fields) -> Limit:
    """A limit row. Made without people: `fields` may give its flags (LIMIT_FLAGS), and its
    status follows from them as the sync's would (`status_of`; gone from Prefect: GONE, as the
    store marks it). An explicit `status` is for a test that means a status without its flags;
    counts and `held_since` come from holders and waiters (`settle`)."""
    kind = "tag" if name.startswith("tag:") else "global"
    defaults = {"kind": kind, "resource": name.removeprefix("tag:"), "limit": 1}
    fields = {**defaults, **fields}
    given = [flag for flag in LIMIT_FLAGS if flag in fields]
    if "status" in fields and given:
        raise TypeError(f"{name}: give flags or a status, not both ({', '.join(given)})")
    if counts := [field for field in DERIVED_COUNTS if field in fields]:
        raise TypeError(f"{name}: {', '.join(counts)} follow from its holders: use settle()")
    if "status" not in fields:
        flags = {flag: bool(fields.get(flag, False)) for flag in LIMIT_FLAGS}
        gone = fields.get("gone_at") is not None
        fields["status"] = Status.GONE if gone else status_of(flags, fields.get("active", True))
    return Limit.objects.create(prefect_id=uuid.uuid4(), name=name, **fields)


def make_holder(limit: Limit, **fields) -> Holder:
    """A holder row as the sync writes one: holding, of a flow run, unless `fields` say else."""
    defaults = {"key": uuid.uuid4().hex[:8], "condition": "holding", "flow_run_id": uuid.uuid4()}
    return Holder.objects.create(limit=limit, **{**defaults, **fields})


def make_waiter(limit: Limit, **fields) -> Waiter:
    """A waiter row as the sync writes one: a flow run, next in line, unless `fields` say else."""
    defaults = {
        "key": uuid.uuid4().hex[:8],
        "source": Source.TAG_LEASE if limit.kind == "tag" else Source.EVENT,
        "flow_run_id": uuid.uuid4(),
        "position": limit.waiters.count() + 1,
    }
    return Waiter.objects.create(limit=limit, **{**defaults, **fields})


def make_held(
    name: str,
    *,
    since: datetime | None = None,
    condition: str = Condition.HOLDING,
    marks: Iterable[str] = (),
    **fields,
) -> Limit:
    """A limit with one holder (`condition`, acquired at `since`), settled."""
    limit = make_limit(name, **fields)
    make_holder(limit, condition=condition, acquired_at=since)
    return settle(limit, marks=marks)


def settle(limit: Limit, *, marks: Iterable[str] = ()) -> Limit:
    """Write on `limit` what the sync derives from its holder and waiter rows: the flags, the
    counts, `held_since` and the status badge; saved and returned.

    `active_slots` is Prefect's count: a test may give one that its holders do not explain
    (a pool partly taken by runs it does not make); left at 0, it is the slots the counted
    holders take, as Prefect counts them when nothing is wrong (none while the limit is
    inactive: Prefect counts nothing then). `marks` are the flags the test
    states as its premise (MARKS); the rest follow from the rows, as in `judge`:
    a self-deadlocked waiter or a cross-limit `deadlock_cycle` deadlocks it, a live holder
    outside the count (holding, its slot lost) or live runs taking more than the limit put it
    over the limit, an uncounted holder makes its badge "uncounted"."""
    marks = set(marks)
    if unknown := marks - MARKS:
        raise ValueError(f"not a premise but derived from the rows: {sorted(unknown)}")
    if limit.gone_at is not None:
        raise ValueError(f"{limit.name} is gone: the store keeps no people for it")
    holders = list(limit.holders.all())
    waiters = list(limit.waiters.all())
    enforced = limit.active and limit.slot_decay_per_second == 0
    counted = [h for h in holders if h.condition in COUNTED]
    # Shown alive while Prefect no longer counts its slot (diagnosis' `uncounted=True`).
    alive_out = [h for h in counted if h.condition == Condition.HOLDING and h.slot_lost_at]
    holder_slots = sum(h.slots for h in counted if h not in alive_out)
    if enforced and not limit.active_slots:
        limit.active_slots = holder_slots
    # Runs certainly inside: a tag lease Prefect lists, or a run Prefect returned (its state).
    inside = [
        h
        for h in holders
        if h.condition == Condition.HOLDING and (h.source == Source.TAG_LEASE or h.state_type)
    ]
    over = enforced and (sum(h.slots for h in inside) > limit.limit or bool(alive_out))
    flags = {
        "is_held": bool(counted) or (enforced and limit.active_slots > 0),
        "has_waiters": bool(waiters),
        "is_stale": any(h.condition == Condition.STALE for h in holders),
        "has_zombie": any(h.condition == Condition.ZOMBIE for h in holders),
        "is_deadlocked": False,  # with_cycle decides it
        "has_drift": "has_drift" in marks,
        "has_long_hold": "has_long_hold" in marks,
        "is_over_limit": over or "is_over_limit" in marks,
    }
    marked = with_cycle(
        flags,
        limit.evidence,
        active=limit.active,
        uncounted=any(h.condition == Condition.UNCOUNTED for h in holders),
        self_deadlocked=any(w.deadlocked_by_id for w in waiters) or "is_deadlocked" in marks,
        cycle=limit.deadlock_cycle,
    )
    for flag, value in marked.flags.items():
        setattr(limit, flag, value)
    limit.status, limit.evidence = marked.status, marked.evidence
    limit.holder_count, limit.holder_slots = len(counted), holder_slots
    limit.waiter_count = len(waiters)
    starts = [h.acquired_at for h in counted if h.acquired_at]
    limit.held_since = min(starts) if starts else None
    limit.save()
    return limit


def make_lost_lease(limit: Limit, lost_at, **fields) -> LockEvent:
    """A helper's acquire of `limit` whose lease was lost while its run went on, closed as the
    sync closes it (the helper's release with reason `lease_lost`)."""
    defaults = {
        "lease_id": uuid.uuid4(),
        "flow_run_id": uuid.uuid4(),
        "flow_run_name": "lost-run",
        "occurred": lost_at - timedelta(minutes=10),
        "closed_reason": "lease_lost",
    }
    return LockEvent.objects.create(
        event_id=uuid.uuid4(),
        event=EVENT_ACQUIRED,
        limit_prefect_id=limit.prefect_id,
        limit_name=limit.name,
        closed_at=lost_at,
        **{**defaults, **fields},
    )


def make_stopping(limit: Limit, lease_id, occurred) -> LockEvent:
    """The helper's announcement that a block whose lease was lost is still inside."""
    return LockEvent.objects.create(
        event_id=uuid.uuid4(),
        event=EVENT_STOPPING,
        occurred=occurred,
        limit_prefect_id=limit.prefect_id,
        limit_name=limit.name,
        lease_id=lease_id,
    )


def sample_rows() -> Limit:
    """A contended resource with a marked-up holder, a stale tag, a free resource and an
    inactive one, and one good sync; returns the contended resource."""
    now = timezone.now()
    held = make_limit("resource:db-main")
    make_holder(
        held,
        key="h",
        source="event",
        flow_run_name=XSS,
        flow_name="loader",
        task_run_name="load-it",
        state_type="RUNNING",
        state_name="Running",
        acquired_at=now - timedelta(hours=3, minutes=12),
        lease_seconds=60,
    )
    for position, name in [(1, "second-in-line"), (2, "third-in-line")]:
        make_waiter(
            held,
            key=name,
            source="tag_lease",
            position=position,
            flow_run_id=None,
            flow_run_name=name,
            waiting_since=now - timedelta(minutes=position),
        )
    settle(held)
    reports = make_limit(
        "tag:reports",
        evidence=[{"flag": "stale", "text": "run 'x' is Completed but still counted"}],
    )
    make_holder(
        reports,
        source="tag_lease",
        condition=Condition.STALE,
        flow_run_name="x",
        task_run_id=uuid.uuid4(),
        state_type="COMPLETED",
        state_name="Completed",
        acquired_at=now - timedelta(minutes=40),
    )
    settle(reports)
    make_limit("resource:free-one")
    make_limit("resource:paused", active=False)
    SyncRun.objects.create(ok=True, finished_at=now, limits=4, duration_ms=12)
    return held
