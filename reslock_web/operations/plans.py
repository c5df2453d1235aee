"""What each operation on a Prefect limit will do, and whether it is safe: the plans.

The functions here read only our tables: they serve the confirmation page, and the worker
(`jobs`) calls `plan_repair` again on fresh facts before it lowers a count. The rule above all:
no operation may let two runs hold a slot of a limit at once. So a slot is only ever freed when
nothing live stands behind it:

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

from django.conf import settings
from django.utils import timezone

from reslock.process import describe, process_gone
from reslock.protocol import lease_length, renews_every
from reslock_web.models import (
    Condition,
    Holder,
    Kind,
    Limit,
    Source,
)
from reslock_web.operations import fence
from reslock_web.status.diagnosis import REPOSSESS_SECONDS, TAG_LEASE_SECONDS

log = logging.getLogger(__name__)

MAX_LIMIT = 10_000


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
                    f", by {at_utc(holder.state_at + timedelta(seconds=lease + REPOSSESS_SECONDS))}"
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
            f"frees the slot by itself by {at_utc(free_by)} at the latest, and reslock then shows it "
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
            f"({DEPLOYMENT_LEASE} s) frees the slot by itself by {at_utc(free_by)} at the latest; "
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
                f"The extra slot(s) appeared at {at_utc(limit.drift_since)}. A lease of up to "
                f"{lease} s taken then by a holder that announced nothing would still be live. "
                f"Try again after {at_utc(safe_after)}."
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
    return [h for h in limit.holders.all() if h.is_shown]


def uncounted_words(inside: list[Holder]) -> str:
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
            False, "Refused for now: runs are inside.", safety=uncounted_words(inside) + "."
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


def at_utc(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"
