# The `flows` fixture is imported (as conftest will); pytest passes it to the tests by name.
"""The flow harness (tests/support/flows.py) really produces the lock states it promises.

Every assertion reads Prefect's REST API directly (httpx), the way reslock will. Facts
measured with Prefect 3.9.1 are spelled out next to the assertions that pin them down.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx

from tests.support.flows import FlowRunner
from tests.support.net import alive, wait_for
from tests.support.operating import unique
from tests.support.prefect_limits import gcl

XSS_NAME = "<img src=x onerror=alert(1)>"


def tag_holders(api: httpx.Client, tag: str) -> list[str]:
    response = api.get(f"/concurrency_limits/tag/{tag}")
    response.raise_for_status()
    return [str(task_run_id) for task_run_id in response.json()["active_slots"]]


def flow_run(api: httpx.Client, flow_run_id: str) -> dict:
    response = api.get(f"/flow_runs/{flow_run_id}")
    response.raise_for_status()
    return response.json()


def task_run(api: httpx.Client, task_run_id: str) -> dict:
    response = api.get(f"/task_runs/{task_run_id}")
    response.raise_for_status()
    return response.json()


def wait_state(
    api: httpx.Client, kind: str, run_id: str, state_type: str, timeout: float = 20
) -> dict:
    """Wait until the flow/task run exists and is in `state_type` (task runs reach the API
    through the client's events, a moment after the task body already runs)."""

    def check() -> dict | None:
        response = api.get(f"/{kind}_runs/{run_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        run = response.json()
        return run if run["state_type"] == state_type else None

    return wait_for(check, timeout, 0.2, f"{kind} run {run_id} to be {state_type}")


def pending_task_runs(api: httpx.Client, tag: str) -> list[dict]:
    response = api.post(
        "/task_runs/filter",
        json={
            "task_runs": {"tags": {"all_": [tag]}, "state": {"type": {"any_": ["PENDING"]}}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 200,
        },
    )
    response.raise_for_status()
    return response.json()


def concurrency_events(api: httpx.Client, flow_run_id: str) -> list[dict]:
    now = datetime.now(UTC)
    response = api.post(
        "/events/filter",
        json={
            "filter": {
                "occurred": {
                    "since": (now - timedelta(minutes=10)).isoformat(),
                    "until": (now + timedelta(minutes=10)).isoformat(),
                },
                "event": {"prefix": ["prefect.concurrency-limit."]},
                "related": {"id": [f"prefect.flow-run.{flow_run_id}"]},
                "order": "ASC",
            },
            "limit": 50,
        },
    )
    response.raise_for_status()
    return response.json()["events"]


# --- 1. GCL holder ------------------------------------------------------------------------
def test_gcl_holder_holds_a_global_limit_and_a_second_one_waits_invisibly(
    flows: FlowRunner, api: httpx.Client
) -> None:
    name = unique("resource:gcl")
    holder = flows.start("gcl_holder", name=name, flow_run_name=XSS_NAME)
    acquired = holder.wait_event("acquired")
    started = holder.find_events("started")[0]
    assert started["task_run_id"] == acquired["task_run_id"]
    assert started["flow_run_id"] == acquired["flow_run_id"]
    assert acquired["flow_run_name"] == XSS_NAME

    limit = gcl(api, name)
    assert (limit["limit"], limit["active_slots"]) == (1, 1)
    run = wait_state(api, "flow", acquired["flow_run_id"], "RUNNING")
    assert run["name"] == XSS_NAME  # stored and returned as is
    wait_state(api, "task", acquired["task_run_id"], "RUNNING")

    # A second holder of the same GCL waits while its task run is RUNNING: nothing in the
    # REST API tells it apart from a holder (only our own "waiting" event does).
    waiter = flows.start("gcl_holder", name=name)
    waiting = waiter.wait_event("waiting")
    wait_state(api, "task", waiting["task_run_id"], "RUNNING")

    # The holder is named only by the client's events (they reach REST within ~5 s).
    events = wait_for(
        lambda: concurrency_events(api, acquired["flow_run_id"]),
        20,
        0.5,
        "prefect.concurrency-limit.acquired event",
    )
    assert events[0]["event"] == "prefect.concurrency-limit.acquired"
    assert events[0]["resource"]["prefect.resource.name"] == name
    related = {item["prefect.resource.role"]: item for item in events[0]["related"]}
    assert (
        related["task-run"]["prefect.resource.id"] == f"prefect.task-run.{acquired['task_run_id']}"
    )
    assert related["flow-run"]["prefect.resource.name"] == XSS_NAME
    assert not waiter.find_events("acquired")

    holder.release()
    assert holder.wait() == 0
    assert holder.find_events("released")
    second = waiter.wait_event("acquired")  # the GCL waiter retries on Retry-After
    assert gcl(api, name)["active_slots"] == 1
    waiter.release()
    assert waiter.wait() == 0
    wait_state(api, "flow", second["flow_run_id"], "COMPLETED")
    assert gcl(api, name)["active_slots"] == 0


def test_stop_ends_a_holder_cleanly(flows: FlowRunner, api: httpx.Client) -> None:
    """SIGTERM: the holder leaves its lock, Prefect marks the flow run CRASHED, slot freed."""
    name = unique("resource:stop")
    holder = flows.start("gcl_holder", name=name)
    acquired = holder.wait_event("acquired")
    began = time.monotonic()
    holder.stop()
    assert time.monotonic() - began < 4
    assert holder.process.returncode == -15
    wait_state(api, "flow", acquired["flow_run_id"], "CRASHED")
    assert gcl(api, name)["active_slots"] == 0
    holder.stop()  # idempotent


# --- 2. tag holder and its queue ----------------------------------------------------------
def test_tag_holder_with_two_pending_waiters_in_start_order(
    flows: FlowRunner, api: httpx.Client
) -> None:
    tag = unique("res-tag")
    processes = []
    for n in range(3):
        processes.append(flows.start("tag_holder", tag=tag, flow_run_name=f"tag-run-{n}"))
        processes[-1].wait_event("started")
        time.sleep(1)  # expected_start_time is taken when the task run is created
    holder, *waiters = processes
    acquired = holder.wait_event("acquired")
    assert tag_holders(api, tag) == [acquired["task_run_id"]]
    assert gcl(api, f"tag:{tag}")["active_slots"] == 1  # tag limits are v2 limits too

    waiter_ids = [w.find_events("started")[0]["task_run_id"] for w in waiters]
    pending = wait_for(
        lambda: (found := pending_task_runs(api, tag)) and len(found) == 2 and found,
        20,
        what="two Pending waiters",
    )
    # Waiters are PENDING/Pending (not AwaitingConcurrencySlot) and their flow runs RUNNING.
    assert [run["id"] for run in pending] == waiter_ids
    assert {(run["state_type"], run["state_name"]) for run in pending} == {("PENDING", "Pending")}
    assert sorted(pending, key=lambda run: run["created"]) == pending
    for waiter in waiters:
        assert not waiter.find_events("acquired")
        wait_state(api, "flow", waiter.find_events("started")[0]["flow_run_id"], "RUNNING")

    # Hand-off: some waiter gets the slot within the tag retry (Retry-After <= 10 s).
    # Not necessarily the first one: measured, the third process was served before the
    # second (waiters retry on their own clocks; there is no queue).
    holder.release()
    assert holder.wait() == 0
    wait_for(
        lambda: any(w.find_events("acquired") for w in waiters), 30, what="a waiter to acquire"
    )
    next_holder = next(w for w in waiters if w.find_events("acquired"))
    assert tag_holders(api, tag) == [next_holder.find_events("acquired")[0]["task_run_id"]]
    wait_state(api, "task", acquired["task_run_id"], "COMPLETED")


# --- 3. nested tags: self-deadlock ---------------------------------------------------------
def test_nested_tags_deadlock_outer_holds_inner_pends_forever(
    flows: FlowRunner, api: httpx.Client
) -> None:
    tag = unique("res-nested")
    process = flows.start("nested_tags", tag=tag, flow_run_name=XSS_NAME)
    outer = process.wait_event("calling_inner")

    def inner_pending() -> dict | None:
        # Prefect may list the new run a moment before its inputs (with __parents__) are in.
        found = [
            run for run in pending_task_runs(api, tag) if run["task_inputs"].get("__parents__")
        ]
        return found[0] if found else None

    inner = wait_for(inner_pending, 20, what="the inner task run")
    assert inner["task_inputs"]["__parents__"] == [
        {"input_type": "task_run", "id": outer["task_run_id"]}
    ]
    assert inner["flow_run_id"] == outer["flow_run_id"]
    wait_state(api, "task", outer["task_run_id"], "RUNNING")
    assert tag_holders(api, tag) == [outer["task_run_id"]]
    time.sleep(3)  # still stuck after a few of the waiter's 423 retries
    assert task_run(api, inner["id"])["state_type"] == "PENDING"
    assert not process.find_events("inner_entered")

    # Teardown must not hang on it: SIGTERM crashes both task runs. The outer's slot is freed;
    # on a busy machine the inner may grab it in the moment between the two crashes, and then
    # holds it until its lease expires: never the outer again.
    members = process.pids()
    began = time.monotonic()
    flows.stop_all()
    assert time.monotonic() - began < 6
    assert not any(alive(pid) for pid in members)
    # The inner run is crashed too when the dying process reports it in time; on a busy machine
    # the process may be gone first, leaving it Pending (never Running, never a holder).
    try:
        wait_state(api, "task", inner["id"], "CRASHED")
    except AssertionError:
        assert task_run(api, inner["id"])["state_type"] == "PENDING"
    assert outer["task_run_id"] not in tag_holders(api, tag)
    assert set(tag_holders(api, tag)) <= {inner["id"]}


# --- 4. deployment concurrency limit --------------------------------------------------------
def test_deployment_limit_one_running_one_awaiting_concurrency_slot(
    flows: FlowRunner, api: httpx.Client
) -> None:
    process = flows.start("deployment_limit", runs=2, flow_run_name="dep-run")
    deployed = process.wait_event("deployed")
    created = process.wait_event("created")
    acquired = process.wait_event("acquired")
    deployment_id = deployed["deployment_id"]
    assert acquired["deployment_id"] == deployment_id

    limit = gcl(api, f"deployment:{deployment_id}")
    assert (limit["limit"], limit["active_slots"]) == (1, 1)
    deployment = api.get(f"/deployments/{deployment_id}").json()
    assert deployment["global_concurrency_limit"]["name"] == f"deployment:{deployment_id}"

    (other_id,) = set(created["flow_run_ids"]) - {acquired["flow_run_id"]}
    holder = wait_state(api, "flow", acquired["flow_run_id"], "RUNNING")
    assert holder["deployment_id"] == deployment_id
    assert holder["state"]["state_details"]["deployment_concurrency_lease_id"]
    waiter = wait_for(
        lambda: (run := flow_run(api, other_id))["state_name"] == "AwaitingConcurrencySlot" and run,
        20,
        what="the second run to be AwaitingConcurrencySlot",
    )
    assert waiter["state_type"] == "SCHEDULED"
    assert waiter["name"] in {"dep-run-1", "dep-run-2"}

    # Released: the holder completes and gives its slot back at once; the waiter only comes
    # back when its AwaitingConcurrencySlot time (30 s after the rejection) is due.
    process.release(acquired)
    wait_for(
        lambda: flow_run(api, acquired["flow_run_id"])["state_type"] == "COMPLETED",
        20,
        what="the holder to complete",
    )
    wait_for(
        lambda: gcl(api, f"deployment:{deployment_id}")["active_slots"] == 0,
        10,
        what="the deployment slot to be freed",
    )
    assert flow_run(api, other_id)["state_name"] == "AwaitingConcurrencySlot"


# --- 5. raw increment leak ------------------------------------------------------------------
def test_raw_increment_leaks_a_slot_with_no_holder(flows: FlowRunner, api: httpx.Client) -> None:
    name = unique("resource:leak")
    process = flows.start("raw_increment_leak", name=name)
    assert process.wait() == 0
    assert process.wait_event("acquired")["status"] == 200
    assert gcl(api, name)["active_slots"] == 1
    time.sleep(2)
    assert gcl(api, name)["active_slots"] == 1  # no lease: nothing will ever free it
    blocked = api.post(
        "/v2/concurrency_limits/increment-with-lease",
        json={"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": 60},
    )
    assert blocked.status_code == 423


# --- 6. tag reset with slot_override --------------------------------------------------------
def test_tag_reset_with_slot_override_leaves_a_finished_run_holding(
    flows: FlowRunner, api: httpx.Client
) -> None:
    """POST /concurrency_limits/tag/{tag}/reset {"slot_override": [task_run_id]}, measured:

    - 200 with an empty body; right after it the v1 tag endpoint still lists the task run and
      the v2 limit still counts 1 (the running task's own lease was revoked, an override lease
      for the same task run took its place);
    - the task then COMPLETES (its release of its original lease is a no-op), and the slot
      stays counted for the finished run: the limit is wedged at 1/1 and a new task with the
      tag stays PENDING;
    - forcing the finished task run to CRASHED frees the slot at once (1 -> 0) and the waiter
      gets in.
    """
    tag = unique("res-reset")
    holder = flows.start("tag_holder", tag=tag, reset_override=True)
    reset = holder.wait_event("reset")
    assert reset["status"] == 200
    task_run_id = reset["task_run_id"]
    assert tag_holders(api, tag) == [task_run_id]
    assert gcl(api, f"tag:{tag}")["active_slots"] == 1

    holder.release()
    assert holder.wait() == 0
    wait_state(api, "task", task_run_id, "COMPLETED")
    wait_state(api, "flow", reset["flow_run_id"], "COMPLETED")
    time.sleep(1)
    assert tag_holders(api, tag) == [task_run_id]  # a final run still "holds" the slot
    assert gcl(api, f"tag:{tag}")["active_slots"] == 1

    waiter = flows.start("tag_holder", tag=tag)
    started = waiter.wait_event("started")
    time.sleep(3)
    wait_state(api, "task", started["task_run_id"], "PENDING")

    response = api.post(
        f"/task_runs/{task_run_id}/set_state",
        json={"state": {"type": "CRASHED", "message": "reslock test"}, "force": True},
    )
    assert response.json()["status"] == "ACCEPT"
    assert waiter.wait_event("acquired", timeout=30)["task_run_id"] == started["task_run_id"]


# --- kill -9 of a GCL holder ----------------------------------------------------------------
def test_killed_gcl_holder_stays_running_and_its_lease_expires(
    flows: FlowRunner, api: httpx.Client
) -> None:
    """Takes ~70 s: the slot comes back lease_duration (60 s, the minimum) + <=15 s after the
    last renewal, which happens right after acquiring."""
    name = unique("resource:kill")
    holder = flows.start("gcl_holder", name=name, lease_duration=60)
    acquired = holder.wait_event("acquired")
    members = holder.pids()
    holder.kill()
    assert not any(alive(pid) for pid in members)
    assert holder.process.returncode == -9
    assert not holder.find_events("released")

    time.sleep(3)
    wait_state(api, "flow", acquired["flow_run_id"], "RUNNING", timeout=0)
    wait_state(api, "task", acquired["task_run_id"], "RUNNING", timeout=0)
    assert gcl(api, name)["active_slots"] == 1

    wait_for(
        lambda: gcl(api, name)["active_slots"] == 0,
        110,
        1,
        "the lease of the killed holder to expire",
    )
    freed_after = time.time() - acquired["t"]
    assert 55 < freed_after < 95, freed_after
    # Nobody ever tells Prefect: the runs stay RUNNING after the slot is gone.
    assert flow_run(api, acquired["flow_run_id"])["state_type"] == "RUNNING"
    assert task_run(api, acquired["task_run_id"])["state_type"] == "RUNNING"
