"""The sync tells the truth about every limit, with real flows against a real Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from django.utils import timezone

from reslock_web.models import Condition, Holder, Limit, LockEvent, Status, SyncRun
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.lock import try_lock, unlock
from reslock_web.sync.run import sync_all
from tests.support.net import wait_for
from tests.support.operating import sync, sync_until, unique
from tests.support.paths import BASE_DIR
from tests.support.patient import patient_client

pytestmark = pytest.mark.django_db(transaction=True)


def holders(limit: Limit) -> list[Holder]:
    return list(limit.holders.exclude(condition=Condition.LEAVING).order_by("acquired_at"))


def test_a_global_limit_held_by_a_running_flow_names_its_holder_until_it_ends(
    prefect_server, flows
):
    name = unique("resource:db")
    holder = flows.start("gcl_holder", name=name, flow_run_name=unique("nightly-load"))
    acquired = holder.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    assert limit.kind == "global" and limit.resource == name
    assert limit.status == Status.HELD and limit.active_slots == 1
    [row] = holders(limit)
    assert str(row.flow_run_id) == acquired["flow_run_id"]
    assert str(row.task_run_id) == acquired["task_run_id"]
    assert row.flow_name == "gcl-holder"
    assert row.flow_run_name == acquired["flow_run_name"]
    assert row.task_run_name.startswith("gcl-holder-task")
    assert row.state_type == "RUNNING"
    assert abs(row.acquired_at.timestamp() - acquired["t"]) < 5
    holder.release()
    assert holder.wait() == 0
    limit = sync_until(prefect_server, name, lambda limit: limit.status == Status.FREE)
    assert limit.holder_count == 0 and not holders(limit)


def test_a_tag_limit_lists_its_holder_and_its_waiters_in_order(prefect_server, flows):
    tag = unique("resource:table")
    first = flows.start("tag_holder", tag=tag, flow_run_name="first")
    first.wait_event("acquired")
    second = flows.start("tag_holder", tag=tag, flow_run_name="second")
    second.wait_event("started")
    third = flows.start("tag_holder", tag=tag, flow_run_name="third")
    third.wait_event("started")
    limit = sync_until(prefect_server, f"tag:{tag}", lambda limit: limit.waiter_count == 2)
    assert limit.kind == "tag" and limit.resource == tag
    assert limit.status == Status.CONTENDED
    assert [h.flow_run_name for h in holders(limit)] == ["first"]
    assert holders(limit)[0].lease_seconds == 60
    waiters = list(limit.waiters.order_by("position"))
    assert [(w.position, w.flow_run_name) for w in waiters] == [(1, "second"), (2, "third")]
    assert all(w.state_type == "PENDING" and w.waiting_since for w in waiters)


def test_nested_tags_are_flagged_as_a_self_deadlock_naming_both_runs(prefect_server, flows):
    tag = unique("resource:nested")
    run = flows.start("nested_tags", tag=tag)
    run.wait_event("calling_inner", timeout=60)
    limit = sync_until(prefect_server, f"tag:{tag}", lambda limit: limit.is_deadlocked)
    assert limit.status == Status.DEADLOCKED
    [holder] = holders(limit)
    [waiter] = limit.waiters.all()
    assert waiter.deadlocked_by_id == holder.pk
    assert holder.flow_run_id == waiter.flow_run_id
    text = " ".join(item["text"] for item in limit.evidence if item["flag"] == "deadlocked")
    assert holder.task_run_name in text and waiter.task_run_name in text


def test_a_killed_tag_holder_frees_itself_then_shows_as_uncounted_never_as_a_zombie(
    prefect_server, flows, settings
):
    """Prefect takes a dead tag holder's lease back while its task run shows Running. Its
    task engine names only the task run as lease holder, nothing of its process: reslock
    cannot tell a dead holder from one that still works without a counted slot (partitioned,
    or hung while its renewals fail), so it never calls it a zombie."""
    settings.GRACE_SECONDS = 2
    tag = unique("resource:crash")
    victim = flows.start("tag_holder", tag=tag, flow_run_name=unique("doomed"))
    victim.wait_event("acquired")
    limit = sync_until(prefect_server, f"tag:{tag}", lambda limit: limit.holder_count == 1)
    victim.kill()
    # While the lease lives the holder still holds, and the lease says when it frees itself.
    limit = sync_until(prefect_server, f"tag:{tag}", lambda limit: limit.status == Status.HELD)
    [row] = holders(limit)
    assert row.condition == Condition.HOLDING and row.lease_seconds == 60
    # The lease expires first (the holder drops off Prefect's list), then Prefect's repossessor
    # lowers the counter a few seconds later.
    limit = sync_until(
        prefect_server,
        f"tag:{tag}",
        lambda limit: limit.status == Status.UNCOUNTED and limit.active_slots == 0,
        timeout=120,
        what="an uncounted holder on a freed slot",
    )
    assert not limit.is_held and not limit.has_zombie
    [row] = limit.holders.all()
    assert row.condition == Condition.UNCOUNTED and row.state_type == "RUNNING"
    assert "cannot tell whether it still runs inside" in row.evidence


def test_a_holder_whose_run_ended_while_its_slot_stays_counted_is_stale(prefect_server, flows):
    tag = unique("resource:reset")
    run = flows.start("tag_holder", tag=tag, reset_override=True, hold=0.5)
    assert run.wait(timeout=90) == 0
    limit = sync_until(prefect_server, f"tag:{tag}", lambda limit: limit.is_stale)
    assert limit.status == Status.STALE
    [row] = holders(limit)
    assert row.condition == Condition.STALE and row.state_type == "COMPLETED"
    assert "Completed" in row.evidence


def test_a_leaked_raw_increment_is_flagged_as_drift(prefect_server, flows, settings):
    settings.GRACE_SECONDS = 0
    name = unique("resource:leak")
    assert flows.start("raw_increment_leak", name=name).wait() == 0
    limit = sync_until(prefect_server, name, lambda limit: limit.has_drift)
    assert limit.status == Status.DRIFT and limit.active_slots == 1 and limit.holder_count == 0
    [evidence] = [item["text"] for item in limit.evidence if item["flag"] == "drift"]
    assert "1 slot(s) have no holder" in evidence


def test_deployment_runs_awaiting_a_slot_are_its_waiters(prefect_server, flows):
    run = flows.start("deployment_limit", runs=2, flow_run_name=unique("dep-run"))
    deployed = run.wait_event("deployed")
    created = run.wait_event("created")
    acquired = run.wait_event("acquired")
    name = f"deployment:{deployed['deployment_id']}"
    limit = sync_until(
        prefect_server, name, lambda limit: limit.waiter_count == 1 and limit.holder_count == 1
    )
    assert limit.kind == "deployment" and limit.status == Status.CONTENDED
    flow_name, deployment_name = limit.resource.split("/", 1)  # shown as flow/deployment
    assert flow_name and deployment_name == deployed["deployment_name"]
    [holder] = holders(limit)
    assert str(holder.flow_run_id) == acquired["flow_run_id"]
    assert holder.deployment_name == deployed["deployment_name"]
    [waiter] = limit.waiters.all()
    (other,) = set(created["flow_run_ids"]) - {acquired["flow_run_id"]}
    assert str(waiter.flow_run_id) == other
    assert waiter.state_name == "AwaitingConcurrencySlot" and waiter.position == 1


def test_a_limit_deleted_in_prefect_is_kept_and_marked_gone(prefect_server):
    name = unique("resource:old")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
        sync(prefect_server)
        assert Limit.objects.named(name).gone_at is None
        http.delete(f"/v2/concurrency_limits/{name}").raise_for_status()
    run = sync(prefect_server)
    limit = Limit.objects.named(name)
    assert limit.gone_at is not None and limit.status == Status.GONE
    assert run.gone >= 1
    assert name not in {row.name for row in Limit.objects.present()}


class CuttingProxy:
    """Forwards HTTP to Prefect, then drops every connection after `allow` requests: Prefect
    dying in the middle of a sync, as the sync sees it."""

    def __init__(self, target: str, allow: int) -> None:
        self.target, self.allow, self.seen = target, allow, 0
        import socket

        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/api"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn) -> None:
        with conn, httpx.Client(base_url=self.target, timeout=10) as upstream:
            reader = conn.makefile("rb")
            while True:
                request_line = reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode().split(" ", 2)
                headers = {}
                while (line := reader.readline()) not in (b"\r\n", b""):
                    key, value = line.decode().split(":", 1)
                    headers[key.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", 0)))
                self.seen += 1
                if self.seen > self.allow:
                    return  # connection dropped without an answer
                response = upstream.request(
                    method,
                    path.removeprefix("/api"),
                    content=body,
                    headers={"content-type": headers.get("content-type", "")},
                )
                head = f"HTTP/1.1 {response.status_code} X\r\ncontent-type: application/json\r\n"
                head += f"content-length: {len(response.content)}\r\n\r\n"
                conn.sendall(head.encode() + response.content)

    def close(self) -> None:
        self.server.close()


def test_prefect_failing_in_the_middle_of_a_sync_changes_nothing_and_is_recorded(prefect_server):
    prefix = unique("resource:bulk")
    with patient_client(prefect_server.api_url, timeout=30) as http:
        for index in range(210):  # more than one page of 200
            http.post("/v2/concurrency_limits/", json={"name": f"{prefix}-{index:03}", "limit": 1})
    sync(prefect_server)
    before = set(Limit.objects.present().values_list("name", flat=True))
    assert len([n for n in before if n.startswith(prefix)]) == 210
    proxy = CuttingProxy(prefect_server.api_url, allow=1)  # the first page only
    try:
        with PrefectAPI(proxy.url, timeout=5) as api:
            failed = sync_all(api)
    finally:
        proxy.close()
    assert failed.ok is False and "cannot reach Prefect" in failed.error
    assert set(Limit.objects.present().values_list("name", flat=True)) == before
    assert SyncRun.objects.last_finished() == failed
    assert SyncRun.objects.last_ok().ok is True


def test_prefect_down_keeps_the_last_good_state(prefect_server):
    name = unique("resource:kept")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    sync(prefect_server)
    count = Limit.objects.present().count()
    with PrefectAPI("http://127.0.0.1:9/api", timeout=2) as api:  # nothing listens on port 9
        failed = sync_all(api)
    assert failed.ok is False and "cannot reach Prefect" in failed.error
    assert Limit.objects.present().count() == count
    assert failed.summary().startswith("sync failed")


def test_only_one_sync_runs_at_a_time(prefect_server):
    token = try_lock(timezone.now())
    assert token is not None
    try:
        with PrefectAPI(prefect_server.api_url) as api:
            assert sync_all(api) is None  # a second sync exits at once
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PREFECT_API_URL": prefect_server.api_url,
        }
        from django.db import connection

        env["DATABASE_URL"] = f"sqlite:///{connection.settings_dict['NAME']}"
        result = subprocess.run(
            [sys.executable, "manage.py", "reslock_sync"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.stdout.strip() == "another sync is running; nothing done", result.stderr
    finally:
        unlock(token)
    with PrefectAPI(prefect_server.api_url) as api:
        assert sync_all(api).ok


def test_the_sync_command_prints_a_one_line_summary(prefect_server):
    from django.db import connection

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PREFECT_API_URL": prefect_server.api_url,
        "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "reslock_sync"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.strip().splitlines()
    assert line.startswith("synced ") and " limits in " in line
    failed = subprocess.run(
        [sys.executable, "manage.py", "reslock_sync"],
        cwd=BASE_DIR,
        env={**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert "sync failed" in failed.stderr and "cannot reach Prefect" in failed.stderr


def test_the_periodic_sync_task_runs_on_a_real_worker(prefect_server, celery_worker):
    from reslock_web.tasks import sync as sync_task

    before = SyncRun.objects.count()
    sync_task.delay()
    run = wait_for(
        lambda: (
            SyncRun.objects.filter(finished_at__isnull=False).count() > before
            and SyncRun.objects.last_finished()
        ),
        30,
        what="the worker's sync",
    )
    assert run.ok, run.error
    assert run.limits == Limit.objects.present().count() > 0


def test_counted_tag_holders_are_kept_while_the_counter_stands_still(
    prefect_server, flows, monkeypatch
):
    """Holders found by counting a tag's Running task runs are reused by the next pass, as a
    list read from Prefect is, instead of counting every run again; they are first in line
    for the check against Prefect's own list, of which a pass makes only a few."""
    from reslock_web.sync import gather as gather_module
    from reslock_web.sync.verdicts import NEVER_READ

    monkeypatch.setattr(gather_module, "VERIFY_PER_PASS", 0)  # as for the 4th counted tag on
    tag = unique("resource:counted")
    holder = flows.start("tag_holder", tag=tag, flow_run_name="counted")
    holder.wait_event("acquired")
    limit = sync_until(prefect_server, f"tag:{tag}", lambda limit: limit.holder_count == 1)
    assert [h.flow_run_name for h in holders(limit)] == ["counted"]
    assert limit.holders_checked_at == NEVER_READ

    asked: list[str] = []
    original = PrefectAPI.tagged_task_runs

    def tagged_task_runs(api, state):
        asked.append(state)
        return original(api, state)

    PrefectAPI.tagged_task_runs = tagged_task_runs
    try:
        sync(prefect_server)
    finally:
        PrefectAPI.tagged_task_runs = original
    limit = Limit.objects.named(f"tag:{tag}")
    assert [h.flow_run_name for h in holders(limit)] == ["counted"]
    assert "RUNNING" not in asked  # nothing moved: nothing counted again


