"""Cross-lock deadlocks: runs that wait for each other in a circle, across limits.

The wait-for graph has one node per flow run (a task run's locks are its flow run's): run W
points at run H when W, or one of its task runs, waits for a full limit whose slot H, or one of
its task runs, holds; and a flow run points at a waiting run it started (a subflow, or
`run_deployment`, which waits for the run it started unless told `timeout=0`): a deployment run
that calls its own deployment, full with itself, waits for a child that waits for it. On a cycle every run waits, through the others, for itself: none can go
on, Prefect breaks none of them, and only an operator (or a timeout in the flow) can. Two runs
that each took one resource and wait for the other's is the plain case; the helper's nested
locks and runs of several limits give longer ones.

A run waiting inside the same limit its own task holds is the self-deadlock `diagnosis` names
per limit; this module finds what no single limit shows. Pure rules: the sync gives it rows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from reslock_web.status.diagnosis import status_of


@dataclass(frozen=True)
class Marked:
    """A limit's flags, evidence and badge with its cycle (or without one) taken into account."""

    flags: dict[str, bool]
    evidence: list[dict[str, Any]]
    status: str


def with_cycle(
    flags: dict[str, bool],
    evidence: list[dict[str, Any]],
    *,
    active: bool,
    uncounted: bool,
    self_deadlocked: bool,
    cycle: str,
) -> Marked:
    """The verdict of one limit (its flags and evidence) with the board's cycle through it, in
    words, or with none: deadlocked when either its own waiter is nested in its holder
    (`self_deadlocked`) or it is on a cycle. The sync's write and the cycle pass both use this,
    so that whichever writes last, the row says the same."""
    flags = {**flags, "is_deadlocked": self_deadlocked or bool(cycle)}
    evidence = [item for item in evidence if not item.get("cycle")]
    if cycle:
        evidence.append(
            {
                "flag": "deadlocked",
                "cycle": True,
                "text": f"Deadlocked across resources: {cycle}. None of these runs can go on "
                "until one of them gives up its lock or is stopped.",
            }
        )
    return Marked(flags, evidence, status_of(flags, active, uncounted))


@dataclass(frozen=True)
class Lock:
    """One holder or waiter row of a flow run on a limit."""

    run: UUID  # the flow run
    run_name: str
    limit: str  # the limit's name


@dataclass(frozen=True)
class Step:
    """`waiter` waits for `limit`, which `holder` holds; or, with no limit, `waiter` started
    `holder` and waits for it to end."""

    waiter: Lock
    limit: str
    holder: Lock


@dataclass(frozen=True)
class Started:
    """`parent` started the flow run `child`, which waits for a limit."""

    parent: UUID
    parent_name: str
    child: Lock


def find_cycles(
    holds: Iterable[Lock],
    waits: Iterable[Lock],
    full: set[str],
    started: Iterable[Started] = (),
) -> list[list[Step]]:
    """Every cycle of runs waiting for each other, one per strongly connected group of runs,
    each as the steps around it, starting from its smallest run id (so that the words stay the
    same from one sync to the next). Only waits on full limits count: a limit with a free slot
    lets its waiter in."""
    holders: dict[str, list[Lock]] = {}
    for hold in holds:
        holders.setdefault(hold.limit, []).append(hold)
    edges: dict[UUID, list[Step]] = {}
    for wait in waits:
        if wait.limit not in full:
            continue
        for hold in holders.get(wait.limit, []):
            if hold.run != wait.run:  # one run inside its own limit: diagnosis's self-deadlock
                edges.setdefault(wait.run, []).append(Step(wait, wait.limit, hold))
    for link in started:
        if link.parent != link.child.run:
            parent = Lock(link.parent, link.parent_name, "")
            step = Step(parent, "", Lock(link.child.run, link.child.run_name, ""))
            if step not in edges.get(link.parent, []):
                edges.setdefault(link.parent, []).append(step)
    cycles = []
    for group in _strongly_connected(edges):
        if len(group) > 1:
            cycles.append(_walk(min(group), group, edges))
    return sorted(cycles, key=lambda steps: steps[0].waiter.run)


def in_words(cycle: list[Step]) -> str:
    """'run "a" waits for db-2, held by run "b"; run "b" waits for db-1, held by run "a"'."""
    return "; ".join(
        f"run {_name(step.waiter)} waits for {step.limit}, held by run {_name(step.holder)}"
        if step.limit
        else f"run {_name(step.waiter)} started run {_name(step.holder)} and waits for it to "
        "end (as a subflow does, and run_deployment unless given timeout=0)"
        for step in cycle
    )


def as_steps(cycle: list[Step]) -> list[dict[str, Any]]:
    """The cycle as stored for its drawing (`Limit.deadlock_steps`), JSON only."""
    return [
        {
            "waiter": [str(step.waiter.run), step.waiter.run_name],
            "limit": step.limit,
            "holder": [str(step.holder.run), step.holder.run_name],
        }
        for step in cycle
    ]


def _name(lock: Lock) -> str:
    return repr(lock.run_name or str(lock.run))


def _walk(start: UUID, group: set[UUID], edges: dict[UUID, list[Step]]) -> list[Step]:
    """The shortest cycle through `start` inside its group (every member leads back to it),
    found breadth first, steps taken in a fixed order so that the words stay put."""
    came_by: dict[UUID, Step] = {}
    queue = deque([start])
    while queue:
        run = queue.popleft()
        steps = sorted(
            (s for s in edges.get(run, []) if s.holder.run in group),
            key=lambda s: (str(s.holder.run), s.limit),
        )
        for step in steps:
            if step.holder.run == start:
                path = [step]
                while run != start:
                    path.append(came_by[run])
                    run = came_by[run].waiter.run
                return path[::-1]
            if step.holder.run not in came_by:
                came_by[step.holder.run] = step
                queue.append(step.holder.run)
    raise AssertionError("a strongly connected group always leads back to its members")


def _strongly_connected(edges: dict[UUID, list[Step]]) -> list[set[UUID]]:
    """Tarjan's algorithm, iterative (a board may hold long chains of waits)."""
    index: dict[UUID, int] = {}
    low: dict[UUID, int] = {}
    on_stack: set[UUID] = set()
    stack: list[UUID] = []
    groups: list[set[UUID]] = []
    nodes = set(edges) | {s.holder.run for steps in edges.values() for s in steps}
    for root in sorted(nodes, key=str):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            successors = [s.holder.run for s in edges.get(node, [])]
            if position < len(successors):
                work.append((node, position + 1))
                nxt = successors[position]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return groups
