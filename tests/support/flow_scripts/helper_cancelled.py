"""An `async with resource_lock(...)` holder cancelled from outside while it holds.

Params: name, how ("asyncio": `Task.cancel()` on the asyncio task that holds, the default;
"anyio": cancel the task group's scope), release_file (after the cancellation, wait for this
file before the flow ends, so that a test can look at the slot while the process still runs).
Events: process_started, started {flow_run_id}, acquired {lease_id, limit_ids, task_run_id},
cancelled {how, outcome} (the holder has been cancelled and is gone), exited.
"""

from __future__ import annotations

import asyncio

import anyio
from _common import emit, hold, params, run_ids, run_main
from prefect import flow, task

from reslock import resource_lock

P = params()


async def hold_until_cancelled(name: str, inside: asyncio.Event) -> None:
    async with resource_lock(name) as held:
        emit(
            "acquired",
            lease_id=str(held.lease_id),
            limit_ids={key: str(value) for key, value in held.limit_ids.items()},
            **run_ids(),
        )
        inside.set()
        await asyncio.sleep(3600)
    emit("body_finished")  # never: the sleep is cancelled


async def cancel_with_asyncio(name: str) -> str:
    inside = asyncio.Event()
    holder = asyncio.create_task(hold_until_cancelled(name, inside))
    await inside.wait()
    holder.cancel()
    try:
        await holder
    except asyncio.CancelledError:
        return "CancelledError" if holder.cancelled() else "CancelledError, task not cancelled"
    return "finished"


async def cancel_with_anyio(name: str) -> str:
    inside = asyncio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(hold_until_cancelled, name, inside)
        await inside.wait()
        group.cancel_scope.cancel()
    return "scope cancelled" if group.cancel_scope.cancelled_caught else "scope not cancelled"


@task(name="helper-cancelled-task")
async def cancelled_task(name: str, how: str) -> str:
    outcome = await (cancel_with_anyio if how == "anyio" else cancel_with_asyncio)(name)
    emit("cancelled", how=how, outcome=outcome)
    hold(P.get("release_file"), None)
    return outcome


@flow(name="helper-cancelled")
async def cancelled_flow(name: str, how: str) -> str:
    emit("started", **run_ids())
    return await cancelled_task(name, how)


def main() -> None:
    asyncio.run(cancelled_flow(P["name"], P.get("how", "asyncio")))


if __name__ == "__main__":
    run_main(main)