def test_a_release_without_follows_ends_its_acquire_while_the_run_goes_on(
    prefect_server, flows, settings, tmp_path
):
    """Prefect sets `follows` on a release only within five minutes of its acquire: a longer
    hold ends with a release that names no acquire. It is paired by limit and run, so the
    run that goes on after it is no zombie."""
    settings.GRACE_SECONDS = 1
    name = unique("resource:long-hold")
    linger = tmp_path / "linger"
    holder = flows.start("gcl_holder", name=name, follows_window=0, linger_file=str(linger))
    acquired = holder.wait_event("acquired")
    sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    holder.release()
    holder.wait_event("lingering")
    released = "prefect.concurrency-limit.released"
    sync_until(
        prefect_server,
        name,
        lambda limit: (
            limit.active_slots == 0
            and LockEvent.objects.filter(event=released, limit_name=name).exists()
        ),
        what="the release to be read",
    )
    # Past the grace a lost slot would be a zombie by now. A real wait, not one for an event:
    # the verdict under test is reached only once the configured grace (1 s) has passed, and
    # nothing can be awaited instead of the clock.
    time.sleep(1.5)
    sync(prefect_server)
    limit = Limit.objects.named(name)
    assert limit.status == Status.FREE and not limit.has_zombie, limit.evidence
    assert not limit.holders.exists()
    acquire = LockEvent.objects.get(event="prefect.concurrency-limit.acquired", limit_name=name)
    assert acquire.closed_reason == "released"
    release = LockEvent.objects.get(event=released, limit_name=name)
    assert release.follows == acquire.event_id  # paired by limit and run
    with patient_client(prefect_server.api_url) as http:
        # Prefect's own release names no acquire; the task run is still Running.
        found = http.post(
            "/events/filter",
            json={
                "filter": {
                    "event": {"name": [released]},
                    "resource": {"id": [f"prefect.concurrency-limit.{limit.prefect_id}"]},
                }
            },
        ).json()["events"]
        assert [event["follows"] for event in found] == [None]
        task_run = http.get(f"/task_runs/{acquired['task_run_id']}").json()
        assert task_run["state"]["type"] == "RUNNING"
    linger.touch()
    assert holder.wait() == 0


