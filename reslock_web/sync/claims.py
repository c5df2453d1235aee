"""Who holds and who waits on each limit, as one pass finds them (`find_claims`).

Tag limits: Prefect's per-tag lists of lease holders, and the Pending task runs that carry the
tag of a full limit. Global limits: the acquires not yet released and the helper's open waits,
the stored ones plus those of this pass's events. Deployment limits: the deployment's runs that
keep its slot or await one. Judging them (stale, zombie, deadlocked) is `verdicts`' work.
"""

from __future__ import annotations

from uuid import UUID

from reslock.protocol import EVENT_ACQUIRED, EVENT_RELEASED, EVENT_TIMED_OUT, EVENT_WAITING
from reslock_web.models import Kind, LockEvent, Source
from reslock_web.prefect_io.records import EventInfo, RunInfo
from reslock_web.status.diagnosis import Claim, Queued, kind_of
from reslock_web.sync.events import (
    ACQUIRES,
    PREFECT_RELEASED,
    event_row,
    limit_id_of,
    pair_release,
    release_pairs,
)
from reslock_web.sync.snapshot import Snapshot


def find_claims(snapshot: Snapshot, deployment_runs: list[RunInfo], pending: list[RunInfo]) -> None:
    """Fill the snapshot's claims and queues (`claims`, `queued`: limit id -> list) from what
    the pass read: tag holders, lock events, a deployment's runs, Pending tagged task runs."""
    by_name = {info.name: info for info in snapshot.listing}
    by_id = {info.id: info for info in snapshot.listing}
    # Tag limits: Prefect lists the holders.
    for name, run_ids in snapshot.tag_holders.items():
        info = by_name.get(name)
        if info is not None:
            snapshot.claims[info.id] = [
                Claim(key=str(run_id), source=Source.TAG_LEASE, certain=True, task_run_id=run_id)
                for run_id in run_ids
            ]
    # Global limits: acquires without a release, stored ones plus those read in this pass,
    # and the helper's announced waits, in the order they began. A single-limit pass reads
    # the stored ones of its limit only.
    limit_ids = None if snapshot.only is None else set(by_id)
    for claim_limit, claim in _open_acquires(snapshot.events, limit_ids):
        info = by_id.get(claim_limit)
        if info is not None and kind_of(info.name)[0] == Kind.GLOBAL:
            snapshot.claims.setdefault(info.id, []).append(claim)
    for wait_limit, item in _open_waits(snapshot.events, limit_ids):
        info = by_id.get(wait_limit)
        if info is not None and kind_of(info.name)[0] == Kind.GLOBAL:
            snapshot.queued.setdefault(info.id, []).append(item)
    # Deployment limits: runs that keep the deployment's slot hold (`_keeps_slot`),
    # AwaitingConcurrencySlot waits.
    deployment_limits = {
        deployment_id: info
        for info in snapshot.listing
        if (deployment_id := kind_of(info.name)[2]) is not None
    }
    if deployment_limits:
        for run in deployment_runs:
            info = deployment_limits.get(run.deployment_id)
            if info is None:
                continue
            snapshot.flow_runs[run.id] = run
            if _keeps_slot(run):
                snapshot.claims.setdefault(info.id, []).append(
                    Claim(
                        key=str(run.id),
                        source=Source.DEPLOYMENT,
                        certain=False,
                        flow_run_id=run.id,
                        acquired_at=run.start_time or run.state_at,
                        lease_id=run.lease_id,
                        tentative=run.state_type == "SCHEDULED",
                    )
                )
            elif run.state_name == "AwaitingConcurrencySlot":
                snapshot.queued.setdefault(info.id, []).append(
                    Queued(
                        key=str(run.id),
                        source=Source.DEPLOYMENT,
                        flow_run_id=run.id,
                        task_run_id=None,
                        waiting_since=run.expected_start_time or run.created,
                    )
                )
    # Tag limits that are full: Pending task runs carrying the tag are queued behind them.
    full_tags = {
        info.name.removeprefix("tag:"): info
        for info in snapshot.listing
        if info.name.startswith("tag:")
        and info.active
        and info.limit > 0
        and info.active_slots >= info.limit
    }
    if full_tags:
        for run in pending:
            snapshot.task_runs[run.id] = run
            for tag in run.tags:
                info = full_tags.get(tag)
                if info is not None:
                    snapshot.queued.setdefault(info.id, []).append(
                        Queued(
                            key=str(run.id),
                            source=Source.TAG_LEASE,
                            flow_run_id=run.flow_run_id,
                            task_run_id=run.id,
                            waiting_since=run.state_at or run.created,
                            parent_ids=run.parent_ids,
                        )
                    )


def _keeps_slot(run: RunInfo) -> bool:
    """Whether a deployment's flow run keeps the deployment's slot. Prefect releases it only
    when the run leaves Pending, Running or Cancelling, and carries the lease forward into
    Scheduled/AwaitingRetry while the run retries in its process (core_policy.py:
    ReleaseFlowConcurrencySlots, RetryFailedFlows); such a state names the lease."""
    if run.state_type in ("PENDING", "RUNNING", "CANCELLING"):
        return True
    return run.state_type == "SCHEDULED" and run.lease_id is not None


