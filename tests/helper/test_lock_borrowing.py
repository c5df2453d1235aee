"""Children inside a hold of the helper (reslock/lock.py), against the session's Prefect.

Prefect copies the context into the tasks a block submits, so they see the block's hold: they
borrow it instead of waiting for their own ancestor. Borrowers take turns, the hold is
released only once they have left, a revoke of its lease stops them too, and a child that
enters after the hold has ended waits for the slot like anyone else.

Real flows run in subprocesses (tests/support/flow_scripts/helper_borrowers.py). The revoke
case waits for the renewal 45 s after the acquire: it starts in a background thread when the
first test asks for it, so that its wait overlaps the other tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import httpx
import pytest

from reslock import lock
from tests.support.background import scenarios_in_background
from tests.support.flows import FlowRunner
from tests.support.in_process import helper_talks_to, off_the_loop
from tests.support.net import wait_for
from tests.support.operating import unique
from tests.support.prefect_events import limit_resource, occurred, prefect_events
from tests.support.prefect_limits import RENEWAL, slots
from tests.support.prefect_server import PrefectServer
from tests.support.safety import Span, overlaps

REVOKED = "the lease was revoked (released from the board?)"


def lease_events(api: httpx.Client, limit_id: str, lease_id: str, names: list[str]) -> list[dict]:
    return [
        event
        for event in prefect_events(api, names, [limit_resource(limit_id)])
        if event["payload"].get("lease_id") == lease_id
    ]


def released_event(api: httpx.Client, limit_id: str, lease_id: str) -> dict:
    """The helper's released event of that lease (events reach the REST API a few s late)."""
    found = wait_for(
        lambda: lease_events(api, limit_id, lease_id, [lock.EVENT_RELEASED]),
        30,
        interval=0.5,
        what=f"the released event of lease {lease_id}",
    )
    assert len(found) == 1, found
    return found[0]


# --- the slow case: a revoke reaches the borrower --------------------------------------------
def revoke_scenario(
    runner: FlowRunner, api: httpx.Client, stop: threading.Event, leave: bool
) -> dict:
    """Revoke the flow's lease (as the board does) while a borrower, blocked in time.sleep(20)
    calls, is inside. The flow's own body is a Python loop that stops at once, or (`leave`)
    has already ended: its block is waiting for the borrower when the loss is found."""
    name = unique("borrow-revoke")
    flow = runner.start(
        "helper_borrowers",
        name=name,
        mode="revoke",
        sleep=20,
        leave=leave,
        child_release=str(runner.tmp_path / "never"),
    )
    acquired = flow.wait_event("acquired", timeout=90)
    enter = flow.wait_event("enter", timeout=60, child=0)
    api.post(
        "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": acquired["lease_id"]}
    ).raise_for_status()
    revoked = time.time()
    child_lost = flow.wait_event("child_lost", timeout=RENEWAL + 60)
    lost = flow.wait_event("lost", timeout=30)
    rc = flow.wait(timeout=60)
    (limit_id,) = acquired["limit_ids"].values()
    names = [lock.EVENT_STOPPING, lock.EVENT_RELEASED]

    def released() -> list[dict] | None:
        if stop.is_set():
            raise RuntimeError("cancelled")
        found = lease_events(api, limit_id, acquired["lease_id"], names)
        return found if any(e["event"] == lock.EVENT_RELEASED for e in found) else None

    return {
        "acquired": acquired,
        "enter": enter,
        "revoked": revoked,
        "child_lost": child_lost,
        "child_exit": flow.wait_event("exit", child=0),
        "body_done": flow.wait_event("body_done"),
        "lost": lost,
        "rc": rc,
        "events": wait_for(released, 30, interval=1, what="the released event in Prefect"),
        "slots_after": slots(api, name),
    }


@pytest.fixture(scope="module")
def background(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future]]:
    with scenarios_in_background(prefect_server, tmp_path_factory, "borrow-scenario") as start:
        yield {
            key: start(revoke_scenario, leave)
            for key, leave in (("in body", False), ("in exit", True))
        }


@pytest.fixture
def revoke_started(background: dict[str, Future]) -> None:
    """Asked for by the first tests, so that the revoke's 45 s overlap them."""


