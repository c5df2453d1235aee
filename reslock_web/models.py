"""The board's tables, and the small rules that belong to them.

One module, as a Django app has it: the schema reads in one place and the migrations follow it.
Rules about one table live on its model or queryset, so that there is one home for each:
`Limit.objects.present()`, `Holder.objects.shown()`, `Heartbeat.objects.listener_is_current()`,
`Operation.objects.claim()`, `SyncState`'s named rows.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
from datetime import datetime, timedelta
from uuid import UUID

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from reslock.protocol import EVENT_STOPPING
from reslock_web.prefect_io import links

# The live listener reports every LISTENER_BEAT_SECONDS (sync/listener.py); beyond
# LISTENER_MAX_LAG_SECONDS behind, the board cannot count on it (the full sync takes over).
LISTENER_BEAT_SECONDS = 5
LISTENER_MAX_LAG_SECONDS = 30


class HeartbeatQuerySet(models.QuerySet["Heartbeat"]):
    def listener(self) -> Heartbeat | None:
        return self.filter(service="listener").first()

    def listener_is_current(self) -> bool:
        """The listener is connected, reporting, and not behind: events carry the board."""
        listener = self.listener()
        return listener is not None and listener.is_current_listener()

    def beat(self, service: str, **detail: object) -> Heartbeat:
        heartbeat, _ = self.update_or_create(
            service=service,
            defaults={
                "last_seen": timezone.now(),
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "detail": detail,
            },
        )
        return heartbeat


class Heartbeat(models.Model):
    """The last time a background service proved it was alive (the worker, through beat)."""

    service = models.CharField(max_length=40, unique=True)
    last_seen = models.DateTimeField()
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True)
    detail = models.JSONField(default=dict, blank=True)  # e.g. the listener's connection state

    objects = HeartbeatQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.service} @ {self.last_seen:%Y-%m-%d %H:%M:%S}"

    def is_late(self, period_seconds: int) -> bool:
        # Three missed periods: one late beat is noise, three is a dead worker or beat.
        return timezone.now() - self.last_seen > timedelta(seconds=3 * period_seconds)

    # --- the listener's row --------------------------------------------------------------
    @property
    def is_connected_listener(self) -> bool:
        return bool(self.detail.get("connected")) and not self.is_late(LISTENER_BEAT_SECONDS)

    @property
    def lag_seconds(self) -> float | None:
        lag = self.detail.get("lag_seconds")
        return float(lag) if isinstance(lag, int | float) and not isinstance(lag, bool) else None

    def is_current_listener(self) -> bool:
        lag = self.lag_seconds
        return self.is_connected_listener and (lag is None or lag <= LISTENER_MAX_LAG_SECONDS)


class Kind(models.TextChoices):
    GLOBAL = "global", "global"
    TAG = "tag", "tag"
    DEPLOYMENT = "deployment", "deployment"


class Status(models.TextChoices):
    """One word per limit for the badge, the worst first; the flags below keep the rest."""

    # More runs are certainly inside than the limit allows.
    OVER_LIMIT = "over_limit", "over the limit"
    DEADLOCKED = "deadlocked", "deadlocked"
    # A run Prefect no longer counts may still be inside: reslock cannot tell.
    UNCOUNTED = "uncounted", "uncounted"
    ZOMBIE = "zombie", "zombie"
    STALE = "stale", "stale"
    DRIFT = "drift", "drift"
    CONTENDED = "contended", "contended"
    HELD = "held", "held"
    WAITING = "waiting", "waiting"
    INACTIVE = "inactive", "inactive"
    FREE = "free", "free"
    GONE = "gone", "gone"


class LimitQuerySet(models.QuerySet["Limit"]):
    def present(self) -> LimitQuerySet:
        return self.filter(gone_at__isnull=True)

    def named(self, name: str) -> Limit | None:
        """The limit called `name`: the present one, else the one that went last."""
        return self.filter(name=name).order_by(models.F("gone_at").desc(nulls_first=True)).first()

    def facet(self, name: str) -> LimitQuerySet:
        return self.filter(facet_filter(name))

    def search(self, text: str) -> LimitQuerySet:
        """Limits whose name matches, or whose holders or waiters (as the board shows them)
        belong to a matching run: its flow run's name, flow or deployment, or its flow run id
        (whole, or a prefix as long as RUN_ID_PREFIX asks)."""
        text = text.strip()
        if not text:
            return self
        runs = (
            models.Q(flow_run_name__icontains=text)
            | models.Q(flow_name__icontains=text)
            | models.Q(deployment_name__icontains=text)
        )
        if RUN_ID_PREFIX.fullmatch(text):
            runs |= models.Q(flow_run_id__istartswith=text)
        return self.filter(
            models.Q(search_text__contains=text.casefold()) | models.Q(pk__in=_limits_of(runs))
        )

    def of_run(self, flow_run_id: UUID) -> LimitQuerySet:
        """The limits this flow run (or one of its task runs) holds or waits for."""
        return self.filter(pk__in=_limits_of(models.Q(flow_run_id=flow_run_id)))


class Limit(models.Model):
    """A Prefect concurrency limit as last synced, with what is wrong with it and why."""

    prefect_id = models.UUIDField(unique=True)
    name = models.CharField(max_length=500, db_index=True)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    resource = models.CharField(max_length=500, db_index=True)
    # Name and resource case-folded: SQLite's LIKE folds ASCII only, and names are often not.
    search_text = models.CharField(max_length=1001, default="")
    deployment_id = models.UUIDField(null=True, blank=True)
    limit = models.PositiveIntegerField()
    active = models.BooleanField(default=True)
    active_slots = models.PositiveIntegerField(default=0)
    slot_decay_per_second = models.FloatField(default=0)
    prefect_created = models.DateTimeField(null=True)
    prefect_updated = models.DateTimeField(null=True)
    first_seen = models.DateTimeField(default=timezone.now)
    gone_at = models.DateTimeField(null=True, blank=True)

    # Derived at each sync (see reslock_web.status.diagnosis); stored so that facets are indexed counts.
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.FREE)
    is_held = models.BooleanField(default=False)
    has_waiters = models.BooleanField(default=False)
    is_stale = models.BooleanField(default=False)
    has_zombie = models.BooleanField(default=False)
    is_deadlocked = models.BooleanField(default=False)
    # Runs waiting for each other in a circle through this limit and others, in words (written
    # by sync/deadlocks.py after every write; one limit's verdict cannot see a cycle).
    deadlock_cycle = models.TextField(blank=True, default="")
    # The same cycles as steps, for their drawing: one list per cycle, each step
    # {"waiter": [run id, name], "limit": name or "" (the waiter started the holder),
    # "holder": [run id, name]}.
    deadlock_steps = models.JSONField(blank=True, default=list)
    has_drift = models.BooleanField(default=False)
    has_long_hold = models.BooleanField(default=False)
    is_over_limit = models.BooleanField(default=False)
    holder_count = models.PositiveIntegerField(default=0)
    # The slots the counted holders (holding or stale) take: `concurrency(name, occupy=N)`
    # takes N slots per acquire. `active_slots - holder_slots` is what no known holder backs.
    holder_slots = models.PositiveIntegerField(default=0)
    waiter_count = models.PositiveIntegerField(default=0)
    held_since = models.DateTimeField(null=True, blank=True)
    drift_since = models.DateTimeField(null=True, blank=True)
    holders_checked_at = models.DateTimeField(null=True, blank=True)
    # How far a pass over this limit alone has read its lock events: the next such pass reads
    # on from there (complete passes keep their own mark, for every limit at once).
    events_read_until = models.DateTimeField(null=True, blank=True)
    evidence = models.JSONField(default=list, blank=True)
    changed_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = LimitQuerySet.as_manager()

    class Meta:
        ordering = ["resource", "name"]
        indexes = [
            models.Index(fields=["status"]),
            models.Index(fields=["kind", "resource"]),
            models.Index(fields=["gone_at", "resource"]),
            # What the facet counts and the default order (attention first) read of every
            # limit: both read this index instead of the table's whole rows (a sixth of
            # their size at 20,000 limits), and a page then reads its 50 rows only.
            models.Index(
                fields=[
                    "gone_at",
                    "status",
                    "held_since",
                    "resource",
                    "kind",
                    "active",
                    "active_slots",
                    "is_held",
                    "has_waiters",
                    "is_stale",
                    "has_zombie",
                    "is_deadlocked",
                    "has_drift",
                    "is_over_limit",
                ],
                name="limit_board",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: object, **kwargs: object) -> None:
        self.search_text = search_text(self.name, self.resource)
        super().save(*args, **kwargs)

    @property
    def prefect_url(self) -> str:
        return links.limit(self.kind, self.prefect_id, self.deployment_id)


def search_text(name: str, resource: str) -> str:
    return f"{name}\n{resource}".casefold()


# A search this long of hex digits and hyphens is also looked up as the start of a flow run id:
# a shorter one ("a", "db", "cafe") would bring in every resource held by a run whose id begins
# that way, far more than the word asked for.
RUN_ID_PREFIX = re.compile(r"[0-9A-Fa-f-]{8,36}")


def _limits_of(runs: models.Q) -> models.QuerySet:
    """Ids of the limits a run matching `runs` holds (as the board shows it) or waits for, as
    one subquery: the database matches the holders and the waiters, never a query per row.

    Run names are matched with the database's own case folding (SQLite folds ASCII letters
    only); limit names have their case-folded column."""
    holders = Holder.objects.shown().filter(runs).order_by().values("limit_id")
    waiters = Waiter.objects.filter(runs).order_by().values("limit_id")
    return holders.union(waiters)


class Source(models.TextChoices):
    TAG_LEASE = "tag_lease", "tag lease"
    EVENT = "event", "concurrency event"
    DEPLOYMENT = "deployment", "deployment run"
    HELPER = "helper", "reslock helper"


class Condition(models.TextChoices):
    HOLDING = "holding", "holding"
    STALE = "stale", "stale"  # slot still counted, run over
    # Slot freed by lease expiry, run still shown running, its process shown ended.
    ZOMBIE = "zombie", "zombie"
    # Slot no longer counted, nothing shows whether its process still runs inside.
    UNCOUNTED = "uncounted", "uncounted"
    # Slot gone without a release, within the grace period events need to arrive: not shown.
    LEAVING = "leaving", "leaving"


# The holders whose slot Prefect still counts: they make a limit held, and its holder count.
COUNTED = (Condition.HOLDING, Condition.STALE)


class RunFields(models.Model):
    """Who a holder or waiter is, as Prefect names it."""

    flow_run_id = models.UUIDField(null=True, blank=True)
    flow_run_name = models.CharField(max_length=500, blank=True)
    flow_id = models.UUIDField(null=True, blank=True)
    flow_name = models.CharField(max_length=500, blank=True)
    task_run_id = models.UUIDField(null=True, blank=True)
    task_run_name = models.CharField(max_length=500, blank=True)
    deployment_id = models.UUIDField(null=True, blank=True)
    deployment_name = models.CharField(max_length=500, blank=True)
    state_type = models.CharField(max_length=20, blank=True)
    state_name = models.CharField(max_length=100, blank=True)
    state_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def flow_run_url(self) -> str:
        return links.flow_run(self.flow_run_id)

    @property
    def task_run_url(self) -> str:
        return links.task_run(self.task_run_id)

    @property
    def deployment_url(self) -> str:
        return links.deployment(self.deployment_id)


FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


class HolderQuerySet(models.QuerySet["Holder"]):
    def shown(self) -> HolderQuerySet:
        """The holders the board shows: all but those leaving (gone without a release, within
        the grace events need to arrive)."""
        return self.exclude(condition=Condition.LEAVING)


class Holder(RunFields):
    """A run that holds (or held, for a zombie) a slot of a limit."""

    limit = models.ForeignKey(Limit, on_delete=models.CASCADE, related_name="holders")
    # What identifies the claim across syncs: the task run (tag), the flow run (deployment),
    # or the acquire event (global limits).
    key = models.CharField(max_length=80)
    source = models.CharField(max_length=12, choices=Source.choices)
    condition = models.CharField(
        max_length=12, choices=Condition.choices, default=Condition.HOLDING
    )
    acquired_at = models.DateTimeField(null=True, blank=True)
    lease_id = models.UUIDField(null=True, blank=True)
    lease_seconds = models.PositiveIntegerField(null=True, blank=True)
    slots = models.PositiveIntegerField(default=1)  # slots its claim takes (occupy=N)
    # The helper's process identity (reslock/process.py): lets a release prove the holder is dead.
    process = models.JSONField(default=dict, blank=True)
    slot_lost_at = models.DateTimeField(null=True, blank=True)
    # When Prefect, having shown the run, first stopped returning it (null: found, or never
    # seen yet: task runs are recorded seconds after they start).
    run_missing_since = models.DateTimeField(null=True, blank=True)
    evidence = models.TextField(blank=True)
    first_seen = models.DateTimeField(default=timezone.now)

    objects = HolderQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["limit", "key"], name="holder_unique_claim")]
        ordering = ["acquired_at", "id"]

    def __str__(self) -> str:
        return f"{self.flow_run_name or self.key} on {self.limit_id}"

    @property
    def is_shown(self) -> bool:
        """`shown()` for a holder already in memory (a prefetched list)."""
        return self.condition != Condition.LEAVING


class Waiter(RunFields):
    """A run queued behind a limit, oldest first."""

    limit = models.ForeignKey(Limit, on_delete=models.CASCADE, related_name="waiters")
    key = models.CharField(max_length=80)
    source = models.CharField(max_length=12, choices=Source.choices)
    waiting_since = models.DateTimeField(null=True, blank=True)
    position = models.PositiveIntegerField(default=0)
    deadlocked_by = models.ForeignKey(
        Holder, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    evidence = models.TextField(blank=True)
    # The flow run that started this one (a subflow, `run_deployment`) and may be waiting for
    # it to end: an edge of the cross-lock wait-for graph (status/wait_for.py).
    parent_flow_run_id = models.UUIDField(null=True, blank=True)
    parent_flow_run_name = models.CharField(max_length=500, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["limit", "key"], name="waiter_unique_claim")]
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return f"#{self.position} {self.flow_run_name or self.key}"


class LockEvent(models.Model):
    """A `prefect.concurrency-limit.*` (or reslock helper) event, kept to pair acquires with
    releases and to draw a resource's recent holds. Idempotent by Prefect's event id."""

    event_id = models.UUIDField(unique=True)
    event = models.CharField(max_length=80)
    occurred = models.DateTimeField(db_index=True)
    # By Prefect's server clock: orders events from clients whose clocks disagree.
    received = models.DateTimeField(null=True, blank=True)
    limit_prefect_id = models.UUIDField(null=True, blank=True, db_index=True)
    limit_name = models.CharField(max_length=500, blank=True)
    follows = models.UUIDField(null=True, blank=True, db_index=True)
    flow_run_id = models.UUIDField(null=True, blank=True)
    flow_run_name = models.CharField(max_length=500, blank=True)
    flow_id = models.UUIDField(null=True, blank=True)
    flow_name = models.CharField(max_length=500, blank=True)
    task_run_id = models.UUIDField(null=True, blank=True)
    task_run_name = models.CharField(max_length=500, blank=True)
    deployment_id = models.UUIDField(null=True, blank=True)
    deployment_name = models.CharField(max_length=500, blank=True)
    lease_id = models.UUIDField(null=True, blank=True)
    lease_seconds = models.PositiveIntegerField(null=True, blank=True)
    slots = models.PositiveIntegerField(default=1)  # an acquire's (or release's) slots-acquired
    wait_id = models.UUIDField(null=True, blank=True)  # the helper's waiting -> acquired link
    process = models.JSONField(default=dict, blank=True)  # a helper acquire's process identity
    # Set on an acquire once it is over: released, or its run ended without a release.
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_reason = models.CharField(max_length=40, blank=True)

    class Meta:
        ordering = ["occurred"]
        indexes = [
            models.Index(fields=["event", "closed_at"]),
            # A resource page's timeline finds its events by the limit's id or its name (one
            # deleted and created again has a new id): without this, a scan of every event.
            models.Index(fields=["limit_name"]),
            # The board's "lease lost" marks (status/leases.py) read these two kinds of rows
            # on every page drawn. Partial, so a handful of rows among a million: indexed
            # by (event, closed_at) alone, the lost leases of a day were found among every
            # helper hold closed that day (12,953 in the 20,000-limit bench, 36 ms on SQLite);
            # the stopping announcements among every one ever kept. `closed_reason` stays
            # in the first index's columns: without it SQLite, planning without statistics,
            # prefers the (event, closed_at) index above.
            models.Index(
                fields=["event", "closed_reason", "closed_at"],
                condition=models.Q(closed_reason="lease_lost"),
                name="lockevent_lease_lost",
            ),
            models.Index(
                fields=["event", "occurred"],
                condition=models.Q(event=EVENT_STOPPING),
                name="lockevent_stopping",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.limit_name} @ {self.occurred}"


class SyncStateQuerySet(models.QuerySet["SyncState"]):
    def row(self, name: str) -> SyncState:
        """The named row, created on first use."""
        return self.get_or_create(name=name)[0]


class SyncState(models.Model):
    """Singleton-per-name bookkeeping, one row for each of the names below."""

    SYNC = "sync"  # the sync lock: locked_by, locked_until
    EVENTS = "events"  # the lock events read so far: events_until
    BACKFILL = "backfill"  # a long read of past events: window_start, window_end, events_until
    RUNS = "runs"  # when every stored holder's and waiter's runs were last read: checked_at
    BOARD = "board"  # the board's version: version

    name = models.CharField(max_length=40, unique=True)
    events_until = models.DateTimeField(null=True, blank=True)
    # Row "backfill": the window of past events a long read covers (sync/backfill.py).
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    locked_by = models.CharField(max_length=200, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    # Row "board": raised by every write that changes what the board shows, inside that
    # write's transaction, so that versions follow commit order (see board/poll.py).
    version = models.PositiveBigIntegerField(default=0)

    objects = SyncStateQuerySet.as_manager()

    def __str__(self) -> str:
        return self.name

    @property
    def backfill_share(self) -> float | None:
        """Of a backfill window, the share read so far (row "backfill"); None when none runs."""
        if self.window_start is None or self.window_end is None:
            return None
        span = (self.window_end - self.window_start).total_seconds()
        done = ((self.events_until or self.window_start) - self.window_start).total_seconds()
        return min(1.0, max(0.0, done / span)) if span > 0 else 1.0

    @property
    def backfill_percent(self) -> int:
        return int(100 * (self.backfill_share or 0.0))


class AppliedEvent(models.Model):
    """An event the live listener has applied: several listeners apply each event once."""

    event_id = models.UUIDField(unique=True)
    applied_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return str(self.event_id)


class SyncRunQuerySet(models.QuerySet["SyncRun"]):
    def last_finished(self) -> SyncRun | None:
        return self.filter(finished_at__isnull=False).order_by("-finished_at").first()

    def last_ok(self) -> SyncRun | None:
        return self.filter(ok=True).order_by("-finished_at").first()

    def failed(self) -> models.QuerySet[SyncRun]:
        """Passes that failed. A throttled one did not: Prefect only asked it to wait."""
        return self.filter(ok=False, throttled_until__isnull=True)

    def throttled(self) -> models.QuerySet[SyncRun]:
        return self.filter(ok=False, throttled_until__isnull=False)


class SyncRun(models.Model):
    """One pass of the sync, kept so the board can say how fresh it is and why it failed."""

    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    ok = models.BooleanField(null=True)
    scope = models.CharField(max_length=500, default="all")
    error = models.TextField(blank=True)
    # Set when the pass stopped because Prefect is rate-limiting reslock (a 429 past the
    # patience, or no turn in the request budget): not a failure, nothing was written, and
    # nothing is sent to Prefect before this time. The next pass simply tries again.
    throttled_until = models.DateTimeField(null=True, blank=True)
    limits = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    gone = models.PositiveIntegerField(default=0)
    holders = models.PositiveIntegerField(default=0)
    waiters = models.PositiveIntegerField(default=0)
    events = models.PositiveIntegerField(default=0)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    objects = SyncRunQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"sync {self.started_at:%H:%M:%S} {'ok' if self.ok else self.error[:40]}"

    @property
    def throttled(self) -> bool:
        return not self.ok and self.throttled_until is not None

    @property
    def outcome(self) -> str | None:
        """ "ok", "throttled" or "failed"; None while the pass runs."""
        if self.ok is None:
            return None
        if self.ok:
            return "ok"
        return "throttled" if self.throttled else "failed"

    def summary(self) -> str:
        if self.throttled:
            return (
                f"sync stopped after {self.duration_ms or 0} ms: Prefect is rate-limiting "
                f"reslock ({self.error}); nothing was changed, and the next sync tries again "
                f"from {self.throttled_until:%H:%M:%S} UTC"
            )
        if not self.ok:
            return f"sync failed after {self.duration_ms or 0} ms: {self.error}"
        return (
            f"synced {self.limits} limits in {self.duration_ms} ms: {self.created} new, "
            f"{self.updated} changed, {self.gone} gone, {self.holders} holders, "
            f"{self.waiters} waiters, {self.events} new events"
        )


# The flags a limit's verdict sets, from which its one-word status is made
# (status.diagnosis.status_of); the sync writes them together.
LIMIT_FLAGS = (
    "is_held",
    "has_waiters",
    "is_stale",
    "has_zombie",
    "is_deadlocked",
    "has_drift",
    "has_long_hold",
    "is_over_limit",
)

FACETS = (
    "all",
    "held",
    "contended",
    "waiting",
    "stale",
    "zombie",
    "over_limit",
    "deadlocked",
    "drift",
    "free",
    "inactive",
    "gone",
)


def facet_filter(facet: str) -> models.Q:
    """The rows a status facet shows; the same rules serve the board, the API and the counts."""
    present = models.Q(gone_at__isnull=True)
    return {
        "all": present,
        "held": present & models.Q(is_held=True),
        "contended": present & models.Q(is_held=True, has_waiters=True),
        "waiting": present & models.Q(has_waiters=True),
        "stale": present & models.Q(is_stale=True),
        "zombie": present & models.Q(has_zombie=True),
        "over_limit": present & models.Q(is_over_limit=True),
        "deadlocked": present & models.Q(is_deadlocked=True),
        "drift": present & models.Q(has_drift=True),
        "free": present & models.Q(is_held=False, has_waiters=False, active=True, active_slots=0),
        "inactive": present & models.Q(active=False),
        "gone": models.Q(gone_at__isnull=False),
    }[facet]


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def issue(self, user: models.Model, name: str) -> tuple[ApiToken, str]:
        secret = "rl_" + secrets.token_urlsafe(32)
        token = self.create(
            user=user, name=name, digest=ApiToken.digest_of(secret), prefix=secret[:8]
        )
        return token, secret

    def user_for(self, secret: str) -> models.Model | None:
        token = self.select_related("user").filter(digest=ApiToken.digest_of(secret)).first()
        if token is None or not token.user.is_active:
            return None
        # At most one write a minute per token: monitors poll often.
        if token.last_used_at is None or timezone.now() - token.last_used_at > timedelta(minutes=1):
            self.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user


class ApiToken(models.Model):
    """A bearer token for the JSON API, acting as its user. Only a digest is stored."""

    user = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def digest_of(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()


class OperationKind(models.TextChoices):
    RELEASE_HOLDER = "release_holder", "release holder"
    REPAIR_DRIFT = "repair_drift", "repair drift"
    SET_LIMIT = "set_limit", "set limit"
    ACTIVATE = "activate", "activate"
    DEACTIVATE = "deactivate", "deactivate"


class OperationStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    SKIPPED = "skipped", "skipped"
    # The holder's lease was (or may have been) revoked and a placeholder slot keeps the
    # resource closed until the holder is shown to have stopped; the sweep checks again.
    FENCING = "fencing", "keeping closed"


# An operation in one of these acts on its limit now: at most one per limit at a time.
ACTIVE_OPERATION_STATUSES = ("running", "fencing")
FINAL_OPERATION_STATUSES = frozenset({"succeeded", "failed", "skipped"})


class ClaimLost(Exception):
    """A job no longer owns its operation (the sweep ended or resumed it): it changes nothing
    more in Prefect and records nothing."""


class OperationQuerySet(models.QuerySet["Operation"]):
    def claim(self, operation_id: int) -> bool:
        """Compare-and-set: only one worker moves an operation from pending to running, and
        only while no other operation acts on the same limit (the database refuses a second
        one, so two workers cannot both pass a check and then both act)."""
        try:
            with transaction.atomic():
                return (
                    self.filter(pk=operation_id, status=OperationStatus.PENDING).update(
                        status=OperationStatus.RUNNING,
                        started_at=timezone.now(),
                        attempts=models.F("attempts") + 1,
                    )
                    == 1
                )
        except IntegrityError:
            return False

    def owned_by(self, operation: Operation) -> models.QuerySet[Operation]:
        """The operation while the job holding this copy still owns it: running under the
        claim it took. The sweep's take-over (ending or resuming a job past its time) changes
        the status or the claim's start, so a stalled job that wakes up finds nothing here."""
        return self.filter(
            pk=operation.pk, status=OperationStatus.RUNNING, started_at=operation.started_at
        )

    def acting_on(self, limit_id: int) -> Operation | None:
        """The operation that acts on this limit now, if any."""
        return self.filter(limit_id=limit_id, status__in=ACTIVE_OPERATION_STATUSES).first()


