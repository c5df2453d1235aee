"""One flow run's locks: what it holds, what it waits for, and why it waits, in words.

The run's page and `GET /api/v1/runs/<id>` both show this. A run is found by its flow run id
on the holders and waiters the board shows, its task runs' included (a tag slot is held by a
task run of the flow run). Nothing here judges anew: each holder's condition and each waiter's
deadlock are the sync's verdicts (`status.diagnosis`), and a resource's diagnosis is the one its
own page gives (`status.explain`). What this module adds is the composition: for each wait,
who is ahead of the run and what each of them is, said in one sentence; and the health of each
lease it holds (`status.leases`), with the leases it lost while it ran.

A sentence is a list of `Part`s so that the page can link its names (the resource, the runs,
the release page) and the API can join the same words as text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from django.db.models import Prefetch
from django.urls import reverse
from django.utils import timezone

from reslock_web.board.drawing import Drawing, draw
from reslock_web.board.format import clock, humane
from reslock_web.models import Condition, Holder, Limit, RunFields, Waiter
from reslock_web.prefect_io import links
from reslock_web.status.explain import Explanation, explain
from reslock_web.status.leases import Lease, LostLease, leases_of, lost_by_run

# What a holder's condition means for whoever waits behind it; a live holder needs no words.
# The conditions and their rules are the sync's (Condition); these only say them.
CONDITION_WORDS = {
    Condition.STALE: "which is stale (its run is over, its slot is still counted)",
    Condition.ZOMBIE: "which is a zombie (its process has ended, Prefect still shows it running)",
    Condition.UNCOUNTED: (
        "which is uncounted (Prefect no longer counts its slot, and nothing shows whether "
        "its process still works inside)"
    ),
}
# Conditions whose advice (`status.explain`) is to release the holder; the release page
# decides whether it may, as it does from the resource page.
RELEASE_ADVISED = (Condition.STALE, Condition.ZOMBIE)
RELEASE_WORDS = "an operator can release it"  # the page links "release it here" instead


@dataclass(frozen=True)
class Part:
    """A piece of a sentence. `url`: the words link there (`external`: into Prefect's UI);
    `release`: the words stand for the release page at `url`; `when` with `age`: a duration
    up to now, else a moment."""

    text: str
    url: str = ""
    external: bool = False
    release: bool = False
    when: datetime | None = None
    age: bool = False


def text_of(parts: list[Part]) -> str:
    return "".join(part.text for part in parts)


@dataclass
class Blocker:
    """A holder ahead of the run on a resource it waits for."""

    holder: Holder
    release_url: str  # the release page, when releasing it is the advice; else ""
    deadlocks: bool = False  # the run waits inside this holder's task
    lease: Lease | None = None  # what renews its slot, when the board can tell


@dataclass
class Wait:
    limit: Limit
    waiter: Waiter
    blockers: list[Blocker]
    ahead: list[Waiter]  # waiters before it in the queue, in order
    explanation: Explanation
    words: list[Part] = field(default_factory=list)


@dataclass
class Hold:
    limit: Limit
    holder: Holder
    behind: list[Waiter]  # the waiters, in order
    explanation: Explanation
    release_url: str
    words: list[Part] = field(default_factory=list)
    lease: Lease | None = None  # what renews its slot, when the board can tell


@dataclass
class RunLocks:
    run_id: UUID
    holds: list[Hold]
    waits: list[Wait]
    about: RunFields | None  # a row naming the run (its names and, when known, its state)
    state: RunFields | None  # a row with the flow run's own state, when the board has one
    # Leases it lost while it ran, in the last 24 h, on any resource: the next run got in.
    lost: list[LostLease] = field(default_factory=list)
    leases: dict[int, Lease] = field(default_factory=dict)  # by holder pk, holds and blockers

    @property
    def known(self) -> bool:
        return bool(self.holds or self.waits)

    @property
    def name(self) -> str:
        if self.about:
            return self.about.flow_run_name
        return next((lost.run_name for lost in self.lost if lost.run_name), "")

    @property
    def flow_name(self) -> str:
        return self.about.flow_name if self.about else ""

    @property
    def deployment_name(self) -> str:
        return self.about.deployment_name if self.about else ""

    @property
    def deployment_url(self) -> str:
        return self.about.deployment_url if self.about else ""

    @property
    def flow_run_url(self) -> str:
        return links.flow_run(self.run_id)

    @property
    def cycles(self) -> list[Drawing]:
        """The cross-lock cycles this run is on, each drawn once (every limit on a cycle
        keeps the whole of it)."""
        drawings, seen = [], set()
        for limit in [hold.limit for hold in self.holds] + [wait.limit for wait in self.waits]:
            for drawing in draw(limit.deadlock_steps):
                runs = tuple(node.run_id for node in drawing.nodes)
                key = (runs, tuple(arrow.full_label for arrow in drawing.arrows))
                if str(self.run_id) in runs and key not in seen:
                    seen.add(key)
                    drawings.append(drawing)
        return drawings


def run_locks(run_id: UUID) -> RunLocks:
    """Everything the board shows of `run_id`, in five queries at most: the limits, their
    holders (as the board shows them) and their waiters, the helper's `stopping` announcements
    of their leases, and the leases the run lost."""
    limits = list(
        Limit.objects.present()
        .of_run(run_id)
        .prefetch_related(
            Prefetch("holders", queryset=Holder.objects.shown().order_by("acquired_at", "id")),
            Prefetch("waiters", queryset=Waiter.objects.order_by("position", "id")),
        )
        .order_by("resource", "name", "id")
    )
    holds: list[Hold] = []
    waits: list[Wait] = []
    rows: list[RunFields] = []
    for limit in limits:
        holders, waiters = list(limit.holders.all()), list(limit.waiters.all())
        explanation = explain(limit, holders, waiters)
        for holder in holders:
            if holder.flow_run_id == run_id:
                rows.append(holder)
                holds.append(_hold(limit, holder, waiters, explanation))
        for waiter in waiters:
            if waiter.flow_run_id == run_id:
                rows.append(waiter)
                waits.append(_wait(limit, waiter, holders, waiters, explanation))
    about = next((row for row in rows if row.flow_run_name), rows[0] if rows else None)
    # A row of a task run carries that task run's state; only a row without one carries the
    # flow run's (a deployment slot, a flow-level `concurrency()`).
    state = next((row for row in rows if not row.task_run_id and row.state_name), None)
    now = timezone.now()
    held = [(hold.limit, hold.holder) for hold in holds]
    held += [(wait.limit, blocker.holder) for wait in waits for blocker in wait.blockers]
    health = leases_of(held, now)
    for hold in holds:
        hold.lease = health.get(hold.holder.pk)
    for wait in waits:
        for blocker in wait.blockers:
            blocker.lease = health.get(blocker.holder.pk)
    return RunLocks(run_id, holds, waits, about, state, lost_by_run(run_id, now), health)


def release_url(limit: Limit, holder: Holder) -> str:
    if holder.condition not in RELEASE_ADVISED:
        return ""
    return reverse("operate", args=["release", limit.name]) + f"?holder={int(holder.pk)}"


def run_url(run_id: UUID | None) -> str:
    return reverse("run", args=[run_id]) if run_id else ""


def _hold(limit: Limit, holder: Holder, waiters: list[Waiter], explanation: Explanation) -> Hold:
    hold = Hold(limit, holder, waiters, explanation, release_url(limit, holder))
    words = [Part("holding "), _resource(limit)]
    words += _since(holder.acquired_at)
    words += _condition(holder, hold.release_url)
    if waiters:
        words.append(Part(f"; {len(waiters)} run(s) wait behind it, next "))
        words.append(_who(waiters[0]))
    hold.words = words
    return hold


def _wait(
    limit: Limit,
    waiter: Waiter,
    holders: list[Holder],
    waiters: list[Waiter],
    explanation: Explanation,
) -> Wait:
    blockers = [
        Blocker(holder, release_url(limit, holder), holder.pk == waiter.deadlocked_by_id)
        for holder in holders
    ]
    ahead = [other for other in waiters if other.position < waiter.position]
    wait = Wait(limit, waiter, blockers, ahead, explanation)
    words = [Part("waiting ")]
    if waiter.waiting_since:
        words.append(_age(waiter.waiting_since))
        words.append(Part(" "))
    words += [Part("for "), _resource(limit)]
    place = f"{_ordinal(waiter.position)} in line" if waiter.position else "in line"
    words.append(Part(f" ({place}, {len(ahead)} ahead of it)" if ahead else f" ({place})"))
    for index, blocker in enumerate(blockers):
        words.append(Part(", held by " if index == 0 else "; and by "))
        words.append(_who(blocker.holder))
        words += _since(blocker.holder.acquired_at)
        if blocker.deadlocks:
            words.append(
                Part(
                    ", inside which it waits: a self-deadlock, which never ends by itself "
                    "(see the diagnosis)"
                )
            )
        else:
            words += _condition(blocker.holder, blocker.release_url)
    if not blockers:
        words.append(Part(", and no run the board knows of holds it"))
        if not limit.active:
            words.append(Part(" (the limit is inactive: Prefect lets every run in)"))
        elif limit.has_drift:
            words.append(
                Part(
                    f": Prefect counts {limit.active_slots} used slot(s) of {limit.limit} "
                    "that no known holder takes (drift)"
                )
            )
    wait.words = words
    return wait


def _resource(limit: Limit) -> Part:
    return Part(limit.resource, reverse("resource", args=[limit.name]))


def _who(row: RunFields) -> Part:
    """A run as the board names it: flow/run (or the task run, or "an unknown run")."""
    run = row.flow_run_name or (str(row.flow_run_id) if row.flow_run_id else "")
    if row.flow_name and run:
        text = f"{row.flow_name}/{run}"
    else:
        text = run or (f"task run {row.task_run_name}" if row.task_run_name else "an unknown run")
    return Part(text, run_url(row.flow_run_id))


def _since(when: datetime | None) -> list[Part]:
    if when is None:
        return [Part(" since an unknown time")]
    return [Part(" since "), Part(clock(when), when=when), Part(" ("), _age(when), Part(")")]


def _age(when: datetime) -> Part:
    return Part(humane((timezone.now() - when).total_seconds()), when=when, age=True)


def _condition(holder: Holder, release: str) -> list[Part]:
    words = CONDITION_WORDS.get(holder.condition)
    if words is None:
        return []
    parts = [Part(f", {words}")]
    if release:
        parts += [Part(": "), Part(RELEASE_WORDS, release, release=True)]
    elif holder.condition == Condition.UNCOUNTED and holder.flow_run_id:
        parts += [Part(": "), Part("check it in Prefect", holder.flow_run_url, external=True)]
    return parts


def _ordinal(number: int) -> str:
    suffix = (
        "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    )
    return f"{number}{suffix}"
