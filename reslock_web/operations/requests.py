"""Asking for an operation: the one place an operation row is created.

The row carries everything the worker will act on, as the operator confirmed it: the holder as
the plan saw it (`holder_snapshot`), the limit's settings then (`before`) and the parameters.
The worker (`jobs`, `fence`) acts on these, never on rows that may have changed since, and
re-reads Prefect before it changes anything. The job is sent once the transaction commits.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from reslock_web.models import Holder, Limit, Operation
from reslock_web.operations.queue import dispatch


def request_operation(
    *,
    kind: str,
    limit: Limit,
    holder: Holder | None,
    user: AbstractBaseUser | None,
    reason: str = "",
    by: str = "",
    params: dict[str, Any] | None = None,
    token: uuid.UUID | None = None,
    bulk: uuid.UUID | None = None,
) -> Operation:
    """Create the operation and send its job after the caller's transaction commits. `by`
    names who asked when no user did (the auto-release policy).

    `token` makes a request idempotent: a second one with the same token raises IntegrityError
    (the unique constraint), which the caller answers with the first operation."""
    operation = Operation.objects.create(
        kind=kind,
        limit=limit,
        limit_name=limit.name,
        holder_key=holder.key if holder else "",
        holder=holder_snapshot(holder) if holder else {},
        params=params or {},
        reason=reason,
        requested_by=user,
        requested_by_name=by or user.get_username(),
        token=token or uuid.uuid4(),
        bulk=bulk,
        before={"limit": limit.limit, "active": limit.active, "active_slots": limit.active_slots},
    )
    dispatch(operation)
    return operation


def holder_snapshot(holder: Holder) -> dict[str, object]:
    """The holder as the operation's plan saw it, kept on the operation: the worker acts on
    this (`jobs`, `fence`), never on a row that may have changed since the operator confirmed."""
    fields = [
        "condition",
        "source",
        "flow_run_id",
        "flow_run_name",
        "task_run_id",
        "task_run_name",
        "lease_id",
        "lease_seconds",
        "state_name",
        "acquired_at",
    ]
    snapshot: dict[str, object] = {
        name: str(getattr(holder, name)) if getattr(holder, name) is not None else None
        for name in fields
    }
    # Kept as JSON: the worker checks, where it runs, whether that process has ended.
    snapshot["process"] = holder.process or {}
    return snapshot