class Operation(models.Model):
    """One change to Prefect asked for from the board: the audit trail. Never deleted."""

    kind = models.CharField(max_length=20, choices=OperationKind.choices)
    limit = models.ForeignKey(Limit, on_delete=models.PROTECT, related_name="operations")
    limit_name = models.CharField(max_length=500)
    # The holder as the operator saw it: sync may delete the Holder row meanwhile.
    holder_key = models.CharField(max_length=80, blank=True)
    holder = models.JSONField(default=dict, blank=True)
    params = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        "auth.User", null=True, on_delete=models.SET_NULL, related_name="operations"
    )
    requested_by_name = models.CharField(max_length=150)
    # One submitted confirmation form, one operation: a double click cannot make two.
    token = models.UUIDField(unique=True)
    bulk = models.UUIDField(null=True, blank=True, db_index=True)
    status = models.CharField(
        max_length=10, choices=OperationStatus.choices, default=OperationStatus.PENDING
    )
    message = models.TextField(blank=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = OperationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("operate", "Can release, repair, change, activate and deactivate limits")]
        indexes = [models.Index(fields=["status", "created_at"])]
        constraints = [
            # Two operations acting on one limit at once would overwrite each other's counts
            # (a placeholder PATCH, a repair): the second one waits, pending.
            models.UniqueConstraint(
                fields=["limit"],
                condition=models.Q(status__in=ACTIVE_OPERATION_STATUSES),
                name="one_active_operation_per_limit",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.limit_name} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in FINAL_OPERATION_STATUSES


class LoginFailureQuerySet(models.QuerySet["LoginFailure"]):
    """Failed log-ins, counted in the database so that every web process sees the same count.

    An attempt is recorded as a failure before its password is checked and removed again if
    the password was right or the attempt was refused: attempts in flight count, so concurrent
    posts cannot all pass the check before any of them is recorded.
    """

    def reserve(self, username: str, ip: str, now: datetime) -> LoginFailure:
        return self.create(username=username, ip=ip, at=now)

    def resume_at(self, attempt: LoginFailure) -> datetime | None:
        """When this attempt may go ahead, counting every other attempt; None: it may now."""
        from django.conf import settings

        now = attempt.at
        recent = self.filter(at__gt=now - timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS))
        recent = recent.exclude(pk=attempt.pk)
        same_pair = models.Q(username=attempt.username, ip=attempt.ip)
        rules = (
            (same_pair, settings.LOGIN_FAILURE_LIMIT),
            (models.Q(username=attempt.username), settings.LOGIN_ACCOUNT_FAILURE_LIMIT),
            (models.Q(ip=attempt.ip), settings.LOGIN_ADDRESS_FAILURE_LIMIT),
        )
        until = None
        for same, free in rules:
            seen = recent.filter(same).aggregate(n=models.Count("pk"), last=models.Max("at"))
            if seen["n"] < free:
                continue
            # Each failure past the free ones doubles the wait after the latest one.
            doublings = min(seen["n"] - free, 16)
            delay = min(
                settings.LOGIN_FIRST_DELAY_SECONDS * 2**doublings, settings.LOGIN_MAX_DELAY_SECONDS
            )
            resume = seen["last"] + timedelta(seconds=delay)
            if resume > now:
                until = resume if until is None else max(until, resume)
        return until

    def failed(self, attempt: LoginFailure) -> None:
        """The reserved attempt stays as the failure; failures past the window are dropped."""
        from django.conf import settings

        window = timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS)
        self.filter(at__lte=attempt.at - window).delete()

    def succeeded(self, attempt: LoginFailure) -> None:
        # Only this user's own slips from this address: logging into one account must not
        # wipe out the count of guesses at other accounts from the same address.
        self.filter(username=attempt.username, ip=attempt.ip).delete()


