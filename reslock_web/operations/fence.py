"""The fenced release of a live helper holder: keep the resource closed until it has stopped.

A holder that took its lock through reslock's helper may be alive. Revoking its lease frees
its slot at once, but its code stops only when the helper notices (at its next renewal) and
the body returns to Python: a body blocked in `time.sleep()` or a C call goes on until that
call returns. So the worker:

1. counts a placeholder slot (the limit is full, so nobody can enter meanwhile);
2. revokes the lease (`decrement-with-lease`): the holder's own slot is freed, the
   placeholder keeps the limit full;
3. waits until the holder is shown to have stopped: its `released` event for that lease (its
   block has exited), its process shown ended on this machine (reslock/process.py), or, for a helper
   that announces `stopping` while a revoked block is still inside, silence from it well after
   it must have noticed (evidence of death: a live one keeps announcing);
4. only then removes the placeholder.

Once a revoke may have been applied, nothing but step 3 removes the placeholder: not an
error, not a time-out, not this job's end. When the job's time runs out, the operation
stays "keeping closed" and the periodic sweep looks again (`follow_up`). Each stage is saved
on the operation before its step, so that a job killed half-way is resumed on the safe side.
A lease that covers several limits is refused: revoking it would open the others at once.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.checks import CheckMessage, Warning
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from reslock.process import describe, process_gone
from reslock.protocol import (
    EVENT_ACQUIRED,
    EVENT_RELEASED,
    EVENT_STOPPING,
    lease_length,
    renews_every,
)
from reslock_web.models import ClaimLost, Condition, Holder, Operation, OperationStatus
from reslock_web.prefect_io.api import PrefectAPI, PrefectError
from reslock_web.prefect_io.records import EventInfo
from reslock_web.sync.run import sync_limit_or_raise

log = logging.getLogger(__name__)

# The helper's events: reslock/protocol.py is their home. From protocol 2 on, a helper whose
# lease was lost announces `stopping` every few seconds for as long as its block is still
# inside: then silence means it died.
ACQUIRED, RELEASED, STOPPING = EVENT_ACQUIRED, EVENT_RELEASED, EVENT_STOPPING
ANNOUNCES_STOPPING = 2
# The helper's request timeout: a renewal that noticed the revoke may take this long.
HELPER_REQUEST_TIMEOUT = 10
# Events reach Prefect's REST API some seconds after they occur (a 5 s flush, more under load).
EVENT_LAG = 15
# No word from a holder that announces `stopping` for this long: it died.
SILENCE = 30
# Longer leases are not fenced: the resource would stay closed for minutes after a revoke.
MAX_FENCED_LEASE = 240
# The longest a holder takes to notice a revoke and say so: a job waits that long at most,
# then the sweep takes over (a job longer than this would keep a worker from everything else).
MAX_JOB_WAIT = int(renews_every(MAX_FENCED_LEASE)) + HELPER_REQUEST_TIMEOUT + EVENT_LAG
# The job leaves this much of its soft time limit for recording its outcome.
JOB_MARGIN = 15
LOOK_EVERY = 1.0

# Stages, saved before each step.
COUNTING = "counting"  # the placeholder may be counted; no lease was revoked
REVOKING = "revoking"  # the placeholder is counted; the revoke may have been applied
REMOVING = "removing"  # the holder stopped; the placeholder may already be removed
REMOVED = "removed"


class Refused(Exception):
    """The fence will not start, and nothing was changed."""


# --- before anything changes ---------------------------------------------------------------
def lease_scope(api: PrefectAPI, snapshot: dict[str, Any], lease_id: UUID) -> tuple[set[str], int]:
    """(names the lease covers, the helper's protocol) from its acquired events in Prefect."""
    acquired_at = parse_datetime(str(snapshot.get("acquired_at") or ""))
    if acquired_at is None:
        raise Refused("the holder's acquire time is unknown, so its lease cannot be looked up")
    found = [
        event
        for event in api.events(
            acquired_at - timedelta(seconds=5), acquired_at + timedelta(seconds=5), [ACQUIRED]
        )
        if str(event.payload.get("lease_id")) == str(lease_id)
    ]
    if not found:
        raise Refused(
            "Prefect does not return the acquire of this lease, so reslock cannot show which "
            "resources it covers"
        )
    names: set[str] = set()
    protocol = 1
    for event in found:
        names.add(event.resource.get("prefect.resource.name", ""))
        listed = event.payload.get("names")
        if isinstance(listed, list):
            names.update(str(name) for name in listed)
        value = event.payload.get("protocol")
        if isinstance(value, int) and not isinstance(value, bool):
            protocol = max(protocol, value)
    names.discard("")
    return names, protocol


def start(operation: Operation, api: PrefectAPI, lease_id: UUID, who: str) -> tuple[str, str]:
    """Steps 1-4, or as far as this job's time allows. Returns (status, message)."""
    limit = operation.limit
    sync_limit_or_raise(api, limit.name)
    if not Holder.objects.filter(
        limit=limit, key=operation.holder_key, condition=Condition.HOLDING
    ).exists():
        raise Refused(f"{who!r} no longer holds the resource: it already left")
    names, protocol = lease_scope(api, operation.holder, lease_id)
    others = sorted(names - {limit.name})
    if others:
        raise Refused(
            f"the lease of {who!r} also holds {', '.join(map(repr, others))}: revoking it would "
            "open those at once while the holder may still be inside, and a placeholder here "
            "keeps only this one closed. Cancel its flow run in Prefect instead"
        )
    info = api.read_limit(str(limit.prefect_id))
    if info is None:
        raise Refused("the limit no longer exists in Prefect, and its holders with it")
    if not info.active:
        raise Refused("the limit is inactive: Prefect does not count its slots")
    if info.active_slots < info.limit:
        raise Refused("the limit has free room now, so a placeholder could not keep it closed")
    _save(operation, stage=COUNTING, lease_id=str(lease_id), protocol=protocol)
    try:
        # Full limit: nobody can acquire between the read and this write, and no other
        # operation acts on this limit meanwhile (one at a time), so the count written is at
        # least the true one (a release meanwhile leaves one slot too many: closed, never open).
        api.update_limit(info.id, {"active_slots": info.active_slots + 1})
    except PrefectError as error:
        if error.throttled:  # surely not counted, nothing revoked: the job tries again later
            raise
        return OperationStatus.FAILED, (
            f"Failed: the placeholder slot could not be counted ({error}). The lease of {who!r} "
            "was not revoked, so it still holds the resource. If Prefect applied the change "
            "anyway, one slot too many is counted: the resource then shows drift (closed to "
            "everyone, never open to two) and can be repaired from its page."
        )
    _save(operation, stage=REVOKING, revoked_at=timezone.now().isoformat())
    try:
        api.revoke_lease(lease_id)
    except ClaimLost:
        raise
    except Exception as error:  # applied or not, we cannot know: it counts as revoked
        log.warning("operation %s: revoke of %s failed: %s", operation.pk, lease_id, error)
        _save(operation, revoke_error=str(error)[:500])
    return watch(operation, api, _job_deadline())


def _job_wait() -> int:
    """What the job itself may wait: its soft time limit (4/5 of the operation timeout, see
    settings) less a margin for recording the outcome."""
    return max(0, min(MAX_JOB_WAIT, settings.OPERATION_TIMEOUT_SECONDS * 4 // 5 - JOB_MARGIN))


def _job_deadline() -> float:
    return time.monotonic() + _job_wait()


def check_operation_timeout(**kwargs: Any) -> list[CheckMessage]:
    """A system check: a fence longer than one job is safe but reopens the resource late."""
    if _job_wait() >= MAX_JOB_WAIT:
        return []
    needed = (MAX_JOB_WAIT + JOB_MARGIN) * 5 // 4 + 1
    return [
        Warning(
            f"RESLOCK_OPERATION_TIMEOUT={settings.OPERATION_TIMEOUT_SECONDS} lets a fenced "
            f"release wait {_job_wait()} s within its job, less than the {MAX_JOB_WAIT} s a "
            "holder may take to notice a revoke and say so.",
            hint=f"The sweep finishes such releases (every 30 s), so the resource stays closed "
            f"a little longer but is never opened early. Set it to {needed} or more to finish "
            "them within one job.",
            id="reslock.W001",
        )
    ]


def watch(operation: Operation, api: PrefectAPI, deadline: float) -> tuple[str, str]:
    """Look until the holder has stopped or the deadline passes; never remove the placeholder
    for any other reason."""
    while True:
        try:
            stopped = look(operation, api)
        except ClaimLost:
            raise
        except Exception as error:  # Prefect unreadable, a soft time limit: keep it closed
            return OperationStatus.FENCING, _still_closed(operation, f"looking failed: {error}")
        if stopped:
            return remove_placeholder(operation, api, stopped)
        if time.monotonic() + LOOK_EVERY > deadline:
            return OperationStatus.FENCING, _still_closed(operation)
        time.sleep(LOOK_EVERY)


def follow_up(operation: Operation, api: PrefectAPI) -> tuple[str, str]:
    """One more look, from the sweep, at an operation that keeps a resource closed."""
    stage = fence_of(operation).get("stage")
    if stage == REMOVING:
        return _ended_removing(operation)
    return watch(operation, api, deadline=0)


def fence_of(operation: Operation) -> dict[str, Any]:
    return dict(operation.params.get("fence") or {})


def _save(operation: Operation, **changes: Any) -> None:
    """Save the fence's state before its next step, only while this job owns the operation.

    The stage tells whoever goes on (the sweep) which steps may have been taken. A job that
    stalled and wakes up after the sweep took over must neither rewrite it nor take the step:
    removing the placeholder a second time would free the next holder's slot."""
    params = {**operation.params, "fence": {**fence_of(operation), **changes}}
    if not Operation.objects.owned_by(operation).update(params=params):
        raise ClaimLost(f"operation {operation.pk} was taken over while this job was stalled")
    operation.params = params


# --- has it stopped? -----------------------------------------------------------------------
def look(operation: Operation, api: PrefectAPI) -> str:
    """How we know the holder has stopped, or "" while it may still be inside."""
    fence = fence_of(operation)
    lease_id = fence.get("lease_id", "")
    identity = operation.holder.get("process")
    if process_gone(identity):
        return f"its process ({describe(identity)}) has ended"
    acquired_at = parse_datetime(str(operation.holder.get("acquired_at") or ""))
    revoked_at = parse_datetime(str(fence.get("revoked_at") or "")) or timezone.now()
    now = timezone.now()
    # Event times come from the holder's clock, like its acquire's: read from that on.
    since = (acquired_at or revoked_at) - timedelta(seconds=5)
    resource = f"prefect.concurrency-limit.{operation.limit.prefect_id}"
    heard = 0
    for event in api.events(
        since, now + timedelta(minutes=5), [RELEASED, STOPPING], resources=[resource]
    ):
        if str(event.payload.get("lease_id")) != lease_id:
            continue
        if event.event == RELEASED:
            return _released_words(event)
        heard += 1
    if heard > fence.get("heard", 0):
        # Our own clock, not the holder's: silence is measured from when we last heard it.
        _save(operation, heard=heard, heard_at=now.isoformat())
        return ""
    if fence.get("protocol", 1) < ANNOUNCES_STOPPING:
        return ""  # an older helper says nothing while it stops: only its release or /proc
    lease = int(lease_length(operation.holder.get("lease_seconds")))
    # By then it has noticed the revoke (at its next renewal) or its own lease's end.
    noticed_by = revoked_at + timedelta(seconds=lease + HELPER_REQUEST_TIMEOUT + EVENT_LAG)
    heard_at = parse_datetime(str(fence.get("heard_at") or ""))
    if heard_at is not None and now - heard_at >= timedelta(seconds=SILENCE):
        return (
            f"it went silent after {heard_at:%H:%M:%S} UTC, although it announces every few "
            "seconds while a revoked block is still inside: it is taken as dead"
        )
    if heard_at is None and now >= noticed_by + timedelta(seconds=SILENCE):
        return (
            "it never answered the revoke, although it would have noticed by "
            f"{noticed_by:%H:%M:%S} UTC and then announced itself every few seconds while "
            "still inside: it is taken as dead"
        )
    return ""


def _released_words(event: EventInfo) -> str:
    reason = event.payload.get("reason")
    return "it reported that its block had stopped" + (
        f" ({reason})" if isinstance(reason, str) and reason.isidentifier() else ""
    )


def _still_closed(operation: Operation, problem: str = "") -> str:
    fence = fence_of(operation)
    heard = fence.get("heard_at")
    if heard:
        state = f"it last reported being still inside at {heard[11:19]} UTC"
    else:
        state = "it has not reported stopping yet"
    unsure = (
        " (the revoke's outcome is unknown: counted as revoked)" if "revoke_error" in fence else ""
    )
    return (
        f"Keeping the resource closed: the lease was revoked{unsure}, but {state}"
        + (f"; {problem}" if problem else "")
        + ". A placeholder slot keeps everyone else out until the holder is shown to have "
        "stopped (its release, its process ended, or its silence); reslock looks again every "
        "sweep."
    )[:4000]


# --- the end -------------------------------------------------------------------------------
def remove_placeholder(operation: Operation, api: PrefectAPI, stopped: str) -> tuple[str, str]:
    _save(operation, stage=REMOVING, stopped=stopped)
    who = operation.holder.get("flow_run_name") or operation.holder.get("task_run_name")
    who = repr(who) if who else "the holder"
    try:
        # Our own slot, with no lease behind it: by name is right, and done once only (the
        # stage saved above keeps a retry from lowering the count a second time).
        api.decrement(operation.limit.name, 1)
    except PrefectError as error:
        if error.throttled:
            # Surely not applied (a 429 is refused before anything is done, and the budget
            # sends nothing): back to the stage before, so the sweep removes it once.
            _save(operation, stage=REVOKING)
            return OperationStatus.FENCING, _still_closed(
                operation, f"removing the placeholder slot had to wait: {error}"
            )
        return OperationStatus.SUCCEEDED, (
            f"Revoked the lease of {who}; {stopped}. Removing the placeholder slot failed "
            f"({error}): if it is still counted the resource shows drift (closed to everyone, "
            "never open to two) and can be repaired from its page."
        )
    _save(operation, stage=REMOVED)
    return OperationStatus.SUCCEEDED, (
        f"Revoked the lease of {who}; {stopped}; the placeholder slot is removed and the "
        "resource is open again."
    )


def _ended_removing(operation: Operation) -> tuple[str, str]:
    """A job stopped while removing the placeholder: whether it did is unknown, and trying
    again could free somebody else's slot. Closed is the safe side."""
    return OperationStatus.SUCCEEDED, (
        f"The holder had stopped ({fence_of(operation).get('stopped', 'shown stopped')}); the "
        "job ended while removing the placeholder slot, so it may still be counted: the "
        "resource then shows drift and can be repaired from its page."
    )


def resumable(operation: Operation) -> bool:
    """Whether a job that stopped half-way left a revoke behind: then the fence goes on."""
    return fence_of(operation).get("stage") in (REVOKING, REMOVING)


def revoked_at(operation: Operation) -> datetime | None:
    return parse_datetime(str(fence_of(operation).get("revoked_at") or ""))
