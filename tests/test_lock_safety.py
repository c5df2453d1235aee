"""The helper (reslock_web/lock.py) never lets two holders in, against the session's real Prefect.

A limit that would make the lock non-exclusive is refused; a lost lease keeps being announced
while the body is still inside; the renewal deadline holds even while a renewal hangs; a lost
answer to the acquire does not leave our own lease blocking us for a whole long lease; a sync
lock inside a running event loop is refused at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from reslock_web import lock
from tests.support.patient import patient_client
from tests.support.prefect_server import PrefectServer


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def gcl(api: httpx.Client, name: str) -> dict:
    response = api.get(f"/v2/concurrency_limits/{name}")
    response.raise_for_status()
    return response.json()


@pytest.fixture
def api(prefect_server: PrefectServer) -> Iterator[httpx.Client]:
    with patient_client(prefect_server.api_url, timeout=30) as client:
        yield client


@pytest.fixture
def in_process(prefect_server: PrefectServer) -> Iterator[None]:
    """The helper, called from the test process itself, talks to the test server."""
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield
        EventsWorker.drain_all(timeout=10)  # sent while the server is still there


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
    entered = False
    with pytest.raises(lock.ResourceLockMisconfigured) as caught, lock.resource_lock(name):
        entered = True
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
    with lock.resource_lock(name, limit=5) as held:
        assert held.lease_id is not None
        assert gcl(api, name)["active_slots"] == 1
    assert gcl(api, name)["active_slots"] == 0


def test_a_limit_changed_after_this_process_checked_it_is_refused_without_keeping_a_slot(
    api: httpx.Client, in_process: None
) -> None:
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

    took = asyncio.run(inside_a_loop())
    assert max(took) < 0.5  # refused before any call to Prefect
    assert gcl(api, name)["active_slots"] == 0
