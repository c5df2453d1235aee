"""A small board for view tests: a contended resource with a marked-up holder, a stale tag,
a free resource and an inactive one, and one good sync."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.utils import timezone

from reslock_web.models import Holder, Limit, Status, SyncRun, Waiter

XSS = "<img src=x onerror=alert(1)>"


def make_limit(name: str, **fields) -> Limit:
    kind = "tag" if name.startswith("tag:") else "global"
    defaults = {"kind": kind, "resource": name.removeprefix("tag:"), "limit": 1}
    return Limit.objects.create(prefect_id=uuid.uuid4(), name=name, **{**defaults, **fields})


def make_holder(limit: Limit, **fields) -> Holder:
    """A holder row as the sync writes one: holding, of a flow run, unless `fields` say else."""
    defaults = {"key": uuid.uuid4().hex[:8], "condition": "holding", "flow_run_id": uuid.uuid4()}
    return Holder.objects.create(limit=limit, **{**defaults, **fields})


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
