"""Reading Prefect into a Snapshot (`gather`): reads only, so that a Prefect that fails
half-way changes nothing.

The listing starts first; our own tables are read while it pages, with every read that does
not depend on it, and the reads that probably will be needed are made ahead. A pass over a few
limits (`_Scope`) reads only theirs. The tag holders are read here (`_tag_holders`); the runs
come from `prefect_runs`, and the holders and waiters they make from `claims`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.db.models import Q
from django.utils import timezone

from reslock_web.models import COUNTED, Holder, Limit, SyncState
from reslock_web.prefect_io.api import PAGE, PrefectAPI
from reslock_web.prefect_io.records import EventInfo, LimitInfo, RunInfo
from reslock_web.status.diagnosis import kind_of
from reslock_web.sync import prefect_runs
from reslock_web.sync.claims import find_claims
from reslock_web.sync.events import EVENT_PREFIXES, EVENTS_OVERLAP, LIFECYCLE_EVENTS, events_since
from reslock_web.sync.fast_paths import COMPACT, read_stored
from reslock_web.sync.snapshot import Snapshot

# A tag limit whose counter did not move keeps its holders; a few per pass whose list was not
# read for this long are re-read (a tag reset revokes leases without touching the counter).
TAG_RECHECK = timedelta(seconds=300)
VERIFY_PER_PASS = 3


def gather(api: PrefectAPI, only: str | Collection[str] | None = None) -> Snapshot:
    """Read everything from Prefect. The listing starts first and our own tables are read
    while it pages; reads that do not depend on the listing run alongside it, and reads that
    probably will be needed (tagged task runs) are made ahead, so that a sync costs little more
    than the listing itself."""
    now = timezone.now()
    since = events_since(now)
    if only is not None:
        only = frozenset([only] if isinstance(only, str) else only)
    scope = _Scope.of(api, only) if only is not None else None
    with ThreadPoolExecutor(max_workers=8) as pool:
        listed = pool.submit(_listing, api) if scope is None else _done(scope.listing)
        events = pool.submit(_events, api, since, now, scope)
        pks = scope.pks if scope is not None else None
        stored_runs = prefect_runs.stored_runs(pks)
        stored_tasks, stored_flows = stored_runs.tasks, stored_runs.flows
        claimed = pool.submit(
            prefect_runs.claimed_runs, api, events, set(stored_tasks), set(stored_flows)
        )
        refresh_all = only is not None or prefect_runs.runs_refresh_due(now)
        runs = pool.submit(
            prefect_runs.fresh_runs, api, stored_tasks, stored_flows, since, now, refresh_all
        )
        written = read_stored(pks)  # what the write compares with, read while Prefect pages
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
        find_claims(snapshot, runs, pending)
        claimed.result().merge_into(snapshot)
    prefect_runs.resolve_runs(api, snapshot, stored_runs)
    snapshot.heartbeats = prefect_runs.heartbeats(api, snapshot, written)
    found = snapshot.task_runs.keys() | snapshot.flow_runs.keys()
    snapshot.missing_since = {
        run_id: since for run_id, since in snapshot.missing_since.items() if run_id not in found
    }
    if refresh_all and only is None:
        SyncState.objects.update_or_create(name=SyncState.RUNS, defaults={"checked_at": now})
    return snapshot


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
        listing = _read_limits(api, ordered)
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


READS_AT_ONCE = 8  # the API session's connections


def _read_limits(api: PrefectAPI, names: list[str]) -> list[LimitInfo]:
    """These limits as Prefect has them now: one request each, or, for more limits than
    Prefect's listing has pages, the listing (Prefect reads limits by name one at a time only).
    Under churn a pass's size grows with the time the last one took; one request a limit made
    each slow pass slower (bench/churn_bench.py). Fewer requests win even against reads made
    eight at a time: with Prefect busy, 72 limits read one by one took 6.6 s, 112 read from
    the listing of 2,200 (12 pages) 1.1 s."""
    if len(names) > 1 and len(names) > Limit.objects.present().count() // PAGE + 1:
        wanted = set(names)
        return [info for info in api.list_limits().limits if info.name in wanted]
    if len(names) == 1:
        found = [api.read_limit(names[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(READS_AT_ONCE, len(names))) as pool:
            found = list(pool.map(api.read_limit, names))
    return [info for info in found if info is not None]


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
    """What the gather needs of the stored limits, from the rows `read_stored` read."""
    stored = StoredLimits({}, set(), unchecked_tags=False, full_tags=False)
    at = {name: index for index, name in enumerate(COMPACT)}
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
        # As if prefect_runs.resolve_runs had looked them up: it skips the flow runs already
        # asked for.
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
        stored = stored_tag_holders(reuse)
        for name in reuse:
            snapshot.tag_holders[name] = stored.get(name, [])
    snapshot.tag_checked = {f"tag:{tag}" for tag in to_read}


def stored_tag_holders(names: set[str]) -> dict[str, list[UUID]]:
    held: dict[str, list[UUID]] = defaultdict(list)
    rows = Holder.objects.filter(
        limit__name__in=names,
        limit__gone_at__isnull=True,
        source="tag_lease",
        condition__in=COUNTED,
    ).values_list("limit__name", "task_run_id")
    for name, task_run_id in rows:
        if task_run_id:
            held[name].append(task_run_id)
    return held
