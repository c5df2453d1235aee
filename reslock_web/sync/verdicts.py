"""The verdict on each limit of a pass (`judge_limit`), and the verdict put on its row
(`apply_verdict`), which `store.write` then saves.

The rules are reslock_web.status.diagnosis; what they are asked with comes from here: whether a
claim's process still runs (`life_reader`) and which stored holders a release has closed
(`released_keys`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

from reslock.process import describe, process_alive, process_gone
from reslock.protocol import EVENT_STOPPING
from reslock_web.models import (
    COUNTED,
    Condition,
    Holder,
    Kind,
    Limit,
    LockEvent,
    Source,
    search_text,
)
from reslock_web.prefect_io.records import LimitInfo, parse_uuid
from reslock_web.status import diagnosis
from reslock_web.status.diagnosis import ALIVE, GONE, Claim, Context, Life, Previous
from reslock_web.status.wait_for import with_cycle
from reslock_web.sync.queries import chunked
from reslock_web.sync.snapshot import Snapshot

NEVER_READ = datetime(1970, 1, 1, tzinfo=UTC)  # holders_checked_at of counted tag holders
# The helper announces `stopping` every 5 s while a block whose lease was lost is still
# inside; one Prefect received within this long shows it alive.
STOPPING_FRESH = timedelta(seconds=30)


def released_keys(holders: dict[int, dict[str, Holder]]) -> frozenset[str]:
    """Keys of stored event-backed holders whose acquire a release has closed (the events of
    this pass are recorded before this is asked)."""
    keys = [
        key
        for by_key in holders.values()
        for key, holder in by_key.items()
        if holder.source in (Source.HELPER, Source.EVENT)
    ]
    ids = [event_id for key in keys if (event_id := parse_uuid(key)) is not None]
    released: set[str] = set()
    for chunk in chunked(ids):
        released |= {
            str(event_id)
            for event_id in LockEvent.objects.filter(
                event_id__in=chunk, closed_at__isnull=False
            ).values_list("event_id", flat=True)
        }
    return frozenset(released)


def life_reader(
    now: datetime, heartbeats: dict[UUID, datetime] | None = None
) -> Callable[[Claim], Life]:
    """What shows whether a claim's process still runs, looked up when a rule asks: its
    process on this machine (reslock/process.py), else its helper's recent `stopping` announcements,
    and its flow run's last heartbeat (`Life.as_of` weighs it against when the slot was lost).
    Nothing else counts: a claim made earlier or later than another says nothing of either."""
    heartbeats = heartbeats or {}
    stopping: dict[UUID, datetime] | None = None

    def heard(lease_id: UUID) -> datetime | None:
        nonlocal stopping
        if stopping is None:
            stopping = {}
            rows = LockEvent.objects.filter(
                event=EVENT_STOPPING, occurred__gte=now - timedelta(hours=1)
            ).values_list("lease_id", "received", "occurred")
            for lease, received, occurred in rows:
                heard_at = received or occurred  # the server's clock, when Prefect gave it
                if lease is not None and heard_at > stopping.get(lease, NEVER_READ):
                    stopping[lease] = heard_at
        return stopping.get(lease_id)

    def life(claim: Claim) -> Life:
        if claim.process:
            where = describe(claim.process)
            if process_gone(claim.process):
                return Life(GONE, f"its process ({where}) has ended")
            if process_alive(claim.process):
                return Life(ALIVE, f"its process ({where}) still runs")
        last = heard(claim.lease_id) if claim.lease_id else None
        if last is not None and now - last <= STOPPING_FRESH:
            return Life(
                ALIVE,
                f"its helper announced at {last:%H:%M:%S} UTC that its block is still inside",
            )
        return Life(beat=heartbeats.get(claim.flow_run_id) if claim.flow_run_id else None)

    return life


def judge_limit(
    info: LimitInfo,
    row: Limit,
    snapshot: Snapshot,
    stored: dict[str, Holder],
    ctx: Context,
    alike: dict[tuple, diagnosis.Verdict] | None = None,
):
    """The verdict on one limit. Limits that nobody claims, waits for or held last time are
    judged on a few of their values only: `alike` keeps one verdict per such set of values
    (thousands of free limits share a handful), to be read, never changed."""
    kind, _, _ = diagnosis.kind_of(info.name)
    drift_since = row.drift_since if row.pk else None
    tag_count = len(snapshot.tag_holders.get(info.name, [])) if kind == Kind.TAG else None
    key = None
    if alike is not None and not (
        stored or snapshot.claims.get(info.id) or snapshot.queued.get(info.id)
    ):
        key = (kind, info.active, info.slot_decay_per_second == 0, info.active_slots, tag_count)
        key += (drift_since,)
        if key in alike:
            return alike[key]
    previous = {
        key: Previous(
            condition=holder.condition,
            slot_lost_at=holder.slot_lost_at,
            acquired_at=holder.acquired_at,
            flow_run_id=holder.flow_run_id,
            task_run_id=holder.task_run_id,
            source=holder.source,
            names={"flow_run_name": holder.flow_run_name, "task_run_name": holder.task_run_name},
            slots=holder.slots,
            lease_id=holder.lease_id,
            lease_seconds=holder.lease_seconds,
            process=holder.process or {},
        )
        for key, holder in stored.items()
    }
    claims = snapshot.claims.get(info.id, [])
    for claim in claims:
        if claim.lease_seconds is None and kind == Kind.TAG:
            claim.lease_seconds = diagnosis.TAG_LEASE_SECONDS
        kept = stored.get(claim.key)
        if claim.acquired_at is None:
            # Tag leases carry no time: the task run's start, else when we first saw the claim.
            run = ctx.run_of(claim.flow_run_id, claim.task_run_id)
            claim.acquired_at = (
                (run.start_time if run else None) or (kept.acquired_at if kept else None) or ctx.now
            )
    holder_verdicts, closed = diagnosis.classify_holders(kind, info, claims, previous, ctx)
    waiter_verdicts = diagnosis.order_waiters(
        snapshot.queued.get(info.id, []), holder_verdicts, snapshot.ancestors, ctx
    )
    verdict = diagnosis.judge(
        kind, info, holder_verdicts, waiter_verdicts, closed, drift_since, tag_count, ctx
    )
    if key is not None:
        alike[key] = verdict
    return verdict


def apply_verdict(
    row: Limit, info: LimitInfo, verdict: diagnosis.Verdict, snapshot: Snapshot, now: datetime
) -> None:
    kind, resource, deployment_id = diagnosis.kind_of(info.name)
    if deployment_id is not None and deployment_id in snapshot.deployments:
        deployment_name, flow_id = snapshot.deployments[deployment_id]
        flow_name = snapshot.flow_names.get(flow_id, "") if flow_id else ""
        resource = f"{flow_name}/{deployment_name}" if flow_name else deployment_name
    row.name, row.kind, row.deployment_id = info.name, kind, deployment_id
    row.resource = (resource or info.name)[:500]  # "tag:" alone names no tag: show the name
    row.search_text = search_text(row.name, row.resource)
    row.limit, row.active, row.active_slots = info.limit, info.active, info.active_slots
    row.slot_decay_per_second = info.slot_decay_per_second
    row.prefect_created, row.prefect_updated = info.created, info.updated
    row.gone_at = None
    # A cycle through this limit and others (sync/deadlocks.py) stays until that pass clears
    # it: one limit's verdict cannot see it, and must not drop it.
    marked = with_cycle(
        verdict.flags,
        verdict.evidence,
        active=info.active,
        uncounted=any(v.condition == Condition.UNCOUNTED for v in verdict.holders),
        self_deadlocked=verdict.flags["is_deadlocked"],
        cycle=row.deadlock_cycle,
    )
    row.status = marked.status
    for flag, value in marked.flags.items():
        setattr(row, flag, value)
    row.holder_count = sum(1 for v in verdict.holders if v.condition in COUNTED)
    row.holder_slots = verdict.holder_slots
    row.waiter_count = len(verdict.waiters)
    row.held_since = verdict.held_since
    row.drift_since = verdict.drift_since
    row.evidence = marked.evidence
    if info.name in snapshot.tag_checked:
        row.holders_checked_at = now
    elif info.name in snapshot.tag_counted and row.holders_checked_at is None:
        # Holders found by counting Running task runs, not yet read from Prefect's own list:
        # kept while the counter stands still (as a read list is), and first in line for
        # the per-pass check against that list.
        row.holders_checked_at = NEVER_READ
