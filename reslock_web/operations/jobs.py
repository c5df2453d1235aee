"""Doing an operation, in a Celery worker: claim it, act, record the outcome.

`run` claims the operation with a compare-and-set (a second delivery does nothing); `execute`
hands it to its step (`release`, or `changes` for the others), which re-reads Prefect first and
acts only if the facts that made the plan (`plans`) safe still hold. Every write to Prefect goes
through `OwnedAPI`, which stops the job the moment it no longer owns the operation.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from reslock_web.models import (
    FINAL_OPERATION_STATUSES,
    ClaimLost,
    Operation,
    OperationKind,
    OperationStatus,
)
from reslock_web.operations.changes import repair, set_limit, toggle
from reslock_web.operations.outcome import (
    limit_snapshot,
    read_quietly,
)
from reslock_web.operations.plans import (
    at_utc,
)
from reslock_web.operations.queue import send
from reslock_web.operations.release import release
from reslock_web.prefect_io.api import PrefectAPI, PrefectError
from reslock_web.sync.run import sync_limit

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


class TryAgain(Exception):
    """A transient Prefect failure: the operation went back to pending for a retry."""


def run(operation_id: int, api: PrefectAPI) -> None:
    """Claim, execute, record. A second delivery of the same operation does nothing."""
    if not Operation.objects.claim(operation_id):
        _note_waiting(operation_id)
        return
    operation = Operation.objects.select_related("limit").get(pk=operation_id)
    try:
        status, message, after = execute(operation, OwnedAPI(api, operation))
    except ClaimLost as lost:
        # The sweep ends or resumes it (or already did): one outcome, recorded there.
        log.warning(
            "operation %s: %s; this job changes and records nothing more", operation_id, lost
        )
        return
    except PrefectError as error:
        if error.retryable and operation.attempts < MAX_ATTEMPTS:
            Operation.objects.owned_by(operation).update(
                status=OperationStatus.PENDING,
                message=f"attempt {operation.attempts} failed: {error}; retrying",
            )
            raise TryAgain(str(error)) from error
        _finish(operation, OperationStatus.FAILED, _in_words(error))
        _resync(api, operation.limit.name)
        return
    # The board shows the change before the operation says it is done.
    _resync(api, operation.limit.name)
    _finish(operation, status, message, after)


class OwnedAPI:
    """Prefect as one job uses it: a change is sent only while the job still owns its
    operation and is within its own time (`OPERATION_TIMEOUT` after its claim).

    The sweep takes over a job still running `OPERATION_TIMEOUT` + 15 s after its claim. A
    worker that was only stalled (a stopped process, a paused machine) and wakes up later must
    not change Prefect then: the operation's record says what Prefect showed without that
    change, and an operator may already have asked for it again. The check and the change are
    two steps: a stall of over 15 s exactly between them is not caught here. The fence's own
    steps are safe even then, since each saves its stage under the claim first (fence._save)."""

    CHANGES = frozenset({"update_limit", "decrement", "revoke_lease", "crash_run", "request"})

    def __init__(self, api: PrefectAPI, operation: Operation) -> None:
        self._api, self._operation = api, operation

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._api, name)
        if name not in self.CHANGES:
            return value

        def change(*args: Any, **kwargs: Any) -> Any:
            _still_owned(self._operation)
            return value(*args, **kwargs)

        return change


def _still_owned(operation: Operation) -> None:
    ends = operation.started_at + timedelta(seconds=settings.OPERATION_TIMEOUT_SECONDS)
    if timezone.now() >= ends:
        raise ClaimLost(
            f"its time ran out at {at_utc(ends)} before a change to Prefect; the sweep takes it over"
        )
    if not Operation.objects.owned_by(operation).exists():
        raise ClaimLost("the sweep took it over while this job was stalled")


def finish_claimed(operation: Operation, api: PrefectAPI, status: str, message: str) -> None:
    """Record what a look taken outside `run` (the sweep's) found, the board first."""
    info = read_quietly(api, operation) if status != OperationStatus.FENCING else None
    _resync(api, operation.limit.name)
    _finish(operation, status, message, limit_snapshot(info) if info else None)


def _note_waiting(operation_id: int) -> None:
    """Not claimed: already taken, or another operation acts on the same limit now. In the
    second case it stays pending, says so, and is sent again when that one ends."""
    operation = Operation.objects.filter(pk=operation_id).first()
    if operation is None or operation.status != OperationStatus.PENDING:
        log.info("operation %s is not pending: nothing to do", operation_id)
        return
    busy = Operation.objects.acting_on(operation.limit_id)
    if busy is None:  # it ended in between: the next message or the sweep claims it
        return
    log.info("operation %s waits for operation %s on the same limit", operation_id, busy.pk)
    Operation.objects.filter(pk=operation_id, status=OperationStatus.PENDING).update(
        message=f"Waiting: operation #{busy.pk} ({busy.get_kind_display()}) acts on this "
        "resource now; this one starts when it has ended."
    )


def send_next(limit_id: int) -> None:
    """Once an operation on a limit has ended, the next one waiting for it goes at once."""
    waiting = (
        Operation.objects.filter(limit_id=limit_id, status=OperationStatus.PENDING)
        .order_by("created_at", "id")
        .values_list("pk", flat=True)
        .first()
    )
    if waiting is not None:
        send(waiting)


def _in_words(error: PrefectError) -> str:
    """A failure retrying cannot fix, said so that the operator knows what happened."""
    if error.throttled:
        return (
            f"Not done: Prefect kept rate-limiting reslock through {MAX_ATTEMPTS} attempts. The "
            "request it refused was not carried out; ask again once Prefect takes requests "
            f"(RESLOCK_PREFECT_MAX_REQUESTS_PER_MINUTE keeps reslock under its limit). {error}"
        )
    if error.retryable:
        return f"Prefect error: {error}"
    if error.status == 404:
        return (
            "Failed: Prefect no longer has what this operation changes (deleted meanwhile); "
            f"nothing more was changed. Not retried. Prefect said: {error}"
        )
    return (
        f"Failed: Prefect refused the change (HTTP {error.status or 'error'}); retrying would "
        f"not help, so it was not retried. Prefect said: {error}"
    )


def _finish(operation: Operation, status: str, message: str, after: dict | None = None) -> None:
    """Record the outcome only if this claim still owns the operation: the sweep may have
    ended it meanwhile as abandoned (a worker stalled past its deadline), and one outcome only
    may stand."""
    final = status in FINAL_OPERATION_STATUSES
    recorded = Operation.objects.owned_by(operation).update(
        status=status,
        message=message[:4000],
        after=after or {},
        finished_at=timezone.now() if final else None,
    )
    if not recorded:
        log.warning(
            "operation %s was ended meanwhile; its late outcome %s is dropped", operation.pk, status
        )
    elif final:
        send_next(operation.limit_id)


def _resync(api: PrefectAPI, name: str) -> None:
    try:
        sync_limit(api, name)
    except Exception:  # the operation is done; a failed refresh is caught up by the next sync
        log.exception("sync of %s after an operation failed", name)


def execute(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
    handler = {
        OperationKind.RELEASE_HOLDER: release,
        OperationKind.REPAIR_DRIFT: repair,
        OperationKind.SET_LIMIT: set_limit,
        OperationKind.ACTIVATE: toggle,
        OperationKind.DEACTIVATE: toggle,
    }[operation.kind]
    return handler(operation, api)
