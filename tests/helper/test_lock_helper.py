"""The flow-side helper (reslock/lock.py) against the session's real Prefect server.

Real flows run in subprocesses (tests/support/flow_scripts/helper_*.py). The three slow cases
(a SIGKILLed holder whose lease must expire, a revoked holder stopped at its next renewal, a
holder that keeps its slot past its lease by renewing it) start in background threads when
the module starts and are checked by the last three tests, so their minute or so of waiting
overlaps the other tests.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest

from reslock import lock
from reslock.process import process_gone, process_identity
from reslock_web.models import Limit
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.run import sync_limit
from tests.support.background import scenarios_in_background
from tests.support.flows import SCRIPTS_DIR, FlowProcess, FlowRunner
from tests.support.operating import unique
from tests.support.paths import BASE_DIR
from tests.support.prefect_events import limit_resource, lock_event_in_prefect, prefect_events
from tests.support.prefect_limits import LEASE, RENEWAL, REPOSSESS, gcl, slots
from tests.support.prefect_server import PrefectServer

HOLD_PAST_LEASE = LEASE + REPOSSESS + 5  # without renewals the slot would be freed before this
EXAMPLES = [
    "helper_example_task",
    "helper_example_block",
    "helper_example_several",
    "helper_example_timeout",
]
README = BASE_DIR / "README.md"
SECTION = "## Guarding a resource in your flows"


def related(event: dict, role: str) -> list[dict]:
    return [item for item in event["related"] if item["prefect.resource.role"] == role]


def run_of(event: dict, role: str = "flow-run") -> str | None:
    found = related(event, role)
    return found[0]["prefect.resource.id"].rsplit(".", 1)[-1] if found else None


def poll(
    check: Callable[[], Any], timeout: float, what: str, stop: threading.Event | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if stop is not None and stop.is_set():
            raise RuntimeError("cancelled")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


def intervals(processes: list[FlowProcess], start: str, end: str) -> list[tuple[float, float]]:
    """(start t, end t) pairs per process, in order; every start must have its end."""
    found = []
    for process in processes:
        opened: float | None = None
        for event in process.events():
            if event["event"] == start:
                assert opened is None, f"{start} twice in a row in {process}"
                opened = event["t"]
            elif event["event"] == end:
                assert opened is not None, f"{end} without {start} in {process}"
                found.append((opened, event["t"]))
                opened = None
        assert opened is None, f"{start} without {end} in {process}"
    return sorted(found)


def assert_never_two_inside(spans: list[tuple[float, float]]) -> None:
    for (_, left), (right, _) in zip(spans, spans[1:], strict=False):
        assert right >= left, f"two holders at once: one entered at {right} before {left}"


def released_event(api: httpx.Client, limit_id: str, lease_id: str) -> dict:
    """The helper's released event for that lease (events reach the REST API a few s late)."""

    def find() -> dict | None:
        for event in prefect_events(api, [lock.EVENT_RELEASED], [limit_resource(limit_id)]):
            if event["payload"]["lease_id"] == lease_id:
                return event
        return None

    return poll(find, 20, f"the released event of lease {lease_id}")


# --- the slow cases, started in the background when the module starts ------------------------
def kill_scenario(runner: FlowRunner, api: httpx.Client, stop: threading.Event) -> dict:
    """A holder killed with SIGKILL: its slot frees itself when the lease expires."""
    name = unique("helper-kill")
    holder = runner.start("helper_holder", name=name, lease_duration=LEASE)
    acquired = holder.wait_event("acquired", timeout=90)
    holder.kill()
    killed = time.time()
    held_until = killed
    while slots(api, name) == 1:
        held_until = time.time()
        if stop.is_set():
            raise RuntimeError("cancelled")
        if held_until - acquired["t"] > LEASE + REPOSSESS + 30:
            break
        time.sleep(0.5)
    freed = time.time()
    after = runner.start("helper_holder", name=name, hold=0, timeout=30)
    after_rc = after.wait(timeout=90)
    return {
        "acquired": acquired["t"],
        "killed": killed,
        "held_until": held_until,
        "freed": freed,
        "after_rc": after_rc,
        "after_events": [event["event"] for event in after.events()],
    }


