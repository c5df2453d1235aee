"""A kept Prefect 3.9 server loaded with thousands of limits, holders and waiters, for benchmarks.

The server's home (var/bench/prefect) survives between runs. Limits, deployments, flow runs,
task runs and the `prefect.concurrency-limit.acquired` events are created once, recorded in
bench_state.json and reused; every creation call is idempotent (upserts, idempotency keys,
unique task keys), so an interrupted setup simply resumes.

Leases live in the server's memory only: a restart loses them while the database keeps
`active_slots`. So each start first drops the counters the old leases left behind (raw
`decrement`, which emits no event) and then takes every slot again with a fresh 24 h lease.

    with BenchPrefect() as prefect:
        prefect.prepare()
        ... prefect.api_url ...
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.net import free_port  # noqa: E402
from tests.support.prefect_server import PrefectServer, migrated_template  # noqa: E402

BENCH_DIR = ROOT / "var" / "bench"
PREFECT_HOME = BENCH_DIR / "prefect"
STATE_VERSION = 1
LEASE_SECONDS = 86400  # the server's maximum; nothing expires during a run
EVENTS_REFRESH = timedelta(days=6)  # re-emit acquires before Prefect's 7-day retention drops them
PAGE = 200
ACQUIRED = "prefect.concurrency-limit.acquired"
RELEASED = "prefect.concurrency-limit.released"


@dataclass(frozen=True)
class Layout:
    """What the workspace holds. Names are stable so that a later run finds what it made."""

    gcls: int = 3000
    tags: int = 1900
    deployments: int = 100
    held_every: int = 10  # one limit in ten of each kind is held
    tag_waiters: int = 50  # Pending task runs queued on full tag limits...
    deadlocked: int = 5  # ...of which these are nested inside their limit's holder
    deployment_waiters: int = 10  # flow runs in AwaitingConcurrencySlot
    per_flow_run: int = 3  # holders (task runs) sharing one flow run

    def gcl_names(self) -> list[str]:
        return [f"resource:bench-gcl-{i:04d}" for i in range(self.gcls)]

    def tag_names(self) -> list[str]:
        return [f"bench-tag-{i:04d}" for i in range(self.tags)]

    def deployment_names(self) -> list[str]:
        return [f"bench-dep-{i:03d}" for i in range(self.deployments)]

    def held(self, names: list[str]) -> list[str]:
        return names[:: self.held_every]

    @property
    def total(self) -> int:
        return self.gcls + self.tags + self.deployments


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def parallel(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 4) -> list[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


def _awaiting() -> dict[str, Any]:
    """The state Prefect gives a deployment's flow run that waits for a slot (retried in 30 s)."""
    soon = datetime.now(UTC) + timedelta(seconds=30)
    return {
        "type": "SCHEDULED",
        "name": "AwaitingConcurrencySlot",
        "state_details": {"scheduled_time": _iso(soon)},
    }


