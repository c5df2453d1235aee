"""Scenario 3: the self-deadlock. Tag limit 1; `with tags(tag): outer()` where the task
`outer` calls the task `inner` inside the same tag context. `outer` holds the only slot and
waits for `inner`, which waits (Pending) for that slot: forever.

Params: tag, limit (1), create (True), flow_run_name.
Events: process_started, limit_created, started {flow_run_id}, entered + acquired (outer runs,
holding the slot) {flow_run_id, task_run_id, flow_run_name}, calling_inner (outer is about to
call inner; inner's task run id is not known here: find it through task_inputs.__parents__),
inner_entered (never, unless the limit is raised or reset).
The process never ends on its own: stop it (SIGTERM hard-exits it after 3 s).
"""

from __future__ import annotations

from _common import emit, ensure_tag_limit, params, run_ids, run_main, terminating
from prefect import flow, tags, task
from prefect.exceptions import TerminationSignal

P = params()


@task(name="nested-inner")
def inner() -> str:
    emit("inner_entered", tag=P["tag"], **run_ids())
    return "inner done"


@task(name="nested-outer")
def outer() -> str:
    ids = run_ids()
    emit("entered", tag=P["tag"], **ids)
    emit("acquired", tag=P["tag"], **ids)
    emit("calling_inner", tag=P["tag"], **ids)
    return inner()


@flow(name="nested-tags")
def nested_tags() -> str:
    emit("started", **run_ids())
    try:
        with tags(P["tag"]):
            return outer()
    except TerminationSignal:
        terminating()
        raise


def main() -> None:
    if P.get("create", True):
        emit(
            "limit_created", tag=P["tag"], status=ensure_tag_limit(P["tag"], int(P.get("limit", 1)))
        )
    run_name = P.get("flow_run_name")
    runnable = (
        nested_tags.with_options(flow_run_name=(lambda: run_name)) if run_name else nested_tags
    )
    runnable()


if __name__ == "__main__":
    run_main(main)
