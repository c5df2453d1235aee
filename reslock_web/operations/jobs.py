"""Doing an operation, in a Celery worker: claim it, re-read Prefect, act, record.

`run` claims the operation with a compare-and-set (a second delivery does nothing) and
`execute` re-reads Prefect first, acting only if the facts that made the plan (`plans`) safe
still hold. Every write to Prefect goes through `OwnedAPI`, which stops the job the moment it
no longer owns the operation.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.utils import timezone

from reslock.process import describe, process_gone
from reslock.protocol import lease_length
from reslock_web.models import (
    FINAL_OPERATION_STATUSES,
    FINAL_STATES,
    ClaimLost,
    Condition,
    Holder,
    Kind,
    Limit,
    Operation,
    OperationKind,
    OperationStatus,
    Source,
)
from reslock_web.operations import fence
from reslock_web.operations.plans import (
    MAX_FENCED_LEASE,
    TAG_OBSERVATION_GAP,
    at_utc,
    known_slots,
    plan_repair,
    uncounted_holders,
    uncounted_words,
)
from reslock_web.operations.queue import send
from reslock_web.prefect_io.api import PrefectAPI, PrefectError
from reslock_web.sync.run import sync_limit, sync_limit_or_raise

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
    info = _read_quietly(api, operation) if status != OperationStatus.FENCING else None
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
        OperationKind.RELEASE_HOLDER: _release,
        OperationKind.REPAIR_DRIFT: _repair,
        OperationKind.SET_LIMIT: _set_limit,
        OperationKind.ACTIVATE: _toggle,
        OperationKind.DEACTIVATE: _toggle,
    }[operation.kind]
    return handler(operation, api)


def limit_snapshot(info: Any) -> dict[str, Any]:
    if info is None:
        return {}
    return {"limit": info.limit, "active": info.active, "active_slots": info.active_slots}


def _current(operation: Operation, api: PrefectAPI):
    info = api.read_limit(str(operation.limit.prefect_id))
    if info is None and operation.kind in CHANGES:
        # The change asked for cannot be made: that is a failure, not "nothing to do".
        raise Fail("the limit no longer exists in Prefect (it was deleted after this was asked)")
    if info is None:
        raise Skip("the limit no longer exists in Prefect, and its holders with it")
    return info


# Operations that change a limit's settings; the others free slots.
CHANGES = {OperationKind.SET_LIMIT, OperationKind.ACTIVATE, OperationKind.DEACTIVATE}


class Skip(Exception):
    """Nothing to do any more (the holder left, the value is already there)."""


class Fail(Exception):
    """The change cannot be made, and trying again would not help."""


def _skipping(handler):
    def wrapper(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
        try:
            return handler(operation, api)
        except Skip as skip:
            return OperationStatus.SKIPPED, f"Skipped: {skip}.", {}
        except Fail as fail:
            return OperationStatus.FAILED, f"Failed: {fail}; nothing was changed.", {}

    return wrapper


@_skipping
def _set_limit(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
    info = _current(operation, api)
    value, expected = operation.params["value"], operation.params["expected"]
    if info.limit == value:
        raise Skip(f"the limit is already {value}")
    if info.limit != expected:
        raise Skip(f"the limit changed meanwhile from {expected} to {info.limit}; nothing was done")
    api.update_limit(info.id, {"limit": value})
    return (
        OperationStatus.SUCCEEDED,
        f"Limit set from {expected} to {value}.",
        limit_snapshot(_read_quietly(api, operation)),
    )


@_skipping
def _toggle(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
    info = _current(operation, api)
    active = operation.kind == OperationKind.ACTIVATE
    if info.active == active:
        raise Skip(f"the limit is already {'active' if active else 'inactive'}")
    if active:
        sync_limit_or_raise(api, operation.limit.name)
        inside = uncounted_holders(Limit.objects.get(pk=operation.limit_id))
        if inside:
            raise Skip(uncounted_words(inside))
    api.update_limit(info.id, {"active": active})
    after = limit_snapshot(_read_quietly(api, operation))
    return OperationStatus.SUCCEEDED, f"Limit {'activated' if active else 'deactivated'}.", after


@_skipping
def _repair(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
    sync_limit_or_raise(api, operation.limit.name)  # fresh holders before deciding
    limit = Limit.objects.get(pk=operation.limit_id)
    info = _current(operation, api)
    shown = operation.params.get("shown_extra")
    if limit.kind == Kind.TAG:
        extra = _unleased_tag_slots(api, limit)
    else:
        if not operation.params.get("risk_accepted"):
            raise Fail("lowering a global or deployment counter needs the operator's acceptance")
        plan = plan_repair(limit, timezone.now())
        if not plan.allowed:
            raise Skip(plan.safety)
        extra = info.active_slots - known_slots(limit)
    if isinstance(shown, int):
        extra = min(extra, shown)
    if extra <= 0:
        raise Skip("Prefect's counter already matches the holders")
    api.decrement(info.name, extra)
    after = limit_snapshot(_read_quietly(api, operation))
    return (
        OperationStatus.SUCCEEDED,
        f"Lowered used slots by {extra} (slots without a lease).",
        after,
    )


def _unleased_tag_slots(api: PrefectAPI, limit: Limit) -> int:
    """Slots of a tag limit that no lease backed in two readings far enough apart."""
    import time as clock

    first = _tag_reading(api, limit)
    clock.sleep(TAG_OBSERVATION_GAP)
    return min(first, _tag_reading(api, limit))


def _tag_reading(api: PrefectAPI, limit: Limit) -> int:
    """Counted slots minus every lease seen around the count: a lease ending or beginning
    between the reads can only make this smaller, never larger."""
    before = api.tag_holders(limit.resource)
    info = api.read_limit(str(limit.prefect_id))
    after = api.tag_holders(limit.resource)
    if before is None or after is None or info is None:
        raise Skip("the limit no longer exists in Prefect")
    return info.active_slots - len(set(before) | set(after))


@_skipping
def _release(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
    holder = operation.holder
    task_run_id = _uuid(holder.get("task_run_id"))
    flow_run_id = _uuid(holder.get("flow_run_id"))
    lease_id = _uuid(holder.get("lease_id"))
    condition = holder.get("condition")
    _current(operation, api)  # it must still exist
    who = holder.get("flow_run_name") or holder.get("task_run_name") or operation.holder_key
    if condition == Condition.HOLDING and lease_id and holder.get("source") == Source.HELPER:
        if process_gone(holder.get("process")):
            return _release_ended_process(operation, api, lease_id, who)
        return _fence(operation, api, lease_id, who)
    message = f"Released from reslock by {operation.requested_by_name}: {operation.reason}"[:900]
    task_runs = api.task_runs([task_run_id]) if task_run_id else {}
    flow_runs = api.flow_runs([flow_run_id]) if flow_run_id else {}
    task_run = task_runs.get(task_run_id) if task_run_id else None
    flow_run = flow_runs.get(flow_run_id) if flow_run_id else None

    done: list[str] = []
    if condition == Condition.STALE and operation.limit.kind == Kind.TAG and task_run_id:
        leases = api.tag_holders(operation.limit.resource) or []
        if task_run_id not in leases:
            raise Skip(
                f"Prefect no longer lists the task run of {who!r} as a holder: it already left"
            )
        _known(task_run, who, "task run")
        if not _over(task_run):
            raise Skip(
                f"the task run of {who!r} is {task_run.state_name} again: it may be working, so its slot stays"
            )
        api.crash_run("task_run", task_run_id, message)
        done.append("task run crashed (its lease ended)")
    elif condition == Condition.STALE and lease_id:
        run = task_run if task_run_id else flow_run
        _known(run, who, "task run" if task_run_id else "flow run")
        if not _over(run):
            raise Skip(f"the run of {who!r} is running again: its lease stays")
        api.revoke_lease(lease_id)
        done.append(f"lease {lease_id} revoked")
    elif condition == Condition.ZOMBIE:
        if _over(task_run) and _over(flow_run):
            raise Skip(f"the runs of {who!r} are already over: it already left")
        _still_zombie(operation, api, who)
    else:
        raise Skip("the holder is not stale or zombie any more")
    if task_run is not None and not _over(task_run):  # a zombie's: stale ones are over already
        api.crash_run("task_run", task_run.id, message)
        done.append("task run crashed")
    if flow_run is not None and not _over(flow_run):
        # A zombie's process is gone. A stale holder's flow run often lives on, running other
        # tasks: it is crashed only when the operator asked for it.
        if condition == Condition.ZOMBIE or operation.params.get("crash_flow_run"):
            done.append(_crash_flow_run(operation, api, flow_run, message))
        else:
            done.append(f"flow run left {flow_run.state_name or 'running'} (not asked to crash it)")
    after = limit_snapshot(_read_quietly(api, operation))
    return OperationStatus.SUCCEEDED, f"Released {who!r}: " + ", ".join(done) + ".", after


def _known(run, who: str, what: str) -> None:
    """A run Prefect does not return is not over: Prefect writes task runs a little after they
    start (later under load), and its process may hold the slot and work meanwhile."""
    if run is None:
        raise Skip(
            f"Prefect does not return the {what} of {who!r}: it may not have been written yet "
            "while its process already works, so its slot stays; nothing was changed"
        )


def _over(run) -> bool:
    return run is None or run.state_type in FINAL_STATES


def _still_zombie(operation: Operation, api: PrefectAPI, who: str) -> None:
    """A zombie's slot must really be free before its runs are crashed: sync, then look again."""
    sync_limit_or_raise(api, operation.limit.name)
    row = Holder.objects.filter(limit=operation.limit, key=operation.holder_key).first()
    if row is None:
        raise Skip(f"{who!r} is no longer on the board: it already left")
    if row.condition != Condition.ZOMBIE:
        raise Skip(f"{who!r} is {row.condition} now, not a zombie: nothing was changed")


