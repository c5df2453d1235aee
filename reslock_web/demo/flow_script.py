"""The flows of reslock's demo: `python flow_script.py <scenario> '<json params>'`.

Run by path with PREFECT_API_URL (and its own PREFECT_HOME) in the environment; plain Prefect
and httpx, no Django and no reslock imports. Every scenario writes JSON lines to the file named
by RESLOCK_DEMO_EVENTS ("started", "acquired" {flow_run_id, task_run_id, ...}, "released"...),
which is how the demo learns what its flows are doing.

Scenarios (params in brackets):
  hold-gcl     a flow whose task holds a global limit through `concurrency()` for `hold` s
               [name, hold, flow, task, run]
  hold-tag     a flow whose task carries a tag with a tag limit: it holds the tag for `hold` s
               once it runs; while another run holds it, it waits Pending [tag, hold, flow,
               task, run, crash]. With crash=true the process SIGKILLs itself after `hold` s:
               its flow and task runs stay Running forever and the slot frees only when the
               lease expires (a zombie).
  nested-tags  `with tags(tag): outer()` where outer calls inner: inner waits for the slot
               outer holds, forever [tag, flow, outer, inner, run]
  deployment   a Prefect Runner serving a deployment with concurrency_limit=1 that keeps `runs`
               (2) runs of it going: one holds the deployment's slot for hold_min..hold_max s,
               the others wait in AwaitingConcurrencySlot [deployment, runs, hold_min,
               hold_max, query_seconds]

SIGTERM ends a run cleanly (Prefect marks it Crashed and the process exits); a task that waits
for a slot cannot be interrupted, so the process marks its runs Crashed and hard-exits 2 s
after the signal. SIGINT is ignored: the demo turns its own Ctrl-C into SIGTERMs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prefect import flow, tags, task
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import TerminationSignal

EVENTS_ENV = "RESLOCK_DEMO_EVENTS"
STOP = threading.Event()  # set once the process is told to terminate
CURRENT: dict[str, str | None] = {}  # the flow run this process runs, once it started
OURS: set[str] = set()  # deployment: the runs this runner created or took over
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
REFILL_DELAY = 35  # s; Prefect retries a run AwaitingConcurrencySlot every 30 s
UNFINISHED = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")  # task runs: no not_any_


# --- plumbing ------------------------------------------------------------------------------
def emit(event: str, **fields: Any) -> None:
    """One JSON line, appended with a single write(2) (several processes may share the file)."""
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    record = {"event": event, "t": time.time(), "pid": os.getpid(), **fields}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record, default=str) + "\n").encode())
    finally:
        os.close(fd)


def run_ids() -> dict[str, str | None]:
    ids: dict[str, str | None] = {"flow_run_id": None, "flow_run_name": None, "task_run_id": None}
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        ids["task_run_id"] = str(task_ctx.task_run.id)
        ids["flow_run_id"] = str(task_ctx.task_run.flow_run_id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        ids["flow_run_id"] = str(flow_ctx.flow_run.id)
        ids["flow_run_name"] = flow_ctx.flow_run.name
    return ids


def hold(seconds: float) -> str:
    """Sleep `seconds`, or less if the process is told to stop; returns why it stopped."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if STOP.is_set():
            return "stopped"
        time.sleep(0.2)
    return "done"


def terminating(grace: float = 2.0) -> None:
    """SIGTERM reached the flow: let holders leave, and hard-exit after `grace` seconds.

    Prefect turns SIGTERM into TerminationSignal in the main thread, then waits for the task
    threads before it reports the crash; a task that is still waiting for a slot (or waiting
    on one that does) would keep the process alive forever. Before the hard exit, the runs left
    behind are marked Crashed, as Prefect would have done, so that they do not look alive.
    """
    if STOP.is_set():
        return
    STOP.set()
    emit("terminating")

    def die_later() -> None:
        time.sleep(grace)
        if CURRENT.get("flow_run_id"):
            crash_leftovers(CURRENT["flow_run_id"])
        os._exit(143)

    threading.Thread(target=die_later, daemon=True).start()


def crash_leftovers(flow_run_id: str) -> None:
    """Force this flow run and its unfinished task runs to Crashed (frees their tag slots)."""
    state = {"state": {"type": "CRASHED", "message": "the demo was stopped"}, "force": True}
    try:
        with api(timeout=1.5) as http:
            response = http.post(
                "task_runs/filter",
                json={
                    "task_runs": {
                        "flow_run_id": {"any_": [flow_run_id]},
                        "state": {"type": {"any_": list(UNFINISHED)}},
                    },
                    "limit": 50,
                },
            )
            response.raise_for_status()
            for task_run in response.json():
                http.post(f"task_runs/{task_run['id']}/set_state", json=state)
            http.post(f"flow_runs/{flow_run_id}/set_state", json=state)
        emit("crashed_leftovers", flow_run_id=flow_run_id)
    except (httpx.HTTPError, KeyError, ValueError) as error:
        emit("error", error=repr(error))


