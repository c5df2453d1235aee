"""Marking the resources on a cross-lock deadlock, after every write of the sync.

A cycle of runs waiting for each other spans several limits, so no single limit's verdict can
see it (`status.wait_for` finds it over the stored holders and waiters of the whole board). It
is kept apart from the verdict, in `Limit.deadlock_cycle`, and only this pass writes it: a
per-limit re-sync that rewrites one limit's verdict neither sees nor clears another limit's
cycle, and the next write of any limit looks at the whole board again.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import F

from reslock_web.alerts import webhook
from reslock_web.models import LIMIT_FLAGS, Condition, Holder, Limit, Waiter
from reslock_web.status.wait_for import (
    Lock,
    Started,
    as_steps,
    find_cycles,
    in_words,
    with_cycle,
)


def mark_cycles(now: datetime) -> int:
    """Set or clear each present limit's cycle; the number of limits whose words changed."""
    rows = Waiter.objects.filter(limit__gone_at__isnull=True, flow_run_id__isnull=False)
    waits, started = [], []
    for run, name, limit, parent, parent_name in rows.values_list(
        "flow_run_id", "flow_run_name", "limit__name", "parent_flow_run_id", "parent_flow_run_name"
    ):
        waits.append(Lock(run, name, limit))
        if parent is not None:
            started.append(Started(parent, parent_name, Lock(run, name, limit)))
    waited = {wait.limit for wait in waits}
    holds = [
        Lock(run, name, limit)
        for run, name, limit in Holder.objects.filter(
            limit__name__in=waited,
            limit__gone_at__isnull=True,
            condition=Condition.HOLDING,
            flow_run_id__isnull=False,
        ).values_list("flow_run_id", "flow_run_name", "limit__name")
    ]
    # A wait on a limit with a free slot (or one Prefect does not enforce) ends by itself.
    full = set(
        Limit.objects.present()
        .filter(name__in=waited, active=True, active_slots__gte=F("limit"))
        .values_list("name", flat=True)
    )
    words: dict[str, list[str]] = {}
    drawn: dict[str, list[list[dict]]] = {}
    for cycle in find_cycles(holds, waits, full, started):
        text = in_words(cycle)
        for name in {step.limit for step in cycle if step.limit}:
            words.setdefault(name, []).append(text)
            drawn.setdefault(name, []).append(as_steps(cycle))
    wanted = {name: (" | ".join(texts)[:4000], drawn[name]) for name, texts in words.items()}
    marked = {
        name: (cycle, steps)
        for name, cycle, steps in Limit.objects.present()
        .exclude(deadlock_cycle="")
        .values_list("name", "deadlock_cycle", "deadlock_steps")
    }
    moved = {name for name in marked.keys() | wanted.keys() if marked.get(name) != wanted.get(name)}
    rows = list(Limit.objects.present().filter(name__in=moved)) if moved else []
    for row in rows:
        _mark(row, *wanted.get(row.name, ("", [])), now)
    return len(rows)


def _mark(row: Limit, cycle: str, steps: list[list[dict]], now: datetime) -> None:
    """Write a limit's cycle, or its end, with the flags, evidence and badge that go with it."""
    marked = with_cycle(
        {flag: getattr(row, flag) for flag in LIMIT_FLAGS},
        row.evidence,
        active=row.active,
        uncounted=row.holders.filter(condition=Condition.UNCOUNTED).exists(),
        self_deadlocked=row.waiters.filter(deadlocked_by__isnull=False).exists(),
        cycle=cycle,
    )
    Limit.objects.filter(pk=row.pk).update(
        deadlock_cycle=cycle,
        deadlock_steps=steps,
        is_deadlocked=marked.flags["is_deadlocked"],
        evidence=marked.evidence,
        status=marked.status,
        changed_at=now,
    )
    previous, row.status, row.evidence = row.status, marked.status, marked.evidence
    webhook.record(row, previous)