def revoke_scenario(runner: FlowRunner, api: httpx.Client, stop: threading.Event) -> dict:
    """Revoke a live helper holder's lease, as the board does, and watch what follows."""
    name = unique("helper-revoke")
    first = runner.start("helper_holder", name=name, lease_duration=LEASE)
    asynchronous = runner.start(
        "helper_holder", name=unique("helper-revoke-async"), where="async_task"
    )
    first_in = first.wait_event("acquired", timeout=90)
    async_in = asynchronous.wait_event("acquired", timeout=90)
    api.post(
        "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": async_in["lease_id"]}
    ).raise_for_status()
    async_revoked = time.time()
    second = runner.start("helper_holder", name=name, lease_duration=LEASE)
    second_wants = second.wait_event("want", timeout=90)
    # It has met the full limit and waits: it says so once Prefect refused it.
    lock_event_in_prefect(
        api,
        lock.EVENT_WAITING,
        first_in["limit_ids"][name],
        flow_run_id=second_wants["flow_run_id"],
    )
    response = api.post(
        "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": first_in["lease_id"]}
    )
    response.raise_for_status()
    revoked = time.time()
    second_in = second.wait_event("acquired", timeout=30)
    slots_after_second_in = slots(api, name)
    third = runner.start("helper_holder", name=name, lease_duration=LEASE)
    third.wait_event("want", timeout=90)
    lost = first.wait_event("lost", timeout=RENEWAL + 30)
    async_lost = asynchronous.wait_event("lost", timeout=RENEWAL + 30)
    async_rc = asynchronous.wait(timeout=30)
    # Its renewal (410) and its release (a no-op on a revoked lease) were answered before its
    # process ended: the count read now is the one they left.
    first_rc = first.wait(timeout=30)
    observed = {
        "slots_after_first_left": slots(api, name),
        "third_in_while_second_holds": bool(third.find_events("acquired")),
    }
    second.release()
    third_in = third.wait_event("acquired", timeout=60)
    third.release()
    rcs = [second.wait(timeout=30), third.wait(timeout=30)]
    poll(lambda: slots(api, name) == 0, 10, "the limit to be free", stop)
    return {
        "name": name,
        "first_in": first_in,
        "revoked": revoked,
        "second_in": second_in,
        "slots_after_second_in": slots_after_second_in,
        "lost": lost,
        "first_events": [event["event"] for event in first.events()],
        "first_rc": first_rc,
        "third_in": third_in,
        "rcs": rcs,
        "async_in": async_in,
        "async_revoked": async_revoked,
        "async_lost": async_lost,
        "async_events": [event["event"] for event in asynchronous.events()],
        "async_rc": async_rc,
        **observed,
    }


def renew_scenario(runner: FlowRunner, api: httpx.Client, stop: threading.Event) -> dict:
    """A holder with the shortest lease stays inside well past it; a second one waits."""
    name = unique("helper-renew")
    holder = runner.start("helper_holder", name=name, lease_duration=LEASE, hold=HOLD_PAST_LEASE)
    holder_in = holder.wait_event("acquired", timeout=90)
    waiter = runner.start("helper_holder", name=name, lease_duration=LEASE, hold=0)
    samples = []
    while not holder.find_events("leaving"):
        if stop.is_set():
            raise RuntimeError("cancelled")
        if time.time() > holder_in["t"] + HOLD_PAST_LEASE + 60:
            break
        # `t` is taken before looking: a sample that starts before the holder's "leaving"
        # saw the slot while the holder was still inside.
        started = time.time()
        samples.append(
            {
                "t": started,
                "slots": slots(api, name),
                "waiter_in": bool(waiter.find_events("acquired")),
            }
        )
        time.sleep(max(0.0, started + 1 - time.time()))
    leaving = holder.wait_event("leaving", timeout=30)
    waiter_in = waiter.wait_event("acquired", timeout=30)
    rcs = [holder.wait(timeout=30), waiter.wait(timeout=60)]
    waiter_run = waiter_in["flow_run_id"]

    def waiter_waited() -> list | None:
        found = prefect_events(
            api, [lock.EVENT_WAITING], [limit_resource(holder_in["limit_ids"][name])]
        )
        return [e for e in found if run_of(e) == waiter_run] or None

    return {
        "holder_in": holder_in,
        "leaving": leaving,
        "waiter_want": waiter.wait_event("want"),
        "waiter_in": waiter_in,
        "waiter_waited": poll(waiter_waited, 20, "the waiter's waiting event", stop),
        "samples": [sample for sample in samples if sample["t"] < leaving["t"]],
        "rcs": rcs,
        "slots_after": slots(api, name),
    }


