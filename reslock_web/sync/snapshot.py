"""What one pass of the sync works on: what it read from Prefect (`Snapshot`) and what our
tables held before it (`Stored`, `StoredRuns`).

`gather.gather` fills a snapshot (reads only), `store.write` compares it with the stored rows
and writes the difference. Plain data, so that the reading and the writing sides share it without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from reslock_web.models import Holder, Limit, Waiter
from reslock_web.prefect_io.records import EventInfo, LimitInfo, RunInfo
from reslock_web.status.diagnosis import Claim, Queued


@dataclass
class StoredRuns:
    """The runs behind stored holders and waiters, as the last pass saw them. Runs Prefect
    did not return then are left out, to be asked for again; `missing_*` says since when those
    it had shown before have been missing."""

    tasks: dict[UUID, RunInfo]
    flows: dict[UUID, RunInfo]
    missing_tasks: dict[UUID, datetime]
    missing_flows: dict[UUID, datetime]


@dataclass
class Stored:
    """What the last pass wrote, as the write compares with it. The sync reads it while
    Prefect pages the listing: only the sync writes limits, holders and waiters, under its
    lock, so nothing read before the write can change before it."""

    compact: dict[UUID, tuple]  # Prefect id -> the COMPACT values, every stored limit
    holders: dict[int, dict[str, Holder]]
    waiters: dict[int, dict[str, Waiter]]
    rows: dict[UUID, Limit]  # whole rows of the limits that were not quiet last time


@dataclass
class Snapshot:
    """Everything one pass read from Prefect."""

    now: datetime
    only: frozenset[str] | None  # the names of a pass over a few limits; None: every limit
    listing: list[LimitInfo]
    tag_holders: dict[str, list[UUID]]  # limit name -> task-run ids with a lease
    tag_checked: set[str]  # names whose holders were read in this pass
    events: list[EventInfo]
    events_until: datetime
    claims: dict[UUID, list[Claim]]  # limit prefect id -> claims
    queued: dict[UUID, list[Queued]]
    task_runs: dict[UUID, RunInfo] = field(default_factory=dict)
    asked_tasks: set[UUID] = field(default_factory=set)  # ids already looked up (found or not)
    asked_flows: set[UUID] = field(default_factory=set)
    flow_runs: dict[UUID, RunInfo] = field(default_factory=dict)
    flow_names: dict[UUID, str] = field(default_factory=dict)
    deployments: dict[UUID, tuple[str, UUID | None]] = field(default_factory=dict)
    ancestors: dict[UUID, tuple[UUID, ...]] = field(default_factory=dict)
    tag_counted: set[str] = field(default_factory=set)  # names whose holders were counted
    # Runs Prefect had shown before and did not return in this pass: since when.
    missing_since: dict[UUID, datetime] = field(default_factory=dict)
    # Flow runs of claims the count may not cover: when Prefect last received a heartbeat.
    heartbeats: dict[UUID, datetime] = field(default_factory=dict)
    stored: Stored | None = None  # our tables as the last pass left them
