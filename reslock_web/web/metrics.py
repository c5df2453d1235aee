"""/metrics for Prometheus, computed from our tables at scrape time.

Every web process answers with the same numbers because they come from the database (a few
aggregate queries, nothing per row), not from counters kept in one process's memory.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Min, Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from reslock_web.models import (
    Condition,
    Heartbeat,
    Holder,
    Kind,
    Limit,
    Operation,
    OperationKind,
    OperationStatus,
    Status,
    SyncRun,
    Waiter,
)

FLAGS = {
    "stale": "is_stale",
    "zombie": "has_zombie",
    "over_limit": "is_over_limit",
    "deadlocked": "is_deadlocked",
    "drift": "has_drift",
    "long_hold": "has_long_hold",
}


def _age(now: datetime, since: datetime | None) -> float:
    return max(0.0, (now - since).total_seconds()) if since else 0.0


def _timestamp(when: datetime | None) -> float:
    return when.timestamp() if when else 0.0


class ReslockCollector:
    """Yields every reslock metric; Prometheus' registry calls it once per scrape."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        yield from self._resources()
        yield from self._holders_and_waiters(now)
        yield from self._sync()
        yield from self._services(now)
        yield from self._operations()

    def _resources(self) -> Iterator[Metric]:
        counts = {(status, kind): 0 for status in Status.values for kind in Kind.values}
        present = Limit.objects.present().values_list("status", "kind").annotate(n=Count("id"))
        for status, kind, n in present.order_by():
            counts[(status, kind)] = n
        gone = (
            Limit.objects.filter(gone_at__isnull=False).values_list("kind").annotate(n=Count("id"))
        )
        for kind, n in gone.order_by():
            counts[(Status.GONE, kind)] = n
        resources = GaugeMetricFamily(
            "reslock_resources",
            "Resources (Prefect concurrency limits) by status badge and kind.",
            labels=["status", "kind"],
        )
        for (status, kind), n in sorted(counts.items()):
            resources.add_metric([status, kind], n)
        yield resources
        aggregates = Limit.objects.present().aggregate(
            **{flag: Count("id", filter=Q(**{field: True})) for flag, field in FLAGS.items()}
        )
        flagged = GaugeMetricFamily(
            "reslock_resources_flagged",
            "Present resources carrying a flag (a resource may carry several; its status shows "
            "the worst).",
            labels=["flag"],
        )
        for flag in FLAGS:
            flagged.add_metric([flag], aggregates[flag] or 0)
        yield flagged

    def _holders_and_waiters(self, now: datetime) -> Iterator[Metric]:
        holders = (
            Holder.objects.shown()
            .filter(limit__gone_at__isnull=True)
            .aggregate(
                **{c: Count("id", filter=Q(condition=c)) for c in Condition.values},
                oldest=Min("acquired_at"),
            )
        )
        by_condition = GaugeMetricFamily(
            "reslock_holders", "Runs holding a slot, by condition.", labels=["condition"]
        )
        for condition in (
            Condition.HOLDING,
            Condition.STALE,
            Condition.ZOMBIE,
            Condition.UNCOUNTED,
        ):
            by_condition.add_metric([condition], holders[condition] or 0)
        yield by_condition
        yield GaugeMetricFamily(
            "reslock_oldest_hold_seconds",
            "How long the longest current hold has lasted (0 when nothing is held).",
            value=_age(now, holders["oldest"]),
        )
        waiters = Waiter.objects.filter(limit__gone_at__isnull=True).aggregate(
            total=Count("id"),
            deadlocked=Count("id", filter=Q(deadlocked_by__isnull=False)),
            oldest=Min("waiting_since"),
        )
        yield GaugeMetricFamily(
            "reslock_waiters", "Runs waiting for a slot.", value=waiters["total"]
        )
        yield GaugeMetricFamily(
            "reslock_waiters_deadlocked",
            "Waiters blocked by a holder they are nested in: they can never get the slot.",
            value=waiters["deadlocked"],
        )
        yield GaugeMetricFamily(
            "reslock_oldest_wait_seconds",
            "How long the longest current wait has lasted (0 when nobody waits).",
            value=_age(now, waiters["oldest"]),
        )

    def _sync(self) -> Iterator[Metric]:
        last = SyncRun.objects.last_finished()
        last_ok = last if last is not None and last.ok else SyncRun.objects.last_ok()
        # A throttled pass is not a failure (models.SyncRun.throttled_until).
        failed = Q(ok=False, throttled_until__isnull=True)
        since_ok = failed & Q(started_at__gt=last_ok.started_at) if last_ok else failed
        failures = SyncRun.objects.aggregate(
            failed=Count("id", filter=failed),
            since_ok=Count("id", filter=since_ok),
            throttled=Count("id", filter=Q(ok=False, throttled_until__isnull=False)),
        )
        yield GaugeMetricFamily(
            "reslock_last_sync_duration_seconds",
            "Duration of the last finished sync, successful or not.",
            value=(last.duration_ms or 0) / 1000 if last else 0.0,
        )
        yield GaugeMetricFamily(
            "reslock_last_sync_success_timestamp_seconds",
            "When the last successful sync finished (Unix time; 0: never).",
            value=_timestamp(last_ok.finished_at if last_ok else None),
        )
        yield GaugeMetricFamily(
            "reslock_sync_failed_runs",
            "Failed sync runs on record.",
            value=failures["failed"],
        )
        yield GaugeMetricFamily(
            "reslock_sync_consecutive_failures",
            "Failed sync runs since the last successful one (0 while syncs succeed).",
            value=failures["since_ok"],
        )
        yield GaugeMetricFamily(
            "reslock_sync_throttled",
            "1 while the last finished sync was stopped by Prefect's rate limit or reslock's "
            "request budget (RESLOCK_PREFECT_MAX_REQUESTS_PER_MINUTE); not a failure.",
            value=1 if last is not None and last.throttled else 0,
        )
        yield GaugeMetricFamily(
            "reslock_sync_throttled_runs",
            "Sync runs on record stopped by the rate limit (not counted as failed).",
            value=failures["throttled"],
        )

    def _services(self, now: datetime) -> Iterator[Metric]:
        beats = {beat.service: beat for beat in Heartbeat.objects.all()}
        listener, worker = beats.get("listener"), beats.get("worker")
        connected = bool(listener and listener.is_connected_listener)
        yield GaugeMetricFamily(
            "reslock_listener_connected",
            "1 while the live event listener is connected to Prefect and reporting.",
            value=1 if connected else 0,
        )
        lag = listener.lag_seconds if listener else None
        yield GaugeMetricFamily(
            "reslock_listener_lag_seconds",
            "How far behind Prefect the board is: the delay of the last change the listener "
            "applied to it, or the age of the oldest change still waiting, whichever is longer.",
            value=lag or 0.0,
        )
        yield GaugeMetricFamily(
            "reslock_listener_last_seen_timestamp_seconds",
            "When the listener last reported (Unix time; 0: never).",
            value=_timestamp(listener.last_seen if listener else None),
        )
        yield GaugeMetricFamily(
            "reslock_worker_last_seen_timestamp_seconds",
            "When a Celery worker last reported its heartbeat (Unix time; 0: never).",
            value=_timestamp(worker.last_seen if worker else None),
        )

    def _operations(self) -> Iterator[Metric]:
        counts = {(k, s): 0 for k in OperationKind.values for s in OperationStatus.values}
        rows = Operation.objects.values_list("kind", "status").annotate(n=Count("id")).order_by()
        for kind, status, n in rows:
            counts[(kind, status)] = n
        operations = CounterMetricFamily(
            "reslock_operations",
            "Operations asked for from the board, by kind and outcome (never deleted).",
            labels=["kind", "outcome"],
        )
        for (kind, status), n in sorted(counts.items()):
            operations.add_metric([kind, status], n)
        yield operations


# The classic text format, which every Prometheus version reads (generate_latest writes it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

registry = CollectorRegistry(auto_describe=False)
registry.register(ReslockCollector())


def _authorized(request: HttpRequest, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    return hmac.compare_digest(given.encode(), token.encode())


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if not token:
        return HttpResponse(
            "Metrics are off: set RESLOCK_METRICS_TOKEN and send it as "
            "'Authorization: Bearer <token>'.\n",
            status=404,
            content_type="text/plain; charset=utf-8",
        )
    if not _authorized(request, token):
        response = HttpResponse(
            "Send the metrics token as 'Authorization: Bearer <token>'.\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="reslock metrics"'
        return response
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE)