@pytest.fixture(scope="module", autouse=True)
def background(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future]]:
    with scenarios_in_background(prefect_server, tmp_path_factory, "helper-scenario") as start:
        yield {
            "kill": start(kill_scenario),
            "revoke": start(revoke_scenario),
            "renew": start(renew_scenario),
        }


# --- names and options: refused before any call to Prefect -----------------------------------
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("db/42", "contains /: Prefect refuses limit names with any of / % & < >"),
        ("50%", "contains %"),
        ("a&b<c>", "contains & < >"),
        ("", "must not be empty"),
        (" db", "must not start or end with whitespace"),
        ("tag:db", "keeps for its tag and deployment limits"),
        ("deployment:x", "keeps for its tag and deployment limits"),
        ("line\nbreak", "control characters"),
        (42, "must be a string"),
        (str(uuid.UUID(int=7)), "looks like an id"),
    ],
)
def test_it_refuses_names_prefect_would_refuse(name: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        lock.resource_lock(name)  # type: ignore[arg-type]


def test_it_checks_options_and_templates_up_front() -> None:
    with pytest.raises(ValueError, match="lease_duration must be between 60 and 86400"):
        lock.resource_lock("db", lease_duration=30)
    with pytest.raises(ValueError, match="limit must be a whole number >= 1"):
        lock.resource_lock("db", limit=0)
    with pytest.raises(ValueError, match="timeout must be None or >= 0"):
        lock.resource_lock("db", timeout=-1)
    with pytest.raises(ValueError, match="at least one resource name"):
        lock.resource_lock()
    assert lock.resource_lock(["b", "a"], "b").names == ("a", "b")  # sorted, once each

    def migrate(db_id: int, table: str = "t") -> None: ...

    with pytest.raises(ValueError, match=r"uses \{dbid\}, which is not a parameter of"):
        lock.guarded("db-{dbid}")(migrate)
    with pytest.raises(ValueError, match="use parameter names"):
        lock.guarded("db-{}")(migrate)
    with pytest.raises(ValueError, match="contains /"):
        lock.guarded("db/{db_id}")(migrate)(1)  # a name built at call time is checked too

    from prefect import task

    with pytest.raises(TypeError, match=r"put @guarded\(...\) below @task"):
        lock.guarded("db-{db_id}")(task(migrate))


# --- contention ------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)  # the board's sync writes what it found
def test_five_processes_take_turns_and_their_waits_show_in_start_order(
    flows: FlowRunner, api: httpx.Client, prefect_server: PrefectServer, tmp_path: Path
) -> None:
    name = unique("helper-hammer")
    gate = tmp_path / "first-may-leave"
    first = flows.start("helper_hammer", name=name, rounds=3, first_release_file=str(gate))
    first.wait_event("enter", round=1, timeout=90)
    limit_id = gcl(api, name)["id"]

    def waits_seen(count: int) -> list[str] | None:
        order: list[str] = []
        for event in prefect_events(api, [lock.EVENT_WAITING], [limit_resource(limit_id)]):
            if run_of(event) not in order:
                order.append(run_of(event))
        return order if len(order) >= count else None

    waiters = []
    for index in range(4):
        # Each starts only once Prefect shows the one before it waiting: on a busy machine
        # a process's first request (creating, checking, then asking for the limit) may take
        # longer than any fixed pause.
        waiters.append(flows.start("helper_hammer", name=name, rounds=3, hold=0.1))
        waiters[-1].wait_event("want", round=1, timeout=90)
        poll(lambda index=index: waits_seen(index + 1), 60, f"waiting event {index + 1}")
    run_ids = [w.wait_event("started")["flow_run_id"] for w in waiters]
    assert poll(lambda: waits_seen(4), 30, "4 waiting events")[:4] == run_ids
    # The board, synced by the project's own code, queues them in that order behind the
    # first process, whose lease it knows (what a release from the board revokes).
    with PrefectAPI(prefect_server.api_url) as board_api:
        synced = sync_limit(board_api, name)
    assert synced is not None and synced.ok, synced and synced.error
    board = Limit.objects.named(name)
    assert [str(w.flow_run_id) for w in board.waiters.order_by("position")] == run_ids
    assert str(board.holders.get().lease_id) == first.wait_event("enter")["lease_id"]
    gate.touch()
    everyone = [first, *waiters]
    for process in everyone:
        assert process.wait(timeout=180) == 0, process.describe()
    spans = intervals(everyone, "enter", "exit")
    assert len(spans) == 15  # everyone got in, three times each
    assert_never_two_inside(spans)
    assert slots(api, name) == 0

    # Prefect holds 15 acquired and 15 released events, paired by lease id.
    def pairs() -> tuple[list, list] | None:
        found = prefect_events(
            api, [lock.EVENT_ACQUIRED, lock.EVENT_RELEASED], [limit_resource(limit_id)]
        )
        acquired = [e for e in found if e["event"] == lock.EVENT_ACQUIRED]
        released = [e for e in found if e["event"] == lock.EVENT_RELEASED]
        return (acquired, released) if len(acquired) == len(released) == 15 else None

    acquired, released = poll(pairs, 30, "15 acquired and 15 released events")
    leases = {e["payload"]["lease_id"] for e in acquired}
    assert leases == {e["payload"]["lease_id"] for e in released}
    assert len(leases) == 15
    entered = {e["lease_id"] for p in everyone for e in p.find_events("enter")}
    assert entered == leases


def test_a_nested_task_runs_inside_its_parents_hold_and_other_runs_still_wait(
    flows: FlowRunner, api: httpx.Client
) -> None:
    name = unique("helper-nested")
    nested = flows.start("helper_nested", name=name)
    outer = nested.wait_event("acquired", timeout=90)
    holding = nested.wait_event("holding", timeout=30)  # with tags() this never comes
    inner = {event["how"]: event for event in nested.find_events("inner")}
    assert set(inner) == {"direct", "submit"}
    for event in inner.values():
        assert event["held"] == [name]
        assert event["flow_run_id"] == outer["flow_run_id"]
        assert event["task_run_id"] != outer["task_run_id"]  # a task run of its own
    assert holding["done"] == ["direct", "submit"]
    assert slots(api, name) == 1

    other = flows.start("helper_holder", name=name, hold=0)  # another flow run: it waits
    other_wants = other.wait_event("want", timeout=90)
    lock_event_in_prefect(  # Prefect refused it: the limit is full
        api, lock.EVENT_WAITING, gcl(api, name)["id"], flow_run_id=other_wants["flow_run_id"]
    )
    assert not other.find_events("acquired")
    nested.release()
    assert nested.wait(timeout=60) == 0
    other_in = other.wait_event("acquired", timeout=30)
    assert other_in["t"] >= nested.find_events("released")[0]["t"] - 1
    assert other.wait(timeout=60) == 0

    # The inner tasks took no slot: one acquired event for this flow run, the outer task's.
    limit_id = gcl(api, name)["id"]

    def outer_events() -> list | None:
        found = [
            e
            for e in prefect_events(api, [lock.EVENT_ACQUIRED], [limit_resource(limit_id)])
            if run_of(e) == outer["flow_run_id"]
        ]
        return found or None

    found = poll(outer_events, 60, "the outer task's acquired event")
    assert [run_of(e, "task-run") for e in found] == [outer["task_run_id"]]


def test_ten_processes_creating_one_new_resource_end_with_one_limit(
    flows: FlowRunner, api: httpx.Client, tmp_path: Path
) -> None:
    name = unique("helper-race")
    go = tmp_path / "go"
    processes = [
        flows.start("helper_holder", name=name, limit=10, hold=0, where="none", go_file=str(go))
        for _ in range(10)
    ]
    for process in processes:
        process.wait_event("ready", timeout=90)
    go.touch()  # all ten create the limit at the same moment
    for process in processes:
        assert process.wait(timeout=90) == 0, process.describe()
        assert process.find_events("released")
        assert not process.find_events("error")
    same = []
    offset = 0
    while True:
        page = api.post("/v2/concurrency_limits/filter", json={"limit": 200, "offset": offset})
        page.raise_for_status()
        same += [item for item in page.json() if item["name"] == name]
        if len(page.json()) < 200:
            break
        offset += 200
    assert len(same) == 1
    assert (same[0]["limit"], same[0]["active_slots"]) == (10, 0)


def test_a_timeout_names_the_holder_and_takes_no_slot(flows: FlowRunner, api: httpx.Client) -> None:
    free, held = sorted([unique("helper-to-free"), unique("helper-to-held")])
    holder = flows.start("helper_holder", name=held)
    holder_in = holder.wait_event("acquired", timeout=90)
    # The waiter names the holder from its acquired event, once Prefect's REST API has it.
    lock_event_in_prefect(
        api, lock.EVENT_ACQUIRED, holder_in["limit_ids"][held], lease_id=holder_in["lease_id"]
    )
    waiter = flows.start("helper_holder", names=[held, free], timeout=3, hold=0)
    timed_out = waiter.wait_event("timed_out", timeout=90)
    assert waiter.wait(timeout=30) == 0
    assert timed_out["message"].startswith(
        f"Timed out after 3 s waiting for resources {free!r}, {held!r} (held by task run "
        f"'helper-holder-task-"
    )
    assert f"({holder_in['task_run_id']}) in flow run " in timed_out["message"]
    assert f"({holder_in['flow_run_id']}), since " in timed_out["message"]
    assert set(timed_out["holders"]) == {held}
    assert (
        waiter.find_events("want")[0]["t"] + 3
        <= timed_out["t"]
        <= waiter.find_events("want")[0]["t"] + 10
    )
    assert (slots(api, free), slots(api, held)) == (0, 1)  # back to what it was
    holder.release()
    assert holder.wait(timeout=60) == 0
    assert slots(api, held) == 0

    limit_id = gcl(api, held)["id"]
    names = [lock.EVENT_WAITING, lock.EVENT_TIMED_OUT]

    def pair() -> list | None:
        found = prefect_events(api, names, [limit_resource(limit_id)])
        return found if len(found) == 2 else None

    waiting, expired = poll(pair, 20, "waiting and timed_out events")
    assert expired["follows"] == waiting["id"]
    assert expired["payload"]["wait_id"] == waiting["payload"]["wait_id"]
    assert expired["payload"]["timeout"] == 3


def test_several_names_are_taken_all_or_nothing(flows: FlowRunner, api: httpx.Client) -> None:
    first, second = sorted([unique("helper-multi"), unique("helper-multi")])
    holder = flows.start("helper_holder", name=second)
    holder.wait_event("acquired", timeout=90)
    both = flows.start("helper_holder", names=[second, first])  # any order: taken sorted
    both.wait_event("want", timeout=90)
    for _ in range(8):  # while it waits for `second` it does not sit on `first`
        time.sleep(0.5)
        assert slots(api, first) == 0
        assert not both.find_events("acquired")
    holder.release()
    both_in = both.wait_event("acquired", timeout=30)
    assert both_in["names"] == [first, second]
    assert (slots(api, first), slots(api, second)) == (1, 1)
    single = flows.start("helper_holder", name=first, timeout=2, hold=0)
    assert single.wait_event("timed_out", timeout=90)
    both.release()
    assert both.wait(timeout=60) == 0 and holder.wait(timeout=60) == 0
    assert (slots(api, first), slots(api, second)) == (0, 0)

    # One event per limit; each names the other limit as a related "concurrency-limit".
    ids = both_in["limit_ids"]

    def acquired_events() -> list | None:
        found = [
            e
            for e in prefect_events(
                api, [lock.EVENT_ACQUIRED], [limit_resource(i) for i in ids.values()]
            )
            if e["payload"]["lease_id"] == both_in["lease_id"]
        ]
        return found if len(found) == 2 else None

    for event in poll(acquired_events, 20, "two acquired events"):
        this = event["resource"]["prefect.resource.name"]
        other = first if this == second else second
        assert related(event, "concurrency-limit") == [
            {
                "prefect.resource.id": limit_resource(ids[other]),
                "prefect.resource.role": "concurrency-limit",
                "prefect.resource.name": other,
            }
        ]
        assert event["payload"]["names"] == [first, second]


# --- importable from any flow environment ----------------------------------------------------
# Run in a fresh interpreter with no Django settings, where any `import django` fails: the
# helper must import, take and release a lock, and never have tried to import Django.
NO_DJANGO = """
import importlib.abc
import json
import os
import sys


class NoDjango(importlib.abc.MetaPathFinder):
    asked = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == "django":
            NoDjango.asked.append(fullname)
            raise ImportError(f"no Django in this environment ({fullname})")
        return None


def django_modules():
    return sorted(name for name in sys.modules if name.split(".")[0] == "django")


already = django_modules()
sys.meta_path.insert(0, NoDjango())
from reslock_web.lock import resource_lock

guard = resource_lock(sys.argv[1])
with guard as held:
    lease_id = str(held.lease_id)
report = {
    "already": already,
    "asked": list(NoDjango.asked),
    "loaded": django_modules(),
    "settings": os.environ.get("DJANGO_SETTINGS_MODULE"),
    "names": list(guard.names),
    "lease_id": lease_id,
}
try:  # the block itself works: Django really cannot be imported here
    import django.conf
except ImportError:
    report["blocked"] = True
print(json.dumps(report))
"""


def test_the_helper_imports_and_locks_without_django(
    prefect_server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    name = unique("helper-no-django")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(BASE_DIR),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": prefect_server.api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", NO_DJANGO, name],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "already": [],
        "asked": [],
        "loaded": [],
        "settings": None,
        "names": [name],
        "lease_id": report["lease_id"],
        "blocked": True,
    }
    assert (gcl(api, name)["limit"], slots(api, name)) == (1, 0)  # created, taken, released


