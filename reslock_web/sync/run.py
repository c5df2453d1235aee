"""Read the Prefect workspace and store every limit, holder and waiter in our tables.

`sync_all(api)` is the whole pass: it gathers everything first (only reads, so a Prefect that
fails half-way changes nothing), then writes in one transaction. A limit disappears from our
board only after a complete listing without it. Only one sync runs at a time, across every
worker and machine, through a compare-and-set lock row in the database.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from reslock.protocol import (
    EVENT_ACQUIRED,
    EVENT_PREFIX,
    EVENT_RELEASED,
    EVENT_TIMED_OUT,
    EVENT_WAITING,
)
from reslock_web.models import Kind, Limit, LockEvent, Source, SyncRun, SyncState
from reslock_web.prefect_io.api import EventInfo, LimitInfo, PrefectAPI, PrefectError, RunInfo
from reslock_web.status.diagnosis import Claim, Queued, kind_of
from reslock_web.sync import plan as sync_plan
from reslock_web.sync import store
from reslock_web.sync.health import sync_backoff
from reslock_web.sync.snapshot import Snapshot, Stored, StoredRuns

log = logging.getLogger(__name__)

Progress = Callable[[str], None]  # told how a long read goes, in words

EVENT_PREFIXES = ["prefect.concurrency-limit.", EVENT_PREFIX]
# Emitted for every limit created or changed: many, and nothing here needs them.
LIFECYCLE_EVENTS = [
    "prefect.concurrency-limit.created",
    "prefect.concurrency-limit.updated",
    "prefect.concurrency-limit.deleted",
]
ACQUIRED = "prefect.concurrency-limit.acquired"
RELEASED = "prefect.concurrency-limit.released"
# reslock's flow-side helper (the reslock package) announces its waits and leases.
ACQUIRES = (ACQUIRED, EVENT_ACQUIRED)
# Events reach Prefect's REST API a few seconds after they occur: re-read this much each time
# (duplicates are dropped by event id).
EVENTS_OVERLAP = timedelta(seconds=60)
# A tag limit whose counter did not move keeps its holders; a few per pass whose list was not
# read for this long are re-read (a tag reset revokes leases without touching the counter).
TAG_RECHECK = timedelta(seconds=300)
VERIFY_PER_PASS = 3
# Runs of stored holders and waiters are re-read when Prefect reports a state change, and all
# of them at least this often (in case an event was missed).
RUNS_REFRESH = timedelta(seconds=120)
RUN_EVENT_PREFIXES = ["prefect.flow-run.", "prefect.task-run."]
# Prefect 3.9's flow engine sends one every PREFECT_FLOWS_HEARTBEAT_FREQUENCY (180 s by
# default, 30 s at least) while a flow runs (flow_engine.py: _send_heartbeats).
HEARTBEAT = "prefect.flow-run.heartbeat"
HEARTBEATS_BACK = timedelta(minutes=15)
# Flow runs per heartbeat request: a next_page link carries the whole filter, and must stay
# a URL of reasonable length.
HEARTBEAT_RUNS_PER_READ = 20
LOCK_SECONDS = 300  # a crashed sync's lock frees itself after this long
# A pass whose events window is longer than this reads it ahead in batches (`backfill`).
BACKFILL_AFTER = timedelta(minutes=10)
BACKFILL_BATCH = 1000  # events recorded per step: 20 of Prefect's pages
ANCESTOR_DEPTH = 10


# --- the lock --------------------------------------------------------------------------
def where_pids_mean_something() -> str:
    """This host and PID namespace: two containers may share a host name (host networking)
    while a pid of one means nothing in the other. Empty without /proc."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{socket.gethostname()}/{namespace}"


def _me() -> str:
    return (
        f"{where_pids_mean_something() or socket.gethostname()}:{os.getpid()}:{time.monotonic_ns()}"
    )


def try_lock(now: datetime) -> str | None:
    """Take the sync lock if it is free, expired or left by a process that died on this
    machine; returns our token, or None."""
    state, _ = SyncState.objects.get_or_create(name="sync")
    token = _me()
    free = Q(locked_until__isnull=True) | Q(locked_until__lt=now)
    if state.locked_by and _holder_died(state.locked_by):
        # Compare-and-set on the dead holder's token: of several takers, one wins.
        free |= Q(locked_by=state.locked_by)
    taken = SyncState.objects.filter(free, name="sync").update(
        locked_by=token, locked_until=now + timedelta(seconds=LOCK_SECONDS)
    )
    return token if taken == 1 else None


