"""Releasing a holder in the worker: the most dangerous thing reslock does, so all of it is here.

A slot is freed only when nothing live stands behind it (see `plans` for the rules): a tag
holder whose task run is over (its task run is crashed, which ends exactly its lease), a
zombie whose process is shown ended (its runs are marked crashed; its slot is already free), a
helper holder whose process has provably ended (its lease is revoked at once), or a helper
holder that may be alive (the fenced release: `fence` keeps the resource closed until it has
stopped)."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from reslock.process import describe, process_gone
from reslock.protocol import lease_length
from reslock_web.models import (
    FINAL_STATES,
    Condition,
    Holder,
    Kind,
    Operation,
    OperationStatus,
    Source,
)
from reslock_web.operations import fence
from reslock_web.operations.outcome import (
    Skip,
    current_limit,
    limit_snapshot,
    read_quietly,
    skipping,
)
from reslock_web.operations.plans import (
    MAX_FENCED_LEASE,
)
from reslock_web.prefect_io.api import PrefectAPI, PrefectError
from reslock_web.prefect_io.records import parse_uuid
from reslock_web.sync.run import sync_limit_or_raise

log = logging.getLogger(__name__)


@skipping
def release(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
    holder = operation.holder
    task_run_id = parse_uuid(holder.get("task_run_id"))
    flow_run_id = parse_uuid(holder.get("flow_run_id"))
    lease_id = parse_uuid(holder.get("lease_id"))
    condition = holder.get("condition")
    current_limit(operation, api)  # it must still exist
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
    after = limit_snapshot(read_quietly(api, operation))
    return OperationStatus.SUCCEEDED, f"Released {who!r}: " + ", ".join(done) + ".", after


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
    after = limit_snapshot(read_quietly(api, operation))
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
    return status, message, limit_snapshot(read_quietly(api, operation))


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