def _open_acquires(
    events: list[EventInfo], limit_ids: set[UUID] | None = None
) -> list[tuple[UUID, Claim]]:
    """Acquires not yet released: the ones stored open, plus new ones, minus new releases.

    Prefect's own release `follows` its acquire when the two are less than five minutes
    apart; a later one is paired with its acquire by limit and run (`events.pair_release`),
    as the write will record it. reslock's helper releases name the lease.
    """
    released = {e.follows for e in events if e.event == PREFECT_RELEASED and e.follows}
    released_leases = {str(e.payload.get("lease_id")) for e in events if e.event == EVENT_RELEASED}
    acquires: dict[UUID, LockEvent] = {}
    rows = LockEvent.objects.filter(event__in=ACQUIRES, closed_at__isnull=True).exclude(
        limit_prefect_id=None
    )
    if limit_ids is not None:
        rows = rows.filter(limit_prefect_id__in=limit_ids)
    for row in rows:
        acquires[row.event_id] = row
    ended = _closed_ids([e.id for e in events if e.event in ACQUIRES])
    for event in events:
        if event.event in ACQUIRES and event.id not in ended:
            row = event_row(event)
            if row.limit_prefect_id is not None:
                acquires[event.id] = row
    for event_id in released:
        acquires.pop(event_id, None)
    unfollowed = sorted(
        (e for e in events if e.event == PREFECT_RELEASED and not e.follows),
        key=lambda e: e.occurred,
    )
    paired = release_pairs([e.id for e in unfollowed])
    for event in unfollowed:
        target = paired.get(event.id)
        if target is None:
            match = pair_release(event_row(event), acquires.values())
            target = match.event_id if match is not None else None
        acquires.pop(target, None)
    claims = [(row.limit_prefect_id, claim_from_row(row)) for row in acquires.values()]
    return [
        (limit_id, claim)
        for limit_id, claim in claims
        if not (claim.source == Source.HELPER and str(claim.lease_id) in released_leases)
    ]


def _closed_ids(event_ids: list[UUID]) -> set[UUID]:
    """Of these events, the ones we already know ended. Prefect's REST API shows events some
    seconds after its stream does: a pass can read an acquire (or a wait) whose end the
    listener has already recorded, and must not bring it back to life."""
    closed: set[UUID] = set()
    for chunk in (event_ids[i : i + 900] for i in range(0, len(event_ids), 900)):
        closed |= set(
            LockEvent.objects.filter(event_id__in=chunk, closed_at__isnull=False).values_list(
                "event_id", flat=True
            )
        )
    return closed


def _open_waits(
    events: list[EventInfo], limit_ids: set[UUID] | None = None
) -> list[tuple[UUID, Queued]]:
    """Helper waits not yet ended by an acquire or a time-out (matched on the wait id)."""
    ended = {
        (limit_id_of(e), str(e.payload.get("wait_id")))
        for e in events
        if e.event in (EVENT_ACQUIRED, EVENT_TIMED_OUT)
    }
    waits: dict[tuple[UUID, str], Queued] = {}
    rows = LockEvent.objects.filter(event=EVENT_WAITING, closed_at__isnull=True).exclude(
        limit_prefect_id=None
    )
    if limit_ids is not None:
        rows = rows.filter(limit_prefect_id__in=limit_ids)
    for row in rows:
        waits[(row.limit_prefect_id, str(row.wait_id))] = queued_from_row(row)
    ended_rows = _closed_ids([e.id for e in events if e.event == EVENT_WAITING])
    for event in events:
        if event.id in ended_rows:
            continue
        if event.event == EVENT_WAITING and (limit_id := limit_id_of(event)) is not None:
            row = event_row(event)
            waits[(limit_id, str(row.wait_id))] = queued_from_row(row)
    return [
        (limit_id, item)
        for (limit_id, wait), item in waits.items()
        if (limit_id, wait) not in ended
    ]


def queued_from_row(row: LockEvent) -> Queued:
    return Queued(
        key=f"wait:{row.wait_id or row.event_id}",
        source=Source.HELPER,
        flow_run_id=row.flow_run_id,
        task_run_id=row.task_run_id,
        waiting_since=row.occurred,
    )


def claim_from_row(row: LockEvent) -> Claim:
    return Claim(
        key=str(row.event_id),
        source=Source.HELPER if row.event.startswith("reslock.") else Source.EVENT,
        certain=False,
        flow_run_id=row.flow_run_id,
        task_run_id=row.task_run_id,
        acquired_at=row.occurred,
        received=row.received,
        lease_id=row.lease_id,
        lease_seconds=row.lease_seconds,
        slots=row.slots,
        process=row.process or {},
        names={
            "flow_run_name": row.flow_run_name,
            "task_run_name": row.task_run_name,
            "flow_name": row.flow_name,
        },
    )
