"""Scenarios 2 and 6: a flow whose task carries a tag that has a tag-based concurrency limit.

Params: tag, limit (1), create (True: POST /api/concurrency_limits/, an upsert),
release_file / hold, flow_run_name, task_run_name,
reset_override (False): once the task runs, POST /api/concurrency_limits/tag/{tag}/reset
{"slot_override": [its own task run id]} (Prefect's "reset"), see test_flow_harness.
Events: process_started, limit_created, started {flow_run_id, task_run_id} (the task run id is
known before the task asks for its slot, so a waiter's id is in its "started" event),
entered + acquired {flow_run_id, task_run_id, flow_run_name, release_file} (Prefect takes the
tag slot before the task body runs, so a running body holds it), reset {status},
released (the body returns; Prefect frees the slot right after), exited.
"""

from __future__ import annotations

from _common import (
    api_url,
    emit,
    ensure_tag_limit,
    hold,
    params,
    patient,
    result,
    run_ids,
    run_main,
)
from prefect import flow, task

P = params()


@task(name="tag-holder-task")
def hold_tag() -> str:
    ids = run_ids()
    tag = P["tag"]
    emit("entered", tag=tag, **ids)
    emit("acquired", tag=tag, release_file=P.get("release_file"), **ids)
    if P.get("reset_override"):
        response = patient(
            "POST",
            f"{api_url()}/concurrency_limits/tag/{tag}/reset",
            json={"slot_override": [ids["task_run_id"]]},
            timeout=30,
        )
        emit("reset", tag=tag, status=response.status_code, body=response.text, **ids)
    reason = hold(P.get("release_file"), P.get("hold"), float(P.get("max_hold", 600)))
    emit("released", tag=tag, reason=reason, **ids)
    return reason


@flow(name="tag-holder")
def tag_holder() -> str:
    ids = run_ids()
    options: dict = {"tags": [P["tag"]]}
    if P.get("task_run_name"):
        task_run_name = P["task_run_name"]
        options["task_run_name"] = lambda: task_run_name
    future = hold_tag.with_options(**options).submit()
    emit("started", **{**ids, "task_run_id": str(future.task_run_id)})
    return result(future)


def main() -> None:
    if P.get("create", True):
        emit(
            "limit_created", tag=P["tag"], status=ensure_tag_limit(P["tag"], int(P.get("limit", 1)))
        )
    run_name = P.get("flow_run_name")
    runnable = tag_holder.with_options(flow_run_name=(lambda: run_name)) if run_name else tag_holder
    runnable()


if __name__ == "__main__":
    run_main(main)