def test_a_holder_of_several_slots_counts_all_of_them(prefect_server, flows, settings):
    """`concurrency(name, occupy=2)` takes two slots with one acquire event."""
    settings.GRACE_SECONDS = 0
    name = unique("resource:pool")
    two = flows.start("gcl_holder", name=name, limit=3, occupy=2, flow_run_name=unique("two"))
    two.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    assert limit.active_slots == 2 and limit.holder_slots == 2
    assert limit.status == Status.HELD and not limit.has_drift, limit.evidence
    assert [row.slots for row in holders(limit)] == [2]
    one = flows.start("gcl_holder", name=name, limit=3, create=False, flow_run_name=unique("one"))
    one.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 2)
    assert limit.active_slots == 3 and limit.holder_slots == 3
    assert limit.status == Status.HELD and not limit.has_drift, limit.evidence
    assert [row.slots for row in holders(limit)] == [2, 1]
    two.release()
    assert two.wait() == 0
    limit = sync_until(prefect_server, name, lambda limit: limit.active_slots == 1)
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    assert limit.holder_slots == 1 and not limit.has_drift, limit.evidence


def test_a_deployment_run_being_cancelled_keeps_its_slot_and_stays_a_holder(
    prefect_server, flows, settings
):
    """Prefect releases a deployment's slot only when its run leaves Cancelling: until the
    runner has stopped the process, the run holds it."""
    settings.GRACE_SECONDS = 0
    run = flows.start("deployment_limit", runs=1, ignore_cancel=True)
    deployed = run.wait_event("deployed")
    acquired = run.wait_event("acquired")
    name = f"deployment:{deployed['deployment_id']}"
    sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    with patient_client(prefect_server.api_url) as http:
        answer = http.post(
            f"/flow_runs/{acquired['flow_run_id']}/set_state",
            json={"state": {"type": "CANCELLING", "message": "cancelled by a test"}},
        ).json()
        assert answer["status"] == "ACCEPT", answer
    limit = sync_until(
        prefect_server,
        name,
        lambda limit: limit.holders.filter(state_type="CANCELLING").exists(),
        what="the run to show Cancelling",
    )
    sync(prefect_server)  # with no grace, drift or a zombie would show by now
    limit = Limit.objects.named(name)
    assert limit.active_slots == 1  # Prefect keeps the slot
    [holder] = holders(limit)
    assert holder.condition == Condition.HOLDING and holder.state_type == "CANCELLING"
    assert limit.status == Status.HELD and not limit.has_drift and not limit.has_zombie
    assert limit.holder_slots == 1
    assert run.process.poll() is None and not run.find_events("released")
    # End the run here, so that no later test sees its events.
    run.release()
    run.wait_event("released")


