"""What beat's periodic sync does this time: everything, a few limits, or nothing.

While the live listener is connected and current, events carry the board: each one re-syncs
the limit it concerns within a second. The complete listing then runs only every
`RESLOCK_FULL_SYNC_SECONDS` (default 300), as a safety net for what sends no event (raw REST
increments, a counter reset, a server restart that loses leases). In between, a periodic tick
re-syncs only the limits whose verdict waits on the clock and whose time has come: a slot lost
without a release (zombie or gone after the grace), a run Prefect stopped returning (over after
the grace), a count that disagrees with the holders (drift after the grace). Nothing sends an
event for those, and each is re-synced once after its moment, not on every tick.

When the listener is down or behind, every tick is a complete sync, as before it existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Max

from reslock_web.models import Condition, Heartbeat, Holder, Limit, SyncRun

FULL = "full"
SOME = "some"
NOTHING = "nothing"


@dataclass(frozen=True)
class Plan:
    kind: str
    why: str
    names: list[str] = field(default_factory=list)


def plan(now: datetime) -> Plan:
    if not Heartbeat.objects.listener_is_current():
        return Plan(FULL, "the live listener is down or behind")
    last_full = (
        SyncRun.objects.filter(scope="all", ok=True)
        .order_by("-started_at")
        .values_list("started_at", flat=True)
        .first()
    )
    if last_full is None or now - last_full >= timedelta(seconds=settings.FULL_SYNC_SECONDS):
        return Plan(FULL, f"the last complete sync is over {settings.FULL_SYNC_SECONDS} s old")
    names = due(now, last_full)
    if names:
        return Plan(SOME, "verdicts that wait on the clock are due", names)
    return Plan(NOTHING, "the live listener carries the board")


def due(now: datetime, last_full: datetime) -> list[str]:
    """Limits whose clock-bound verdict has come due since they were last synced."""
    grace = timedelta(seconds=settings.GRACE_SECONDS)
    moments: dict[str, datetime] = {}

    def note(name: str, when: datetime | None) -> None:
        if when is not None and when <= now:
            moments[name] = min(moments.get(name, when), when)

    holders = Holder.objects.filter(limit__gone_at__isnull=True).filter(
        condition=Condition.LEAVING
    ) | Holder.objects.filter(limit__gone_at__isnull=True, run_missing_since__isnull=False)
    for name, lost_at, missing_since in holders.values_list(
        "limit__name", "slot_lost_at", "run_missing_since"
    ):
        note(name, lost_at + grace if lost_at else None)
        note(name, missing_since + grace if missing_since else None)
    drifting = Limit.objects.present().filter(drift_since__isnull=False, has_drift=False)
    for name, since in drifting.values_list("name", "drift_since"):
        note(name, since + grace)
    if not moments:
        return []
    # Synced after its moment (by a complete pass or its own re-sync): already judged.
    synced = dict(
        SyncRun.objects.filter(scope__in=list(moments), ok=True)
        .values_list("scope")
        .annotate(last=Max("started_at"))
    )
    return sorted(
        name
        for name, moment in moments.items()
        if moment > last_full and (synced.get(name) is None or synced[name] < moment)
    )