# --- released on errors and cancellation ------------------------------------------------------
def test_an_error_in_the_body_frees_the_slot_and_propagates_unchanged(
    flows: FlowRunner, api: httpx.Client
) -> None:
    names = {form: unique(f"helper-error-{form}") for form in ("sync", "async")}
    processes = {
        form: flows.start("helper_failing", name=name, form=form) for form, name in names.items()
    }
    for form, failing in processes.items():
        name = names[form]
        acquired = failing.wait_event("acquired", timeout=90)
        caught = failing.wait_event("caught", timeout=30)
        # Checked while the process still runs: the helper released the slot itself, at once.
        assert slots(api, name) == 0, form
        message = f"the body failed while holding {name}"
        assert {key: caught[key] for key in ("same", "type", "message", "cause", "context")} == {
            "same": True,  # the very exception raised inside, not wrapped or replaced
            "type": "GuardedBodyFailed",
            "message": message,
            "cause": "None",
            "context": "None",
        }, form
        failing.release()
        assert failing.wait(timeout=60) == 1, failing.describe()
        assert failing.wait_event("error")["error"] == f"GuardedBodyFailed({message!r})"
        assert f"GuardedBodyFailed: {message}" in failing.log_file.read_text()
        released = released_event(api, acquired["limit_ids"][name], acquired["lease_id"])
        assert released["payload"]["reason"] == "error", form


