"""Scenario 1: a flow whose task holds a global concurrency limit (GCL) through `concurrency()`.

Params: name (the GCL), limit (1), create (True: create the GCL first; 409 is fine),
lease_duration (60, Prefect's minimum), occupy (1), strict (True), release_file / hold,
flow_run_name, task_run_name, timeout_seconds (None), linger_file (after leaving the lock the
task runs on until this file exists), follows_window (seconds: Prefect sets `follows` on the
released event only when it comes less than this after the acquire; 300 in Prefect, so 0 gives
the release of a hold longer than five minutes, from Prefect's own code).
Events: process_started, started {flow_run_id, task_run_id}, entered (task body runs),
waiting (about to call concurrency()), acquired {flow_run_id, task_run_id, flow_run_name,
release_file}, released (left the `with`), lingering (running on after the release), exited.
"""

from __future__ import annotations

from _common import emit, ensure_gcl, hold, params, result, run_ids, run_main
from prefect import flow, task
from prefect.concurrency.sync import concurrency

P = params()
if P.get("follows_window") is not None:
    from datetime import timedelta

    import prefect.events.utilities

    prefect.events.utilities.TIGHT_TIMING = timedelta(seconds=float(P["follows_window"]))


@task(name="gcl-holder-task")
def hold_gcl() -> str:
    ids = run_ids()
    name = P["name"]
    emit("entered", name=name, **ids)
    emit("waiting", name=name, **ids)
    with concurrency(
        name,
        occupy=int(P.get("occupy", 1)),
        lease_duration=float(P.get("lease_duration", 60)),
        strict=bool(P.get("strict", True)),
        timeout_seconds=P.get("timeout_seconds"),
    ):
        emit("acquired", name=name, release_file=P.get("release_file"), **ids)
        reason = hold(P.get("release_file"), P.get("hold"), float(P.get("max_hold", 600)))
    emit("released", name=name, reason=reason, **ids)
    if P.get("linger_file"):
        emit("lingering", name=name, **ids)
        hold(P["linger_file"], None, float(P.get("max_hold", 600)))
    return reason


@flow(name="gcl-holder")
def gcl_holder() -> str:
    ids = run_ids()
    task_run_name = P.get("task_run_name")
    runnable = (
        hold_gcl.with_options(task_run_name=lambda: task_run_name) if task_run_name else hold_gcl
    )
    future = runnable.submit()
    emit("started", **{**ids, "task_run_id": str(future.task_run_id)})
    return result(future)


def main() -> None:
    if P.get("create", True):
        emit("limit_created", name=P["name"], status=ensure_gcl(P["name"], int(P.get("limit", 1))))
    run_name = P.get("flow_run_name")
    runnable = gcl_holder.with_options(flow_run_name=(lambda: run_name)) if run_name else gcl_holder
    runnable()


if __name__ == "__main__":
    run_main(main)