def _crash_flow_run(operation: Operation, api: PrefectAPI, flow_run, message: str) -> str:
    """Crash a flow run that still shows Running, never freeing a slot somebody else holds.

    Prefect 3.9 frees a deployment slot whenever a deployment's run leaves Running: its own
    lease if that still exists, else one slot of the deployment's limit by name. A run of a
    deployment is therefore crashed only as a zombie of that deployment's own limit (its
    lease is gone), behind a placeholder slot that absorbs the by-name decrement.
    """
    if flow_run.deployment_id is None:
        api.crash_run("flow_run", flow_run.id, message)
        return "flow run crashed"
    own = (
        operation.limit.kind == Kind.DEPLOYMENT
        and operation.holder.get("condition") == Condition.ZOMBIE
    )
    if not own:
        return (
            f"flow run left {flow_run.state_name or 'running'}: it is a deployment run, and "
            "crashing it would free its deployment slot while its process may still work"
        )
    _placeholder(api, operation.limit.name)
    api.crash_run("flow_run", flow_run.id, message)
    return (
        "flow run crashed (a placeholder slot took Prefect's by-name release of its expired lease)"
    )


def _placeholder(api: PrefectAPI, name: str) -> None:
    """Count one extra slot on a limit without ever losing somebody else's.

    An increment is atomic but a full limit refuses it (423). A PATCH of the count read plus
    one is safe only while that read shows the limit full: nobody can acquire then, and a
    release in between only leaves a slot too many (closed, never open to two)."""
    for _ in range(5):
        try:
            api.request(
                "POST",
                "v2/concurrency_limits/increment",
                json={"names": [name], "slots": 1, "mode": "concurrency"},
            )
            return
        except PrefectError as error:
            if error.status != 423:
                raise
        info = api.read_limit(name)
        if info is None:
            raise Skip("the limit no longer exists in Prefect")
        if info.active_slots >= info.limit:
            api.update_limit(info.id, {"active_slots": info.active_slots + 1})
            return
    raise PrefectError(
        "the limit kept changing: no placeholder slot could be counted", retryable=True
    )


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def _release_ended_process(operation: Operation, api: PrefectAPI, lease_id: UUID, who: str):
    """Revoke the lease of a helper holder whose process has provably ended: no placeholder,
    no wait, since no code of that process can still be inside."""
    sync_limit_or_raise(api, operation.limit.name)
    if not Holder.objects.filter(
        limit=operation.limit, key=operation.holder_key, condition=Condition.HOLDING
    ).exists():
        raise Skip(f"{who!r} no longer holds the resource: it already left")
    identity = operation.holder.get("process")
    if not process_gone(identity):  # checked again last thing, on the machine that revokes
        return _fence(operation, api, lease_id, who)
    api.revoke_lease(lease_id)
    after = limit_snapshot(_read_quietly(api, operation))
    return (
        OperationStatus.SUCCEEDED,
        f"Revoked the lease of {who!r} at once: its process ({describe(identity)}) had ended, "
        "so nothing could still be inside; the resource is open again.",
        after,
    )


def _fence(operation: Operation, api: PrefectAPI, lease_id: UUID, who: str):
    """The fenced release (`fence`), for a holder that may be alive. Its plan refused a lease
    too long to wait for; one planned as ended elsewhere (another machine's view) is refused
    here."""
    lease = int(lease_length(operation.holder.get("lease_seconds")))
    if lease > MAX_FENCED_LEASE:
        raise Skip(
            f"{who!r} could not be shown to have ended where this job runs, and its {lease} s "
            "lease is too long to keep the resource closed while it stops; nothing was changed"
        )
    try:
        status, message = fence.start(operation, api, lease_id, who)
    except fence.Refused as refused:
        raise Skip(str(refused)) from None
    return status, message, limit_snapshot(_read_quietly(api, operation))


def _read_quietly(api: PrefectAPI, operation: Operation):
    """The limit as Prefect shows it now, for the record; None if Prefect cannot say. After a
    change it is only that: a read refused (Prefect rate-limiting reslock, a 5xx) must not send
    a change that was made back for a retry, which would then find nothing to do."""
    try:
        return api.read_limit(str(operation.limit.prefect_id))
    except PrefectError:
        return None
