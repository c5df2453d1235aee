"""Operations on Prefect limits: what each one will do, whether it is safe, and doing it.

`plan_*` functions read only our tables (they serve the confirmation page); `execute` runs in a
Celery worker, re-reads Prefect first (compare-and-set) and acts only if the facts that made the
plan safe still hold. The rule above all: no operation may let two runs hold a slot of a limit at
once. So a slot is only ever freed when nothing live stands behind it:

- a tag holder whose task run is over (its lease is ended by crashing that task run, which
  frees exactly that lease; Prefect's tag reset is never used); its flow run is crashed too
  unless it holds a deployment slot of its own;
- a zombie, whose slot is already free and whose process is shown ended (we only mark its runs
  crashed); a claim the count lost without any such proof (uncounted) is never acted on;
- counted slots no lease backs (drift), lowered by exactly that many;
- a live holder is never released: its process would go on working while the next run gets in.
  That includes a Running deployment run: crashing its flow run frees its slot at once, but
  Prefect's engine only notices at its next lease renewal (every 225 s of a 300 s lease).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.utils import timezone

from reslock.process import describe, process_gone
from reslock.protocol import lease_length, renews_every
from reslock_web import fence
from reslock_web.diagnosis import REPOSSESS_SECONDS, TAG_LEASE_SECONDS
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
from reslock_web.prefect_api import PrefectAPI, PrefectError

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000
MAX_ATTEMPTS = 5


def assumed_lease() -> int:
    """The longest lease assumed for a global-limit holder that did not say its own."""
    return settings.ASSUMED_LEASE_SECONDS


@dataclass
class Plan:
    allowed: bool
    summary: str
    steps: list[str] = field(default_factory=list)
    safety: str = ""
    reason_required: bool = False
    warning: str = ""


# --- plans (read our tables only) ------------------------------------------------------
def plan_release(limit: Limit, holder: Holder) -> Plan:
    who = holder.flow_run_name or holder.task_run_name or holder.key
    if holder.condition == Condition.ZOMBIE:
        steps = _crash_steps(holder)
        if limit.kind == Kind.DEPLOYMENT:
            # Prefect frees a slot by name when a deployment run whose lease expired ends.
            steps.insert(
                0,
                "Count one placeholder slot first: when a deployment run whose lease has "
                "expired ends, Prefect frees one slot of the deployment by name, and the "
                "placeholder takes that release instead of the run now holding the slot.",
            )
        return Plan(
            True,
            f"Mark the dead run {who!r} crashed.",
            steps,
            "Its slot is already free (Prefect let its lease expire) and its process is shown "
            "to have ended; the worker syncs and checks both again before it acts. Nothing can "
            "be admitted twice; this only stops Prefect from showing a dead run as Running.",
            reason_required=True,
        )
    if holder.condition == Condition.UNCOUNTED:
        return Plan(
            False,
            "Refused: nothing shows that this run has stopped.",
            safety=(
                "Prefect no longer counts its slot, but reslock cannot tell whether its process "
                "still works inside: if it does, ending its run or its lease here would not stop "
                "it. Check the run in the Prefect UI (its logs and latest activity) and cancel "
                "it there if it is stuck. reslock marks it a zombie, which can then be released, "
                "only once its process is shown to have ended on the machine reslock runs on."
            ),
        )
    if holder.condition == Condition.STALE:
        if limit.kind == Kind.TAG and holder.task_run_id:
            return Plan(
                True,
                f"Release the slot held by the finished task run of {who!r}.",
                _crash_steps(holder),
                f"The task run is {holder.state_name or 'gone'}: no process works under this slot. "
                "Crashing that task run ends exactly its lease (Prefect frees it at once, "
                "once), so the next waiter gets the slot and nothing else changes.",
                reason_required=True,
            )
        if holder.lease_id and limit.kind == Kind.DEPLOYMENT:
            return Plan(
                False,
                "Refused: a deployment run can come back under this lease.",
                safety=(
                    "Prefect carries a deployment run's lease through an in-process retry: a run "
                    "shown over may go back to Running under the same lease, and revoking it then "
                    f"would let the next run in beside it. The lease ({DEPLOYMENT_LEASE} s, "
                    "renewed while the process lives) frees the slot by itself once the process "
                    "has stopped; cancel the run in Prefect to stop it sooner."
                ),
            )
        if holder.lease_id:
            return Plan(
                True,
                f"Revoke the lease of {who!r}.",
                [
                    f"Revoke lease {holder.lease_id} (decrement-with-lease): it frees exactly this slot."
                ],
                "The run is over and the lease is known: revoking it frees the slot once; a late "
                "renewal or release of that lease is ignored by Prefect.",
                reason_required=True,
            )
        deployment = limit.kind == Kind.DEPLOYMENT
        lease = DEPLOYMENT_LEASE if deployment else holder.lease_seconds or assumed_lease()
        how = "its state no longer names it" if deployment else "it used plain concurrency()"
        return Plan(
            False,
            "Refused: this slot will free itself.",
            safety=(
                f"The run is over, but its lease id is unknown ({how}). "
                f"Its lease (Prefect's default is {lease} s) frees the slot by itself within "
                f"{lease + REPOSSESS_SECONDS} s of the run's end"
                + (
                    f", by {_at(holder.state_at + timedelta(seconds=lease + REPOSSESS_SECONDS))}"
                    if holder.state_at
                    else ""
                )
                + ". Lowering the counter by name now would be applied twice when the lease "
                "expires and could let two runs in."
            ),
        )
    if holder.lease_id and holder.source == Source.HELPER and process_gone(holder.process):
        return _plan_ended_process(holder, who)
    if holder.lease_id and holder.source == Source.HELPER:
        return _plan_fenced(limit, holder, who)
    if limit.kind == Kind.DEPLOYMENT:
        return _plan_live_deployment_run(holder, who)
    lease = holder.lease_seconds or assumed_lease()
    free_by = timezone.now() + timedelta(seconds=lease + REPOSSESS_SECONDS)
    return Plan(
        False,
        "Refused: the holder looks alive.",
        safety=(
            f"{who!r} is {holder.state_name or 'running'}. Taking its slot away would not stop "
            "its process: it would go on using the resource while the next run gets in. If its "
            f"process has died, its lease ({lease} s{'' if holder.lease_seconds else ', assumed'}) "
            f"frees the slot by itself by {_at(free_by)} at the latest, and reslock then shows it "
            "as a zombie. Otherwise cancel its flow run in Prefect (a deployment run is then "
            "stopped by its worker), or wait for it to finish."
        ),
    )


# Prefect's flow engine keeps a deployment slot with a 300 s lease, renewed like the helper's,
# and stops the run only when a renewal fails (prefect/flow_engine.py).
DEPLOYMENT_LEASE = 300


def _plan_live_deployment_run(holder: Holder, who: str) -> Plan:
    """A Running deployment run is refused: crashing it frees the slot before its process stops."""
    renewal = int(renews_every(DEPLOYMENT_LEASE))
    free_by = timezone.now() + timedelta(seconds=DEPLOYMENT_LEASE + REPOSSESS_SECONDS)
    return Plan(
        False,
        "Refused: the deployment run looks alive.",
        safety=(
            f"{who!r} is {holder.state_name or 'running'}. Crashing its flow run would free the "
            "deployment's slot at once, but its process would not stop: Prefect's engine only "
            f"notices at its next lease renewal, up to {renewal} s later, and the next run "
            "would work alongside it until then. Cancel the flow run in Prefect instead: "
            "Prefect keeps the slot while the run is Cancelling and frees it once its worker "
            "has stopped the process. If the process has died, its lease "
            f"({DEPLOYMENT_LEASE} s) frees the slot by itself by {_at(free_by)} at the latest; "
            "reslock then shows the run as a zombie, and marking it crashed is offered."
        ),
    )


# A fenced release keeps the limit closed while the revoked holder stops; a Celery job can
# wait that long (a renewal period + margin) only for short leases.
MAX_FENCED_LEASE = fence.MAX_FENCED_LEASE
FENCE_MARGIN = 10


def _plan_ended_process(holder: Holder, who: str) -> Plan:
    """A helper holder whose process provably ended here: nothing is left to fence."""
    where = describe(holder.process)
    return Plan(
        True,
        f"Revoke the lease of {who!r}: its process has ended.",
        [
            f"Check once more, right before revoking, that its process ({where}) has ended; "
            "if that can no longer be proved, keep the resource closed until it has stopped, "
            "as for a live holder.",
            f"Revoke lease {holder.lease_id} (decrement-with-lease): Prefect frees exactly that "
            "slot, once, and the next waiter gets in.",
        ],
        f"Its process ({where}) has ended: revoking its lease frees the slot at once and "
        "nothing can still be inside. Prefect still shows its run Running because a killed "
        "process reports nothing. A late renewal or release of the revoked lease is ignored "
        "by Prefect.",
        reason_required=True,
    )


def _plan_fenced(limit: Limit, holder: Holder, who: str) -> Plan:
    lease = int(lease_length(holder.lease_seconds))
    if lease > MAX_FENCED_LEASE:
        return Plan(
            False,
            "Refused: this lease is too long to fence.",
            safety=(
                f"{who!r} renews a {lease} s lease: after a revoke it may run for up to "
                f"{int(renews_every(lease))} s before it notices, longer than a release job waits. "
                "Cancel its flow run in Prefect, or wait for it to finish."
            ),
        )
    others = sorted(
        Holder.objects.filter(lease_id=holder.lease_id)
        .exclude(limit=limit)
        .values_list("limit__name", flat=True)
    )
    if others:
        return Plan(
            False,
            "Refused: this lease holds other resources too.",
            safety=(
                f"{who!r} took {', '.join(map(repr, others))} with the same lease. Revoking it "
                "would open those at once while the holder may still be inside them. Cancel its "
                "flow run in Prefect, or wait for it to finish."
            ),
        )
    if limit.active_slots < limit.limit:
        return Plan(
            False,
            "Refused: the limit has free room.",
            safety=(
                f"{limit.active_slots} of {limit.limit} slots are used, so the limit is not what "
                "keeps anyone waiting, and a slot freed now could not be kept closed safely. "
                "Cancel the run in Prefect if it must stop."
            ),
        )
    notices = int(renews_every(lease))
    return Plan(
        True,
        f"Revoke the lease of {who!r} and keep the resource closed until it has stopped.",
        [
            "Re-read Prefect, and refuse if the lease also holds other resources.",
            "Count one extra, placeholder slot (the limit is full, so nobody can enter meanwhile).",
            f"Revoke lease {holder.lease_id} (decrement-with-lease): Prefect frees exactly that "
            "slot, once; the placeholder keeps the limit full.",
            f"Wait until the holder is shown to have stopped: reslock's helper notices the revoke "
            f"at its next renewal (at most {notices} s later) and stops the guarded code; code "
            "blocked in a long call stops only when that call returns, and the helper says so "
            "every few seconds until then.",
            "Remove the placeholder slot once the holder reports that it stopped, its process is "
            "shown ended, or it has gone silent (dead): the next waiter gets in.",
        ],
        "The holder took the resource through reslock's helper, which stops the guarded code as "
        "soon as it learns that its lease is revoked. Until it is shown to have stopped, the "
        "placeholder keeps the limit full, so nobody else can be inside at the same time; no "
        "error or time-out removes it early. A late renewal or release of the revoked lease is "
        "ignored by Prefect. If this job stopped half-way, the resource stays closed (shown as "
        "drift or as this operation keeping it closed), never open to two.",
        reason_required=True,
        warning=(
            f"The resource stays closed to everyone until the holder has stopped: usually "
            f"within {notices + FENCE_MARGIN} s, longer if its code is blocked in a long call."
        ),
    )


def _crash_steps(holder: Holder) -> list[str]:
    steps = []
    if holder.task_run_id:
        steps.append(
            f"Set task run {holder.task_run_name or holder.task_run_id} to Crashed (forced)."
        )
    if holder.flow_run_id and (holder.condition == Condition.ZOMBIE or not holder.task_run_id):
        steps.append(
            f"Set flow run {holder.flow_run_name or holder.flow_run_id} to Crashed (forced) if it is not over."
        )
    elif holder.flow_run_id:
        # A stale holder's flow run often lives on, running other tasks: crashing it would
        # stop them. Only on the operator's word, and never a deployment's run, whose slot
        # that would free while its process may still work.
        steps.append(
            f"Only if you tick the box below: set flow run {holder.flow_run_name or holder.flow_run_id} "
            "to Crashed (forced) too, so that it stops showing Running (unless it holds a "
            "deployment slot, which crashing it would free while its process may still work)."
        )
    steps.append(
        "Each state message names you and your reason: the run's history shows who did it."
    )
    return steps


def longest_lease(limit: Limit) -> int:
    if limit.kind == Kind.TAG:
        return TAG_LEASE_SECONDS
    known = [h.lease_seconds for h in limit.holders.all() if h.lease_seconds]
    if limit.kind == Kind.DEPLOYMENT:
        # Prefect's own lease, whatever is assumed for global-limit holders: a deployment run
        # ended while it waited for an in-process retry keeps its slot under it (nothing on the
        # board names that run any more), and a shorter window would lower the count by name
        # while that lease can still expire and lower it a second time.
        known.append(DEPLOYMENT_LEASE)
    return max([assumed_lease(), *known])


def known_slots(limit: Limit) -> int:
    """Slots the holders reslock knows take (several for `concurrency(..., occupy=N)`)."""
    return limit.holder_slots


def plan_repair(limit: Limit, now: datetime) -> Plan:
    if not limit.has_drift or limit.drift_since is None:
        return Plan(
            False,
            "Refused: there is no drift to repair.",
            safety="Prefect's counter matches the holders reslock knows.",
        )
    if not limit.active:
        return Plan(
            False,
            "Refused: the limit is inactive.",
            safety="Prefect ignores decrements on an inactive limit: activate it first.",
        )
    extra = limit.active_slots - known_slots(limit)
    if extra <= 0:
        return Plan(
            False,
            "Refused: nothing to lower.",
            safety="The counter is not above the known holders.",
        )
    lease = longest_lease(limit)
    safe_after = limit.drift_since + timedelta(seconds=lease + REPOSSESS_SECONDS)
    if limit.kind != Kind.TAG and now < safe_after:
        return Plan(
            False,
            "Refused for now: a live lease may still stand behind the extra slots.",
            safety=(
                f"The extra slot(s) appeared at {_at(limit.drift_since)}. A lease of up to "
                f"{lease} s taken then by a holder that announced nothing would still be live. "
                f"Try again after {_at(safe_after)}."
            ),
        )
    summary = (
        f"Lower the counter of {limit.name} by at most {extra} "
        f"(from {limit.active_slots} to {limit.active_slots - extra})."
    )
    if limit.kind == Kind.TAG:
        return Plan(
            True,
            summary,
            [
                "Re-read Prefect twice, "
                f"{TAG_OBSERVATION_GAP} s apart: each time the lease holders, the counter, and "
                "the lease holders again.",
                "Lower used slots by the slots that had no lease in both readings, and never "
                f"by more than the {extra} shown here.",
            ],
            "Prefect lists the task runs with a lease on a tag limit. A lease that has just "
            "expired but is not yet taken back (Prefect does that every 15 s) or is renewed late "
            "is missing from one reading but not from both, so only slots no lease backs are "
            "lowered. A slot without a lease never frees itself; lowering by a count (not to an "
            "absolute value) stays right while holders come and go.",
            reason_required=True,
        )
    return Plan(
        True,
        summary,
        [
            "Re-read Prefect; refuse if that fails.",
            f"Lower used slots by the slots no known holder takes, never by more than {extra}.",
        ],
        f"The extra slots have had no holder reslock knows of for over "
        f"{lease + REPOSSESS_SECONDS} s. reslock cannot show that no lease stands behind them: "
        "Prefect does not list the leases of a global or deployment limit, and a holder that "
        "announced nothing (a script calling Prefect's REST API, an acquire whose event was "
        "lost or is late, a hold older than Prefect's 7 days of events) is invisible to it.",
        reason_required=True,
        warning=(
            "If a live run does stand behind one of these slots, lowering the counter lets the "
            "next run in beside it. Confirm only if you know that no such run exists: the audit "
            "trail records that you took this risk."
        ),
    )


# Tag leases missing from one reading of Prefect but not from another this far apart were
# about to be taken back by Prefect or renewed late: never lowered (its repossessor runs every
# 15 s).
TAG_OBSERVATION_GAP = 20


def plan_set_limit(limit: Limit, value: int) -> Plan:
    warning = ""
    if value == 0:
        warning = (
            "A limit of 0 blocks everything: tasks tagged with this tag fail at once ('will "
            "deadlock') and concurrency() calls wait forever. Prefect 3.9 also cannot release a "
            "slot while the limit is 0 (a division by the limit fails): a holder that finishes "
            "then leaves its slot counted."
        )
    elif value < limit.active_slots:
        warning = f"{limit.active_slots} slot(s) are in use: nobody is evicted, new runs wait until fewer than {value} hold."
    return Plan(
        True,
        f"Set the limit of {limit.name} from {limit.limit} to {value}.",
        [f"PATCH the limit to {value} if it is still {limit.limit}."],
        "Changing the limit evicts nobody; it only decides who gets in next.",
        warning=warning,
    )


def uncounted_holders(limit: Limit) -> list[Holder]:
    """Runs inside an inactive limit: Prefect did not count them, but when their leases end it
    lowers the counter of the limit, active again by then, under somebody else."""
    return [h for h in limit.holders.all() if h.condition != Condition.LEAVING]


def _uncounted_words(inside: list[Holder]) -> str:
    names = ", ".join(repr(h.flow_run_name or h.task_run_name or h.key) for h in inside[:5])
    more = f" and {len(inside) - 5} more" if len(inside) > 5 else ""
    return (
        f"{len(inside)} run(s) took this resource while the limit was inactive ({names}{more}). "
        "Prefect did not count them: activated now, it would let the next run in beside them, "
        "and their releases would later lower the counter under somebody else. Activate it "
        "once they have finished"
    )


def plan_toggle(limit: Limit, active: bool) -> Plan:
    if limit.active == active:
        return Plan(False, f"Refused: the limit is already {'active' if active else 'inactive'}.")
    if active and (inside := uncounted_holders(limit)):
        return Plan(
            False, "Refused for now: runs are inside.", safety=_uncounted_words(inside) + "."
        )
    if active:
        return Plan(
            True,
            f"Activate {limit.name}.",
            ["PATCH active=true."],
            "Prefect enforces the limit again from the next acquire.",
        )
    return Plan(
        True,
        f"Deactivate {limit.name}.",
        ["PATCH active=false."],
        "Nobody is evicted.",
        warning="While inactive, Prefect does not enforce the limit: every run gets in at once.",
    )


def _at(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


# --- execution (in a Celery worker) ----------------------------------------------------
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
            f"its time ran out at {_at(ends)} before a change to Prefect; the sweep takes it over"
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
    from reslock_web.dispatch import send

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
    from reslock_web.sync import sync_limit

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
        from reslock_web.sync import sync_limit_or_raise

        sync_limit_or_raise(api, operation.limit.name)
        inside = uncounted_holders(Limit.objects.get(pk=operation.limit_id))
        if inside:
            raise Skip(_uncounted_words(inside))
    api.update_limit(info.id, {"active": active})
    after = limit_snapshot(_read_quietly(api, operation))
    return OperationStatus.SUCCEEDED, f"Limit {'activated' if active else 'deactivated'}.", after


@_skipping
def _repair(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
    from reslock_web.sync import sync_limit_or_raise

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
    from reslock_web.sync import sync_limit_or_raise

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
    from reslock_web.sync import sync_limit_or_raise

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
    """The fenced release (fence.py), for a holder that may be alive. Its plan refused a lease
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
