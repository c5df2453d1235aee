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

The resource page, the run page and the JSON API show both; the board marks a row whose limit
lost a lease lately (`lost_by_limit`, one query for the whole board).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.db.models import OuterRef, Q, QuerySet, Subquery

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
    limit_name: str = ""  # the limit's name in Prefect (its resource page's address)
    resource: str = ""  # the resource as the board names it

    @classmethod
    def of(cls, row: LockEvent, limit_name: str, resource: str) -> LostLease:
        """The acquire event whose lease was lost (closed `lease_lost`), on that limit."""
        name = row.flow_run_name or row.task_run_name
        return cls(name, row.flow_run_id, row.occurred, row.closed_at, limit_name, resource)


@dataclass(frozen=True)
class LostMark:
    """What a board row says of its limit's lost leases: how many were lost in the last 24 h
    and the latest, and whether a block whose lease was lost is still inside now."""

    lost: int
    lost_at: datetime | None
    stopping: bool

    @property
    def key(self) -> str:
        """Letters and digits that change whenever what the mark says does (drawn rows are
        kept by it)."""
        latest = int(self.lost_at.timestamp()) if self.lost_at else 0
        return f"{'s' if self.stopping else 'n'}{self.lost}x{latest}"

    @property
    def title(self) -> str:
        said = []
        if self.stopping:
            said.append(
                "A holder's lease was lost while its block is still inside: Prefect freed the "
                "slot, and the helper is stopping the block."
            )
        if self.lost_at is not None:
            said.append(
                f"{self.lost} lease(s) lost while their run went on in the last 24 h, the "
                f"latest at {self.lost_at:%Y-%m-%d %H:%M:%S} UTC: the next run got the resource."
            )
        return " ".join(said) + " See the resource page."


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
    return leases_of([(limit, holder) for holder in holders], now)


def leases_of(held: Iterable[tuple[Limit, Holder]], now: datetime) -> dict[int, Lease]:
    """The lease of each live holder of these (limit, holder) pairs, of any limits, by holder
    pk: the helper's `stopping` announcements of all of them in one query."""
    held = list(held)
    lease_ids = sorted({h.lease_id for _, h in held if h.lease_id}, key=str)
    heard: dict[tuple[str, str], datetime] = {}
    if lease_ids:
        rows = LockEvent.objects.filter(
            event=EVENT_STOPPING,
            limit_prefect_id__in=sorted({limit.prefect_id for limit, _ in held}, key=str),
            lease_id__in=lease_ids,
            occurred__gte=now - STOPPING_FRESH,
        ).values_list("limit_prefect_id", "lease_id", "occurred")
        for limit_id, lease_id, occurred in rows:
            key = (str(limit_id), str(lease_id))
            heard[key] = max(occurred, heard.get(key, occurred))
    found = {}
    for limit, holder in held:
        stopping_at = heard.get((str(limit.prefect_id), str(holder.lease_id)))
        lease = lease_of(limit, holder, now, stopping_at)
        if lease is not None:
            found[holder.pk] = lease
    return found


def _lost(now: datetime) -> QuerySet[LockEvent]:
    """Helper holds whose lease was lost while their run went on, closed in the last 24 h."""
    return LockEvent.objects.filter(
        event=EVENT_ACQUIRED, closed_reason="lease_lost", closed_at__gte=now - LOST_WINDOW
    )


def lost_recently(limit: Limit, now: datetime) -> list[LostLease]:
    """Holds of this limit whose lease was lost while their run went on, newest first."""
    rows = _lost(now).filter(limit_prefect_id=limit.prefect_id).order_by("-closed_at")[:20]
    return [LostLease.of(row, limit.name, limit.resource) for row in rows]


def lost_by_run(run_id: UUID, now: datetime) -> list[LostLease]:
    """Holds of a flow run (its task runs' included) whose lease was lost while it went on, on
    any limit, newest first: one query, the limits' names read with it."""
    limits = Limit.objects.filter(prefect_id=OuterRef("limit_prefect_id"))
    rows = (
        _lost(now)
        .filter(flow_run_id=run_id)
        .annotate(
            board_name=Subquery(limits.values("name")[:1]),
            board_resource=Subquery(limits.values("resource")[:1]),
        )
        .order_by("-closed_at")[:20]
    )
    return [
        LostLease.of(
            row,
            row.board_name or row.limit_name,
            row.board_resource or row.board_name or row.limit_name,
        )
        for row in rows
    ]


def lost_by_limit(now: datetime) -> dict[int, LostMark]:
    """Every limit that lost a lease lately, by limit pk, in one query: leases lost while
    their run went on in the last 24 h (`lost_recently`), and blocks still inside whose lease
    was lost (the helper's fresh `stopping`)."""
    rows = (
        LockEvent.objects.filter(
            Q(event=EVENT_ACQUIRED, closed_reason="lease_lost", closed_at__gte=now - LOST_WINDOW)
            | Q(event=EVENT_STOPPING, occurred__gte=now - STOPPING_FRESH)
        )
        .annotate(
            limit_pk=Subquery(
                Limit.objects.filter(prefect_id=OuterRef("limit_prefect_id")).values("pk")[:1]
            )
        )
        .values_list("limit_pk", "event", "closed_at")
    )
    lost: dict[int, list[datetime]] = {}
    stopping: set[int] = set()
    for limit_pk, event, closed_at in rows:
        if limit_pk is None:
            continue  # a limit the board has not synced
        if event == EVENT_STOPPING:
            stopping.add(limit_pk)
        else:
            lost.setdefault(limit_pk, []).append(closed_at)
    return {
        pk: LostMark(len(lost.get(pk, [])), max(lost[pk]) if pk in lost else None, pk in stopping)
        for pk in sorted(lost.keys() | stopping)
    }
