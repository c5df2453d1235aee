"""Operations that would let a second run in are refused, on the real stack (a real Prefect
server, real holders in subprocesses, a real Celery worker on real Redis)."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from reslock_web.models import (
    Condition,
    Holder,
    Kind,
    Operation,
    OperationKind,
    OperationStatus,
    SyncState,
)
from reslock_web.operations.plans import plan_release
from reslock_web.operations.queue import send
from reslock_web.operations.requests import holder_snapshot
from reslock_web.sync.lock import try_lock, unlock, where_pids_mean_something
from tests.support.board_data import make_limit
from tests.support.operating import finished, form, sync_until, unique
from tests.support.patient import patient_client

pytestmark = pytest.mark.django_db(transaction=True)


def operation_for(limit, kind: str, holder: dict | None = None, **params) -> Operation:
    """An operation as the confirmation page records it, for what the board showed."""
    return Operation.objects.create(
        kind=kind,
        limit=limit,
        limit_name=limit.name,
        holder_key=(holder or {}).get("key", ""),
        holder=holder or {},
        params=params,
        reason="test",
        requested_by_name="olga-operator",
        token=uuid.uuid4(),
    )


def test_operations_on_one_limit_take_turns():
    limit = make_limit("resource:turns")
    first = operation_for(limit, OperationKind.SET_LIMIT, value=2, expected=1)
    second = operation_for(limit, OperationKind.ACTIVATE)
    other = operation_for(make_limit("resource:other"), OperationKind.ACTIVATE)
    assert Operation.objects.claim(first.pk)
    assert not Operation.objects.claim(second.pk)  # the database refuses a second one
    assert Operation.objects.get(pk=second.pk).status == OperationStatus.PENDING
    assert Operation.objects.claim(other.pk)  # another limit is not held up
    assert Operation.objects.acting_on(limit.pk).pk == first.pk
    # Keeping a resource closed counts as acting on it, too.
    Operation.objects.filter(pk=first.pk).update(status=OperationStatus.FENCING)
    assert not Operation.objects.claim(second.pk)
    Operation.objects.filter(pk=first.pk).update(status=OperationStatus.SUCCEEDED)
    assert Operation.objects.claim(second.pk)


def test_a_stale_release_of_a_run_prefect_does_not_return_changes_nothing(
    prefect_server, flows, celery_worker
):
    """Prefect writes task runs a little after they start: one it does not return may be a
    live holder's. Its lease must not be revoked."""
    name = unique("db-unwritten")
    holder = flows.start("helper_holder", name=name)
    acquired = holder.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    row = limit.holders.get()
    snapshot = {
        **holder_snapshot(row),
        "key": row.key,
        "condition": Condition.STALE,
        "task_run_id": str(uuid.uuid4()),  # a task run Prefect has not (yet) written
    }
    operation = operation_for(limit, OperationKind.RELEASE_HOLDER, holder=snapshot)
    send(operation.pk)
    done = finished(operation.pk)
    assert done.status == OperationStatus.SKIPPED, done.message
    assert "may not have been written yet" in done.message
    with patient_client(prefect_server.api_url) as http:
        renewed = http.post(
            f"/v2/concurrency_limits/leases/{acquired['lease_id']}/renew",
            json={"lease_duration": 60},
        )
        assert renewed.status_code == 204  # the live holder's lease was left alone
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 1
    holder.release()
    assert holder.wait() == 0
    assert not holder.find_events("lost")


def test_activating_a_limit_with_runs_inside_is_refused_until_they_have_left(
    prefect_server, flows, celery_worker, operator_client
):
    """Prefect does not count a run that entered an inactive limit, yet lowers the counter
    when its lease ends: activated meanwhile, the limit would let a second run in."""
    name = unique("resource:inactive")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
        http.patch(f"/v2/concurrency_limits/{name}", json={"active": False}).raise_for_status()
    inside = flows.start("gcl_holder", name=name, create=False, flow_run_name="while-off")
    inside.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    url = reverse("operate", args=["activate", name])
    page = operator_client.get(url).content.decode()
    assert "Refused for now: runs are inside." in page and "while-off" in page
    assert operator_client.post(url, form(operator_client, url)).status_code == 400
    # The worker checks again itself, on a fresh read.
    operation = operation_for(limit, OperationKind.ACTIVATE)
    send(operation.pk)
    done = finished(operation.pk)
    assert done.status == OperationStatus.SKIPPED, done.message
    assert "while the limit was inactive" in done.message
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active"] is False
    inside.release()
    assert inside.wait() == 0
    sync_until(prefect_server, name, lambda limit: limit.holder_count == 0)
    assert "Activate " in operator_client.get(url).content.decode()
    response = operator_client.post(url, form(operator_client, url))
    assert response.status_code == 302
    done = finished(Operation.objects.exclude(pk=operation.pk).get(limit=limit).pk)
    assert done.status == OperationStatus.SUCCEEDED, done.message


