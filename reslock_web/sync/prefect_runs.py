"""The flow and task runs a pass needs, read from Prefect (and from our tables).

The runs behind stored holders and waiters as the last pass left them (`stored_runs`), re-read
when Prefect reports a change (`fresh_runs`); the runs this pass's events name (`claimed_runs`),
read while the listing pages; every run, flow and deployment a claim or a waiter points at that
is still missing after it (`resolve_runs`); and the last heartbeat of the flow runs whose slot
Prefect's count may not cover (`heartbeats`).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from reslock.protocol import EVENT_WAITING
from reslock_web.models import Holder, SyncState, Waiter
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.prefect_io.records import EventInfo, RunInfo
from reslock_web.status.diagnosis import kind_of
from reslock_web.sync.events import ACQUIRES
from reslock_web.sync.queries import of_limits
from reslock_web.sync.snapshot import Snapshot, Stored, StoredRuns

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
ANCESTOR_DEPTH = 10


def stored_runs(limit_pks: list[int] | None = None) -> StoredRuns:
    """The runs behind stored holders and waiters, as the last pass left them: of every limit,
    or of these limits only (a single-limit pass)."""
    tasks: dict[UUID, RunInfo] = {}
    flows: dict[UUID, RunInfo] = {}
    missing_tasks: dict[UUID, datetime] = {}
    missing_flows: dict[UUID, datetime] = {}
    rows = of_limits(Holder.objects.filter(run_missing_since__isnull=False), limit_pks)
    for task_id, run_id, since in rows.values_list(
        "task_run_id", "flow_run_id", "run_missing_since"
    ):
        missing = missing_tasks if task_id else missing_flows
        run = task_id or run_id
        missing[run] = min(since, missing.get(run, since))
    fields = [
        "task_run_id",
        "task_run_name",
        "flow_run_id",
        "flow_run_name",
        "flow_id",
        "deployment_id",
        "state_type",
        "state_name",
        "state_at",
    ]
    for model in (Holder, Waiter):
        for (
            task_id,
            task_name,
            run_id,
            run_name,
            flow_id,
            deployment_id,
            state,
            name,
            at,
        ) in of_limits(model.objects.exclude(state_type=""), limit_pks).values_list(*fields):
            if task_id:
                tasks[task_id] = RunInfo(
                    task_id, task_name, state, name, at, None, None, None, flow_run_id=run_id
                )
                if run_id and run_id not in flows:  # names only: the state above is the task's
                    flows[run_id] = RunInfo(
                        run_id,
                        run_name,
                        "",
                        "",
                        None,
                        None,
                        None,
                        None,
                        flow_id=flow_id,
                        deployment_id=deployment_id,
                    )
            elif run_id:
                flows[run_id] = RunInfo(
                    run_id,
                    run_name,
                    state,
                    name,
                    at,
                    None,
                    None,
                    None,
                    flow_id=flow_id,
                    deployment_id=deployment_id,
                )
    return StoredRuns(tasks, flows, missing_tasks, missing_flows)


@dataclass
class RunsAhead:
    """Runs looked up before resolve_runs asks for them, and which ids were asked."""

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


def claimed_runs(
    api: PrefectAPI,
    events: Future[list[EventInfo]],
    stored_tasks: set[UUID],
    stored_flows: set[UUID],
) -> RunsAhead:
    """The runs that this pass's acquire and wait events name, read while the listing pages
    (the first sync finds hundreds); the stored ones are left to fresh_runs as before."""
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


def runs_refresh_due(now: datetime) -> bool:
    state = SyncState.objects.filter(name=SyncState.RUNS).first()
    return state is None or state.checked_at is None or now - state.checked_at > RUNS_REFRESH


def fresh_runs(
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


def heartbeats(api: PrefectAPI, snapshot: Snapshot, written: Stored) -> dict[UUID, datetime]:
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


def resolve_runs(api: PrefectAPI, snapshot: Snapshot, stored: StoredRuns) -> None:
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
    # The flow runs that started waiting ones (subflows, `run_deployment`), for the cross-lock
    # wait-for graph: a parent may be waiting for the child that waits for it.
    waiting_runs = {
        flow_run_id
        for q in snapshot.queued.values()
        for item in q
        if (flow_run_id := _flow_run_of(item.flow_run_id, item.task_run_id, snapshot))
    }
    started_by = {
        run.parent_task_run_id
        for run_id in waiting_runs
        if (run := snapshot.flow_runs.get(run_id)) and run.parent_task_run_id
    }
    if started_by:
        snapshot.task_runs.update(api.task_runs(started_by - set(snapshot.task_runs)))
        parents = {r.flow_run_id for i in started_by if (r := snapshot.task_runs.get(i))}
        snapshot.flow_runs.update(
            api.flow_runs({p for p in parents if p} - set(snapshot.flow_runs))
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


def _flow_run_of(
    flow_run_id: UUID | None, task_run_id: UUID | None, snapshot: Snapshot
) -> UUID | None:
    if flow_run_id is not None:
        return flow_run_id
    task_run = snapshot.task_runs.get(task_run_id) if task_run_id else None
    return task_run.flow_run_id if task_run else None
