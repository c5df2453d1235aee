"""The helper (reslock/lock.py) never lets two holders in, against the session's real Prefect.

A limit that would make the lock non-exclusive is refused; a lost lease keeps being announced
while the body is still inside; the renewal deadline holds even while a renewal hangs; a lost
answer to the acquire does not leave our own lease blocking us for a whole long lease; a sync
lock inside a running event loop is refused at once.

The three slow cases (each waits for a renewal 45 s after the acquire, or for a lease to
expire) start together in background threads when the first of them is asked for, so their
minute or so of waiting overlaps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import httpx
import pytest

from reslock import lock
from tests.support.background import scenarios_in_background
from tests.support.fault_proxy import FaultProxy
from tests.support.flows import FlowRunner
from tests.support.in_process import helper_talks_to, off_the_loop
from tests.support.net import wait_for
from tests.support.operating import unique
from tests.support.prefect_events import limit_resource, occurred, prefect_events
from tests.support.prefect_limits import LEASE, RENEWAL, REPOSSESS, gcl
from tests.support.prefect_server import PrefectServer


@pytest.fixture
def in_process(prefect_server: PrefectServer) -> Iterator[None]:
    """The helper, called from the test process itself, talks to the test server."""
    with helper_talks_to(prefect_server):
        yield


# --- item 13: an existing limit must make the lock exclusive ---------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"limit": 5},
            "limit '{name}' allows 5 holders at once; resource_lock('{name}') expects 1: "
            "pass limit=5 if that is meant, or set the limit to 1",
        ),
        (
            {"limit": 1, "active": False},
            "limit '{name}' is inactive, so Prefect lets every caller in at once: "
            "enable it (prefect gcl enable {name})",
        ),
        (
            {"limit": 1, "slot_decay_per_second": 0.5},
            "limit '{name}' is a rate limit (slot_decay_per_second=0.5): its slots free "
            "themselves while still held",
        ),
    ],
    ids=["five-at-once", "inactive", "decaying"],
)
def test_an_existing_limit_that_is_not_exclusive_is_refused_before_any_slot_is_taken(
    api: httpx.Client, in_process: None, settings: dict, message: str
) -> None:
    name = unique("safety-misconfigured")
    api.post("/v2/concurrency_limits/", json={"name": name, **settings}).raise_for_status()
    entered = []

    def body() -> pytest.ExceptionInfo:
        with pytest.raises(lock.ResourceLockMisconfigured) as caught, lock.resource_lock(name):
            entered.append(True)
        return caught

    caught = off_the_loop(body)
    assert not entered
    assert str(caught.value).startswith(message.format(name=name))
    assert isinstance(caught.value, ValueError) and caught.value.name == name
    found = gcl(api, name)
    assert found["active_slots"] == 0
    assert {key: found[key] for key in settings} == settings  # left as it was


def test_limit_says_how_many_holders_an_existing_limit_is_meant_to_have(
    api: httpx.Client, in_process: None
) -> None:
    name = unique("safety-five")
    api.post("/v2/concurrency_limits/", json={"name": name, "limit": 5}).raise_for_status()

    def body() -> None:
        with lock.resource_lock(name, limit=5) as held:
            assert held.lease_id is not None
            assert gcl(api, name)["active_slots"] == 1

    off_the_loop(body)
    assert gcl(api, name)["active_slots"] == 0


def test_a_limit_changed_after_this_process_checked_it_is_refused_without_keeping_a_slot(
    api: httpx.Client, in_process: None
) -> None:
    def body() -> None:
        resized, recreated = unique("safety-resized"), unique("safety-recreated")
        for name in (resized, recreated):
            with lock.resource_lock(name):  # created (limit 1) and checked by this process
                pass
        # Resized: Prefect's answer to the acquire carries the size, so the grant is given back.
        api.patch(f"/v2/concurrency_limits/{resized}", json={"limit": 3}).raise_for_status()
        with (
            pytest.raises(lock.ResourceLockMisconfigured, match="allows 3 holders at once"),
            lock.resource_lock(resized),
        ):
            pytest.fail("entered a limit of 3 as if it were a lock")
        assert gcl(api, resized)["active_slots"] == 0
        # Deleted and created again, inactive: another id, so the process reads and checks it.
        api.delete(f"/v2/concurrency_limits/{recreated}").raise_for_status()
        api.post(
            "/v2/concurrency_limits/", json={"name": recreated, "limit": 1, "active": False}
        ).raise_for_status()
        with (
            pytest.raises(lock.ResourceLockMisconfigured, match="is inactive"),
            lock.resource_lock(recreated),
        ):
            pytest.fail("entered an inactive limit")
        assert gcl(api, recreated)["active_slots"] == 0

    off_the_loop(body)


# --- item 12 (part): a sync lock cannot be taken inside a running event loop -----------------
def test_a_sync_lock_inside_a_running_event_loop_is_refused_at_once(
    api: httpx.Client, in_process: None
) -> None:
    name = unique("safety-in-loop")

    @lock.guarded(name)
    def sync_work() -> None:
        pytest.fail("a guarded sync function ran inside the event loop")

    async def inside_a_loop() -> list[float]:
        took = []
        for enter in (lambda: lock.resource_lock(name).__enter__(), sync_work):
            started = time.monotonic()
            with pytest.raises(RuntimeError) as caught:
                enter()
            took.append(time.monotonic() - started)
            assert str(caught.value).startswith(
                f"`with resource_lock({name!r})` inside a running event loop (an async "
                f"function, or a sync task called from one): use `async with "
                f"resource_lock({name!r})` there"
            )
        async with lock.resource_lock(name) as held:  # the right way, in the same place
            assert gcl(api, name)["active_slots"] == 1
            assert held.lease_id is not None
        return took

    took = off_the_loop(lambda: asyncio.run(inside_a_loop()))
    assert max(took) < 0.5  # refused before any call to Prefect
    assert gcl(api, name)["active_slots"] == 0


# --- the slow cases, started together in the background -------------------------------------
def stopping_scenario(runner: FlowRunner, api: httpx.Client, stop: threading.Event) -> dict:
    """Revoke a holder whose body sleeps in 30 s time.sleep() calls, as the board revokes."""
    first, second = sorted([unique("safety-stopping"), unique("safety-stopping")])
    holder = runner.start("helper_sleeper", names=[first, second], sleep=30, hold=120)
    acquired = holder.wait_event("acquired", timeout=90)
    api.post(
        "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": acquired["lease_id"]}
    ).raise_for_status()
    revoked = time.time()
    lost = holder.wait_event("lost", timeout=RENEWAL + 60)
    rc = holder.wait(timeout=30)
    ids = [limit_resource(limit_id) for limit_id in acquired["limit_ids"].values()]
    names = [lock.EVENT_ACQUIRED, lock.EVENT_STOPPING, lock.EVENT_RELEASED]

    def all_in() -> list[dict] | None:
        if stop.is_set():
            raise RuntimeError("cancelled")
        found = [
            event
            for event in prefect_events(api, names, ids)
            if event["payload"].get("lease_id") == acquired["lease_id"]
        ]
        released = [event for event in found if event["event"] == lock.EVENT_RELEASED]
        return found if len(released) == 2 else None

    return {
        "names": [first, second],
        "acquired": acquired,
        "revoked": revoked,
        "enter": holder.wait_event("enter"),
        "exit": holder.wait_event("exit"),
        "lost": lost,
        "rc": rc,
        "events": wait_for(all_in, 30, interval=1, what="the released events in Prefect"),
    }


def deadline_scenario(
    runner: FlowRunner, api: httpx.Client, stop: threading.Event, server: PrefectServer
) -> dict:
    """Renewals fail, then one hangs past the deadline and is answered (renewed) late."""
    proxy = FaultProxy(server.api_url)
    runner.env["PREFECT_API_URL"] = proxy.url
    try:
        name = unique("safety-deadline")
        holder = runner.start("helper_sleeper", name=name, where="none", hold=200)
        acquired = holder.wait_event("acquired", timeout=90)
        requested = proxy.received_at("/increment-with-lease")[-1]
        proxy.route("/renew", "fail", status=500)  # each renewal fails at once...
        while time.time() < requested + LEASE - lock.LOST_MARGIN - 3:
            if stop.wait(0.1):
                raise RuntimeError("cancelled")
        # ...until one is passed on to Prefect (which renews the lease) and answered 9.5 s
        # later, after the deadline, within the helper's 10 s request timeout.
        proxy.route("/renew", "hold", seconds=9.5)
        switched = time.time()
        exited = holder.wait_event("exit", timeout=40)
        lost = holder.wait_event("lost", timeout=30)
        rc = holder.wait(timeout=30)
        return {
            "requested": requested,
            "acquired": acquired,
            "want": holder.wait_event("want"),
            "switched": switched,
            "exit": exited,
            "lost": lost,
            "rc": rc,
            "renewals": proxy.received_at("/renew"),
            "slots_after": gcl(api, name)["active_slots"],
        }
    finally:
        proxy.close()


def orphan_scenario(
    runner: FlowRunner, api: httpx.Client, stop: threading.Event, server: PrefectServer
) -> dict:
    """Prefect grants the first acquire but its answer is lost; the holder asked a 600 s lease."""
    proxy = FaultProxy(server.api_url)
    runner.env["PREFECT_API_URL"] = proxy.url
    try:
        name = unique("safety-orphan")
        proxy.route("/increment-with-lease", "drop", times=1)
        holder = runner.start("helper_sleeper", name=name, where="none", lease_duration=600, hold=1)
        wait_for(lambda: proxy.received_at("/increment-with-lease"), 90, what="the first acquire")
        # The orphan: Prefect counts a slot that nobody knows the lease of.
        orphan_held = wait_for(
            lambda: gcl(api, name)["active_slots"] == 1 and not holder.find_events("acquired"),
            # Prefect, busy with the rest of the suite, may be slow to show it; the orphan's
            # 60 s lease keeps it counted, and the holder out, for longer than this.
            50,
            what="the orphan lease's slot",
        )
        acquired = holder.wait_event("acquired", timeout=LEASE + REPOSSESS + 60)
        rc = holder.wait(timeout=60)
        return {
            "attempts": proxy.received_at("/increment-with-lease"),
            "orphan_held": orphan_held,
            "acquired": acquired,
            "rc": rc,
            "log": holder.log_file.read_text() if holder.log_file else "",
            "slots_after": gcl(api, name)["active_slots"],
        }
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def background(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future]]:
    with scenarios_in_background(prefect_server, tmp_path_factory, "safety-scenario") as start:
        yield {
            "stopping": start(stopping_scenario),
            "deadline": start(deadline_scenario, prefect_server),
            "orphan": start(orphan_scenario, prefect_server),
        }


# --- item 1, the helper's side: a lost lease is announced until the body has stopped ---------
def test_a_revoked_holder_blocked_in_sleep_announces_stopping_until_its_body_has_left(
    background: dict[str, Future],
) -> None:
    seen = background["stopping"].result(timeout=RENEWAL + 200)
    first, second = seen["names"]
    acquired, enter, exit_ = seen["acquired"], seen["enter"]["t"], seen["exit"]["t"]
    lease_id = acquired["lease_id"]
    events = seen["events"]
    by_kind: dict[str, list[dict]] = {}
    for event in events:
        by_kind.setdefault(event["event"], []).append(event)
    # The revoke was noticed at the renewal (45 s after the acquire); the body, blocked in
    # time.sleep(30), only left when its second sleep returned, 60 s after it entered.
    assert exit_ - seen["revoked"] >= RENEWAL - 5
    assert exit_ >= enter + 59
    assert seen["lost"]["reason"] == "the lease was revoked (released from the board?)"
    assert seen["rc"] == 0
    stopping = by_kind.get(lock.EVENT_STOPPING, [])
    for name in (first, second):  # one event per limit, each beat
        beats = sorted(
            (e for e in stopping if e["resource"]["prefect.resource.name"] == name), key=occurred
        )
        times = [occurred(e) for e in beats]
        assert 3 <= len(beats) <= 4, times
        # At once when the renewal found the lease revoked, then every 5 s while inside.
        assert acquired["t"] + RENEWAL - 2 <= times[0] <= acquired["t"] + RENEWAL + 3
        for before, after in zip(times, times[1:], strict=False):
            assert lock.STOPPING_PERIOD_SECONDS - 0.7 <= after - before <= 5.7
        assert enter < times[0] and times[-1] <= exit_ + 0.5
        assert times[-1] >= exit_ - lock.STOPPING_PERIOD_SECONDS - 0.7
        assert [e["payload"]["lost_seconds"] for e in beats] == pytest.approx(
            [5.0 * n for n in range(len(beats))], abs=0.3
        )
        for event in beats:
            assert event["payload"] == {
                "lease_id": lease_id,
                "wait_id": event["payload"]["wait_id"],
                "names": [first, second],
                "reason": "the lease was revoked (released from the board?)",
                "lost_seconds": event["payload"]["lost_seconds"],
            }
            other = second if name == first else first
            assert [
                r["prefect.resource.name"]
                for r in event["related"]
                if r.get("prefect.resource.role") == "concurrency-limit"
            ] == [other]
    # The acquire said this helper announces stopping.
    assert [e["payload"]["protocol"] for e in by_kind[lock.EVENT_ACQUIRED]] == [2, 2]
    wait_ids = {e["payload"]["wait_id"] for e in events}
    assert len(wait_ids) == 1  # acquired, stopping and released of one wait
    # "released" (lease_lost) only once the body had really left.
    released = by_kind[lock.EVENT_RELEASED]
    assert [e["payload"]["reason"] for e in released] == ["lease_lost", "lease_lost"]
    assert all(occurred(e) >= exit_ for e in released)
    assert all(occurred(e) >= max(occurred(s) for s in stopping) for e in released)


# --- item 14: the renewal deadline is kept by a timer ----------------------------------------
def test_the_body_is_stopped_at_the_renewal_deadline_even_while_a_renewal_hangs(
    background: dict[str, Future],
) -> None:
    seen = background["deadline"].result(timeout=LEASE + 200)
    deadline = seen["requested"] - lock.LOST_MARGIN + LEASE  # Prefect got the acquire then
    stopped = seen["exit"]["t"]
    # Stopped at expires - LOST_MARGIN (counted from before the acquire request), while the
    # renewal sent after the switch was still waiting for its answer.
    assert seen["want"]["t"] + LEASE - lock.LOST_MARGIN - 0.5 <= stopped <= deadline + 1.0
    hung = [t for t in seen["renewals"] if t >= seen["switched"]]
    assert hung and hung[0] < stopped < hung[0] + 9.5
    assert len([t for t in seen["renewals"] if t < seen["switched"]]) >= 3  # the fast failures
    # Its late success did not revive the hold: the block raised ResourceLockLost...
    assert seen["lost"]["reason"].startswith(
        "could not renew the lease before it expired (a renewal still unanswered after "
    )
    assert seen["rc"] == 0
    # ...and the release on the way out gave back the lease Prefect had renewed.
    assert seen["slots_after"] == 0


# --- item 14: a lost answer to the acquire ---------------------------------------------------
def test_a_lost_answer_to_the_acquire_blocks_the_holder_at_most_one_short_lease(
    background: dict[str, Future],
) -> None:
    seen = background["orphan"].result(timeout=LEASE + REPOSSESS + 250)
    first, *later = seen["attempts"]
    # Prefect applied the first acquire (a slot taken under a lease nobody knows) ...
    assert seen["orphan_held"]
    assert later, "the helper asked again"
    # ... so the helper waited behind its own orphan, but only for the shortest lease (the
    # orphan was granted 60 s, not the 600 s the caller asked for) and the repossessor's delay.
    waited = seen["acquired"]["t"] - first
    assert LEASE - 10 <= waited <= LEASE + REPOSSESS + lock.MAX_RETRY_WAIT + 5
    assert "Prefect did not answer the request for " in seen["log"]
    assert "It may have granted a lease whose id never reached us" in seen["log"]
    assert seen["rc"] == 0
    assert seen["slots_after"] == 0
