"""Two of these, crossed, deadlock across two resources: each takes its `first`, then wants
its `second`, which the other holds (reslock's helper, nested locks in one task).

Params: first, second, go_file (wait for this file after taking `first`, so that both runs
hold theirs before either wants the other's), timeout (of the second lock: the run gives up
and ends after it).
Events: process_started, started {flow_run_id}, acquired {names, flow_run_id} (first held),
want {names} (the second asked for), timed_out {message}, exited.
"""

from __future__ import annotations

from _common import emit, hold, params, run_ids, run_main
from prefect import flow, task

from reslock import ResourceLockTimeout, resource_lock

P = params()


@task(name="crossed-pair")
def crossed(first: str, second: str) -> str:
    with resource_lock(first):
        emit("acquired", names=[first], **run_ids())
        hold(P.get("go_file"), None)
        emit("want", names=[second], **run_ids())
        try:
            with resource_lock(second, timeout=float(P.get("timeout", 120))):
                return "both"
        except ResourceLockTimeout as exc:
            emit("timed_out", message=str(exc))
            return "timed_out"


@flow(name="crossed")
def crossed_flow() -> str:
    emit("started", **run_ids())
    return crossed(P["first"], P["second"])


if __name__ == "__main__":
    run_main(crossed_flow)
