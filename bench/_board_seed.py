"""reslock's own tables filled directly in the shape a sync of the scale workspace leaves them.

The board reads only reslock's database, so its cost at 20,000 limits and a million lock events
can be measured without the 30-minute Prefect workspace of `scale_bench.py`: the limits of all
kinds, one in ten held (its holder rows), ~60 waiters (5 in a self-deadlock), and the 7-day
window of lock events the backfill records, every hold over and closed as the sync closes it.

    seed(limits=20_000, events=1_000_000)   # into the database Django is set up with

Layout and names follow `_prefect_fixture.Layout` (3/5 global, the rest tag, 1 % deployment)
and `_event_seed` (busy limits getting more holds; Prefect's `concurrency()` pairs on every
limit, the helper's holds on global limits, one in five after a wait, one hold in 15 longer
than 5 minutes). Of the helper's holds, one in LOST_EVERY ended with its lease lost.
"""

from __future__ import annotations

import bisect
import random
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import accumulate

from bench._prefect_fixture import Layout

PREFECT_ACQUIRED = "prefect.concurrency-limit.acquired"
PREFECT_RELEASED = "prefect.concurrency-limit.released"
WINDOW = timedelta(days=7) - timedelta(hours=2)
LOST_EVERY = 200  # helper holds whose lease was lost while their run went on
BATCH = 2000