def test_a_cancelled_async_holder_frees_the_slot(flows: FlowRunner, api: httpx.Client) -> None:
    names = {how: unique(f"helper-cancel-{how}") for how in ("asyncio", "anyio")}
    processes = {
        how: flows.start("helper_cancelled", name=name, how=how) for how, name in names.items()
    }
    outcomes = {"asyncio": "CancelledError", "anyio": "scope cancelled"}
    for how, cancelled in processes.items():
        name = names[how]
        acquired = cancelled.wait_event("acquired", timeout=90)
        assert cancelled.wait_event("cancelled", timeout=30)["outcome"] == outcomes[how]
        # Checked while the process still runs: the cancelled block released on its way out.
        assert slots(api, name) == 0, how
        cancelled.release()
        assert cancelled.wait(timeout=60) == 0, cancelled.describe()
        assert not cancelled.find_events("body_finished")
        released = released_event(api, acquired["limit_ids"][name], acquired["lease_id"])
        assert released["payload"]["reason"] == "cancelled", how


def test_a_sigterm_to_a_holding_flow_frees_the_slot(flows: FlowRunner, api: httpx.Client) -> None:
    name = unique("helper-sigterm")
    holder = flows.start("helper_holder", name=name)
    acquired = holder.wait_event("acquired", timeout=90)
    # One SIGTERM to the flow's process, as a worker cancelling the run sends it: Prefect
    # raises TerminationSignal inside the guarded block.
    os.kill(holder.pid, signal.SIGTERM)
    holder.wait_event("terminating", timeout=30)  # the signal has left the guarded block
    assert slots(api, name) == 0
    holder.wait(timeout=30)
    assert not holder.find_events("leaving")
    released = released_event(api, acquired["limit_ids"][name], acquired["lease_id"])
    assert released["payload"]["reason"] == "cancelled"


