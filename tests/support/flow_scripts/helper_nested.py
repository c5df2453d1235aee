"""The nested case that deadlocks with `tags()`, through reslock's helper: it completes.

The task `outer` is guarded by the resource `name`; it calls the task `inner`, guarded by the
same resource, directly and through .submit(). `inner` runs inside its parent's hold instead
of waiting for it. Then `outer` keeps the resource until release_file exists, so that a test
can check that a task of another flow run still waits.

Params: name, release_file.
Events: process_started, started {flow_run_id}, acquired {task_run_id, flow_run_id} (outer
holds), inner {how: "direct" | "submit", task_run_id, held: [names]}, holding (both inner
calls are done), released, exited.
"""

from __future__ import annotations

from _common import emit, hold, params, result, run_ids, run_main
from prefect import flow, task

from reslock import guarded, held_names

P = params()


@task(name="nested-helper-inner")
@guarded("{name}")
def inner(name: str, how: str) -> str:
    emit("inner", how=how, held=sorted(held_names()), **run_ids())
    return how


@task(name="nested-helper-outer")
@guarded("{name}")
def outer(name: str) -> list[str]:
    emit("acquired", held=sorted(held_names()), **run_ids())
    done = [inner(name, "direct"), inner.submit(name, "submit").result()]
    emit("holding", done=done, **run_ids())
    hold(P.get("release_file"), None)
    return done


@flow(name="nested-helper")
def nested() -> list[str]:
    emit("started", **run_ids())
    done = result(outer.submit(P["name"]))
    emit("released", done=done)
    return done


if __name__ == "__main__":
    run_main(nested)