def layout_for(limits: int) -> Layout:
    """The scale bench's layout for this many limits (`scale_bench.layout`)."""
    deployments = max(1, limits // 100)
    gcls = limits * 3 // 5
    return Layout(gcls=gcls, tags=limits - gcls - deployments, deployments=deployments)


def seed(limits: int, events: int, seed: int = 1, log=print) -> dict[str, int]:
    """Fill the empty tables; returns what was made, by table."""
    from django.db import transaction

    started = time.monotonic()
    rng = random.Random(seed)
    with transaction.atomic():
        rows = _limits(layout_for(limits), rng)
        holders, waiters = _people(rows, layout_for(limits), rng)
        made = {"limits": len(rows), "holders": holders, "waiters": waiters}
    log(f"    {len(rows):,} limits, {holders:,} holders, {waiters} waiters")
    made["lock events"] = _events(rows, events, rng, log)
    from reslock_web.sync.store import raise_board_version

    with transaction.atomic():
        raise_board_version()
    log(f"    seeded in {time.monotonic() - started:.0f} s")
    return made


def _limits(layout: Layout, rng: random.Random) -> list:
    from django.utils import timezone

    from reslock_web.models import Kind, Limit, Status, search_text

    now = timezone.now()
    names = [(name, Kind.GLOBAL, name) for name in layout.gcl_names()]
    names += [(f"tag:{tag}", Kind.TAG, tag) for tag in layout.tag_names()]
    names += [
        (f"deployment:{uuid.UUID(int=rng.getrandbits(128))}", Kind.DEPLOYMENT, f"bench/{dep}")
        for dep in layout.deployment_names()
    ]
    held = set()
    for kind in Kind.values:
        held |= set(layout.held([name for name, k, _ in names if k == kind]))
    made = []
    for name, kind, resource in names:
        limit = Limit(
            prefect_id=uuid.uuid4(),
            name=name,
            kind=kind,
            resource=resource,
            search_text=search_text(name, resource),
            deployment_id=uuid.UUID(name.removeprefix("deployment:"))
            if kind == Kind.DEPLOYMENT
            else None,
            limit=1,
            prefect_created=now - timedelta(days=30),
            prefect_updated=now - timedelta(days=1),
            changed_at=now - timedelta(seconds=rng.uniform(0, 86400)),
            holders_checked_at=now if kind == Kind.TAG else None,
        )
        if name in held:
            limit.status, limit.is_held, limit.active_slots = Status.HELD, True, 1
            limit.holder_count = limit.holder_slots = 1
            limit.held_since = now - timedelta(seconds=rng.uniform(60, 4 * 3600))
        made.append(limit)
    return Limit.objects.bulk_create(made, batch_size=500)


def _people(limits: list, layout: Layout, rng: random.Random) -> tuple[int, int]:
    """A holder for each held limit, and the workspace's waiters: tag runs queued on held tag
    limits (some nested in their limit's holder, a self-deadlock) and deployment runs
    awaiting a slot."""
    from reslock_web.models import Holder, Kind, Source, Status, Waiter

    source = {
        Kind.GLOBAL: Source.EVENT,
        Kind.TAG: Source.TAG_LEASE,
        Kind.DEPLOYMENT: Source.DEPLOYMENT,
    }
    holders = []
    flow_run, flow_run_name = None, ""
    for index, limit in enumerate(limit for limit in limits if limit.is_held):
        if index % layout.per_flow_run == 0:  # task runs of one flow run hold several
            flow_run, flow_run_name = uuid.uuid4(), f"bench-{limit.resource[-20:]}"
        holders.append(
            Holder(
                limit=limit,
                key=f"{limit.kind}:{limit.name}"[:80],
                source=source[limit.kind],
                acquired_at=limit.held_since,
                flow_run_id=flow_run,
                flow_run_name=flow_run_name,
                flow_name="bench-holders",
                task_run_id=None if limit.kind == Kind.DEPLOYMENT else uuid.uuid4(),
                task_run_name=f"task-{limit.resource[-12:]}",
                state_type="RUNNING",
                state_name="Running",
                state_at=limit.held_since,
            )
        )
    Holder.objects.bulk_create(holders, batch_size=500)
    by_limit = {holder.limit_id: holder for holder in holders}
    tags = [limit for limit in limits if limit.is_held and limit.kind == Kind.TAG]
    deployments = [limit for limit in limits if limit.is_held and limit.kind == Kind.DEPLOYMENT]
    queued: list[tuple] = [
        (tags[i % len(tags)], i < layout.deadlocked) for i in range(layout.tag_waiters)
    ]
    queued += [(limit, False) for limit in deployments[: layout.deployment_waiters]]
    waiters, position = [], {}
    for limit, deadlocked in queued:
        holder = by_limit[limit.pk]
        position[limit.pk] = position.get(limit.pk, 0) + 1
        waiters.append(
            Waiter(
                limit=limit,
                key=f"waiter-{len(waiters)}",
                source=Source.TAG_LEASE if limit.kind == Kind.TAG else Source.DEPLOYMENT,
                position=position[limit.pk],
                waiting_since=holder.acquired_at + timedelta(seconds=30),
                flow_run_id=holder.flow_run_id if deadlocked else uuid.uuid4(),
                flow_run_name=holder.flow_run_name
                if deadlocked
                else f"bench-waiter-{len(waiters)}",
                flow_name="bench-waiters",
                deadlocked_by=holder if deadlocked else None,
                state_type="PENDING",
                state_name="AwaitingConcurrencySlot"
                if limit.kind == Kind.DEPLOYMENT
                else "Pending",
            )
        )
        limit.has_waiters, limit.waiter_count = True, position[limit.pk]
        limit.is_deadlocked = limit.is_deadlocked or deadlocked
        limit.status = Status.DEADLOCKED if limit.is_deadlocked else Status.CONTENDED
    Waiter.objects.bulk_create(waiters, batch_size=500)
    changed = {limit.pk: limit for limit, _ in queued}.values()
    from reslock_web.models import Limit

    fields = ["has_waiters", "waiter_count", "is_deadlocked", "status"]
    Limit.objects.bulk_update(changed, fields, batch_size=500)
    return len(holders), len(waiters)


def _events(limits: list, count: int, rng: random.Random, log) -> int:
    """About `count` lock events over the window, written in batches."""
    from django.db import transaction
    from django.utils import timezone

    from reslock_web.models import LockEvent

    now = timezone.now()
    order = [limit for limit in limits]
    rng.shuffle(order)  # which limits are the busy ones
    cumulative = list(accumulate(1.0 / (rank + 10) ** 0.8 for rank in range(len(order))))
    flows = [(uuid.UUID(int=rng.getrandbits(128)), f"bench-flow-{i}") for i in range(40)]
    made, batch, started = 0, [], time.monotonic()
    for row in _holds(order, cumulative, flows, count, now, rng):
        batch.append(row)
        if len(batch) >= BATCH:
            with transaction.atomic():
                LockEvent.objects.bulk_create(batch, batch_size=500)
            made += len(batch)
            batch.clear()
            if made % 200_000 < BATCH:
                log(f"    {made:,} lock events in {time.monotonic() - started:.0f} s")
    with transaction.atomic():
        LockEvent.objects.bulk_create(batch, batch_size=500)
    return made + len(batch)


def _holds(order, cumulative, flows, count, now: datetime, rng: random.Random) -> Iterator:
    """The rows of whole holds, as the sync records and closes them, until `count` events."""
    from reslock.protocol import EVENT_ACQUIRED, EVENT_RELEASED, EVENT_TIMED_OUT, EVENT_WAITING
    from reslock_web.models import Kind, LockEvent

    span = WINDOW.total_seconds()
    made = 0
    while made < count:
        limit = order[min(bisect.bisect(cumulative, rng.random() * cumulative[-1]), len(order) - 1)]
        flow_id, flow_name = rng.choice(flows)
        run = {
            "limit_prefect_id": limit.prefect_id,
            "limit_name": limit.name,
            "flow_run_id": uuid.uuid4(),
            "flow_run_name": f"{flow_name}-{rng.getrandbits(32):08x}",
            "flow_id": flow_id,
            "flow_name": flow_name,
            "task_run_id": uuid.uuid4(),
            "task_run_name": f"task-{rng.getrandbits(32):08x}",
        }
        held = rng.uniform(300, 5400) if rng.random() < 1 / 15 else rng.expovariate(1 / 60)
        kind = rng.random() if limit.kind == Kind.GLOBAL else 0.0
        # The helper's first try found it taken (one hold in five, and every one that gives up).
        waits = kind >= 0.65 and (kind > 0.9 or rng.random() < 0.2)
        waited = rng.expovariate(1 / 30) if waits else 0.0
        # Every hold has ended by a minute before now.
        late = 60 + waited + held
        start = now - timedelta(seconds=late + rng.random() * max(0.0, span - 60 - late))
        end = start + timedelta(seconds=held)
        if kind < 0.65:  # Prefect's concurrency(): a release that follows its acquire
            acquire = uuid.uuid4()
            yield LockEvent(
                event_id=acquire,
                event=PREFECT_ACQUIRED,
                occurred=start,
                received=start,
                closed_at=end,
                closed_reason="released",
                **run,
            )
            yield LockEvent(
                event_id=uuid.uuid4(),
                event=PREFECT_RELEASED,
                occurred=end,
                received=end,
                follows=acquire,
                **run,
            )
            made += 2
            continue
        wait_id, lease_id = uuid.uuid4(), uuid.uuid4()
        if waits:
            after = start + timedelta(seconds=waited)
            yield LockEvent(
                event_id=uuid.uuid4(),
                event=EVENT_WAITING,
                occurred=start,
                received=start,
                wait_id=wait_id,
                closed_at=after,
                closed_reason="timed_out" if kind > 0.95 else "acquired",
                **run,
            )
            made += 1
            if kind > 0.95:  # gave up
                yield LockEvent(
                    event_id=uuid.uuid4(),
                    event=EVENT_TIMED_OUT,
                    occurred=after,
                    received=after,
                    wait_id=wait_id,
                    **run,
                )
                made += 1
                continue
            start, end = after, after + timedelta(seconds=held)
        reason = (
            "lease_lost" if rng.random() < 1 / LOST_EVERY else rng.choice(["exit"] * 30 + ["error"])
        )
        yield LockEvent(
            event_id=uuid.uuid4(),
            event=EVENT_ACQUIRED,
            occurred=start,
            received=start,
            lease_id=lease_id,
            lease_seconds=300,
            wait_id=wait_id,
            closed_at=end,
            closed_reason=reason,
            **run,
        )
        yield LockEvent(
            event_id=uuid.uuid4(),
            event=EVENT_RELEASED,
            occurred=end,
            received=end,
            lease_id=lease_id,
            **run,
        )
        made += 2
