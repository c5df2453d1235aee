"""Who holds a limit, who waits, and what is wrong: pure rules over what the sync gathered.

Nothing here talks to Prefect or the database, so each rule can be read and tested alone.
The rules follow what Prefect 3.9 does (see the README's "How reslock reads Prefect"):

- A tag limit names its holders (task runs with a lease); global and deployment limits only
  count slots, so their holders are inferred from claims (acquire events, deployment runs
  that keep their slot) and matched against the count by the slots each claim takes
  (`concurrency(name, occupy=N)` takes N).
- When the count is lower than the live claims take, the order of the claims alone decides
  nothing: a claim has lost its slot when a later admission shows it (a claim taking the whole
  limit, admitted by Prefect while it was open) or when its process is shown ended, and each
  claim is judged by what is known of its own process (`Life`, gathered by the sync: its
  process seen ended or running on this machine, its helper announcing `stopping`). Only a
  claim whose process is shown ended can be the one whose slot Prefect freed: after a grace
  period it is a zombie (its run still shows Running; marking it crashed is safe). A claim shown
  alive that the count does not cover is a live run inside without a counted slot: the limit is
  over the limit, since another run can get in. A claim nothing is known of is uncounted:
  reslock cannot tell whether it still runs inside, and offers nothing that would end it.
  Events and states reach Prefect's API a few seconds apart, so a lost slot is only judged
  after a grace period (until then the claim is leaving, not shown).
- A run Prefect does not return is unknown, not over: Prefect records task runs some seconds
  after they start. It counts as over only once it has stayed missing past the grace, after
  Prefect had shown it; a claim whose run was never seen is never closed on that ground.

The rules stay in one module, longer than the others, on purpose: a holder's verdict feeds the
limit's, and reading them side by side is how one checks that no rule can call a live holder
stale or zombie (the worst thing the board could say).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from reslock_web.models import COUNTED, FINAL_STATES, Condition, Kind, Source, Status
from reslock_web.prefect_io.records import LimitInfo, RunInfo

# Prefect's lease repossessor runs every few seconds; measured expiry was lease + up to 15 s.
REPOSSESS_SECONDS = 15
# The task engine takes tag slots with a fixed 60 s lease (prefect/task_engine.py).
TAG_LEASE_SECONDS = 60


GONE, ALIVE, UNKNOWN = "gone", "alive", ""


@dataclass(frozen=True)
class Life:
    """What is known of a claim's process: GONE (shown ended), ALIVE (shown running), or
    UNKNOWN; `why` says how it was shown. Never inferred from when the claim was made.
    `beat`: when Prefect last received its flow run's heartbeat (`as_of` reads it)."""

    state: str = UNKNOWN
    why: str = ""
    beat: datetime | None = None

    def as_of(self, lost_at: datetime) -> Life:
        """A heartbeat Prefect received after the slot was lost shows the run's process alive
        then: a dead process's last heartbeat comes before its lease expires. Silence shows
        nothing (heartbeats come every 180 s by default, and a cut-off process is silent)."""
        if self.state == UNKNOWN and self.beat is not None and self.beat > lost_at:
            return Life(
                ALIVE,
                f"its flow run sent a heartbeat at {_at(self.beat)}, after the slot was lost",
                self.beat,
            )
        return self


@dataclass
class Claim:
    """Something that says a run may hold a slot."""

    key: str
    source: str
    certain: bool  # Prefect itself lists this run as a lease holder (tag limits)
    flow_run_id: UUID | None = None
    task_run_id: UUID | None = None
    acquired_at: datetime | None = None  # by the client's clock (its acquire's `occurred`)
    received: datetime | None = None  # when Prefect received its acquire, by Prefect's clock
    lease_id: UUID | None = None
    lease_seconds: int | None = None
    names: dict[str, str] = field(default_factory=dict)  # names an event carried
    process: dict = field(default_factory=dict)  # the helper's identity (reslock/process.py)
    slots: int = 1  # slots the claim takes (an acquire's slots-acquired)
    # A deployment run waiting for an in-process retry: it keeps its slot while its lease is
    # carried forward, but a run rescheduled out of its process keeps the lease id without
    # the slot. It holds only when the count has room for it after the other claims.
    tentative: bool = False


