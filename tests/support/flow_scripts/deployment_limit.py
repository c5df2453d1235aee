"""Scenario 4: a deployment with concurrency_limit=1 served by a Prefect Runner (what
`flow.serve()` does), polling every `query_seconds` (1) instead of Prefect's 10 s.

The script creates the deployment (limit `deployment:<id>`), creates `runs` (2) flow runs of
it through POST /api/deployments/{id}/create_flow_run, then runs the Runner until stopped.
The Runner proposes PENDING for each due run: the server lets one in (it holds the
deployment's slot) and turns the others into SCHEDULED/AwaitingConcurrencySlot, due again
30 s later (PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS).
Each flow run executes in a child process of the Runner and holds until
`<release_dir>/<flow_run_id>` exists (the path is the "release_file" of its "acquired"
event: `FlowProcess.release(event)` touches it) or the script's own `release_file` exists
(`FlowProcess.release()` with no event: releases every run, present and future).

Params: deployment_name (random), concurrency_limit (1), collision_strategy (ENQUEUE),
runs (2), flow_run_name (name of the created runs; "-<n>" is added when runs > 1),
release_dir (<folder of events_file>/release.d), release_file (releases all runs),
hold (seconds, instead of release files),
query_seconds (1), fail_first (False: True makes each run fail once, emitting "failing", and
retry in its process after `retry_delay` (20) seconds, in Scheduled/AwaitingRetry meanwhile),
ignore_cancel (False: True makes the Runner leave a CANCELLING run alone,
as a runner that has not acted on the cancel yet does: the run stays CANCELLING and its
process runs on), call_itself (0: N > 0 makes each run not started by another call
`run_deployment` on its own deployment, full with itself, and wait up to N seconds for that
child run, which waits for the slot the caller holds; emits "calling_itself" and then
"called_itself" {child_state} once the wait is over).
Events: process_started, deployed {deployment_id, deployment_name, flow_id},
created {flow_run_ids: [...]} (in creation order), runner_starting; then from each flow run's
process: acquired {flow_run_id, flow_run_name, deployment_id, release_file}, released.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from _common import api_url, emit, hold, params, patient, run_ids, run_main
from prefect import flow
from prefect.context import FlowRunContext


@flow(name="deployment-holder")
def deployment_holder(
    release_dir: str = "",
    events_file: str = "",
    hold_seconds: float = 0.0,
    release_all: str = "",
    fail_first: bool = False,
    call_itself: float = 0.0,
) -> str:
    ids = run_ids()
    release_file = str(Path(release_dir) / ids["flow_run_id"]) if release_dir else None
    flow_run = FlowRunContext.get().flow_run
    if fail_first and flow_run.run_count <= 1:
        emit("failing", events_file=events_file, **ids)
        raise RuntimeError("the first attempt fails, to be retried in this process")
    emit(
        "acquired",
        events_file=events_file,
        release_file=release_file,
        deployment_id=str(flow_run.deployment_id),
        **ids,
    )
    if call_itself and flow_run.parent_task_run_id is None:
        from prefect.deployments import run_deployment

        emit("calling_itself", events_file=events_file, **ids)
        child = run_deployment(flow_run.deployment_id, timeout=call_itself, poll_interval=1)
        emit("called_itself", events_file=events_file, child_state=child.state.name, **ids)
    reason = "terminated"  # SIGTERM raises TerminationSignal right here, in the main thread
    try:
        reason = hold(release_file, hold_seconds, also=release_all or None)
    finally:
        emit("released", events_file=events_file, reason=reason, **ids)
    return reason


def main() -> None:
    from prefect.runner import Runner

    P = params()
    if P.get("ignore_cancel"):
        from prefect.runner._cancellation_manager import CancellationManager

        async def not_yet(self, flow_run, state_msg=None) -> None:
            emit("cancel_ignored", flow_run_id=str(flow_run.id))

        CancellationManager.cancel = not_yet
    events_file = P["events_file"]
    release_dir = P.get("release_dir") or str(Path(events_file).parent / "release.d")
    Path(release_dir).mkdir(parents=True, exist_ok=True)
    name = P.get("deployment_name") or f"reslock-test-{uuid.uuid4().hex[:8]}"
    runner = Runner(
        name=f"runner-{name}",
        query_seconds=float(P.get("query_seconds", 1)),
        pause_on_shutdown=False,
        limit=None,
    )
    concurrency_limit: object = int(P.get("concurrency_limit", 1))
    if P.get("collision_strategy"):
        from prefect.client.schemas.objects import ConcurrencyLimitConfig

        concurrency_limit = ConcurrencyLimitConfig(
            limit=int(P.get("concurrency_limit", 1)), collision_strategy=P["collision_strategy"]
        )
    holder = deployment_holder
    if P.get("fail_first"):
        holder = holder.with_options(retries=1, retry_delay_seconds=int(P.get("retry_delay", 20)))
    deployment_id = runner.add_flow(
        holder,
        name=name,
        concurrency_limit=concurrency_limit,
        parameters={
            "release_dir": "" if P.get("hold") is not None else release_dir,
            "events_file": events_file,
            "hold_seconds": float(P.get("hold") or 0),
            "release_all": P.get("release_file") or "",
            "fail_first": bool(P.get("fail_first")),
            "call_itself": float(P.get("call_itself") or 0),
        },
    )
    deployment = patient("GET", f"{api_url()}/deployments/{deployment_id}").json()
    emit(
        "deployed",
        deployment_id=str(deployment_id),
        deployment_name=name,
        flow_id=deployment["flow_id"],
        limit_name=f"deployment:{deployment_id}",
    )
    runs = int(P.get("runs", 2))
    flow_run_ids = []
    for n in range(runs):
        body: dict = {}
        if P.get("flow_run_name"):
            body["name"] = P["flow_run_name"] + (f"-{n + 1}" if runs > 1 else "")
        response = patient(
            "POST",
            f"{api_url()}/deployments/{deployment_id}/create_flow_run",
            json=body,
            timeout=30,
        )
        response.raise_for_status()
        flow_run_ids.append(response.json()["id"])
    emit("created", deployment_id=str(deployment_id), flow_run_ids=flow_run_ids)
    emit("runner_starting", deployment_id=str(deployment_id))
    asyncio.run(runner.start())


if __name__ == "__main__":
    run_main(main)
