"""How fresh and how healthy the board's data is, for the banner and the JSON API."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from reslock_web.models import Heartbeat, SyncRun, SyncState

# After this many failed full syncs in a row, beat's periodic syncs slow down: each further
# failure doubles the wait (from one sync period up to RESLOCK_SYNC_BACKOFF_MAX_SECONDS), so a
# Prefect that is down or overloaded is not hammered. A sync asked for by hand always runs.
BACKOFF_AFTER = 3


@dataclass
class Freshness:
    last_finished: SyncRun | None
    last_ok: SyncRun | None
    failing_since: datetime | None  # first failure after the last success
    worker: Heartbeat | None
    listener: Heartbeat | None
    now: datetime
    retry_at: datetime | None = None  # when periodic syncs try again, while they back off
    backfill: SyncState | None = None  # a long read of past events, while one is under way

    @property
    def failing(self) -> bool:
        return self.last_finished is not None and self.last_finished.outcome == "failed"

    @property
    def throttled(self) -> bool:
        """The last pass stopped because Prefect is rate-limiting reslock: not a failure."""
        return self.last_finished is not None and self.last_finished.throttled

    @property
    def next_try(self) -> datetime | None:
        """While throttled: when the next sync may send to Prefect again."""
        return self.last_finished.throttled_until if self.throttled else None

    @property
    def never_synced(self) -> bool:
        return self.last_ok is None

    @property
    def live(self) -> bool:
        """The listener is connected and current: events carry the board (sync_plan.py)."""
        return self.listener is not None and self.listener.is_current_listener()

    @property
    def stale(self) -> bool:
        """No good sync for three periods: the board may be behind Prefect. While the listener
        is live, the complete sync runs only every RESLOCK_FULL_SYNC_SECONDS."""
        if self.last_ok is None:
            return True
        period = settings.FULL_SYNC_SECONDS if self.live else settings.SYNC_SECONDS
        return self.now - self.last_ok.finished_at > timedelta(seconds=3 * period)

    @property
    def worker_late(self) -> bool:
        return self.worker is None or self.worker.is_late(settings.HEARTBEAT_SECONDS)

    @property
    def listener_down(self) -> bool:
        """A listener ran once and has stopped or lost Prefect: live updates are off."""
        if self.listener is None:
            return False
        return not self.listener.is_connected_listener


# Every open page asks for the banner each second. Within one process an answer is reused for
# this long; rows saved in the same process (a sync run there, a heartbeat) drop it at once
# (see apps.py), those saved by other processes show at most this much later.
REUSE_SECONDS = 1.0
_reused: tuple[float, Freshness] | None = None


def freshness() -> Freshness:
    global _reused
    reused = _reused
    if reused is not None and time.monotonic() - reused[0] < REUSE_SECONDS:
        return replace(reused[1], now=timezone.now())  # what depends on the clock stays exact
    found = _read_freshness()
    _reused = (time.monotonic(), found)
    return found


def forget(**_signal: object) -> None:
    """Drop the reused answer: the next `freshness()` reads the tables."""
    global _reused
    _reused = None


def _read_freshness() -> Freshness:
    last = SyncRun.objects.last_finished()
    ok = last if last is not None and last.ok else SyncRun.objects.last_ok()
    failing_since = None
    if last is not None and last.outcome == "failed":
        failures = SyncRun.objects.failed()
        if ok is not None:
            failures = failures.filter(started_at__gt=ok.started_at)
        first = failures.order_by("started_at").first()
        failing_since = first.started_at if first else last.started_at
    beats = {
        beat.service: beat for beat in Heartbeat.objects.filter(service__in=["worker", "listener"])
    }
    return Freshness(
        last_finished=last,
        last_ok=ok,
        failing_since=failing_since,
        worker=beats.get("worker"),
        listener=beats.get("listener"),
        now=timezone.now(),
        retry_at=sync_backoff().retry_at if failing_since else None,
        backfill=SyncState.objects.filter(
            name=SyncState.BACKFILL, window_start__isnull=False
        ).first(),
    )


@dataclass
class Backoff:
    failures: int  # failed full syncs since the last good one
    last_failure: datetime | None
    wait: timedelta

    @property
    def retry_at(self) -> datetime | None:
        if not self.wait or self.last_failure is None:
            return None
        return self.last_failure + self.wait

    def skip(self, now: datetime) -> bool:
        return self.retry_at is not None and now < self.retry_at


def backoff_wait(failures: int, period: int, cap: int) -> timedelta:
    if failures < BACKOFF_AFTER:
        return timedelta(0)
    doublings = min(failures - BACKOFF_AFTER + 1, 20)  # the cap is reached long before
    return timedelta(seconds=min(cap, period * 2**doublings))


def sync_backoff() -> Backoff:
    """How long periodic syncs wait, from the failed full syncs since the last good one."""
    full = SyncRun.objects.filter(scope="all", finished_at__isnull=False)
    last_ok = full.filter(ok=True).order_by("-started_at").values_list("started_at", flat=True)
    # A throttled pass is not a failure: Prefect's own Retry-After already spaces them out.
    failures = full.failed()
    if (ok_at := last_ok.first()) is not None:
        failures = failures.filter(started_at__gt=ok_at)
    count = failures.count()
    last = failures.order_by("-finished_at").values_list("finished_at", flat=True).first()
    wait = backoff_wait(count, settings.SYNC_SECONDS, settings.SYNC_BACKOFF_MAX_SECONDS)
    return Backoff(failures=count, last_failure=last, wait=wait)