@dataclass
class Queued:
    key: str
    source: str
    flow_run_id: UUID | None
    task_run_id: UUID | None
    waiting_since: datetime | None
    parent_ids: tuple[UUID, ...] = ()


@dataclass
class Previous:
    """What the last sync stored for a claim, for rules that need time (grace, zombies)."""

    condition: str
    slot_lost_at: datetime | None
    acquired_at: datetime | None
    flow_run_id: UUID | None
    task_run_id: UUID | None
    source: str
    names: dict[str, str] = field(default_factory=dict)
    slots: int = 1
    lease_id: UUID | None = None
    lease_seconds: int | None = None
    process: dict = field(default_factory=dict)


@dataclass
class HolderVerdict:
    claim: Claim
    condition: str
    evidence: str = ""
    slot_lost_at: datetime | None = None
    run: RunInfo | None = None
    # Shown alive while Prefect's count does not cover it: another run can get in.
    uncounted: bool = False


@dataclass
class WaiterVerdict:
    queued: Queued
    position: int
    deadlocked_by: str | None = None  # holder key
    evidence: str = ""
    run: RunInfo | None = None


@dataclass
class Verdict:
    status: str
    holders: list[HolderVerdict]
    waiters: list[WaiterVerdict]
    closed_claims: list[str]  # claim keys that are over for good (their events can be closed)
    evidence: list[dict[str, str]]
    drift_since: datetime | None
    flags: dict[str, bool]
    held_since: datetime | None
    holder_slots: int = 0  # slots taken by the counted holders (holding or stale)


@dataclass
class Context:
    now: datetime
    grace: timedelta
    long_hold: timedelta
    task_runs: dict[UUID, RunInfo]
    flow_runs: dict[UUID, RunInfo]
    # Keys of claims whose release we have seen: gone from the count by the book, never lost.
    released: frozenset[str] = frozenset()
    # Runs Prefect had shown and no longer returns: since when. A run neither found nor here
    # was never seen (not yet recorded).
    missing_since: dict[UUID, datetime] = field(default_factory=dict)
    # What is known of a claim's process (the sync looks; this module only reads the answer).
    life: Callable[[Claim], Life] = lambda claim: Life()

    def run_of(self, flow_run_id: UUID | None, task_run_id: UUID | None) -> RunInfo | None:
        if task_run_id is not None:
            return self.task_runs.get(task_run_id)
        if flow_run_id is not None:
            return self.flow_runs.get(flow_run_id)
        return None

    def ended(self, flow_run_id: UUID | None, task_run_id: UUID | None) -> tuple[bool, str]:
        """(is over, why) for the run behind a claim. A claim with no run is taken as alive,
        and so is one whose run Prefect does not return (see `unknown`)."""
        if flow_run_id is None and task_run_id is None:
            return False, ""
        run = self.run_of(flow_run_id, task_run_id)
        what = "task run" if task_run_id is not None else "flow run"
        if run is None:
            since = self.missing_since.get(task_run_id if task_run_id is not None else flow_run_id)
            if since is None or self.now - since < self.grace:
                return False, ""
            return True, f"its {what} has been missing from Prefect since {_at(since)}"
        if run.state_type in FINAL_STATES:
            return True, f"its {what} is {run.state_name or run.state_type}" + _since(run.state_at)
        return False, ""

    def unknown(self, flow_run_id: UUID | None, task_run_id: UUID | None) -> str:
        """Evidence for a live claim whose run Prefect does not return now ("" otherwise)."""
        if (flow_run_id is None and task_run_id is None) or self.run_of(
            flow_run_id, task_run_id
        ) is not None:
            return ""
        what = "task run" if task_run_id is not None else "flow run"
        since = self.missing_since.get(task_run_id if task_run_id is not None else flow_run_id)
        if since is None:
            return (
                f"Its {what} is not yet in Prefect (Prefect records runs some seconds after "
                "they start, longer under load): taken as holding until Prefect shows it."
            )
        return (
            f"Its {what} has been missing from Prefect since {_at(since)}: taken as holding "
            f"until {_at(since + self.grace)}."
        )


def _since(when: datetime | None) -> str:
    return f" since {when:%Y-%m-%d %H:%M:%S} UTC" if when else ""


