"""A guarded block whose body raises, through reslock's helper (sync `with` or `async with`).

Params: name, form ("sync": `with` in a @task, the default; "async": `async with` in an async
@task), release_file (after the error has left the block, wait for this file before letting
it propagate, so that a test can look at the slot while the process still runs).
Events: process_started, started {flow_run_id}, acquired {lease_id, limit_ids, task_run_id},
caught {same (the very exception raised inside), type, message, cause, context} (the error
has left the block), error {error, traceback} (it ended the flow and the process), and no
exited: the process exits with 1.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import emit, hold, params, run_ids, run_main
from prefect import flow, task

from reslock import Hold, resource_lock

P = params()


class GuardedBodyFailed(Exception):
    """What the guarded body raises: nobody else raises it."""


def acquired(held: Hold) -> None:
    emit(
        "acquired",
        lease_id=str(held.lease_id),
        limit_ids={name: str(limit_id) for name, limit_id in held.limit_ids.items()},
        **run_ids(),
    )


def caught(exc: BaseException, raised: BaseException) -> None:
    emit(
        "caught",
        same=exc is raised,
        type=type(exc).__name__,
        message=str(exc),
        cause=repr(exc.__cause__),
        context=repr(exc.__context__),
    )
    hold(P.get("release_file"), None)


@task(name="helper-failing-task")
def failing_task(name: str) -> Any:
    raised = GuardedBodyFailed(f"the body failed while holding {name}")
    try:
        with resource_lock(name) as held:
            acquired(held)
            raise raised
    except BaseException as exc:
        caught(exc, raised)
        raise


@task(name="helper-failing-async-task")
async def async_failing_task(name: str) -> Any:
    raised = GuardedBodyFailed(f"the body failed while holding {name}")
    try:
        async with resource_lock(name) as held:
            acquired(held)
            await asyncio.sleep(0)
            raise raised
    except BaseException as exc:
        caught(exc, raised)
        raise


@flow(name="helper-failing")
def failing_flow(name: str) -> Any:
    emit("started", **run_ids())
    return failing_task(name)


@flow(name="helper-failing-async")
async def async_failing_flow(name: str) -> Any:
    emit("started", **run_ids())
    return await async_failing_task(name)


def main() -> None:
    if P.get("form") == "async":
        asyncio.run(async_failing_flow(P["name"]))
    else:
        failing_flow(P["name"])


if __name__ == "__main__":
    run_main(main)