# --- event schema and holders --------------------------------------------------------------
def test_the_holder_is_the_task_run_the_flow_run_or_nobody(
    flows: FlowRunner, api: httpx.Client
) -> None:
    cases = {where: unique(f"helper-{where}") for where in ("task", "async_task", "flow", "none")}
    processes = {
        where: flows.start("helper_holder", name=name, where=where, hold=0.5)
        for where, name in cases.items()
    }
    got = {}
    for where, process in processes.items():
        assert process.wait(timeout=90) == 0, process.describe()
        got[where] = process.find_events("acquired")[0]
        assert process.find_events("released")
    assert got["task"]["holder"] == {"type": "task_run", "id": got["task"]["task_run_id"]}
    assert got["async_task"]["holder"] == {
        "type": "task_run",
        "id": got["async_task"]["task_run_id"],
    }
    assert got["flow"]["holder"] == {"type": "flow_run", "id": got["flow"]["flow_run_id"]}
    assert got["none"]["holder"] is None

    names = [lock.EVENT_ACQUIRED, lock.EVENT_RELEASED]
    for where, name in cases.items():
        limit_id = got[where]["limit_ids"][name]

        def pair(limit_id: str = limit_id) -> list | None:
            found = prefect_events(api, names, [limit_resource(limit_id)])
            return found if len(found) == 2 else None

        acquired, released = poll(pair, 20, f"the events of {name}")
        resource = {"prefect.resource.id": limit_resource(limit_id), "prefect.resource.name": name}
        assert acquired["resource"] == released["resource"] == resource
        assert acquired["payload"] == {
            "lease_id": got[where]["lease_id"],
            "lease_duration": 60.0,
            "wait_id": acquired["payload"]["wait_id"],
            "holder": got[where]["holder"],
            "names": [name],
            "waited_seconds": acquired["payload"]["waited_seconds"],
            "protocol": 2,
            "process": acquired["payload"]["process"],
        }
        # The holder's process, as a release on this machine can check it is gone.
        here = process_identity()
        process = acquired["payload"]["process"]
        assert (process["boot_id"], process["pid_ns"]) == (here["boot_id"], here["pid_ns"])
        assert process["pid"] != here["pid"]
        assert process_gone(process)  # its script has ended by now
        assert released["follows"] == acquired["id"]
        assert released["payload"]["lease_id"] == got[where]["lease_id"]
        assert released["payload"]["reason"] == "exit"
        assert released["payload"]["wait_id"] == acquired["payload"]["wait_id"]
        roles = {item["prefect.resource.role"] for item in acquired["related"]}
        if where == "none":
            assert roles == set()
        else:
            assert run_of(acquired) == got[where]["flow_run_id"]
            assert {"flow-run", "flow"} <= roles
            assert ("task-run" in roles) == (where != "flow")


