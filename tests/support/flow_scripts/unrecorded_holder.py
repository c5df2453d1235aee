"""Scenario 7: a holder whose task run Prefect records only later.

Prefect's task-run recorder writes task runs from the client's events, seconds after they
start (longer under load), while the process already holds its slot. Here the flow takes a
real slot of the GCL with a lease (POST /v2/concurrency_limits/increment-with-lease, as
`concurrency()` does) and emits Prefect's acquired event for it, naming as its task run an id
that Prefect does not have yet. Once `record_file` exists, the task run is created with that
id (Running); once `release_file` exists, the lease is released and the released event sent.

Params: name (the GCL), limit (1), lease_duration (300), record_file, release_file,
task_run_name ("late-task").
Events: process_started, limit_created, acquired {flow_run_id, task_run_id, lease_id},
recorded {task_run_id}, released, exited.
"""

from __future__ import annotations

import uuid

from _common import api_url, emit, ensure_gcl, hold, params, patient, run_ids, run_main
from prefect import flow, task
from prefect.events import emit_event

P = params()


@task(name="late-task")
def late_task() -> None:
    pass


@flow(name="unrecorded-holder")
def unrecorded_holder() -> None:
    name = P["name"]
    task_run_id = uuid.uuid4()
    task_run_name = P.get("task_run_name", "late-task")
    response = patient(
        "POST",
        f"{api_url()}/v2/concurrency_limits/increment-with-lease",
        json={
            "names": [name],
            "slots": 1,
            "mode": "concurrency",
            "lease_duration": float(P.get("lease_duration", 300)),
        },
    )
    response.raise_for_status()
    lease = response.json()
    [limit] = lease["limits"]
    resource = {
        "prefect.resource.id": f"prefect.concurrency-limit.{limit['id']}",
        "prefect.resource.name": limit["name"],
        "slots-acquired": "1",
        "limit": str(limit["limit"]),
    }
    # The flow run and flow are added from the run context, as for Prefect's own event.
    related = [
        {
            "prefect.resource.id": f"prefect.task-run.{task_run_id}",
            "prefect.resource.role": "task-run",
            "prefect.resource.name": task_run_name,
        }
    ]
    acquired = emit_event("prefect.concurrency-limit.acquired", resource=resource, related=related)
    emit(
        "acquired",
        name=name,
        lease_id=lease["lease_id"],
        release_file=P.get("release_file"),
        **{**run_ids(), "task_run_id": str(task_run_id)},
    )
    hold(P["record_file"], None)
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.create_task_run(
            late_task,
            FlowRunContext.get().flow_run.id,
            dynamic_key="0",
            id=task_run_id,
            name=task_run_name,
            state=Running(),
        )
    emit("recorded", task_run_id=str(task_run_id))
    hold(P.get("release_file"), None)
    patient(
        "POST",
        f"{api_url()}/v2/concurrency_limits/decrement-with-lease",
        json={"lease_id": lease["lease_id"]},
    ).raise_for_status()
    emit_event(
        "prefect.concurrency-limit.released",
        resource=resource,
        related=related,
        follows=acquired,
    )
    emit("released", name=name)


def main() -> None:
    emit("limit_created", name=P["name"], status=ensure_gcl(P["name"], int(P.get("limit", 1))))
    unrecorded_holder()


if __name__ == "__main__":
    run_main(main)