# --- borrowers take turns ---------------------------------------------------------------------
def test_tasks_submitted_inside_a_hold_borrow_it_one_at_a_time(
    revoke_started: None, flows: FlowRunner, api: httpx.Client
) -> None:
    name = unique("borrow-siblings")
    flow = flows.start("helper_borrowers", name=name, mode="siblings", children=4, work=0.4)
    assert flow.wait(timeout=120) == 0, flow.describe()
    acquired = flow.find_events("acquired")[0]
    enters = {event["child"]: event for event in flow.find_events("enter")}
    exits = {event["child"]: event for event in flow.find_events("exit")}
    assert sorted(enters) == sorted(exits) == [0, 1, 2, 3, 4]
    spans = [Span(f"child {n}", enters[n]["m"], exits[n]["m"]) for n in enters]
    assert overlaps(spans, allowed=1, exempt=[]) == []
    # The task called directly ran in the flow's own thread: it simply re-entered the hold.
    direct = enters.pop(4)
    assert direct["thread"] == acquired["thread"]
    assert (direct["borrowed"], direct["acquired"]) == ([], [])
    exits.pop(4)
    assert all(event["thread"] != acquired["thread"] for event in enters.values())
    # They ran under the flow's lease, inside its block, without taking slots of their own.
    assert {event["lease_id"] for event in enters.values()} == {acquired["lease_id"]}
    assert all(event["borrowed"] == [name] for event in enters.values())
    assert all(event["acquired"] == [] for event in enters.values())
    assert flow.wait_event("body_done")["m"] >= max(event["m"] for event in exits.values())
    (limit_id,) = acquired["limit_ids"].values()
    # Events reach Prefect's REST API a few seconds after they were sent.
    wait_for(
        lambda: lease_events(api, limit_id, acquired["lease_id"], [lock.EVENT_ACQUIRED]),
        30,
        interval=0.5,
        what=f"the acquired event of lease {acquired['lease_id']}",
    )
    assert slots(api, name) == 0


# --- the hold waits for its borrowers; latecomers acquire for themselves ------------------------
def test_a_hold_is_released_only_after_its_children_have_left_and_a_latecomer_waits_its_turn(
    revoke_started: None, flows: FlowRunner, api: httpx.Client, tmp_path: Path
) -> None:
    name = unique("borrow-outlive")
    child_release, late_go = tmp_path / "child-release", tmp_path / "late-go"
    other_go = tmp_path / "other-go"
    flow = flows.start(
        "helper_borrowers",
        name=name,
        mode="outlive",
        child_release=str(child_release),
        late_go=str(late_go),
    )
    other = flows.start("helper_holder", name=name, go_file=str(other_go))  # imports meanwhile
    acquired = flow.wait_event("acquired", timeout=90)
    (limit_id,) = acquired["limit_ids"].values()
    flow.wait_event("enter", timeout=60, child=0)
    body_done = flow.wait_event("body_done", timeout=30)
    # The flow's block has ended; its child is still inside: the lease is kept for it.
    assert slots(api, name) == 1
    assert not flow.find_events("released")
    child_release.touch()
    released = flow.wait_event("released", timeout=30)
    child_exit = flow.wait_event("exit", child=0)
    assert body_done["m"] < child_exit["m"] <= released["m"]
    prefect_released = released_event(api, limit_id, acquired["lease_id"])
    assert prefect_released["payload"]["reason"] == "exit"
    assert occurred(prefect_released) >= child_exit["t"]

    # A child of the same block that enters only now takes no borrowed path: it waits for
    # the slot, held meanwhile by another run, like any other caller.
    other_go.touch()
    other_in = other.wait_event("acquired", timeout=60)
    late_go.touch()
    flow.wait_event("want", timeout=30, child=1)

    def late_waiting() -> list[dict]:
        return [
            event
            for event in prefect_events(api, [lock.EVENT_WAITING], [limit_resource(limit_id)])
            if event["payload"]["pid"] == flow.pid
        ]

    wait_for(late_waiting, 30, interval=0.5, what="the late child's waiting event")
    assert not [event for event in flow.find_events("enter") if event["child"] == 1]
    other.release(other_in)
    late_in = flow.wait_event("enter", timeout=60, child=1)
    assert late_in["lease_id"] not in (acquired["lease_id"], other_in["lease_id"])
    assert late_in["acquired"] == [name] and late_in["borrowed"] == []
    assert late_in["t"] >= other.wait_event("left")["t"]
    assert flow.wait(timeout=60) == 0, flow.describe()
    assert [e["result"] for e in flow.find_events("child_done")] == ["done", "done"]
    assert slots(api, name) == 0