def test_a_holder_whose_task_run_prefect_has_not_recorded_yet_is_holding_not_stale(
    prefect_server, flows, settings, tmp_path
):
    """Prefect records task runs seconds after they start: a claim naming a task run it does
    not have yet is a holder, not a stale one, until Prefect shows the run."""
    settings.GRACE_SECONDS = 1
    name = unique("resource:unrecorded")
    record = tmp_path / "record"
    holder = flows.start("unrecorded_holder", name=name, record_file=str(record))
    acquired = holder.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    assert limit.status == Status.HELD and not limit.is_stale, limit.evidence
    # A real wait, not one for an event: "stale" could be reached only once the configured
    # grace (1 s) has passed, and nothing can be awaited instead of the clock.
    time.sleep(1.5)
    sync(prefect_server)
    limit = Limit.objects.named(name)
    assert limit.status == Status.HELD and not limit.is_stale, limit.evidence
    [row] = holders(limit)
    assert row.condition == Condition.HOLDING and str(row.task_run_id) == acquired["task_run_id"]
    assert "not yet in Prefect" in row.evidence and row.run_missing_since is None
    record.touch()
    holder.wait_event("recorded")
    limit = sync_until(
        prefect_server,
        name,
        lambda limit: holders(limit) and holders(limit)[0].state_type == "RUNNING",
        what="the task run to be found",
    )
    [row] = holders(limit)
    assert row.condition == Condition.HOLDING and row.task_run_name == "late-task"
    assert row.evidence == "" and limit.status == Status.HELD
    holder.release()
    assert holder.wait() == 0
    sync_until(prefect_server, name, lambda limit: limit.status == Status.FREE)


