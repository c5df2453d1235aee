"""Lease health: how long a holder's slot outlives it if it stops, and leases lost while held.

Every slot a live run holds hangs on a lease its process renews: the helper's (`lease_duration`,
renewed every 0.75 of it), Prefect's task engine's for a tag (60 s), its flow engine's for a
deployment run (300 s). Prefect keeps no readable expiry of a lease, but the last renewal is at
most now, so if the holder stopped renewing now its slot would free by now + its lease + the
repossessor's 15 s at the latest: that bound is what the board shows.

A lease can also be lost while its run goes on (renewals that kept failing past the lease, a
revoke): Prefect then frees the slot, the helper stops the block and says so (`stopping`
while the block is still inside, then a release with reason `lease_lost`). Those runs are
flagged: the next run got the resource, and the one that lost it was stopped mid-way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from reslock.protocol import EVENT_ACQUIRED, EVENT_STOPPING, lease_length, renews_every
from reslock_web.models import Condition, Holder, Kind, Limit, LockEvent, Source
from reslock_web.status.diagnosis import REPOSSESS_SECONDS, TAG_LEASE_SECONDS

# Prefect's flow engine keeps a deployment slot with a 300 s lease (prefect/flow_engine.py).
DEPLOYMENT_LEASE_SECONDS = 300
LOST_WINDOW = timedelta(hours=24)
# The helper announces `stopping` every 5 s while a block whose lease was lost is inside.
STOPPING_FRESH = timedelta(seconds=30)


@dataclass(frozen=True)
class Lease:
    seconds: int
    renews_every: int
    frees_by: datetime  # if the holder stopped renewing now, at the latest
    known: bool  # False: the length is Prefect's default, the holder did not say
    lost_at: datetime | None = None  # the helper says the lease was lost, the block still in

    @property
    def words(self) -> str:
        if self.lost_at is not None:
            return (
                f"Lease lost at {self.lost_at:%H:%M:%S} UTC while the run goes on: Prefect freed "
                "the slot, and the helper is stopping the block."
            )
        length = f"{self.seconds} s" + ("" if self.known else " (Prefect's default)")
        return (
            f"Lease {length}, renewed every {self.renews_every} s while the run lives: if it "
            f"stopped now, the slot would free by {self.frees_by:%H:%M:%S} UTC at the latest."
        )


@dataclass(frozen=True)
class LostLease:
    run_name: str
    flow_run_id: object
    acquired_at: datetime
    lost_at: datetime


def lease_of(limit: Limit, holder: Holder, now: datetime, stopping_at=None) -> Lease | None:
    """The lease behind a live holder's slot, when the board knows what renews it."""
    if holder.condition != Condition.HOLDING:
        return None
    if holder.source == Source.HELPER and holder.lease_id:
        seconds, known = int(lease_length(holder.lease_seconds)), bool(holder.lease_seconds)
        every = int(renews_every(holder.lease_seconds))
    elif holder.source == Source.TAG_LEASE:
        seconds, known, every = TAG_LEASE_SECONDS, True, int(TAG_LEASE_SECONDS * 0.75)
    elif limit.kind == Kind.DEPLOYMENT and holder.source == Source.DEPLOYMENT:
        seconds, known = DEPLOYMENT_LEASE_SECONDS, True
        every = int(DEPLOYMENT_LEASE_SECONDS * 0.75)
    else:
        return None  # plain concurrency() says nothing the board can read about its lease
    lost = stopping_at if stopping_at and now - stopping_at <= STOPPING_FRESH else None
    frees_by = now + timedelta(seconds=seconds + REPOSSESS_SECONDS)
    return Lease(seconds, every, frees_by, known, lost)


def leases(limit: Limit, holders: list[Holder], now: datetime) -> dict[int, Lease]:
    """Each live holder's lease (by holder pk), with its `stopping` announcements read once."""
    lease_ids = [h.lease_id for h in holders if h.lease_id]
    heard: dict[str, datetime] = {}
    if lease_ids:
        rows = LockEvent.objects.filter(
            event=EVENT_STOPPING,
            limit_prefect_id=limit.prefect_id,
            lease_id__in=lease_ids,
            occurred__gte=now - STOPPING_FRESH,
        ).values_list("lease_id", "occurred")
        for lease_id, occurred in rows:
            heard[str(lease_id)] = max(occurred, heard.get(str(lease_id), occurred))
    found = {}
    for holder in holders:
        lease = lease_of(limit, holder, now, heard.get(str(holder.lease_id)))
        if lease is not None:
            found[holder.pk] = lease
    return found


def lost_recently(limit: Limit, now: datetime) -> list[LostLease]:
    """Holds of this limit whose lease was lost while their run went on, newest first."""
    rows = LockEvent.objects.filter(
        event=EVENT_ACQUIRED,
        limit_prefect_id=limit.prefect_id,
        closed_reason="lease_lost",
        closed_at__gte=now - LOST_WINDOW,
    ).order_by("-closed_at")[:20]
    return [
        LostLease(
            row.flow_run_name or row.task_run_name, row.flow_run_id, row.occurred, row.closed_at
        )
        for row in rows
    ]