def result(future: Any) -> Any:
    try:
        return future.result()
    except TerminationSignal:
        terminating()
        raise


def stamp() -> str:
    return datetime.now(UTC).strftime("%m%d-%H%M")


def api(timeout: float = 30) -> httpx.Client:
    key = os.environ.get("PREFECT_API_KEY")
    return httpx.Client(
        base_url=os.environ["PREFECT_API_URL"].rstrip("/") + "/",
        headers={"Authorization": f"Bearer {key}"} if key else {},
        timeout=timeout,
    )


# --- hold-gcl ------------------------------------------------------------------------------
@task
def use_global_limit(name: str, hold_seconds: float) -> str:
    ids = run_ids()
    emit("waiting", name=name, **ids)
    with concurrency(name, occupy=1, lease_duration=60, strict=True):
        emit("acquired", name=name, **ids)
        reason = hold(hold_seconds)
    emit("released", name=name, reason=reason, **ids)
    return reason


@flow
def global_limit_flow(name: str, hold_seconds: float, task_name: str) -> str:
    CURRENT.update(run_ids())
    future = use_global_limit.with_options(name=task_name).submit(name, hold_seconds)
    emit("started", **{**run_ids(), "task_run_id": str(future.task_run_id)})
    return result(future)


def hold_gcl(p: dict[str, Any]) -> None:
    global_limit_flow.with_options(name=p["flow"], flow_run_name=p["run"])(
        p["name"], float(p["hold"]), p["task"]
    )


# --- hold-tag ------------------------------------------------------------------------------
@task
def use_tag(tag: str, hold_seconds: float, crash: bool) -> str:
    ids = run_ids()  # Prefect took the tag's slot before the body runs
    emit("acquired", tag=tag, **ids)
    reason = hold(hold_seconds)
    if crash and reason == "done":
        emit("crashing", tag=tag, **ids)
        os.kill(os.getpid(), signal.SIGKILL)
    emit("released", tag=tag, reason=reason, **ids)
    return reason


@flow
def tag_flow(tag: str, hold_seconds: float, task_name: str, crash: bool = False) -> str:
    CURRENT.update(run_ids())
    future = use_tag.with_options(name=task_name, tags=[tag]).submit(tag, hold_seconds, crash)
    emit("started", **{**run_ids(), "task_run_id": str(future.task_run_id)})
    return result(future)


def hold_tag(p: dict[str, Any]) -> None:
    tag_flow.with_options(name=p["flow"], flow_run_name=p["run"])(
        p["tag"], float(p["hold"]), p["task"], bool(p.get("crash"))
    )


# --- nested-tags ---------------------------------------------------------------------------
@task
def nested_inner(tag: str) -> str:
    emit("inner_entered", tag=tag, **run_ids())  # only if someone frees the outer task's slot
    return "written"


@task
def nested_outer(tag: str, inner_name: str) -> str:
    emit("acquired", tag=tag, **run_ids())
    return nested_inner.with_options(name=inner_name)(tag)


@flow
def nested_flow(tag: str, outer_name: str, inner_name: str) -> str:
    CURRENT.update(run_ids())
    emit("started", **run_ids())
    try:
        with tags(tag):
            return nested_outer.with_options(name=outer_name)(tag, inner_name)
    except TerminationSignal:
        terminating()
        raise


def nested_tags(p: dict[str, Any]) -> None:
    nested_flow.with_options(name=p["flow"], flow_run_name=p["run"])(
        p["tag"], p["outer"], p["inner"]
    )


# --- deployment ----------------------------------------------------------------------------
@flow(name="export-invoices")
def export_invoices(region: str = "eu", hold_seconds: float = 90.0) -> str:
    """A run of the deployment: it holds the deployment's slot while it runs."""
    ids = run_ids()
    emit("acquired", region=region, **ids)
    reason = "terminated"  # SIGTERM raises TerminationSignal out of hold(), in this thread
    try:
        reason = hold(hold_seconds)
    finally:
        emit("released", region=region, reason=reason, **ids)
    return reason