# --- the README examples -------------------------------------------------------------------
def example_code(script: str) -> str:
    text = (SCRIPTS_DIR / f"{script}.py").read_text()
    return text.split("# --- README example ---\n", 1)[1].split("\n\n\n# --- end ---", 1)[0]


def test_the_readme_examples_run(flows: FlowRunner, api: httpx.Client) -> None:
    printer = unique("p")
    holder = flows.start("helper_holder", name=f"printer-{printer}")
    base = random.randint(10**6, 10**7)
    account, a, b = unique("acme"), unique("src"), unique("dst")
    task = flows.start("helper_example_task", db_ids=[base, base + 1, base])
    block = flows.start("helper_example_block", account=account, batches=[["a", "b"], ["c"], ["d"]])
    several = flows.start("helper_example_several", a=a, b=b)
    holder_in = holder.wait_event("acquired", timeout=90)
    # The bounded example names the holder from its acquired event, once Prefect has it.
    lock_event_in_prefect(
        api,
        lock.EVENT_ACQUIRED,
        holder_in["limit_ids"][f"printer-{printer}"],
        lease_id=holder_in["lease_id"],
    )
    bounded = flows.start("helper_example_timeout", printer=printer, wait_seconds=3)

    for process in (task, block, several, bounded):
        assert process.wait(timeout=120) == 0, process.describe()
    assert task.wait_event("result")["value"] == [
        f"migrated db-{base}",
        f"migrated db-{base + 1}",
        f"migrated db-{base}",
    ]
    for db in (base, base + 1):
        assert (gcl(api, f"db-{db}")["limit"], slots(api, f"db-{db}")) == (1, 0)

    assert block.wait_event("result")["value"] == [2, 1, 1]
    uploads = intervals([block], "upload_start", "upload_end")
    assert len(uploads) == 3
    assert_never_two_inside(uploads)
    assert slots(api, f"crm-{account}") == 0

    assert several.wait_event("result")["value"] == [f"users: {a} -> {b}", f"orders: {b} -> {a}"]
    assert (slots(api, f"db-{a}"), slots(api, f"db-{b}")) == (0, 0)

    assert bounded.wait_event("result")["value"] == "skipped"
    log = bounded.log_file.read_text()
    assert (
        f"Timed out after 3 s waiting for resource 'printer-{printer}' (held by task run "
        f"'helper-holder-task-"
    ) in log
    assert f"in flow run '{holder_in['flow_run_name']}' ({holder_in['flow_run_id']})" in log
    assert slots(api, f"printer-{printer}") == 1  # still the holder's, only the holder's
    holder.release()
    assert holder.wait(timeout=60) == 0