def test_a_tag_repair_never_lowers_more_than_the_operator_was_shown(
    prefect_server, flows, celery_worker, operator_client, settings
):
    settings.GRACE_SECONDS = 0
    tag = unique("resource:shown")
    leak = {"names": [f"tag:{tag}"], "slots": 1, "mode": "concurrency"}
    with patient_client(prefect_server.api_url) as http:
        http.post("/concurrency_limits/", json={"tag": tag, "concurrency_limit": 3})
        holder = flows.start("tag_holder", tag=tag, create=False)
        holder.wait_event("acquired")
        http.post("/v2/concurrency_limits/increment", json=leak).raise_for_status()
        limit = sync_until(prefect_server, f"tag:{tag}", lambda limit: limit.active_slots == 2)
        url = reverse("operate", args=["repair", limit.name])
        body = {**form(operator_client, url), "reason": "one leaked increment"}
        assert "by at most 1 " in operator_client.get(url).content.decode()
        # A second leak after the operator looked: not what they agreed to lower.
        http.post("/v2/concurrency_limits/increment", json=leak).raise_for_status()
        started = timezone.now()
        assert operator_client.post(url, body).status_code == 302
        done = finished(Operation.objects.get(limit=limit).pk, timeout=90)
        assert done.status == OperationStatus.SUCCEEDED, done.message
        assert "Lowered used slots by 1" in done.message
        # Two readings of Prefect, far enough apart for its repossessor to have run between.
        assert (done.finished_at - started).total_seconds() >= 20
        assert http.get(f"/v2/concurrency_limits/tag:{tag}").json()["active_slots"] == 2
    assert done.params["shown_extra"] == 1
    holder.release()
    assert holder.wait() == 0


def test_the_fence_is_refused_on_a_limit_with_free_room_and_for_a_long_lease(
    prefect_server, flows, operator_client
):
    roomy, long_lease = unique("db-roomy"), unique("db-long-lease")
    holders = [
        flows.start("helper_holder", name=roomy, limit=2, flow_run_name="roomy-job"),
        flows.start("helper_holder", name=long_lease, lease_duration=300, flow_run_name="long"),
    ]
    for holder in holders:
        holder.wait_event("acquired")
    for name, refusal in [
        (roomy, "Refused: the limit has free room."),
        (long_lease, "Refused: this lease is too long to fence."),
    ]:
        limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
        url = reverse("operate", args=["release", name]) + f"?holder={limit.holders.get().pk}"
        assert refusal in operator_client.get(url).content.decode()
        response = operator_client.post(url, {**form(operator_client, url), "reason": "stuck"})
        assert response.status_code == 400
    assert not Operation.objects.exists()
    for holder in holders:
        holder.release()
        assert holder.wait() == 0


def test_a_stale_tag_holder_running_again_is_left_alone(
    prefect_server, flows, celery_worker, operator_client
):
    tag = unique("resource:again")
    stale = flows.start("tag_holder", tag=tag, reset_override=True, hold=0.5)
    assert stale.wait(timeout=90) == 0
    ended = stale.wait_event("acquired")
    limit = sync_until(prefect_server, f"tag:{tag}", lambda limit: limit.is_stale)
    holder = limit.holders.get(condition=Condition.STALE)
    with patient_client(prefect_server.api_url) as http:
        # Prefect shows it running again after the board looked (a retry, a late state).
        http.post(
            f"/task_runs/{ended['task_run_id']}/set_state",
            json={"state": {"type": "RUNNING"}, "force": True},
        ).raise_for_status()
        url = reverse("operate", args=["release", limit.name]) + f"?holder={holder.pk}"
        response = operator_client.post(url, {**form(operator_client, url), "reason": "stuck"})
        assert response.status_code == 302
        done = finished(Operation.objects.get(limit=limit).pk)
        assert done.status == OperationStatus.SKIPPED, done.message
        assert "again: it may be working, so its slot stays" in done.message
        state = http.get(f"/task_runs/{ended['task_run_id']}").json()["state"]
        assert state["type"] == "RUNNING"  # not crashed
        assert http.get(f"/v2/concurrency_limits/tag:{tag}").json()["active_slots"] == 1