def _at(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


def kind_of(name: str) -> tuple[str, str, UUID | None]:
    """(kind, resource name, deployment id) from a limit's name."""
    if name.startswith("tag:"):
        return Kind.TAG, name.removeprefix("tag:"), None
    if name.startswith("deployment:"):
        try:
            return Kind.DEPLOYMENT, name, UUID(name.removeprefix("deployment:"))
        except ValueError:
            pass
    return Kind.GLOBAL, name, None


# --- holders ---------------------------------------------------------------------------
def classify_holders(
    kind: str,
    info: LimitInfo,
    claims: list[Claim],
    previous: dict[str, Previous],
    ctx: Context,
) -> tuple[list[HolderVerdict], list[str]]:
    """Returns (verdicts, keys of claims that are over for good)."""
    enforced = info.active and info.slot_decay_per_second == 0
    if kind == Kind.TAG:
        verdicts, closed = _tag_holders(claims, ctx)
    elif not enforced:
        # Inactive limits and rate limits do not count holders: nobody can lose a slot.
        verdicts = [
            HolderVerdict(c, Condition.HOLDING, run=ctx.run_of(c.flow_run_id, c.task_run_id))
            for c in claims
        ]
        verdicts = [
            v for v in verdicts if not ctx.ended(v.claim.flow_run_id, v.claim.task_run_id)[0]
        ]
        closed = [c.key for c in claims if ctx.ended(c.flow_run_id, c.task_run_id)[0]]
    else:
        verdicts, closed = _counted_holders(info, claims, previous, ctx)
    seen = {v.claim.key for v in verdicts} | set(closed)
    for key, before in previous.items():
        if key in seen or before.condition == Condition.STALE:
            continue
        if key in ctx.released:
            # Released: a run that goes on (a flow body or a task taking the lock in a loop)
            # is not a holder that lost its slot.
            closed.append(key)
            continue
        verdict = _lost_slot(key, before, ctx) if enforced or kind == Kind.TAG else None
        if verdict is None:
            closed.append(key)
        else:
            verdicts.append(verdict)
    return verdicts, closed


def _tag_holders(claims: list[Claim], ctx: Context) -> tuple[list[HolderVerdict], list[str]]:
    verdicts = []
    for claim in claims:
        run = ctx.run_of(claim.flow_run_id, claim.task_run_id)
        ended, why = ctx.ended(claim.flow_run_id, claim.task_run_id)
        if not ended:
            evidence = ctx.unknown(claim.flow_run_id, claim.task_run_id)
            verdicts.append(HolderVerdict(claim, Condition.HOLDING, evidence, run=run))
            continue
        end = run.state_at if run else None
        expected = end + timedelta(seconds=TAG_LEASE_SECONDS + REPOSSESS_SECONDS) if end else None
        if expected and ctx.now > expected:
            later = (
                f"Its lease should have expired by {_at(expected)} and has not: it will not "
                "free itself (a lease made by Prefect's tag reset with slot_override lives for "
                "about 100 years). Release it."
            )
        elif expected:
            later = f"Its 60 s lease frees the slot by itself by {_at(expected)}."
        else:
            later = "Its lease frees the slot by itself once it expires."
        verdicts.append(
            HolderVerdict(
                claim, Condition.STALE, f"Still counted as holder, but {why}. {later}", run=run
            )
        )
    return verdicts, []


def _counted_holders(
    info: LimitInfo, claims: list[Claim], previous: dict[str, Previous], ctx: Context
) -> tuple[list[HolderVerdict], list[str]]:
    """Global and deployment limits: match claims to the slot count by the slots each takes.

    Prefect only counts: when the count is lower than the live claims take, the slots it no
    longer counts are put down to claims shown to have lost theirs (a later admission proves
    it, `_admitted_over`), then to claims whose process is shown ended, and to no other. What
    that leaves unexplained lies among the rest, each judged once the grace has passed
    (`_leaving`): no claim is pushed out for being older, and none is kept in for being newer.
    """
    live, dead = [], []
    for claim in claims:
        ended, why = ctx.ended(claim.flow_run_id, claim.task_run_id)
        (dead if ended else live).append((claim, why))
    firm = [claim for claim, _ in live if not claim.tentative]
    tentative = [claim for claim, _ in live if claim.tentative]
    short = sum(claim.slots for claim in firm) - info.active_slots
    lives = {claim.key: ctx.life(claim) for claim in firm} if short > 0 else {}
    # Claims shown to have lost their slot: by a later admission, else by their process.
    lost: set[str] = set()
    if short > 0:
        for claim in _admitted_over(firm, info.limit, ctx):
            lost.add(claim.key)
            short -= claim.slots
    for claim in sorted(firm, key=lambda c: _first(c, ctx)):
        if short <= 0:
            break
        if claim.key not in lost and lives[claim.key].state == GONE:
            lost.add(claim.key)
            short -= claim.slots
    # Since when the count has been short, as the claims in question were stored.
    lost_at = min(
        (
            before.slot_lost_at
            for claim in firm
            if (before := previous.get(claim.key)) and before.slot_lost_at
        ),
        default=ctx.now,
    )
    # What the claims shown to have lost a slot leave unexplained lies somewhere among the
    # others, and nothing says where.
    lives = {key: life.as_of(lost_at) for key, life in lives.items()}
    in_question = [c for c in firm if c.key not in lost] if short > 0 else []
    if in_question and ctx.now - lost_at < ctx.grace:
        # A release whose event has not come yet looks like this for a few seconds: until
        # the grace has passed, the most recent claims fill the count only for the display
        # (the others are leaving, not shown), and nothing is concluded.
        keep = info.active_slots
        leaving = set()
        for claim in sorted(in_question, key=lambda c: _first(c, ctx), reverse=True):
            if claim.slots <= keep:
                keep -= claim.slots
            else:
                leaving.add(claim.key)
        in_question = [c for c in in_question if c.key in leaving]
    questioned = {c.key for c in in_question}
    # Runs shown alive that the count has room for may well be the counted ones: only when
    # they alone take more than Prefect counts is one of them certainly inside uncounted.
    alive_slots = sum(c.slots for c in in_question if lives[c.key].state == ALIVE)
    settled = sum(c.slots for c in firm if c.key not in lost and c.key not in questioned)
    alive_fit = alive_slots <= info.active_slots - settled
    verdicts: list[HolderVerdict] = []
    closed: list[str] = []
    for claim in firm:
        run = ctx.run_of(claim.flow_run_id, claim.task_run_id)
        life = lives.get(claim.key, Life())
        if claim.key in lost or (
            claim.key in questioned and not (life.state == ALIVE and alive_fit)
        ):
            verdicts.append(_leaving(claim, run, lost_at, life, ctx))
        else:
            evidence = ctx.unknown(claim.flow_run_id, claim.task_run_id)
            verdicts.append(HolderVerdict(claim, Condition.HOLDING, evidence, run=run))
    spare = max(0, info.active_slots - sum(c.slots for c in firm if c.key not in lost))
    for claim in sorted(tentative, key=lambda c: _first(c, ctx), reverse=True):
        if claim.slots <= spare:
            spare -= claim.slots
            run = ctx.run_of(claim.flow_run_id, claim.task_run_id)
            evidence = ctx.unknown(claim.flow_run_id, claim.task_run_id)
            verdicts.append(HolderVerdict(claim, Condition.HOLDING, evidence, run=run))
        else:
            closed.append(claim.key)  # rescheduled out of its process: it holds nothing
    dead.sort(key=lambda item: _first(item[0], ctx), reverse=True)
    for claim, why in dead:
        if claim.slots > spare:
            closed.append(claim.key)
            continue
        spare -= claim.slots
        run = ctx.run_of(claim.flow_run_id, claim.task_run_id)
        end = run.state_at if run else None
        if claim.lease_seconds and end:
            free_by = end + timedelta(seconds=claim.lease_seconds + REPOSSESS_SECONDS)
            later = f"Its {claim.lease_seconds} s lease frees the slot by itself by {_at(free_by)}."
        else:
            later = (
                "If it took the slot with a lease, the slot frees itself when the lease expires "
                "(Prefect's default lease is 300 s)."
            )
        verdicts.append(
            HolderVerdict(
                claim,
                Condition.STALE,
                f"Slot still counted, but {why} without a release. {later}",
                run=run,
            )
        )
    return verdicts, closed


def _admitted_over(claims: list[Claim], limit: int, ctx: Context) -> list[Claim]:
    """Claims shown to have lost their slot by a later admission.

    Prefect admits a claim only while the count leaves room for it. A claim that takes the
    whole limit (any claim of a limit of 1) admitted while older claims were still open shows
    that none of those was counted any more: each had lost its slot by then, and a lost slot
    is not counted again. Admission order is Prefect's own clock (when it received each
    acquire) where known, the claim's time otherwise. It assumes the limit was no higher
    then; had it been, a claim named here may be counted (never called a zombie for that:
    only a claim whose process is shown ended is one).
    """
    lost: list[Claim] = []
    before: list[Claim] = []
    for claim in sorted(claims, key=lambda c: _first(c, ctx)):
        if 0 < limit <= claim.slots:
            lost.extend(before)
            before = []
        before.append(claim)
    return lost


def _first(claim: Claim, ctx: Context) -> datetime:
    """When a claim was made, by Prefect's clock where known: clients' clocks disagree."""
    return claim.received or claim.acquired_at or datetime.min.replace(tzinfo=ctx.now.tzinfo)


def _leaving(
    claim: Claim, run: RunInfo | None, lost_at: datetime | None, life: Life, ctx: Context
) -> HolderVerdict:
    """A claim whose slot Prefect no longer counts, without a release: judged by `life` once
    the grace has passed, never by its place among the other claims."""
    lost_at = lost_at or ctx.now
    if run is None and (claim.flow_run_id is not None or claim.task_run_id is not None):
        # Its run is not (or no longer) in Prefect, within the grace: nothing says it is
        # alive, so it is no zombie; nothing says it is over, so it is not closed either.
        evidence = ctx.unknown(claim.flow_run_id, claim.task_run_id)
        return HolderVerdict(claim, Condition.LEAVING, evidence, slot_lost_at=lost_at, run=run)
    if ctx.now - lost_at < ctx.grace:
        return HolderVerdict(claim, Condition.LEAVING, slot_lost_at=lost_at, run=run)
    state = f"{run.state_name or run.state_type}" if run else "unknown"
    if life.state == GONE:
        return HolderVerdict(
            claim,
            Condition.ZOMBIE,
            f"Its slot was freed around {_at(lost_at)} without a release (the lease expired), "
            f"and {life.why}, yet Prefect still reports the run {state}. The slot is free; "
            "mark the run crashed so that Prefect stops showing it running.",
            slot_lost_at=lost_at,
            run=run,
        )
    if life.state == ALIVE:
        return HolderVerdict(
            claim,
            Condition.HOLDING,
            f"Prefect has not counted its slot since {_at(lost_at)}, yet {life.why}: a live run "
            "is inside without a counted slot, so another run can get in. Do not mark it "
            "crashed; let it finish or stop it in Prefect.",
            slot_lost_at=lost_at,
            run=run,
            uncounted=True,
        )
    return HolderVerdict(
        claim,
        Condition.UNCOUNTED,
        f"Prefect has not counted its slot since {_at(lost_at)} and saw no release, while "
        f"Prefect reports the run {state}. reslock cannot tell whether it still runs inside: "
        "if its process died, its lease expired and the slot is rightly free; if it still "
        "works, it is inside without a counted slot and another run can get in. Check its "
        "run in the Prefect UI (its logs and latest activity) and cancel it there if it is "
        "stuck; reslock does not mark it crashed.",
        slot_lost_at=lost_at,
        run=run,
    )


def _lost_slot(key: str, before: Previous, ctx: Context) -> HolderVerdict | None:
    """A claim Prefect no longer backs with a slot, judged like any claim the count misses."""
    ended, _ = ctx.ended(before.flow_run_id, before.task_run_id)
    if ended or (before.flow_run_id is None and before.task_run_id is None):
        return None
    claim = Claim(
        key=key,
        source=before.source,
        certain=False,
        flow_run_id=before.flow_run_id,
        task_run_id=before.task_run_id,
        acquired_at=before.acquired_at,
        lease_id=before.lease_id,
        lease_seconds=before.lease_seconds,
        names=before.names,
        process=before.process,
        slots=before.slots,
    )
    lost_at = before.slot_lost_at or ctx.now
    return _leaving(
        claim,
        ctx.run_of(before.flow_run_id, before.task_run_id),
        lost_at,
        ctx.life(claim).as_of(lost_at),
        ctx,
    )


# --- waiters ---------------------------------------------------------------------------
def order_waiters(
    queued: list[Queued],
    holders: list[HolderVerdict],
    ancestors: dict[UUID, tuple[UUID, ...]],
    ctx: Context,
) -> list[WaiterVerdict]:
    """Oldest first; a waiter nested inside one of this limit's holders is deadlocked."""
    holding = {
        v.claim.task_run_id: v for v in holders if v.condition in COUNTED and v.claim.task_run_id
    }
    holder_keys = {v.claim.key for v in holders}
    # A helper wait whose run is over will never end with an acquire: the process is gone.
    queued = [
        q
        for q in queued
        if not (q.source == Source.HELPER and ctx.ended(q.flow_run_id, q.task_run_id)[0])
    ]
    ordered = sorted(
        (q for q in queued if q.key not in holder_keys),
        key=lambda q: (q.waiting_since or ctx.now, q.key),
    )
    verdicts = []
    for position, item in enumerate(ordered, start=1):
        verdict = WaiterVerdict(item, position, run=ctx.run_of(item.flow_run_id, item.task_run_id))
        for ancestor in _chain(item.parent_ids, ancestors):
            if ancestor in holding:
                holder = holding[ancestor]
                verdict.deadlocked_by = holder.claim.key
                holder_name = holder.run.name if holder.run else str(ancestor)
                waiter_name = verdict.run.name if verdict.run else item.key
                verdict.evidence = (
                    f"Self-deadlock: task run {waiter_name!r} waits for this limit inside task run "
                    f"{holder_name!r}, which holds it and cannot finish until {waiter_name!r} does. "
                    "Neither will ever run on its own."
                )
                break
        verdicts.append(verdict)
    return verdicts


def _chain(parent_ids: tuple[UUID, ...], ancestors: dict[UUID, tuple[UUID, ...]]) -> list[UUID]:
    """Every ancestor task run, nearest first, guarding against cycles."""
    seen: list[UUID] = []
    todo = list(parent_ids)
    while todo and len(seen) < 100:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.append(current)
        todo.extend(ancestors.get(current, ()))
    return seen


# --- the limit as a whole --------------------------------------------------------------
def judge(
    kind: str,
    info: LimitInfo,
    holders: list[HolderVerdict],
    waiters: list[WaiterVerdict],
    closed: list[str],
    drift_since: datetime | None,
    tag_lease_count: int | None,
    ctx: Context,
) -> Verdict:
    evidence: list[dict[str, str]] = []
    counted = [v for v in holders if v.condition in COUNTED]
    stale = [v for v in holders if v.condition == Condition.STALE]
    zombies = [v for v in holders if v.condition == Condition.ZOMBIE]
    unsure = [v for v in holders if v.condition == Condition.UNCOUNTED]
    alive_out = [v for v in holders if v.uncounted]
    deadlocked = [w for w in waiters if w.deadlocked_by]
    enforced = info.active and info.slot_decay_per_second == 0

    for verdict in stale:
        evidence.append({"flag": "stale", "text": f"{_who(verdict)}: {verdict.evidence}"})
    for verdict in zombies:
        evidence.append({"flag": "zombie", "text": f"{_who(verdict)}: {verdict.evidence}"})
    for verdict in unsure:
        evidence.append({"flag": "uncounted", "text": f"{_who(verdict)}: {verdict.evidence}"})
    for waiter in deadlocked:
        evidence.append({"flag": "deadlocked", "text": waiter.evidence})

    # Drift: Prefect counts more (or fewer) used slots than the holders we can name take.
    # A live run Prefect does not count backs none of the counted slots.
    holder_slots = sum(v.claim.slots for v in counted if not v.uncounted)
    known = tag_lease_count if tag_lease_count is not None else holder_slots
    # Claims that may or may not be the counted ones explain a count between the two.
    unsure_slots = sum(v.claim.slots for v in unsure)
    explained = unsure and known <= info.active_slots <= known + unsure_slots
    mismatch = enforced and info.active_slots != known and not explained
    drift_since = (drift_since or ctx.now) if mismatch else None
    has_drift = mismatch and ctx.now - drift_since >= ctx.grace
    if has_drift:
        extra = info.active_slots - known
        if extra > 0:
            text = (
                f"Prefect counts {info.active_slots} used slot(s) but the holders known since "
                f"{_at(drift_since)} take only {known}: {extra} slot(s) have no holder "
                "(a raw increment that was never decremented, or a counter left behind by a tag "
                "reset or a server restart). They will not free themselves."
            )
        else:
            text = (
                f"Prefect counts {info.active_slots} used slot(s) but the holders known since "
                f"{_at(drift_since)} take {known}."
            )
        evidence.append({"flag": "drift", "text": text})

    # More runs inside than the limit allows: holders whose run Prefect shows alive (or whose
    # lease Prefect lists) that take more slots than the limit. The count cannot say which of
    # them should not be there, and releasing by the count would let yet another run in.
    inside = [
        v
        for v in holders
        if v.condition == Condition.HOLDING and (v.claim.certain or v.run is not None)
    ]
    inside_slots = sum(v.claim.slots for v in inside)
    over_limit = enforced and inside_slots > info.limit
    if enforced and alive_out:
        names = ", ".join(_who(v) for v in alive_out)
        evidence.insert(
            0,
            {
                "flag": "over_limit",
                "text": f"A live run is inside without a counted slot: {names}. Prefect counts "
                f"{info.active_slots} used slot(s) of {info.limit}, less than the live runs "
                "take, so another run can get in (the count was lowered under a live lease by "
                "a decrement, a PATCH of active_slots or Prefect's Reset, or the lease ran out "
                "while the run went on). Mark nothing crashed and repair nothing on the "
                "strength of the count.",
            },
        )
    if over_limit:
        names = ", ".join(_who(v) for v in inside)
        evidence.insert(
            0,
            {
                "flag": "over_limit",
                "text": f"{len(inside)} live run(s) take {inside_slots} slot(s) of a limit of "
                f"{info.limit}: {names}. More runs are inside than the limit allows (the limit "
                "was lowered or re-activated under them, or a counter was lowered under a live "
                "lease). Nothing can be released safely on the strength of the count.",
            },
        )

    long_holds = [
        v for v in counted if v.claim.acquired_at and ctx.now - v.claim.acquired_at > ctx.long_hold
    ]
    for verdict in long_holds:
        evidence.append(
            {
                "flag": "long_hold",
                "text": f"{_who(verdict)} has held it since {_at(verdict.claim.acquired_at)} "
                "(longer than the long-hold threshold; a warning, not proof of a problem).",
            }
        )
    if not info.active:
        evidence.append(
            {
                "flag": "inactive",
                "text": "The limit is inactive: Prefect does not enforce it, every run gets in.",
            }
        )
    flags = {
        # Slots in use are held by someone, even before we can name who (events arrive late).
        "is_held": bool(counted) or (enforced and info.active_slots > 0),
        "has_waiters": bool(waiters),
        "is_stale": bool(stale),
        "has_zombie": bool(zombies),
        "is_deadlocked": bool(deadlocked),
        "has_drift": has_drift,
        "has_long_hold": bool(long_holds),
        "is_over_limit": over_limit or (enforced and bool(alive_out)),
    }
    status = status_of(flags, info.active, uncounted=bool(unsure))
    starts = [v.claim.acquired_at for v in counted if v.claim.acquired_at]
    return Verdict(
        status=status,
        holders=holders,
        waiters=waiters,
        closed_claims=closed,
        evidence=evidence,
        drift_since=drift_since,
        flags=flags,
        held_since=min(starts) if starts else None,
        holder_slots=holder_slots,
    )


def status_of(flags: dict[str, bool], active: bool, uncounted: bool = False) -> str:
    """The one-word badge of a limit's flags, worst first."""
    if flags["is_over_limit"]:
        return Status.OVER_LIMIT
    if flags["is_deadlocked"]:
        return Status.DEADLOCKED
    if uncounted:
        return Status.UNCOUNTED
    if flags["has_zombie"]:
        return Status.ZOMBIE
    if flags["is_stale"]:
        return Status.STALE
    if flags["has_drift"]:
        return Status.DRIFT
    if not active:
        return Status.INACTIVE
    if flags["is_held"] and flags["has_waiters"]:
        return Status.CONTENDED
    if flags["is_held"]:
        return Status.HELD
    if flags["has_waiters"]:
        return Status.WAITING
    return Status.FREE


def _who(verdict: HolderVerdict) -> str:
    if verdict.run is not None and verdict.run.name:
        return f"{'task' if verdict.claim.task_run_id else 'flow'} run {verdict.run.name!r}"
    name = verdict.claim.names.get("task_run_name") or verdict.claim.names.get("flow_run_name")
    return f"run {name!r}" if name else f"holder {verdict.claim.key}"