class BenchPrefect:
    """Starts the kept server on a free port, fills it once, re-takes its leases each start."""

    def __init__(
        self,
        layout: Layout | None = None,
        home: Path = PREFECT_HOME,
        workers: int = 4,
        log: Callable[[str], None] = print,
        database_url: str | None = None,
        new_database: bool = False,
    ) -> None:
        """`database_url`: Prefect's database on PostgreSQL (asyncpg form) instead of SQLite in
        `home`; `new_database`: it was created empty, so what bench_state.json says is gone."""
        self.layout = layout or Layout()
        self.home = home
        self.workers = workers
        self.log = log
        self.database_url = database_url
        self.new_database = new_database
        self.server: PrefectServer | None = None
        self.http: httpx.Client | None = None
        self.state: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self._lock_file: Any = None
        self.limit_ids: dict[str, str] = {}
        self.held = 0

    # --- life cycle ---------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        assert self.server is not None
        return self.server.api_url

    @property
    def state_file(self) -> Path:
        return self.home / "bench_state.json"

    def __enter__(self) -> BenchPrefect:
        self.home.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.home / ".bench.lock", "w")  # noqa: SIM115 - closed in __exit__
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SystemExit(f"another benchmark is using {self.home}") from None
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.server is not None:
            self.server.stop()  # only the process group this object started
            self.server = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _start(self) -> None:
        started = time.monotonic()
        db = self.home / "prefect.db"
        if self.database_url is not None:
            if self.new_database:
                self.state_file.unlink(missing_ok=True)  # it describes a database now gone
        elif not db.exists():
            self.state_file.unlink(missing_ok=True)  # the state describes a database now gone
            partial = db.with_suffix(".partial")
            shutil.copyfile(migrated_template(), partial)
            partial.rename(db)
        self.state = self._load_state()
        self.server = PrefectServer(
            home=self.home, port=free_port(), database_url=self.database_url
        )
        self.server.start(timeout=180)
        self.http = httpx.Client(
            base_url=self.api_url + "/",
            timeout=httpx.Timeout(120.0, connect=10.0),
            limits=httpx.Limits(max_connections=self.workers * 2),
        )
        self.timings["server start"] = time.monotonic() - started
        self.log(f"Prefect {self.api_url} up in {self.timings['server start']:.1f} s")

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            state = {}
        if state.get("version") != STATE_VERSION:
            state = {"version": STATE_VERSION}
        for key in ("flows", "deployments", "runs", "events"):
            state.setdefault(key, {})
        return state

    def _save_state(self) -> None:
        partial = self.state_file.with_suffix(".partial")
        partial.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        partial.rename(self.state_file)

    # --- HTTP -----------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, ok: Iterable[int] = ()) -> Any:
        """One request, retried on 503/5xx or a dropped connection.

        Prefect on SQLite answers 503 when its database is busy (SQLITE_BUSY), which happens
        under parallel writes, mostly in the first seconds after a start; nothing was written.
        """
        assert self.http is not None
        attempts = 10
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self.http.request(method, path, json=body)
            except httpx.TransportError:
                if last:
                    raise
                time.sleep(min(0.25 * 2**attempt, 4))
                continue
            if response.status_code >= 500 and not last:
                time.sleep(min(0.25 * 2**attempt, 4))
                continue
            if response.status_code >= 400 and response.status_code not in ok:
                raise RuntimeError(
                    f"{method} /{path} -> {response.status_code}: {response.text[:300]}"
                )
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    def list_limits(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            page = self.call(
                "POST", "v2/concurrency_limits/filter", {"limit": PAGE, "offset": offset}
            )
            found.update({item["name"]: item for item in page})
            if len(page) < PAGE:
                return found
            offset += PAGE

    def event_counts(self, since: datetime, prefix: str = "prefect.concurrency-limit.") -> dict:
        """Events per name in [since, now], as the sync's backfill would read them."""
        body = {
            "filter": {
                "occurred": {"since": _iso(since), "until": _iso(datetime.now(UTC))},
                "event": {"prefix": [prefix]},
            }
        }
        rows = self.call("POST", "events/count-by/event", body)
        return {row["value"]: row["count"] for row in rows}

    # --- setup ----------------------------------------------------------------------------
    def prepare(self) -> dict[str, float]:
        """Make sure everything exists, then take the slots. Returns seconds per step."""
        for step, fn in (
            ("limits", self._ensure_limits),
            ("runs", self._ensure_runs),
            ("events", self._ensure_events),
            ("leases", self._take_leases),
        ):
            started = time.monotonic()
            fn()
            self.timings[step] = time.monotonic() - started
            self._save_state()
        return self.timings

    def _timed_progress(self, what: str, fn: Callable[[Any], Any], items: list[Any]) -> list:
        if not items:
            return []
        self.log(f"  creating {len(items)} {what} ({self.workers} in parallel)...")
        started = time.monotonic()
        done = [0]

        def step(item: Any) -> Any:
            result = fn(item)
            done[0] += 1
            if done[0] % 500 == 0:
                self.log(f"    {done[0]}/{len(items)} in {time.monotonic() - started:.0f} s")
            return result

        return parallel(step, items, self.workers)

    def _flow(self, key: str, name: str) -> str:
        if key not in self.state["flows"]:
            self.state["flows"][key] = self.call("POST", "flows/", {"name": name})["id"]
        return self.state["flows"][key]

    def _ensure_limits(self) -> None:
        layout = self.layout
        existing = self.list_limits()
        missing_gcls = [name for name in layout.gcl_names() if name not in existing]
        self._timed_progress(
            "global limits",
            lambda name: self.call(
                "POST", "v2/concurrency_limits/", {"name": name, "limit": 1}, ok=(409,)
            ),
            missing_gcls,
        )
        missing_tags = [tag for tag in layout.tag_names() if f"tag:{tag}" not in existing]
        self._timed_progress(
            "tag limits",
            lambda tag: self.call(
                "POST", "concurrency_limits/", {"tag": tag, "concurrency_limit": 1}
            ),
            missing_tags,
        )
        flow_id = self._flow("deployment", "bench-deployed-flow")
        deployments = self.state["deployments"]
        missing = [
            name
            for name in layout.deployment_names()
            if name not in deployments or f"deployment:{deployments[name]}" not in existing
        ]

        def create_deployment(name: str) -> tuple[str, str]:
            body = {"name": name, "flow_id": flow_id, "concurrency_limit": 1}
            data = self.call("POST", "deployments/", body)
            limit = data.get("global_concurrency_limit") or {}
            if limit.get("name") != f"deployment:{data['id']}":
                raise RuntimeError(f"deployment {name} came without its limit: {limit}")
            return name, data["id"]

        for name, deployment_id in self._timed_progress("deployments", create_deployment, missing):
            deployments[name] = deployment_id
        listed = self.list_limits()
        expected = (
            set(layout.gcl_names())
            | {f"tag:{tag}" for tag in layout.tag_names()}
            | {f"deployment:{deployments[name]}" for name in layout.deployment_names()}
        )
        if not expected <= set(listed):
            raise RuntimeError(f"{len(expected - set(listed))} bench limits are missing")
        self.limit_ids = {name: data["id"] for name, data in listed.items()}
        self.log(
            f"  {len(listed)} limits ({len(missing_gcls)} GCL, {len(missing_tags)} tag, "
            f"{len(missing)} deployment limits created this run)"
        )

    # --- runs -------------------------------------------------------------------------
    def _run_plan(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Flow runs to make: (flow-run key, the task runs inside it)."""
        layout = self.layout
        plan: list[tuple[str, list[dict[str, Any]]]] = []
        held_gcls = layout.held(layout.gcl_names())
        for group in chunks(held_gcls, layout.per_flow_run):
            plan.append(
                (
                    f"gcl-{group[0]}",
                    [{"key": f"gcl:{name}", "state": "RUNNING", "tags": []} for name in group],
                )
            )
        held_tags = layout.held(layout.tag_names())
        for group in chunks(held_tags, layout.per_flow_run):
            plan.append(
                (
                    f"tag-{group[0]}",
                    [{"key": f"tag:{tag}", "state": "RUNNING", "tags": [tag]} for tag in group],
                )
            )
        plain = layout.tag_waiters - layout.deadlocked
        queued_on = held_tags[: max(1, plain // 2)]
        waiters = [
            {"key": f"tag-waiter:{i}", "state": "PENDING", "tags": [queued_on[i % len(queued_on)]]}
            for i in range(plain)
        ]
        for group in chunks(waiters, layout.per_flow_run):
            plan.append((f"waiters-{group[0]['key']}", group))
        return plan

    def _ensure_runs(self) -> None:
        layout, runs = self.layout, self.state["runs"]
        flows = {
            "gcl": self._flow("gcl", "bench-gcl-user"),
            "tag": self._flow("tag", "bench-tag-user"),
            "waiters": self._flow("waiters", "bench-tag-waiter"),
        }
        self._verify_runs()
        todo = [
            (key, tasks)
            for key, tasks in self._run_plan()
            if any(t["key"] not in runs for t in tasks)
        ]

        def make(item: tuple[str, list[dict[str, Any]]]) -> None:
            key, tasks = item
            flow_run = self.call(
                "POST",
                "flow_runs/",
                {
                    "flow_id": flows[key.split("-")[0]],
                    "name": "bench-" + key.removeprefix("waiters-").replace("resource:", ""),
                    "idempotency_key": f"bench:{key}",
                    "state": {"type": "RUNNING"},
                },
            )
            for task in tasks:
                task_run = self._task_run(flow_run["id"], task["key"], task["state"], task["tags"])
                runs[task["key"]] = {
                    "flow_run_id": flow_run["id"],
                    "flow_run_name": flow_run["name"],
                    "flow_id": flow_run["flow_id"],
                    "task_run_id": task_run["id"],
                    "task_run_name": task_run["name"],
                }

        self._timed_progress("flow runs with their task runs", make, todo)
        # Self-deadlocks: a Pending task inside the holder of the same full tag limit.
        held_tags = layout.held(layout.tag_names())
        nested = held_tags[len(held_tags) - layout.deadlocked :] if layout.deadlocked else []
        for tag in nested:
            key = f"deadlock:{tag}"
            if key in runs:
                continue
            holder = runs[f"tag:{tag}"]
            task_run = self._task_run(
                holder["flow_run_id"], key, "PENDING", [tag], parent=holder["task_run_id"]
            )
            runs[key] = {**holder, "task_run_id": task_run["id"], "task_run_name": task_run["name"]}
        self._ensure_deployment_runs()
        self.log(f"  {len(runs)} holder/waiter runs recorded")

    def _task_run(
        self, flow_run_id: str, key: str, state: str, tags: list[str], parent: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "flow_run_id": flow_run_id,
            "task_key": f"bench-{key.split(':')[0]}",
            "dynamic_key": key,
            "name": f"{key.split(':')[0]}-{key.split(':')[-1].removeprefix('resource:')}",
            "tags": tags,
            "state": {"type": state},
        }
        if parent:
            body["task_inputs"] = {"__parents__": [{"input_type": "task_run", "id": parent}]}
        return self.call("POST", "task_runs/", body)

    def _ensure_deployment_runs(self) -> None:
        layout, runs, deployments = self.layout, self.state["runs"], self.state["deployments"]
        flow_id = self.state["flows"]["deployment"]
        held = layout.held(layout.deployment_names())
        wanted = [(f"deployment:{name}", name, "RUNNING") for name in held]
        wanted += [
            (f"deployment-waiter:{name}", name, "AwaitingConcurrencySlot")
            for name in held[: layout.deployment_waiters]
        ]

        def make(item: tuple[str, str, str]) -> None:
            key, name, state = item
            new_state = {"type": "RUNNING"} if state == "RUNNING" else _awaiting()
            flow_run = self.call(
                "POST",
                "flow_runs/",
                {
                    "flow_id": flow_id,
                    "deployment_id": deployments[name],
                    "name": f"bench-{key.replace(':', '-')}",
                    "idempotency_key": f"bench:{key}:{deployments[name]}",
                    "state": new_state,
                },
            )
            runs[key] = {
                "flow_run_id": flow_run["id"],
                "flow_run_name": flow_run["name"],
                "flow_id": flow_id,
            }

        self._timed_progress(
            "deployment flow runs", make, [item for item in wanted if item[0] not in runs]
        )

    def _verify_runs(self) -> None:
        """Drop recorded runs that no longer exist, and put moved ones back in their state."""
        runs = self.state["runs"]
        if not runs:
            return
        task_ids = {entry["task_run_id"] for entry in runs.values() if "task_run_id" in entry}
        flow_ids = {entry["flow_run_id"] for entry in runs.values()}
        tasks = self._read_many("task_run", task_ids)
        flows = self._read_many("flow_run", flow_ids)
        for key, entry in list(runs.items()):
            if entry["flow_run_id"] not in flows or (
                "task_run_id" in entry and entry["task_run_id"] not in tasks
            ):
                del runs[key]
        moved = 0
        for key, entry in runs.items():
            kind = key.split(":")[0]
            flow_run = flows[entry["flow_run_id"]]
            if kind == "deployment-waiter":
                if flow_run["state_name"] != "AwaitingConcurrencySlot":
                    self._force("flow_runs", entry["flow_run_id"], _awaiting())
                    moved += 1
            elif flow_run["state_type"] != "RUNNING":
                self._force("flow_runs", entry["flow_run_id"], {"type": "RUNNING"})
                moved += 1
            if "task_run_id" in entry:
                task_state = "RUNNING" if kind in ("gcl", "tag") else "PENDING"
                if tasks[entry["task_run_id"]]["state_type"] != task_state:
                    self._force("task_runs", entry["task_run_id"], {"type": task_state})
                    moved += 1
        if moved:
            self.log(f"  put {moved} runs back in their state")

    def _force(self, kind: str, run_id: str, state: dict[str, Any]) -> None:
        body = {"state": state, "force": True}
        self.call("POST", f"{kind}/{run_id}/set_state", body)

    def _read_many(self, kind: str, ids: set[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks(sorted(ids), PAGE):
            body = {f"{kind}s": {"id": {"any_": chunk}}, "limit": PAGE}
            found.update({item["id"]: item for item in self.call("POST", f"{kind}s/filter", body)})
        return found

    # --- events ---------------------------------------------------------------------------
    def _ensure_events(self) -> None:
        """Acquire events for the held GCLs, as `concurrency()` emits them inside a task."""
        now = datetime.now(UTC)
        events: dict[str, dict[str, str]] = self.state["events"]
        to_send: list[dict[str, Any]] = []
        held = self.layout.held(self.layout.gcl_names())
        for name in held:
            entry = self.state["runs"][f"gcl:{name}"]
            before = events.get(name)
            if (
                before
                and before.get("task_run_id") == entry["task_run_id"]
                and now - datetime.fromisoformat(before["occurred"]) < EVENTS_REFRESH
            ):
                continue
            related = [
                {
                    "prefect.resource.id": f"prefect.flow-run.{entry['flow_run_id']}",
                    "prefect.resource.role": "flow-run",
                    "prefect.resource.name": entry["flow_run_name"],
                },
                {
                    "prefect.resource.id": f"prefect.task-run.{entry['task_run_id']}",
                    "prefect.resource.role": "task-run",
                    "prefect.resource.name": entry["task_run_name"],
                },
                {
                    "prefect.resource.id": f"prefect.flow.{entry['flow_id']}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": "bench-gcl-user",
                },
            ]
            resource = {
                "prefect.resource.id": f"prefect.concurrency-limit.{self.limit_ids[name]}",
                "prefect.resource.name": name,
                "slots-acquired": "1",
                "limit": "1",
            }
            if before:  # the old acquire ends, as a release that `follows` it
                to_send.append(
                    {
                        "event": RELEASED,
                        "resource": resource,
                        "related": related,
                        "id": str(uuid4()),
                        "follows": before["id"],
                        "occurred": _iso(now),
                    }
                )
            acquire = {
                "event": ACQUIRED,
                "resource": resource,
                "related": related,
                "id": str(uuid4()),
                "occurred": _iso(now),
            }
            to_send.append(acquire)
            events[name] = {
                "id": acquire["id"],
                "occurred": acquire["occurred"],
                "task_run_id": entry["task_run_id"],
            }
        if not to_send:
            self.log(f"  {len(held)} acquire events already in Prefect's 7-day window")
            return
        self.log(f"  emitting {len(to_send)} concurrency-limit events through the events socket")
        asyncio.run(self._emit(to_send))
        self._wait_for_events([item["id"] for item in to_send], since=now - timedelta(minutes=1))

    async def _emit(self, items: list[dict[str, Any]]) -> None:
        from prefect.events.clients import PrefectEventsClient
        from prefect.events.schemas.events import Event

        async with PrefectEventsClient(api_url=self.api_url) as client:
            for item in items:
                await client.emit(Event.model_validate(item))

    def _wait_for_events(self, ids: list[str], since: datetime, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            seen = 0
            for chunk in chunks(ids, 200):
                body = {
                    "filter": {
                        "occurred": {
                            "since": _iso(since),
                            "until": _iso(datetime.now(UTC) + timedelta(minutes=1)),
                        },
                        "id": {"id": chunk},
                    },
                    "limit": 1,
                }
                seen += self.call("POST", "events/filter", body)["total"]
            if seen >= len(ids):
                self.log(f"  all {len(ids)} events visible in /events/filter")
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {seen}/{len(ids)} events reached /events/filter")
            time.sleep(0.5)

    # --- leases ---------------------------------------------------------------------------
    def _take_leases(self) -> None:
        """Drop counters left by the last server's leases, then take every held slot again."""
        layout, runs, deployments = self.layout, self.state["runs"], self.state["deployments"]
        listed = self.list_limits()
        stuck: dict[int, list[str]] = {}
        for name, data in listed.items():
            if data["active_slots"] > 0:
                stuck.setdefault(int(data["active_slots"]), []).append(name)
        for slots, names in stuck.items():
            for chunk in chunks(names, PAGE):
                self.call(
                    "POST", "v2/concurrency_limits/decrement", {"names": chunk, "slots": slots}
                )
        leases: list[tuple[str, dict[str, str]]] = []
        for name in layout.held(layout.gcl_names()):
            leases.append((name, {"type": "task_run", "id": runs[f"gcl:{name}"]["task_run_id"]}))
        for tag in layout.held(layout.tag_names()):
            leases.append(
                (f"tag:{tag}", {"type": "task_run", "id": runs[f"tag:{tag}"]["task_run_id"]})
            )
        for name in layout.held(layout.deployment_names()):
            holder = {"type": "flow_run", "id": runs[f"deployment:{name}"]["flow_run_id"]}
            leases.append((f"deployment:{deployments[name]}", holder))

        def take(item: tuple[str, dict[str, str]]) -> None:
            name, holder = item
            body = {
                "names": [name],
                "slots": 1,
                "mode": "concurrency",
                "lease_duration": LEASE_SECONDS,
                "holder": holder,
            }
            data = self.call("POST", "v2/concurrency_limits/increment-with-lease", body)
            if not data.get("limits"):
                raise RuntimeError(f"no slot taken on {name}")

        parallel(take, leases, self.workers)
        held = sum(1 for data in self.list_limits().values() if data["active_slots"] > 0)
        if held != len(leases):
            raise RuntimeError(f"{held} limits held, expected {len(leases)}")
        self.log(
            f"  reset {sum(map(len, stuck.values()))} leftover counters, took {len(leases)} leases"
        )
        self.held = len(leases)