def test_the_readme_shows_the_examples_as_they_are_run() -> None:
    readme = README.read_text()
    assert SECTION in readme
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    for script in EXAMPLES:
        assert f"```python\n{example_code(script)}\n```" in section, script


# --- the slow cases ------------------------------------------------------------------------
def test_a_killed_holder_frees_the_resource_when_its_lease_expires(
    background: dict[str, Future],
) -> None:
    seen = background["kill"].result(timeout=LEASE + REPOSSESS + 120)
    # The slot stays taken while the lease lives, and is free at most 15 s after it expires.
    assert seen["held_until"] >= seen["acquired"] + LEASE - 2
    assert seen["freed"] <= seen["acquired"] + LEASE + REPOSSESS + 2
    assert seen["after_rc"] == 0
    assert "acquired" in seen["after_events"]


def test_a_revoked_holder_is_stopped_at_its_next_renewal_and_cannot_free_another_slot(
    background: dict[str, Future],
) -> None:
    seen = background["revoke"].result(timeout=RENEWAL + 150)
    # The revoke frees the slot at once: the waiter gets in (its retry comes ≤ 10 s later).
    assert seen["second_in"]["t"] - seen["revoked"] <= lock.MAX_RETRY_WAIT + 3
    assert seen["slots_after_second_in"] == 1
    # The revoked holder kept running until its next renewal, 0.75 x lease after it acquired,
    # then its block was stopped (ResourceLockLost) without reaching its end.
    stopped = seen["lost"]["t"]
    assert seen["first_in"]["t"] + RENEWAL - 1 <= stopped <= seen["first_in"]["t"] + RENEWAL + 5
    assert stopped - seen["revoked"] <= RENEWAL + 5
    assert seen["lost"]["reason"] == "the lease was revoked (released from the board?)"
    assert "leaving" not in seen["first_events"]
    assert seen["first_rc"] == 0
    # Its renewal (410) and its release (a no-op) did not free the second holder's slot.
    assert seen["slots_after_first_left"] == 1
    assert not seen["third_in_while_second_holds"]
    assert seen["third_in"]["t"] > seen["lost"]["t"]
    assert seen["rcs"] == [0, 0]
    # `async with` is stopped the same way, at its next await after the failed renewal.
    stopped = seen["async_lost"]["t"]
    assert seen["async_in"]["t"] + RENEWAL - 1 <= stopped <= seen["async_in"]["t"] + RENEWAL + 5
    assert stopped - seen["async_revoked"] <= RENEWAL + 5
    assert "released" not in seen["async_events"]
    assert seen["async_rc"] == 0


def test_a_holder_keeps_its_slot_past_its_lease_by_renewing_it(
    background: dict[str, Future],
) -> None:
    seen = background["renew"].result(timeout=HOLD_PAST_LEASE + 200)
    holder_in, leaving = seen["holder_in"]["t"], seen["leaving"]["t"]
    # Inside for longer than an unrenewed lease would last, repossessor delay included.
    assert leaving - holder_in >= LEASE + REPOSSESS
    # Looked at every second, from the start to the end of the hold: still one holder, and
    # the second process (waiting since well before the lease would have expired) not in.
    times = [sample["t"] for sample in seen["samples"]]
    assert times[0] <= holder_in + 5 and times[-1] >= leaving - 3
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= 3
    assert {sample["slots"] for sample in seen["samples"]} == {1}
    assert not any(sample["waiter_in"] for sample in seen["samples"])
    assert seen["waiter_want"]["t"] <= holder_in + LEASE / 2
    assert seen["waiter_waited"]
    # It got in once the holder left, within one retry.
    assert leaving <= seen["waiter_in"]["t"] <= leaving + lock.MAX_RETRY_WAIT + 5
    assert seen["rcs"] == [0, 0]
    assert seen["slots_after"] == 0
