"""How fresh and how healthy the board's data is, for the banner and the JSON API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from reslock_web.models import Heartbeat, SyncRun


@dataclass
class Freshness:
    last_finished: SyncRun | None
    last_ok: SyncRun | None
    failing_since: datetime | None  # first failure after the last success
    worker: Heartbeat | None
    listener: Heartbeat | None
    now: datetime

    @property
    def failing(self) -> bool:
        return self.last_finished is not None and not self.last_finished.ok

    @property
    def never_synced(self) -> bool:
        return self.last_ok is None

    @property
    def stale(self) -> bool:
        """No good sync for three periods: the board may be behind Prefect."""
        if self.last_ok is None:
            return True
        return self.now - self.last_ok.finished_at > timedelta(seconds=3 * settings.SYNC_SECONDS)

    @property
    def worker_late(self) -> bool:
        return self.worker is None or self.worker.is_late(settings.HEARTBEAT_SECONDS)

    @property
    def listener_down(self) -> bool:
        """A listener ran once and has stopped or lost Prefect: live updates are off."""
        if self.listener is None:
            return False
        return not self.listener.detail.get("connected") or self.listener.is_late(5)


def freshness() -> Freshness:
    last = SyncRun.objects.last_finished()
    ok = last if last is not None and last.ok else SyncRun.objects.last_ok()
    failing_since = None
    if last is not None and not last.ok:
        failures = SyncRun.objects.filter(ok=False)
        if ok is not None:
            failures = failures.filter(started_at__gt=ok.started_at)
        first = failures.order_by("started_at").first()
        failing_since = first.started_at if first else last.started_at
    return Freshness(
        last_finished=last,
        last_ok=ok,
        failing_since=failing_since,
        worker=Heartbeat.objects.filter(service="worker").first(),
        listener=Heartbeat.objects.filter(service="listener").first(),
        now=timezone.now(),
    )
