"""The diagnosis of one resource in plain words: what is wrong, what happens by itself, what to do."""

from __future__ import annotations

from dataclasses import dataclass, field

from reslock_web.models import Condition, Holder, Limit, Waiter
from reslock_web.status.diagnosis import REPOSSESS_SECONDS


@dataclass
class Explanation:
    wrong: list[str] = field(default_factory=list)
    by_itself: list[str] = field(default_factory=list)
    to_do: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.wrong


def explain(limit: Limit, holders: list[Holder], waiters: list[Waiter]) -> Explanation:
    out = Explanation()
    if limit.gone_at:
        out.wrong.append(
            "This limit no longer exists in Prefect; what is shown is its last known state."
        )
        return out
    for item in limit.evidence or []:
        if item.get("flag") != "long_hold":
            out.wrong.append(item.get("text", ""))
    uncounted_alive = any(
        h.condition == Condition.HOLDING and h.slot_lost_at is not None for h in holders
    )
    if limit.is_over_limit and uncounted_alive:
        out.by_itself.append(
            "Nothing: Prefect does not count a live run's slot, so it may admit another run."
        )
    elif limit.is_over_limit:
        out.by_itself.append(
            "Prefect admits no new run until the runs inside are fewer than the limit."
        )
        out.to_do.append(
            "Release nothing and repair nothing on the strength of the count while more runs "
            "are inside than the limit: find out how they got in (a lowered or re-activated "
            "limit, a counter lowered under a live lease), then let the extra runs finish or "
            "stop them in Prefect."
        )
    for holder in holders:
        _holder_advice(limit, holder, out)
    deadlocked = [w for w in waiters if w.deadlocked_by_id]
    if deadlocked:
        out.by_itself.append("Nothing: a self-deadlock never resolves on its own.")
        out.to_do.append(
            "Release the holder (its task run is marked crashed), then fix the flow: the nested "
            "task must not carry the tag again, or take the resource with reslock's helper, "
            "which lets a task nested in the holder through."
        )
    if limit.deadlock_cycle:
        out.by_itself.append(
            "Nothing: runs that wait for each other in a circle never go on by themselves, unless "
            "one of the locks they wait for has a timeout."
        )
        out.to_do.append(
            "Stop one run of the circle in Prefect (cancel its flow run): its locks are given up "
            "when it ends and the others go on. Then make every flow take these resources in the "
            "same order (or all at once, in one lock of several names), so that the circle "
            "cannot form again. Releasing a live holder from here is refused: it would let a "
            "second run in while the first still works."
        )
    if limit.has_drift:
        out.to_do.append(
            "Repair the drift: lower the counter to the holders reslock can name. It is safe only "
            "when no live lease stands behind the extra slots; reslock checks that first."
        )
    if not limit.active:
        out.to_do.append("Activate the limit to enforce it again.")
    if limit.has_long_hold and not out.wrong:
        out.by_itself.append(
            "The hold is long, which may be normal for this job: check the holder's run in Prefect."
        )
    if not out.wrong and waiters and not deadlocked and not limit.deadlock_cycle:
        out.by_itself.append(
            f"{len(waiters)} run(s) wait; the first in line gets the slot when the holder finishes."
        )
    return out


def _holder_advice(limit: Limit, holder: Holder, out: Explanation) -> None:
    if holder.condition == Condition.ZOMBIE:
        out.by_itself.append(
            "The slot is already free; the run will show Running until someone ends it."
        )
        out.to_do.append(
            f"Mark run {holder.flow_run_name or holder.key!r} crashed so that Prefect stops showing it running."
        )
    elif holder.condition == Condition.UNCOUNTED:
        out.to_do.append(
            f"Check run {holder.flow_run_name or holder.key!r} in the Prefect UI: if it still "
            "works, another run can get in beside it; cancel it there if it is stuck. reslock "
            "offers no release until its process is shown to have ended."
        )
    elif holder.condition == Condition.STALE:
        if holder.lease_seconds:
            out.by_itself.append(
                f"A {holder.lease_seconds} s lease frees the slot within {holder.lease_seconds + REPOSSESS_SECONDS} s "
                "of its last renewal, unless it outlived its run (then it never does)."
            )
        out.to_do.append(
            f"Release the stale holder {holder.flow_run_name or holder.key!r}: reslock ends exactly its "
            "lease (for a tag limit by marking its task run crashed), which frees the slot at once."
        )
    elif holder.condition == Condition.HOLDING and holder.lease_seconds:
        out.by_itself.append(
            f"{holder.flow_run_name or 'The holder'} renews a {holder.lease_seconds} s lease while it runs; if its "
            f"process dies, Prefect frees the slot within {holder.lease_seconds + REPOSSESS_SECONDS} s."
        )
