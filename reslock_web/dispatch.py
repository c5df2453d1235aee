"""Handing operations to Celery, and the periodic sweep that catches what fell between.

An operation row is the truth; a broker message is only a nudge. So:

- `dispatch(operation)` sends the message after the request's transaction commits. If the
  broker (Redis) does not answer, the request still succeeds: the row stays pending with a note
  that says so, and the sweep sends it again later.
- `sweep()` (a beat job) re-sends pending operations that have waited too long (a lost or never
  sent message), and ends operations left "running" by a worker that died, after reading what
  Prefect shows now. A message sent twice is harmless: `operations.run()` claims an operation
  with a compare-and-set, so the second delivery does nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from reslock_web.models import Operation, OperationKind, OperationStatus
from reslock_web.prefect_api import PrefectAPI, PrefectError

log = logging.getLogger(__name__)

# A pending operation untouched for this long has lost its message (or never had one).
REQUEUE_AFTER = timedelta(seconds=60)
# A worker past Celery's hard time limit is gone; this margin lets its kill land first.
DEADLINE_MARGIN = timedelta(seconds=15)
SWEEP_BATCH = 200
QUEUED_NOTE = (
    "Queued: the job broker (Redis) is not answering, so no worker has this job yet. "
    "It starts by itself once the broker is back; nothing has been changed in Prefect."
)
WORKER_STOPPED = "The worker running it stopped before it finished"
# One quick retry covers a connection the broker closed (a Redis restart); a broker that is
# really down must not keep the operator's request waiting.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}


def dispatch(operation: Operation) -> None:
    """Send the operation to a worker once the current transaction has committed."""
    transaction.on_commit(lambda: send(operation.pk))


def send(operation_id: int) -> bool:
    """Publish one operation; on a broker failure, note it on the row and return False."""
    from reslock_web.tasks import operate

    try:
        operate.apply_async(args=[operation_id], retry=True, retry_policy=PUBLISH_RETRY)
    except (BrokerError, OSError) as error:
        log.warning("operation %s not queued, the broker did not answer: %s", operation_id, error)
        Operation.objects.filter(pk=operation_id, status=OperationStatus.PENDING).update(
            message=QUEUED_NOTE
        )
        return False
    Operation.objects.filter(
        pk=operation_id, status=OperationStatus.PENDING, message=QUEUED_NOTE
    ).update(message="")
    return True


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
    from reslock_web import fence
    from reslock_web.operations import finish_claimed

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
    from reslock_web.operations import limit_snapshot

    try:
        info = api.read_limit(str(operation.limit.prefect_id))
        after = limit_snapshot(info)
        seen = _what_prefect_shows(operation, info)
    except PrefectError as error:
        info, after, seen = None, {}, f"Prefect could not be read to check ({error})."
    from reslock_web import fence

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
    from reslock_web.sync import sync_limit

    try:
        sync_limit(api, name, wait=10)
    except Exception:  # the next periodic sync catches up
        log.exception("sync of %s after ending an abandoned operation failed", name)