def _holder_died(token: str) -> bool:
    """Whether the lock's holder was a process of this machine that no longer runs (a killed
    worker or listener): its lock would otherwise keep every sync out for LOCK_SECONDS. A pid
    taken by another process since reads as alive: the lock then expires as before."""
    where, pid_text, _ = (token.rsplit(":", 2) + ["", ""])[:3]  # _me(): where:pid:clock
    here = where_pids_mean_something()
    if not here or where != here or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


def unlock(token: str) -> None:
    SyncState.objects.filter(name="sync", locked_by=token).update(locked_by="", locked_until=None)


# --- the pass --------------------------------------------------------------------------
def sync_all(api: PrefectAPI, progress: Progress | None = None) -> SyncRun | None:
    """One full sync. Returns the recorded run, or None when another sync holds the lock."""
    token = try_lock(timezone.now())
    if token is None:
        log.info("another sync is running; this one stops here")
        return None
    return _run(api, token, only=None, progress=progress)


def _keep_lock(token: str) -> None:
    """Extend our sync lock during a long pass; raise if another sync has taken it over."""
    kept = SyncState.objects.filter(name="sync", locked_by=token).update(
        locked_until=timezone.now() + timedelta(seconds=LOCK_SECONDS)
    )
    if kept != 1:
        raise PrefectError(
            "the sync lock passed to another sync during a long read; this one stops here "
            "(what it recorded so far is kept)",
            retryable=True,
        )


# --- the backfill ----------------------------------------------------------------------
def backfill(api: PrefectAPI, token: str, now: datetime, progress: Progress | None) -> None:
    """Read a long window of past lock events ahead of the pass, in order, recording each
    batch as it comes and moving the watermark after it.

    A first sync reads RESLOCK_EVENTS_BACKFILL_DAYS of events, and one after a long stop all
    it missed. Read whole, that is unbounded memory and a pass longer than the sync lock. Read
    in batches, memory stays flat, the lock is extended after each batch, a pass stopped
    half-way (an error, a restart) resumes from the last batch recorded, and the banner and
    `manage.py reslock_sync` show how far it got. The pass itself then reads only the last
    minute, and finds the holds in the stored open acquires as it always does.
    """
    since = _events_since(now)
    if now - since <= BACKFILL_AFTER:
        return
    window, _ = SyncState.objects.get_or_create(name="backfill")
    if window.window_start is None or window.window_end is None:  # else: resuming
        window.window_start = since
    window.window_end = now
    window.events_until = since
    window.save()
    read = 0
    batch: list[EventInfo] = []
    try:
        for event in api.events(since, now, EVENT_PREFIXES, LIFECYCLE_EVENTS):
            batch.append(event)
            if len(batch) >= BACKFILL_BATCH:
                read += _record_batch(batch, token, window, progress, read)
                batch = []
        read += _record_batch(batch, token, window, progress, read)
    except BaseException:
        log.warning("reading past events stopped after %d; the next sync resumes", read)
        raise
    SyncState.objects.filter(name="events").update(events_until=now - EVENTS_OVERLAP)
    SyncState.objects.filter(name="backfill").update(window_start=None, window_end=None)
    if progress:
        progress(f"read {read} past lock events from {_at(since)} to {_at(now)}")


def _record_batch(
    batch: list[EventInfo],
    token: str,
    window: SyncState,
    progress: Progress | None,
    read: int,
) -> int:
    if not batch:
        return 0
    until = batch[-1].occurred
    with transaction.atomic():
        store.record_events(batch)
        # The watermark: a pass that stops later resumes EVENTS_OVERLAP before this.
        SyncState.objects.filter(name="events").update(events_until=until)
        SyncState.objects.filter(name="backfill").update(events_until=until)
        _keep_lock(token)
    window.events_until = until
    share = window.backfill_share or 0.0
    log.info(
        "read %d past lock events, up to %s (%.0f%%)", read + len(batch), _at(until), 100 * share
    )
    if progress:
        progress(f"read {read + len(batch)} past lock events, up to {_at(until)} ({share:.0%})")
    return len(batch)