# --- async: coroutines gathered in a hold -----------------------------------------------------
def test_coroutines_gathered_inside_an_async_hold_take_turns_and_the_hold_waits_for_them(
    api: httpx.Client, prefect_server: PrefectServer
) -> None:
    name = unique("borrow-async")

    async def scenario() -> dict:
        spans: list[Span] = []
        inside, body_ended, checked = asyncio.Event(), asyncio.Event(), asyncio.Event()
        seen: dict = {"leases": set(), "borrowed": set()}

        async def use(who: str, until: asyncio.Event | None = None) -> None:
            async with lock.resource_lock(name) as held:
                start = time.monotonic()
                inside.set()
                seen["leases"].add(held.lease_id)
                seen["borrowed"].add(held.borrowed)
                await (asyncio.sleep(0.2) if until is None else until.wait())
                spans.append(Span(who, start, time.monotonic()))

        async def watch() -> None:  # the slot, once the block's body has ended
            await body_ended.wait()
            seen["slots_after_body"] = await asyncio.to_thread(slots, api, name)
            checked.set()

        async with lock.resource_lock(name) as parent:
            seen["parent"] = parent.lease_id
            await asyncio.gather(*(use(f"gathered {n}") for n in range(3)))
            inside.clear()
            straggler = asyncio.create_task(use("straggler", until=checked))
            watcher = asyncio.create_task(watch())
            await inside.wait()
            seen["body_done"] = time.monotonic()
            body_ended.set()
        seen["released"] = time.monotonic()
        await asyncio.gather(straggler, watcher)
        seen["slots_after"] = await asyncio.to_thread(slots, api, name)
        return {"spans": spans, **seen}

    with helper_talks_to(prefect_server):
        seen = off_the_loop(lambda: asyncio.run(scenario()))
    spans = seen["spans"]
    assert overlaps(spans, allowed=1, exempt=[]) == []
    assert seen["leases"] == {seen["parent"]} and seen["borrowed"] == {(name,)}
    # The block's body ended with the straggler inside: the slot was kept until it left.
    straggler = next(span for span in spans if span.who == "straggler")
    assert seen["body_done"] < straggler.end <= seen["released"]
    assert seen["slots_after_body"] == 1
    assert seen["slots_after"] == 0


def test_a_child_still_waiting_for_its_turn_when_the_hold_ends_takes_the_slot_for_itself(
    api: httpx.Client, prefect_server: PrefectServer
) -> None:
    name = unique("borrow-queued")

    async def scenario() -> dict:
        first_in, let_first_go = asyncio.Event(), asyncio.Event()
        seen: dict = {}

        async def first() -> None:
            async with lock.resource_lock(name) as held:
                seen["first"] = (held.lease_id, held.borrowed)
                first_in.set()
                await let_first_go.wait()
                seen["first_out"] = time.monotonic()

        async def second() -> None:
            await first_in.wait()
            # Nothing awaits between here and its wait for a turn: the block sees this only
            # once the second is waiting.
            seen["second_entering"] = True
            async with lock.resource_lock(name) as held:
                seen["second"] = (held.lease_id, held.acquired, held.borrowed)
                seen["second_in"] = time.monotonic()

        async with lock.resource_lock(name) as parent:
            seen["parent"] = parent.lease_id
            tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
            while "second_entering" not in seen:
                await asyncio.sleep(0.01)
            let_first_go.set()
        await asyncio.gather(*tasks)
        seen["slots_after"] = await asyncio.to_thread(slots, api, name)
        return seen

    with helper_talks_to(prefect_server):
        seen = off_the_loop(lambda: asyncio.run(scenario()))
    assert seen["first"] == (seen["parent"], (name,))
    # The hold ended while the second waited for its turn: it took a lease of its own, once
    # the hold had released the slot.
    lease_id, acquired, borrowed = seen["second"]
    assert lease_id not in (None, seen["parent"])
    assert (acquired, borrowed) == ((name,), ())
    assert seen["second_in"] >= seen["first_out"]
    assert seen["slots_after"] == 0


# --- a revoke stops the borrowers, and "released" waits for them ------------------------------
@pytest.mark.parametrize("parent", ["in body", "in exit"])
def test_a_revoked_hold_stops_its_borrower_and_announces_stopping_until_it_has_left(
    background: dict[str, Future], parent: str
) -> None:
    seen = background[parent].result(timeout=RENEWAL + 200)
    lease_id = seen["acquired"]["lease_id"]
    # The borrower was stopped, by the revoke of the lease it borrowed.
    assert seen["child_lost"]["reason"] == REVOKED
    assert seen["child_lost"]["lease_id"] == lease_id
    assert seen["lost"]["reason"] == REVOKED
    assert seen["rc"] == 0
    # The flow's body stopped at once (or had ended already); the borrower only when its
    # time.sleep(20) returned, and the flow's block waited for it.
    child_exit = seen["child_exit"]
    assert seen["body_done"]["m"] < child_exit["m"] <= seen["lost"]["m"]
    if parent == "in exit":
        assert seen["body_done"]["t"] < seen["revoked"]
    by_kind: dict[str, list[dict]] = {}
    for event in seen["events"]:
        by_kind.setdefault(event["event"], []).append(event)
    stopping = sorted(by_kind[lock.EVENT_STOPPING], key=occurred)
    times = [occurred(event) for event in stopping]
    # Announced from the loss until the borrower had left (not only until the flow's body).
    assert len(times) >= 2, times
    assert times[-1] >= seen["body_done"]["t"] + lock.STOPPING_PERIOD_SECONDS - 0.7
    assert times[-1] <= child_exit["t"] + 0.5
    assert times[-1] >= child_exit["t"] - lock.STOPPING_PERIOD_SECONDS - 0.7
    (released,) = by_kind[lock.EVENT_RELEASED]
    assert released["payload"]["reason"] == "lease_lost"
    assert occurred(released) >= child_exit["t"]
    assert occurred(released) >= times[-1]
    assert seen["slots_after"] == 0
