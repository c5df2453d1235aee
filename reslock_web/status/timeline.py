"""Recent holds of one resource, drawn as horizontal bars (SVG coordinates, no inline styles)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Q, QuerySet

from reslock_web.models import Holder, Limit, LockEvent

WINDOW = timedelta(hours=24)
MIN_SPAN = timedelta(minutes=10)
WIDTH = 1000  # SVG user units
ROW = 22
MAX_BARS = 30


@dataclass
class Bar:
    label: str
    start: datetime
    end: datetime
    open: bool
    x: float = 0
    width: float = 0
    y: int = 0


@dataclass
class Timeline:
    bars: list[Bar]
    start: datetime
    end: datetime
    height: int


def acquires(limit: Limit, since: datetime) -> QuerySet[LockEvent]:
    """The limit's acquires still open or ended since `since`: by its id, or by its name (a
    limit deleted and created again has a new id). Both are index lookups."""
    return LockEvent.objects.filter(
        Q(limit_prefect_id=limit.prefect_id) | Q(limit_name=limit.name),
        event__endswith=".acquired",
    ).filter(Q(occurred__gte=since) | Q(closed_at__isnull=True) | Q(closed_at__gte=since))


def holds(limit: Limit, now: datetime) -> Timeline:
    since = now - WINDOW
    bars = [
        Bar(
            label=event.flow_run_name or event.task_run_name or "unknown run",
            start=max(event.occurred, since),
            end=event.closed_at or now,
            open=event.closed_at is None,
        )
        for event in acquires(limit, since).order_by("-occurred")[:MAX_BARS]
    ]
    seen = {bar.label for bar in bars if bar.open}
    for holder in Holder.objects.filter(limit=limit, condition__in=["holding", "stale"]):
        label = holder.flow_run_name or holder.task_run_name or holder.key
        if label not in seen and holder.acquired_at:
            bars.append(Bar(label=label, start=max(holder.acquired_at, since), end=now, open=True))
    bars.sort(key=lambda bar: bar.start)
    start = min((bar.start for bar in bars), default=now - MIN_SPAN)
    start = min(start, now - MIN_SPAN)
    span = (now - start).total_seconds() or 1
    for index, bar in enumerate(bars):
        bar.x = round((bar.start - start).total_seconds() / span * WIDTH, 1)
        bar.width = max(2.0, round((bar.end - bar.start).total_seconds() / span * WIDTH, 1))
        bar.y = index * ROW
    return Timeline(bars=bars, start=start, end=now, height=max(ROW, len(bars) * ROW))