def _at(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def sync_limit(api: PrefectAPI, name: str, wait: float = 30.0) -> SyncRun | None:
    """Sync one limit now (after an operation), waiting for a running sync to finish first:
    that sync may have read Prefect before the change."""
    token = _wait_for_lock(wait)
    return _run(api, token, only=name) if token is not None else None


def sync_limits(api: PrefectAPI, names: Collection[str], wait: float = 30.0) -> SyncRun | None:
    """Sync these limits in one pass (the listener's events of one flush): one turn of the
    sync lock, one read of their events and of their runs, one write. Limits synced one after
    another each wait for the lock and read on their own, which under churn costs more than
    the events come in."""
    names = sorted(set(names))
    if len(names) == 1:
        return sync_limit(api, names[0], wait)
    token = _wait_for_lock(wait)
    return _run(api, token, only=names) if token is not None else None


def _wait_for_lock(wait: float) -> str | None:
    deadline = time.monotonic() + wait
    while (token := try_lock(timezone.now())) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    return token


def sync_limit_or_raise(api: PrefectAPI, name: str) -> SyncRun:
    """Sync one limit before a decision that depends on it: a decision on the last good state
    instead of Prefect's present one could free a slot somebody took meanwhile."""
    run = sync_limit(api, name)
    if run is None:
        raise PrefectError(
            "another sync kept our tables busy, so the limit could not be read again before "
            "deciding; nothing was changed",
            retryable=True,
        )
    message = (
        f"the limit could not be read again before deciding ({run.error}); nothing was changed"
    )
    if run.throttled:  # still throttled for the operation, which waits and tries again
        wait = (run.throttled_until - timezone.now()).total_seconds()
        raise PrefectError.rate_limited(message, retry_after=max(0.0, wait))
    if not run.ok:
        raise PrefectError(message, retryable=True)
    return run


def _run(
    api: PrefectAPI,
    token: str,
    only: str | list[str] | None,
    progress: Progress | None = None,
) -> SyncRun:
    scope = "all" if only is None else only if isinstance(only, str) else ", ".join(only)
    run = SyncRun.objects.create(scope=scope[:500])
    started = time.monotonic()
    try:
        if only is None:
            backfill(api, token, timezone.now(), progress)
        snapshot = gather(api, only=only)
        with transaction.atomic():
            counts = store.write(
                snapshot,
                grace=timedelta(seconds=settings.GRACE_SECONDS),
                long_hold=timedelta(seconds=settings.LONG_HOLD_SECONDS),
            )
        run.ok = True
        for name, value in counts.items():
            setattr(run, name, value)
    except PrefectError as error:
        run.ok = False
        run.error = str(error)
        if error.throttled:  # not a failure: the next pass tries again (`health`)
            wait = timedelta(seconds=error.retry_after or 0)
            run.throttled_until = timezone.now() + wait
            log.info("sync stopped: Prefect is rate-limiting reslock (%s)", error)
        else:
            log.warning("sync failed: %s", error)
    except Exception as error:
        run.ok = False
        # Every viewer sees this text; the exception's own (a database error names the host
        # and the user) goes to the log only.
        run.error = (
            f"internal error ({type(error).__name__}); the details are in the log of the "
            "process that ran the sync"
        )
        log.exception("sync failed")
    finally:
        run.finished_at = timezone.now()
        run.duration_ms = int((time.monotonic() - started) * 1000)
        run.save()
        unlock(token)
    return run


def gather(api: PrefectAPI, only: str | Collection[str] | None = None) -> Snapshot:
    """Read everything from Prefect. The listing starts first and our own tables are read
    while it pages; reads that do not depend on the listing run alongside it, and reads that
    probably will be needed (tagged task runs) are made ahead, so that a sync costs little more
    than the listing itself."""
    now = timezone.now()
    since = _events_since(now)
    if only is not None:
        only = frozenset([only] if isinstance(only, str) else only)
    scope = _Scope.of(api, only) if only is not None else None
    with ThreadPoolExecutor(max_workers=8) as pool:
        listed = pool.submit(_listing, api) if scope is None else _done(scope.listing)
        events = pool.submit(_events, api, since, now, scope)
        pks = scope.pks if scope is not None else None
        stored_runs = store.stored_runs(pks)
        stored_tasks, stored_flows = stored_runs.tasks, stored_runs.flows
        claimed = pool.submit(_claimed_runs, api, events, set(stored_tasks), set(stored_flows))
        refresh_all = only is not None or _runs_refresh_due(now)
        runs = pool.submit(_fresh_runs, api, stored_tasks, stored_flows, since, now, refresh_all)
        written = store.read_stored(pks)  # what the write compares with, read while Prefect pages
        stored = _stored_limits(written.compact.values())
        deployment_runs = pool.submit(api.deployment_runs, stored.deployments)
        tagged = TaggedRuns(api, pool, set(stored_flows), tags=scope.tags if scope else None)
        if only is None:
            tagged.prefetch(stored)
        listing = listed.result()
        snapshot = Snapshot(
            now=now,
            only=only,
            listing=listing,
            tag_holders={},
            tag_checked=set(),
            events=events.result(),
            events_until=now,
            claims={},
            queued={},
            stored=written,
        )
        fresh = runs.result()
        snapshot.task_runs.update({**stored_tasks, **fresh.task_runs})
        snapshot.flow_runs.update({**stored_flows, **fresh.flow_runs})
        snapshot.asked_tasks, snapshot.asked_flows = set(stored_tasks), set(stored_flows)
        # Shown before, not returned now: missing from now on (unless already missing).
        vanished = {
            **{i: now for i in fresh.asked_tasks - set(fresh.task_runs)},
            **{i: now for i in fresh.asked_flows - set(fresh.flow_runs)},
        }
        for run_id in vanished:
            snapshot.task_runs.pop(run_id, None)
            snapshot.flow_runs.pop(run_id, None)
        snapshot.missing_since = {
            **vanished,
            **stored_runs.missing_tasks,
            **stored_runs.missing_flows,
        }
        new_deployments = {
            d for info in listing if (d := kind_of(info.name)[2])
        } - stored.deployments
        more_runs = pool.submit(api.deployment_runs, new_deployments) if new_deployments else None
        _tag_holders(api, snapshot, stored.known if only is None else {}, tagged)
        runs = deployment_runs.result() + (more_runs.result() if more_runs else [])
        full_tags = any(
            info.name.startswith("tag:") and info.active and 0 < info.limit <= info.active_slots
            for info in listing
        )
        pending = tagged.pending(snapshot) if full_tags else []
        _claims(snapshot, runs, pending)
        claimed.result().merge_into(snapshot)
    _resolve_runs(api, snapshot, stored_runs)
    snapshot.heartbeats = _heartbeats(api, snapshot, written)
    found = snapshot.task_runs.keys() | snapshot.flow_runs.keys()
    snapshot.missing_since = {
        run_id: since for run_id, since in snapshot.missing_since.items() if run_id not in found
    }
    if refresh_all and only is None:
        SyncState.objects.update_or_create(name="runs", defaults={"checked_at": now})
    return snapshot


@dataclass
class RunsAhead:
    """Runs looked up before _resolve_runs asks for them, and which ids were asked."""

    task_runs: dict[UUID, RunInfo]
    flow_runs: dict[UUID, RunInfo]
    asked_tasks: set[UUID]
    asked_flows: set[UUID]

    def merge_into(self, snapshot: Snapshot) -> None:
        # Runs read for a stated reason (holders, waiters, deployments) stay as they are.
        for run_id, run in self.task_runs.items():
            snapshot.task_runs.setdefault(run_id, run)
        for run_id, run in self.flow_runs.items():
            snapshot.flow_runs.setdefault(run_id, run)
        snapshot.asked_tasks |= self.asked_tasks
        snapshot.asked_flows |= self.asked_flows


def _claimed_runs(
    api: PrefectAPI,
    events: Future[list[EventInfo]],
    stored_tasks: set[UUID],
    stored_flows: set[UUID],
) -> RunsAhead:
    """The runs that this pass's acquire and wait events name, read while the listing pages
    (the first sync finds hundreds); the stored ones are left to _fresh_runs as before."""
    task_ids: set[UUID] = set()
    flow_ids: set[UUID] = set()
    for event in events.result():
        if event.event in ACQUIRES or event.event == EVENT_WAITING:
            task_ids.add(event.related_id("task-run", "prefect.task-run.")[0])
            flow_ids.add(event.related_id("flow-run", "prefect.flow-run.")[0])
    task_ids -= {None, *stored_tasks}
    tasks = api.task_runs(task_ids)
    flow_ids |= {run.flow_run_id for run in tasks.values()}
    flow_ids -= {None, *stored_flows}
    return RunsAhead(tasks, api.flow_runs(flow_ids), task_ids, flow_ids)


def _listing(api: PrefectAPI) -> list[LimitInfo]:
    return api.list_limits().limits


@dataclass(frozen=True)
class _Scope:
    """What a pass over a few limits reads: those limits, their stored rows (by name, and by
    Prefect id in case a name changed), their events and their tags' runs, and nothing of the
    other limits. A re-sync after an event must cost the same with 200 busy limits beside it
    as alone."""

    listing: list[LimitInfo]
    pks: list[int]  # our rows of those limits
    tags: list[str]  # the tags of those that are tag limits
    read_until: datetime | None  # how far their events were read, all of them; None: unknown

    @classmethod
    def of(cls, api: PrefectAPI, names: frozenset[str]) -> _Scope:
        ordered = sorted(names)
        if len(ordered) == 1:
            found = [api.read_limit(ordered[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(ordered))) as pool:
                found = list(pool.map(api.read_limit, ordered))
        listing = [info for info in found if info is not None]
        rows = Limit.objects.filter(Q(name__in=ordered) | Q(prefect_id__in=[i.id for i in listing]))
        stored = dict(rows.values_list("prefect_id", "events_read_until"))
        marks = [stored.get(info.id) for info in listing]
        tags = [name.removeprefix("tag:") for name in ordered if name.startswith("tag:")]
        read_until = min(marks) if marks and None not in marks else None
        return cls(listing, list(rows.values_list("pk", flat=True)), tags, read_until)

    def since(self, since: datetime) -> datetime:
        """Where this pass reads events from: where the last complete pass left off, or, when
        every limit of it was read on its own since, where those reads left off (less the
        overlap: events reach Prefect's REST API late). A limit re-synced after each event
        then reads a minute or so of its events, however long ago the last complete pass."""
        if self.read_until is None:
            return since
        return max(since, self.read_until - EVENTS_OVERLAP)

    @property
    def resources(self) -> list[str]:
        return [f"prefect.concurrency-limit.{info.id}" for info in self.listing]


def _done(value: list[LimitInfo]) -> Future[list[LimitInfo]]:
    future: Future[list[LimitInfo]] = Future()
    future.set_result(value)
    return future


def _events(
    api: PrefectAPI, since: datetime, now: datetime, scope: _Scope | None
) -> list[EventInfo]:
    """The lock events of the window: every limit's, or only those whose resource is the
    scope's limit (each lock event names one limit as its resource; the stored open acquires
    of that limit cover what happened before the window)."""
    if scope is None:
        return list(api.events(since, now, EVENT_PREFIXES, LIFECYCLE_EVENTS))
    if not scope.resources:
        return []  # gone from Prefect: nothing to read
    return list(
        api.events(scope.since(since), now, EVENT_PREFIXES, LIFECYCLE_EVENTS, scope.resources)
    )


@dataclass
class StoredLimits:
    """What the last pass stored about the present limits."""

    known: dict[UUID, tuple[datetime | None, int, datetime | None]]  # updated, slots, checked
    deployments: set[UUID]
    unchecked_tags: bool  # a tag limit with a slot in use whose holders were never found
    full_tags: bool  # an active tag limit with every slot in use


def _stored_limits(compact: Iterable[tuple]) -> StoredLimits:
    """What the gather needs of the stored limits, from the rows `store.read_stored` read."""
    stored = StoredLimits({}, set(), unchecked_tags=False, full_tags=False)
    at = {name: index for index, name in enumerate(store.COMPACT)}
    for row in compact:
        if row[at["gone_at"]] is not None:
            continue
        name, limit, active = row[at["name"]], row[at["limit"]], row[at["active"]]
        slots, checked = row[at["active_slots"]], row[at["holders_checked_at"]]
        stored.known[row[at["prefect_id"]]] = (row[at["prefect_updated"]], slots, checked)
        if row[at["deployment_id"]] is not None:
            stored.deployments.add(row[at["deployment_id"]])
        if slots and name.startswith("tag:"):
            stored.unchecked_tags = stored.unchecked_tags or checked is None
            stored.full_tags = stored.full_tags or (active and 0 < limit <= slots)
    return stored


class TaggedRuns:
    """Running and Pending tagged task runs, each read at most once per pass.

    Whether a pass needs them depends on the listing, yet they cost a request or more each
    after it: when the stored limits say they probably will be needed (a first sync, a held
    tag limit whose holders were never found, a tag limit full last time: its queue is read
    on every pass), they are read while the listing pages, together with the flow runs they
    belong to. A read that proves unneeded is dropped, its error too.
    """

    def __init__(
        self,
        api: PrefectAPI,
        pool: ThreadPoolExecutor,
        stored_flows: set[UUID],
        tags: list[str] | None = None,
    ):
        self._api = api
        self._pool = pool
        self._stored_flows = stored_flows
        self._tags = tags  # a pass over a few limits: those tags' runs only
        self._ahead: dict[str, Future[tuple[list[RunInfo], dict[UUID, RunInfo], set[UUID]]]] = {}

    def prefetch(self, stored: StoredLimits) -> None:
        first = not stored.known
        if first or stored.unchecked_tags:
            self._ahead["RUNNING"] = self._pool.submit(self._read, "RUNNING")
        if first or stored.full_tags:
            self._ahead["PENDING"] = self._pool.submit(self._read, "PENDING")

    def _read(self, state: str) -> tuple[list[RunInfo], dict[UUID, RunInfo], set[UUID]]:
        runs = self._tagged(state)
        flow_ids = {run.flow_run_id for run in runs if run.flow_run_id} - self._stored_flows
        return runs, self._api.flow_runs(flow_ids), flow_ids

    def _get(self, state: str, snapshot: Snapshot) -> list[RunInfo]:
        ahead = self._ahead.get(state)
        if ahead is None:
            return self._tagged(state)
        runs, flows, asked = ahead.result()
        # As if _resolve_runs had looked them up: it skips the flow runs already asked for.
        for run_id, run in flows.items():
            snapshot.flow_runs.setdefault(run_id, run)
        snapshot.asked_flows |= asked
        return runs

    def _tagged(self, state: str) -> list[RunInfo]:
        if self._tags is None:
            return self._api.tagged_task_runs(state)
        found: dict[UUID, RunInfo] = {}
        for tag in self._tags:
            found.update((run.id, run) for run in self._api.tagged_task_runs(state, tag))
        return list(found.values())

    def running(self, snapshot: Snapshot) -> list[RunInfo]:
        return self._get("RUNNING", snapshot)

    def pending(self, snapshot: Snapshot) -> list[RunInfo]:
        return self._get("PENDING", snapshot)


def _runs_refresh_due(now: datetime) -> bool:
    state = SyncState.objects.filter(name="runs").first()
    return state is None or state.checked_at is None or now - state.checked_at > RUNS_REFRESH


def _fresh_runs(
    api: PrefectAPI,
    tasks: dict[UUID, RunInfo],
    flows: dict[UUID, RunInfo],
    since: datetime,
    now: datetime,
    refresh_all: bool,
) -> RunsAhead:
    """Re-read the runs of stored holders and waiters: all of them now and then, otherwise
    only those whose state changed since the last pass (Prefect emits an event per change).
    Says which were asked for: one asked for and not returned is missing from Prefect."""
    if not refresh_all and (tasks or flows):
        resources = [f"prefect.task-run.{i}" for i in tasks] + [
            f"prefect.flow-run.{i}" for i in flows
        ]
        changed = {
            _uuid_of(resource)
            for resource in api.resources_with_events(since, now, RUN_EVENT_PREFIXES, resources)
        }
        tasks = {i: run for i, run in tasks.items() if i in changed}
        flows = {i: run for i, run in flows.items() if i in changed}
    return RunsAhead(api.task_runs(tasks), api.flow_runs(flows), set(tasks), set(flows))


def _uuid_of(resource_id: str) -> UUID | None:
    try:
        return UUID(resource_id.rsplit(".", 1)[-1])
    except ValueError:
        return None


def _tag_holders(
    api: PrefectAPI,
    snapshot: Snapshot,
    known: dict[UUID, tuple[datetime | None, int, datetime | None]],
    tagged: TaggedRuns,
) -> None:
    """Lease holders of tag limits, reading Prefect's per-tag list only where needed.

    A limit whose counter did not move keeps the holders stored last time. Otherwise the
    Running task runs carrying its tag are the holders when their number matches the count
    (the engine holds the slot while the task runs); where it does not (a stale or Pending
    holder), the per-tag list is read. A few limits are re-read on every pass, oldest first,
    so that every stored answer is checked against Prefect's own list now and then.
    """
    moved = []
    reuse: set[str] = set()
    verifiable: list[tuple[datetime, str]] = []
    to_read: list[str] = []
    for info in snapshot.listing:
        if not info.name.startswith("tag:"):
            continue
        tag = info.name.removeprefix("tag:")
        if not info.active:
            # Runs inside an inactive limit hold leases Prefect does not count: its counter
            # says nothing about them, so its list is read every pass.
            to_read.append(tag)
            continue
        if info.active_slots == 0:
            continue
        updated, slots, checked = known.get(info.id, (None, -1, None))
        if updated == info.updated and slots == info.active_slots and checked is not None:
            reuse.add(info.name)
            verifiable.append((checked, tag))
        else:
            moved.append((info, tag, checked))
    by_tag: dict[str, list[UUID]] = {}
    if moved:
        for run in tagged.running(snapshot):
            snapshot.task_runs[run.id] = run
            for tag in run.tags:
                by_tag.setdefault(tag, []).append(run.id)
    for info, tag, checked in moved:
        if len(by_tag.get(tag, [])) == info.active_slots:
            snapshot.tag_holders[info.name] = by_tag[tag]
            snapshot.tag_counted.add(info.name)
            verifiable.append((checked or datetime.min.replace(tzinfo=snapshot.now.tzinfo), tag))
        else:
            to_read.append(tag)
    verifiable.sort()
    checks = [tag for checked, tag in verifiable if snapshot.now - checked > TAG_RECHECK][
        :VERIFY_PER_PASS
    ]
    to_read += checks
    reuse -= {f"tag:{tag}" for tag in checks}
    for tag, ids in api.tag_holders_many(to_read).items():
        if ids is not None:
            snapshot.tag_holders[f"tag:{tag}"] = ids
    if reuse:
        stored = store.stored_tag_holders(reuse)
        for name in reuse:
            snapshot.tag_holders[name] = stored.get(name, [])
    snapshot.tag_checked = {f"tag:{tag}" for tag in to_read}


def _events_since(now: datetime) -> datetime:
    state, _ = SyncState.objects.get_or_create(name="events")
    backfill = now - timedelta(days=settings.EVENTS_BACKFILL_DAYS)
    if state.events_until is None:
        return backfill
    # Never further back than the backfill, even after a long stop: events older than that may
    # have been pruned (retention.py), and an acquire read again without its release would show
    # a holder that left long ago.
    return max(backfill, state.events_until - EVENTS_OVERLAP)


def _claims(snapshot: Snapshot, deployment_runs: list[RunInfo], pending: list[RunInfo]) -> None:
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
    apart; a later one is paired with its acquire by limit and run (`store.pair_release`),
    as the write will record it. reslock's helper releases name the lease.
    """
    released = {e.follows for e in events if e.event == RELEASED and e.follows}
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
            row = store.event_row(event)
            if row.limit_prefect_id is not None:
                acquires[event.id] = row
    for event_id in released:
        acquires.pop(event_id, None)
    unfollowed = sorted(
        (e for e in events if e.event == RELEASED and not e.follows), key=lambda e: e.occurred
    )
    paired = store.release_pairs([e.id for e in unfollowed])
    for event in unfollowed:
        target = paired.get(event.id)
        if target is None:
            match = store.pair_release(store.event_row(event), acquires.values())
            target = match.event_id if match is not None else None
        acquires.pop(target, None)
    claims = [(row.limit_prefect_id, store.claim_from_row(row)) for row in acquires.values()]
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
        (store.limit_id_of(e), str(e.payload.get("wait_id")))
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
        waits[(row.limit_prefect_id, str(row.wait_id))] = store.queued_from_row(row)
    ended_rows = _closed_ids([e.id for e in events if e.event == EVENT_WAITING])
    for event in events:
        if event.id in ended_rows:
            continue
        if event.event == EVENT_WAITING and (limit_id := store.limit_id_of(event)) is not None:
            row = store.event_row(event)
            waits[(limit_id, str(row.wait_id))] = store.queued_from_row(row)
    return [
        (limit_id, item)
        for (limit_id, wait), item in waits.items()
        if (limit_id, wait) not in ended
    ]


def _heartbeats(api: PrefectAPI, snapshot: Snapshot, written: Stored) -> dict[UUID, datetime]:
    """When Prefect last received a heartbeat from each flow run whose claim the count may not
    cover: the claims of limits whose count is lower than their claims take, and stored
    holders whose slot was lost. Read only then, which is rare."""
    wanted: set[UUID] = set()
    for info in snapshot.listing:
        claims = snapshot.claims.get(info.id, [])
        if claims and sum(c.slots for c in claims) > info.active_slots:
            for claim in claims:
                run = snapshot.task_runs.get(claim.task_run_id) if claim.task_run_id else None
                wanted |= {claim.flow_run_id, run.flow_run_id if run else None}
    for by_key in written.holders.values():
        wanted |= {h.flow_run_id for h in by_key.values() if h.slot_lost_at is not None}
    wanted.discard(None)
    if not wanted:
        return {}
    beats: dict[UUID, datetime] = {}
    resources = [f"prefect.flow-run.{run_id}" for run_id in sorted(wanted, key=str)]
    # Heartbeats are dated by the client's clock: look a little ahead of ours.
    until = snapshot.now + timedelta(minutes=5)
    step = HEARTBEAT_RUNS_PER_READ
    for chunk in (resources[i : i + step] for i in range(0, len(resources), step)):
        for event in api.events(snapshot.now - HEARTBEATS_BACK, until, [HEARTBEAT], None, chunk):
            run_id = _uuid_of(event.resource.get("prefect.resource.id", ""))
            if event.event != HEARTBEAT or run_id is None:
                continue
            heard = event.received or event.occurred  # Prefect's clock where it gives it
            if run_id not in beats or heard > beats[run_id]:
                beats[run_id] = heard
    return beats


def _resolve_runs(api: PrefectAPI, snapshot: Snapshot, stored: StoredRuns) -> None:
    """Fetch every run, flow and deployment a claim, waiter or stored holder points at."""
    # Runs of stored holders that were missing last time: found again, or still missing.
    task_ids: set[UUID] = set(stored.missing_tasks)
    flow_ids: set[UUID] = set(stored.missing_flows)
    for claim in (c for claims in snapshot.claims.values() for c in claims):
        task_ids.update(filter(None, [claim.task_run_id]))
        flow_ids.update(filter(None, [claim.flow_run_id]))
    for item in (q for queued in snapshot.queued.values() for q in queued):
        task_ids.update(filter(None, [item.task_run_id]))
        flow_ids.update(filter(None, [item.flow_run_id]))
    # Stored holders' and waiters' runs were read while the listing paged.
    snapshot.task_runs.update(
        api.task_runs(task_ids - set(snapshot.task_runs) - snapshot.asked_tasks)
    )
    flow_ids |= {run.flow_run_id for run in snapshot.task_runs.values() if run.flow_run_id}
    snapshot.flow_runs.update(
        api.flow_runs(flow_ids - set(snapshot.flow_runs) - snapshot.asked_flows)
    )
    # Ancestors of tag waiters, for the self-deadlock rule.
    todo = {p for q in snapshot.queued.values() for item in q for p in item.parent_ids}
    for _ in range(ANCESTOR_DEPTH):
        todo -= set(snapshot.ancestors)
        if not todo:
            break
        found = api.task_runs(todo - set(snapshot.task_runs))
        snapshot.task_runs.update(found)
        for run_id in todo:
            run = snapshot.task_runs.get(run_id)
            snapshot.ancestors[run_id] = run.parent_ids if run else ()
        todo = {p for run_id in todo for p in snapshot.ancestors[run_id]}
    deployment_ids = {run.deployment_id for run in snapshot.flow_runs.values() if run.deployment_id}
    deployment_ids |= {d for info in snapshot.listing if (d := kind_of(info.name)[2])}
    snapshot.deployments = NAMES.deployments(api, deployment_ids, snapshot.now)
    flows = {run.flow_id for run in snapshot.flow_runs.values() if run.flow_id}
    flows |= {flow_id for _, flow_id in snapshot.deployments.values() if flow_id}
    snapshot.flow_names = NAMES.flows(api, flows, snapshot.now)


class NameCache:
    """Flow and deployment names change rarely: keep them for a while between passes."""

    TTL = timedelta(minutes=10)

    def __init__(self) -> None:
        self._deployments: dict[UUID, tuple[datetime, tuple[str, UUID | None]]] = {}
        self._flows: dict[UUID, tuple[datetime, str]] = {}

    def _fresh(self, cache: dict, ids: set[UUID], now: datetime) -> set[UUID]:
        return {i for i in ids if i not in cache or now - cache[i][0] > self.TTL}

    def deployments(
        self, api: PrefectAPI, ids: set[UUID], now: datetime
    ) -> dict[UUID, tuple[str, UUID | None]]:
        for key, value in api.deployments(self._fresh(self._deployments, ids, now)).items():
            self._deployments[key] = (now, value)
        return {i: self._deployments[i][1] for i in ids if i in self._deployments}

    def flows(self, api: PrefectAPI, ids: set[UUID], now: datetime) -> dict[UUID, str]:
        for key, value in api.flow_names(self._fresh(self._flows, ids, now)).items():
            self._flows[key] = (now, value)
        return {i: self._flows[i][1] for i in ids if i in self._flows}


NAMES = NameCache()


def sync_with_settings(periodic: bool = False, progress: Progress | None = None) -> SyncRun | None:
    """A full sync with the configured Prefect; one asked for always runs. A periodic one
    (beat's) is skipped while Prefect keeps failing and the back-off has not run out, and
    while the live listener carries the board it is as sync_plan.py says."""
    if periodic:
        backoff = sync_backoff()
        if backoff.skip(timezone.now()):
            log.info(
                "%s syncs failed in a row; the next periodic sync waits until %s",
                backoff.failures,
                backoff.retry_at,
            )
            return None
        todo = sync_plan.plan(timezone.now())
        if todo.kind == sync_plan.NOTHING:
            return None
        if todo.kind == sync_plan.SOME:
            with PrefectAPI.from_settings() as api:
                last = None
                for name in todo.names:
                    last = sync_limit(api, name, wait=5) or last
                return last
    with PrefectAPI.from_settings() as api:
        return sync_all(api, progress)
