"""The periodic sweep (a beat job) that catches what fell between a request and a worker.

It re-sends pending operations that have waited too long (a lost or never sent message), looks
again at every fence that keeps a resource closed (`fence.follow_up`), and ends operations left
"running" by a worker that died, after reading what Prefect shows now.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from reslock_web.models import Operation, OperationKind, OperationStatus
from reslock_web.operations import fence
from reslock_web.operations.jobs import finish_claimed
from reslock_web.operations.outcome import limit_snapshot
from reslock_web.operations.queue import send
from reslock_web.prefect_io.api import PrefectAPI, PrefectError
from reslock_web.sync.run import sync_limit

log = logging.getLogger(__name__)

# A pending operation untouched for this long has lost its message (or never had one).
REQUEUE_AFTER = timedelta(seconds=60)
# A worker past Celery's hard time limit is gone; this margin lets its kill land first.
DEADLINE_MARGIN = timedelta(seconds=15)
SWEEP_BATCH = 200
WORKER_STOPPED = "The worker running it stopped before it finished"


def deadline() -> timedelta:
    """How long an operation may stay running before its worker counts as gone."""
    return timedelta(seconds=settings.OPERATION_TIMEOUT_SECONDS) + DEADLINE_MARGIN


def sweep(now: datetime | None = None) -> dict[str, int]:
    """Re-send overdue pending operations and end abandoned running ones."""
    now = now or timezone.now()
    cutoff = now - REQUEUE_AFTER
    overdue = Operation.objects.filter(status=OperationStatus.PENDING).filter(
        Q(started_at__isnull=True, created_at__lt=cutoff) | Q(started_at__lt=cutoff)
    )
    requeued = 0
    for operation_id in overdue.order_by("created_at").values_list("pk", flat=True)[:SWEEP_BATCH]:
        if not send(operation_id):
            break  # the broker is down: the next sweep tries again
        requeued += 1
    abandoned = list(
        Operation.objects.select_related("limit")
        .filter(status=OperationStatus.RUNNING, started_at__lt=now - deadline())
        .order_by("started_at")[:SWEEP_BATCH]
    )
    fencing = list(
        Operation.objects.select_related("limit")
        .filter(status=OperationStatus.FENCING)
        .order_by("started_at")[:SWEEP_BATCH]
    )
    ended = fenced = 0
    if abandoned or fencing:
        with PrefectAPI.from_settings() as api:
            ended = sum(end_abandoned(operation, api) for operation in abandoned)
            fenced = sum(follow_fence(operation, api) for operation in fencing)
    if requeued or ended or fenced:
        log.info(
            "sweep: %s operation(s) sent again, %s abandoned one(s) ended, %s fence(s) lifted",
            requeued,
            ended,
            fenced,
        )
    return {"requeued": requeued, "ended": ended, "fenced": fenced}


def follow_fence(operation: Operation, api: PrefectAPI) -> bool:
    """Look again at an operation that keeps a resource closed; True if that has ended."""
    now = timezone.now()
    claimed = Operation.objects.filter(pk=operation.pk, status=OperationStatus.FENCING).update(
        status=OperationStatus.RUNNING, started_at=now
    )
    if not claimed:
        return False
    operation.status, operation.started_at = OperationStatus.RUNNING, now
    status, message = fence.follow_up(operation, api)
    finish_claimed(operation, api, status, message)
    return status != OperationStatus.FENCING


def end_abandoned(operation: Operation, api: PrefectAPI) -> bool:
    """End an operation whose worker died, saying what Prefect shows now. True if we ended it."""
    try:
        info = api.read_limit(str(operation.limit.prefect_id))
        after = limit_snapshot(info)
        seen = _what_prefect_shows(operation, info)
    except PrefectError as error:
        info, after, seen = None, {}, f"Prefect could not be read to check ({error})."
    if fence.resumable(operation):
        # A revoke may have been applied: the placeholder stays until the holder is shown to
        # have stopped, whatever happened to the job.
        return bool(
            Operation.objects.filter(
                pk=operation.pk, status=OperationStatus.RUNNING, started_at=operation.started_at
            ).update(
                status=OperationStatus.FENCING,
                message=f"{WORKER_STOPPED}; the lease may have been revoked, so the resource "
                "stays closed until the holder is shown to have stopped. " + seen,
            )
        )
    status = OperationStatus.FAILED
    if info is not None and _goal_reached(operation, info):
        status = OperationStatus.SUCCEEDED
        seen = f"{seen} That is what was asked for: the change was made."
    elif operation.params.get("placeholder") or operation.params.get("fence"):
        seen += (
            " The placeholder slot it counted may still be counted: the resource then shows "
            "drift (closed to everyone, never open to two) and can be repaired from its page."
        )
    else:
        seen += " Check the resource and ask again if it is still needed."
    ended = Operation.objects.filter(
        pk=operation.pk, status=OperationStatus.RUNNING, started_at=operation.started_at
    ).update(
        status=status,
        message=f"{WORKER_STOPPED} (still running {int(deadline().total_seconds())} s after it started). {seen}"[
            :4000
        ],
        after=after,
        finished_at=timezone.now(),
    )
    if ended:
        log.warning("operation %s abandoned by its worker: ended as %s", operation.pk, status)
        _resync(api, operation.limit.name)
    return bool(ended)


def _what_prefect_shows(operation: Operation, info) -> str:
    if info is None:
        return "Prefect no longer has this limit."
    state = "active" if info.active else "inactive"
    return f"Prefect now shows limit {info.limit}, {info.active_slots} slot(s) used, {state}."


def _goal_reached(operation: Operation, info) -> bool:
    """Only changes whose result is plain to see can be called done after the fact."""
    if operation.kind == OperationKind.SET_LIMIT:
        return info.limit == operation.params.get("value")
    if operation.kind == OperationKind.ACTIVATE:
        return info.active
    if operation.kind == OperationKind.DEACTIVATE:
        return not info.active
    return False


def _resync(api: PrefectAPI, name: str) -> None:
    try:
        sync_limit(api, name, wait=10)
    except Exception:  # the next periodic sync catches up
        log.exception("sync of %s after ending an abandoned operation failed", name)