def keep_runs(deployment_id: str, p: dict[str, Any]) -> None:
    """Keep `runs` runs of the deployment that are not finished, creating new ones as they end.

    Runs left Running by an earlier runner that died are not counted: they hold nothing forever
    (their lease expires) and would otherwise stop the queue from being refilled.
    """
    wanted = int(p.get("runs", 2))
    ours = OURS
    regions = ("eu", "us", "apac", "latam")
    n = 0
    first = True
    with api() as http:
        while not STOP.is_set():
            try:
                response = http.post(
                    "flow_runs/filter",
                    json={
                        "flow_runs": {
                            "deployment_id": {"any_": [deployment_id]},
                            "state": {"type": {"not_any_": list(FINAL)}},
                        },
                        "limit": 50,
                    },
                )
                response.raise_for_status()
                runs = response.json()
                # Waiting runs are ours to run (an earlier runner's too): count them once seen.
                ours |= {run["id"] for run in runs if run.get("state_type") != "RUNNING"}
                live = [run for run in runs if run["id"] in ours]
                for _ in range(wanted - len(live)):
                    region = regions[n % len(regions)]
                    n += 1
                    hold_seconds = random.uniform(float(p["hold_min"]), float(p["hold_max"]))
                    body: dict[str, Any] = {
                        "name": f"invoices-{region}-{stamp()}",
                        "parameters": {"region": region, "hold_seconds": round(hold_seconds)},
                    }
                    if not first:
                        # A run due now would take the freed slot before the one that waited
                        # (it retries every 30 s) and starve it: queue behind it instead.
                        due = datetime.now(UTC) + timedelta(seconds=REFILL_DELAY)
                        body["state"] = {
                            "type": "SCHEDULED",
                            "state_details": {"scheduled_time": due.isoformat()},
                        }
                    created = http.post(f"deployments/{deployment_id}/create_flow_run", json=body)
                    created.raise_for_status()
                    ours.add(created.json()["id"])
                    emit("created", flow_run_id=created.json()["id"], region=region)
                first = False
            except (httpx.HTTPError, KeyError, ValueError) as error:
                emit("error", error=repr(error))
            STOP.wait(3)


def deployment(p: dict[str, Any]) -> None:
    from prefect.runner import Runner

    name = p["deployment"]
    runner = Runner(
        name=f"runner-{name}",
        query_seconds=float(p.get("query_seconds", 2)),
        pause_on_shutdown=False,
        limit=None,
    )
    deployment_id = str(
        runner.add_flow(
            export_invoices,
            name=name,
            concurrency_limit=1,
            parameters={"region": "eu", "hold_seconds": 90.0},
            description="Exports the month's invoices to the accounting system, one at a time.",
        )
    )
    emit("deployed", deployment_id=deployment_id, limit_name=f"deployment:{deployment_id}")
    threading.Thread(target=keep_runs, args=(deployment_id, p), daemon=True).start()
    # One graceful stop: a second SIGTERM would make the runner sys.exit() half-way through it.
    graceful = runner.handle_sigterm

    def handle_sigterm_once(*args: Any, **kwargs: Any) -> None:
        if not STOP.is_set():
            STOP.set()
            graceful(*args, **kwargs)

    runner.handle_sigterm = handle_sigterm_once  # start() installs it
    try:
        asyncio.run(runner.start())
    finally:
        STOP.set()
        finish_runs(deployment_id)


def finish_runs(deployment_id: str) -> None:
    """The runner stopped: end the runs nobody will run or finish any more.

    Waiting runs are cancelled. A run the runner was executing may be left Running: its
    process reports "cancelled" but leaves the state to the runner, which is shutting down.
    """
    try:
        with api(timeout=1.5) as http:
            response = http.post(
                "flow_runs/filter",
                json={
                    "flow_runs": {
                        "deployment_id": {"any_": [deployment_id]},
                        "state": {"type": {"not_any_": list(FINAL)}},
                    },
                    "limit": 50,
                },
            )
            response.raise_for_status()
            for run in response.json():
                if run["id"] not in OURS and run.get("state_type") == "RUNNING":
                    continue  # an earlier runner's: not ours to judge
                final = "CRASHED" if run.get("state_type") in ("RUNNING", "CANCELLING") else None
                state = {"type": final or "CANCELLED", "message": "the demo was stopped"}
                http.post(f"flow_runs/{run['id']}/set_state", json={"state": state, "force": True})
                emit("finished", flow_run_id=run["id"], state=state["type"])
    except (httpx.HTTPError, KeyError, ValueError) as error:
        emit("error", error=repr(error))


SCENARIOS = {
    "hold-gcl": hold_gcl,
    "hold-tag": hold_tag,
    "nested-tags": nested_tags,
    "deployment": deployment,
}


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    scenario = sys.argv[1]
    p = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    emit("process_started", scenario=scenario)
    try:
        SCENARIOS[scenario](p)
    except BaseException as error:
        emit("error", error=repr(error))
        raise
    emit("exited")


if __name__ == "__main__":
    # Run the flows of the module `flow_script`, not of `__main__`: a Prefect runner pickles the
    # deployment's flow for its subprocess, and only functions of an importable module are
    # pickled by reference (by value, the globals they use, such as STOP, cannot be pickled).
    import flow_script  # this very file: the script's folder is first on sys.path

    flow_script.main()