def test_the_sync_lock_frees_itself_once_it_expires():
    from reslock_web.sync.lock import LOCK_SECONDS

    now = timezone.now()
    first = try_lock(now)
    assert first is not None
    assert try_lock(now + timedelta(seconds=LOCK_SECONDS - 1)) is None  # held
    # Its holder died without unlocking: the lock frees itself when it expires.
    second = try_lock(now + timedelta(seconds=LOCK_SECONDS + 1))
    assert second is not None and second != first
    unlock(first)  # the dead one's late unlock cannot free the new holder's lock
    assert SyncState.objects.get(name=SyncState.SYNC).locked_by == second
    unlock(second)
    assert try_lock(now + timedelta(seconds=LOCK_SECONDS + 2)) is not None


def test_a_sync_lock_left_by_a_process_that_died_here_is_taken_over_at_once():
    """A killed worker or listener would otherwise keep every sync out for LOCK_SECONDS."""
    now = timezone.now()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        for pid, host, expected in [
            (alive.pid, where_pids_mean_something(), False),  # running: it may be syncing
            (dead.pid, "another-machine", False),  # elsewhere: this machine cannot tell
            # Same host name, another PID namespace (a container on the host's network).
            (dead.pid, f"{socket.gethostname()}/pid:[1]", False),
            (dead.pid, where_pids_mean_something(), True),
        ]:
            token = f"{host}:{pid}:123"
            SyncState.objects.update_or_create(
                name=SyncState.SYNC,
                defaults={"locked_by": token, "locked_until": now + timedelta(seconds=200)},
            )
            taken = try_lock(now)
            assert (taken is not None) is expected, (pid, host)
            if taken:
                unlock(taken)
    finally:
        alive.kill()
        alive.wait()


def test_a_drift_repair_counts_every_slot_a_holder_takes(
    prefect_server, flows, celery_worker, operator_client, settings
):
    """`concurrency(name, occupy=2)` takes two slots with one acquire: a repair that counted
    holders instead of slots would free one of them and let a second holder in."""
    settings.GRACE_SECONDS = 0
    settings.ASSUMED_LEASE_SECONDS = 5
    name = unique("resource:occupy")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 3}).raise_for_status()
        holder = flows.start("gcl_holder", name=name, create=False, occupy=2)
        holder.wait_event("acquired")
        # One leaked slot beside it: the limit is full, 3 of 3.
        http.patch(f"/v2/concurrency_limits/{name}", json={"active_slots": 3}).raise_for_status()
    waiter = flows.start("gcl_holder", name=name, create=False, occupy=2, flow_run_name="next")
    waiter.wait_event("waiting")
    limit = sync_until(
        prefect_server, name, lambda limit: limit.holder_slots == 2 and limit.has_drift
    )
    url = reverse("operate", args=["repair", name])
    from tests.support.net import wait_for

    wait_for(
        lambda: "by at most 1 " in operator_client.get(url).content.decode(),
        60,
        interval=1,
        what="the repair of one slot to be offered",
    )
    body = {**form(operator_client, url), "reason": "leaked", "accept_risk": "on"}
    assert operator_client.post(url, body).status_code == 302
    done = finished(Operation.objects.get(limit=limit).pk)
    assert done.status == OperationStatus.SUCCEEDED, done.message
    assert "Lowered used slots by 1" in done.message
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 2
    import time

    time.sleep(3)  # the waiter (2 slots) would be in by now if the repair had freed too much
    assert not waiter.find_events("acquired")
    holder.release()
    acquired = waiter.wait_event("acquired", timeout=60)
    assert acquired["t"] > holder.wait_event("released")["t"]
    waiter.release()
    assert holder.wait() == 0 and waiter.wait() == 0


def test_a_stale_deployment_run_with_a_known_lease_is_never_revoked():
    """Prefect carries a deployment run's lease into an in-process retry: revoking the lease of
    a run shown over could let the next run in beside it when it comes back Running."""
    limit = make_limit(unique("deployment:stale"), kind=Kind.DEPLOYMENT)
    holder = Holder.objects.create(
        limit=limit,
        key="run",
        source="deployment",
        condition=Condition.STALE,
        flow_run_id=uuid.uuid4(),
        lease_id=uuid.uuid4(),
        state_type="CRASHED",
    )
    plan = plan_release(limit, holder)
    assert not plan.allowed
    assert "in-process retry" in plan.safety