class LoginFailure(models.Model):
    """One failed log-in, kept for the throttling window."""

    username = models.CharField(max_length=150)  # as the backend looks it up, case-folded
    ip = models.CharField(max_length=45)  # an IPv4 address or an IPv6 /64
    at = models.DateTimeField(db_index=True)

    objects = LoginFailureQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["username", "at"]), models.Index(fields=["ip", "at"])]

    def __str__(self) -> str:
        return f"{self.username} from {self.ip} @ {self.at:%Y-%m-%d %H:%M:%S}"


class StatusChangeQuerySet(models.QuerySet["StatusChange"]):
    def due(self, now: datetime) -> StatusChangeQuerySet:
        """Not yet accepted by the webhook, not given up, and its next try has come."""
        return self.filter(sent_at__isnull=True, given_up=False, next_try_at__lte=now)

    def claim(self, change_id: int, now: datetime, seconds: int) -> bool:
        """Take one change to post it: a compare-and-set, so that two workers never both do."""
        free = models.Q(claimed_until__isnull=True) | models.Q(claimed_until__lt=now)
        taken = self.filter(free, pk=change_id, sent_at__isnull=True, given_up=False)
        return bool(taken.update(claimed_until=now + timedelta(seconds=seconds)))


class StatusChange(models.Model):
    """A resource that entered or left a bad status, to be announced by the webhook: written
    in the sync's transaction (an outbox), so that a change is announced however the process
    that found it ends, and never for a change that was rolled back."""

    limit = models.ForeignKey(Limit, on_delete=models.CASCADE, related_name="status_changes")
    limit_name = models.CharField(max_length=500)
    previous = models.CharField(max_length=12, blank=True)  # empty: a limit seen first now
    status = models.CharField(max_length=12)
    evidence = models.JSONField(default=list, blank=True)
    happened_at = models.DateTimeField(default=timezone.now, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_try_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(null=True, blank=True)
    given_up = models.BooleanField(default=False)
    last_error = models.TextField(blank=True)

    objects = StatusChangeQuerySet.as_manager()

    class Meta:
        ordering = ["happened_at", "id"]

    def __str__(self) -> str:
        return f"{self.limit_name}: {self.previous or '-'} -> {self.status}"
