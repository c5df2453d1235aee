"""A small board for view tests: a contended resource with a marked-up holder, a stale tag,
a free resource and an inactive one, and one good sync."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.utils import timezone

from reslock.protocol import EVENT_ACQUIRED, EVENT_STOPPING
from reslock_web.models import Holder, Limit, LockEvent, Status, SyncRun, Waiter

XSS = "<img src=x onerror=alert(1)>"


def make_limit(name: str, **fields) -> Limit:
    kind = "tag" if name.startswith("tag:") else "global"
    defaults = {"kind": kind, "resource": name.removeprefix("tag:"), "limit": 1}
    return Limit.objects.create(prefect_id=uuid.uuid4(), name=name, **{**defaults, **fields})


def make_holder(limit: Limit, **fields) -> Holder:
    """A holder row as the sync writes one: holding, of a flow run, unless `fields` say else."""
    defaults = {"key": uuid.uuid4().hex[:8], "condition": "holding", "flow_run_id": uuid.uuid4()}
    return Holder.objects.create(limit=limit, **{**defaults, **fields})


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
    """Create the sample board; return the contended resource."""
    now = timezone.now()
    held = make_limit(
        "resource:db-main",
        status=Status.CONTENDED,
        is_held=True,
        has_waiters=True,
        active_slots=1,
        holder_count=1,
        waiter_count=2,
        held_since=now - timedelta(hours=3, minutes=12),
    )
    Holder.objects.create(
        limit=held,
        key="h",
        source="event",
        flow_run_id=uuid.uuid4(),
        flow_run_name=XSS,
        flow_name="loader",
        task_run_name="load-it",
        state_type="RUNNING",
        state_name="Running",
        acquired_at=now - timedelta(hours=3, minutes=12),
        lease_seconds=60,
    )
    for position, name in [(1, "second-in-line"), (2, "third-in-line")]:
        Waiter.objects.create(
            limit=held,
            key=name,
            source="tag_lease",
            position=position,
            flow_run_name=name,
            waiting_since=now - timedelta(minutes=position),
        )
    make_limit(
        "tag:reports",
        kind="tag",
        status=Status.STALE,
        is_held=True,
        is_stale=True,
        active_slots=1,
        evidence=[{"flag": "stale", "text": "run 'x' is Completed but still counted"}],
    )
    make_limit("resource:free-one")
    make_limit("resource:paused", active=False, status=Status.INACTIVE)
    SyncRun.objects.create(ok=True, finished_at=now, limits=4, duration_ms=12)
    return held
