"""A flow that holds resources through reslock's helper (`reslock.resource_lock`).

Params: names (list of resource names) or name, where ("task": inside a @task, the default;
"flow": in the flow body; "async_task": `async with` in an async @task; "none": outside any
run), limit (1), lease_duration (60), timeout (None), go_file (wait for this file, after the
imports, before taking the lock), release_file / hold, block (seconds of one time.sleep() call
at the start of the body: code a revoke cannot stop before the call returns).
Events: process_started, ready, started {flow_run_id}, want {t}, acquired {lease_id,
limit_ids, names, holder, waited_seconds, flow_run_id, task_run_id, flow_run_name,
release_file}, left {t} (the body's last instant inside the lock, however it ended), released {reason},
lost {reason, lease_id} (the lease was revoked: the block
was stopped, ResourceLockLost caught), timed_out {message, holders}, exited.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from _common import emit, hold, params, run_ids, run_main, terminating
from prefect import flow, task
from prefect.exceptions import TerminationSignal

from reslock import Hold, ResourceLockLost, ResourceLockTimeout, resource_lock

P = params()
NAMES = P.get("names") or [P["name"]]


def lock() -> object:
    return resource_lock(
        NAMES,
        limit=int(P.get("limit", 1)),
        lease_duration=float(P.get("lease_duration", 60)),
        timeout=P.get("timeout"),
    )


def acquired(held: Hold) -> None:
    emit(
        "acquired",
        lease_id=str(held.lease_id),
        limit_ids={name: str(limit_id) for name, limit_id in held.limit_ids.items()},
        names=list(held.names),
        holder=held.holder,
        waited_seconds=held.waited_seconds,
        release_file=P.get("release_file"),
        **run_ids(),
    )


def guarded_body() -> str:
    emit("want", names=NAMES, **run_ids())
    try:
        with lock() as held:
            acquired(held)
            try:
                if P.get("block"):
                    time.sleep(float(P["block"]))
                reason = hold(P.get("release_file"), P.get("hold"), float(P.get("max_hold", 600)))
                emit("leaving", reason=reason)
            finally:
                emit("left")
    except ResourceLockLost as exc:
        emit("lost", reason=exc.reason, lease_id=str(exc.lease_id), message=str(exc))
        return "lost"
    except ResourceLockTimeout as exc:
        emit("timed_out", message=str(exc), holders=exc.holders, timeout=exc.timeout)
        return "timed_out"
    emit("released", reason=reason)
    return reason


async def async_guarded_body() -> str:
    emit("want", names=NAMES, **run_ids())
    release_file = P.get("release_file")
    deadline = time.monotonic() + float(P.get("hold") or 0)
    try:
        async with lock() as held:
            acquired(held)
            while not (
                Path(release_file).exists() if release_file else time.monotonic() > deadline
            ):
                await asyncio.sleep(0.05)
    except ResourceLockLost as exc:
        emit("lost", reason=exc.reason, lease_id=str(exc.lease_id), message=str(exc))
        return "lost"
    except ResourceLockTimeout as exc:
        emit("timed_out", message=str(exc), holders=exc.holders, timeout=exc.timeout)
        return "timed_out"
    emit("released", reason="release_file" if release_file else "hold")
    return "released"


@task(name="helper-holder-task")
def holder_task() -> str:
    return guarded_body()


@task(name="helper-holder-async-task")
async def async_holder_task() -> str:
    return await async_guarded_body()


@flow(name="helper-holder")
def holder_flow() -> str:
    emit("started", **run_ids())
    try:
        return guarded_body() if P.get("where") == "flow" else holder_task()
    except TerminationSignal:
        terminating()
        raise


@flow(name="helper-holder-async")
async def async_holder_flow() -> str:
    emit("started", **run_ids())
    return await async_holder_task()


def main() -> None:
    emit("ready")
    go_file = P.get("go_file")
    while go_file and not Path(go_file).exists():
        time.sleep(0.01)
    if P.get("where") == "none":
        guarded_body()
        return
    chosen = async_holder_flow if P.get("where") == "async_task" else holder_flow
    run_name = P.get("flow_run_name")
    runnable = chosen.with_options(flow_run_name=(lambda: run_name)) if run_name else chosen
    result = runnable()
    if asyncio.iscoroutine(result):
        asyncio.run(result)


if __name__ == "__main__":
    run_main(main)