def test_a_limit_lowered_under_its_holders_shows_more_runs_inside_than_it_allows(
    prefect_server, flows
):
    name = unique("resource:lowered")
    first = flows.start("gcl_holder", name=name, limit=2, flow_run_name=unique("first"))
    first.wait_event("acquired")
    second = flows.start("gcl_holder", name=name, create=False, flow_run_name=unique("second"))
    second.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 2)
    assert limit.status == Status.HELD and not limit.is_over_limit
    with patient_client(prefect_server.api_url) as http:
        http.patch(f"/v2/concurrency_limits/{name}", json={"limit": 1}).raise_for_status()
    limit = sync_until(prefect_server, name, lambda limit: limit.limit == 1)
    assert limit.status == Status.OVER_LIMIT and limit.is_over_limit, limit.evidence
    assert limit.evidence[0]["flag"] == "over_limit"
    for row in holders(limit):
        assert row.task_run_name in limit.evidence[0]["text"]
    assert list(Limit.objects.facet("over_limit")) == [limit]
    first.release()
    assert first.wait() == 0
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    assert limit.status == Status.HELD and not limit.is_over_limit


def test_a_deployment_run_waiting_to_retry_in_its_process_keeps_its_slot_and_holds(
    prefect_server, flows, settings
):
    """A run that fails and retries in its process keeps its deployment lease through
    Scheduled/AwaitingRetry: it holds the slot while it waits."""
    settings.GRACE_SECONDS = 0
    run = flows.start("deployment_limit", runs=1, fail_first=True, retry_delay=30)
    deployed = run.wait_event("deployed")
    failing = run.wait_event("failing", timeout=90)
    name = f"deployment:{deployed['deployment_id']}"
    limit = sync_until(
        prefect_server,
        name,
        lambda limit: limit.holders.filter(state_name="AwaitingRetry").exists(),
        what="the run to wait for its retry",
    )
    sync(prefect_server)  # with no grace, drift or a zombie would show by now
    limit = Limit.objects.named(name)
    assert limit.active_slots == 1  # Prefect keeps the slot through the retry
    [holder] = holders(limit)
    assert str(holder.flow_run_id) == failing["flow_run_id"]
    assert holder.condition == Condition.HOLDING and holder.state_type == "SCHEDULED"
    assert limit.status == Status.HELD and not limit.has_drift and not limit.has_zombie
    assert not run.find_events("acquired")  # still waiting to retry
    run.wait_event("acquired", timeout=90)
    limit = sync_until(
        prefect_server, name, lambda limit: holders(limit)[0].state_type == "RUNNING"
    )
    assert limit.status == Status.HELD and limit.holder_count == 1
    run.release()  # the run completes here, so that no later test sees its events
    run.wait_event("released")
