"""The fenced release of a live helper holder, on the real stack: a real Prefect server, real
helper holders in subprocesses, a real Celery worker on real Redis. The oracle is the bodies'
own enter and leave times: the next holder never gets in before the revoked one has left."""

from __future__ import annotations

import time
import uuid

import pytest
from django.urls import reverse

from reslock_web.models import Condition, Operation, OperationKind, OperationStatus
from reslock_web.operations.requests import holder_snapshot
from tests.support.net import wait_for
from tests.support.operating import (
    ask_release,
    finished,
    form,
    holder_and_waiter,
    status_becomes,
    sweep_until_finished,
    sync_until,
    unique,
)
from tests.support.patient import patient_client
from tests.support.slot_watch import CounterWatch

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_holder_blocked_in_a_long_call_keeps_the_resource_closed_until_it_has_left(
    prefect_server, flows, celery_worker, operator_client, settings
):
    # A job may wait 17 s here (its soft limit less a margin): the holder's body is blocked in
    # one 70 s call, far longer, and only stops when that call returns.
    settings.OPERATION_TIMEOUT_SECONDS = 40
    name = unique("db-blocked")
    holder, waiter, limit = holder_and_waiter(flows, prefect_server, name, block=70)
    with CounterWatch(prefect_server, name) as counter:
        operation = ask_release(operator_client, limit)
        fencing = status_becomes(operation, OperationStatus.FENCING, timeout=90)
        fencing_seen = time.time()
        assert "Keeping the resource closed" in fencing.message, fencing.message
        assert fencing.finished_at is None

        # Another operation on the same limit waits its turn instead of writing counts that
        # the fence relies on. (It asks for the size the limit has: another size would make
        # the waiting helper refuse the limit as not what it asked for.)
        url = reverse("operate", args=["set-limit", name])
        response = operator_client.post(url, {**form(operator_client, url), "value": "1"})
        assert response.status_code == 302
        change = Operation.objects.get(limit=limit, kind=OperationKind.SET_LIMIT)
        wait_for(
            lambda: "Waiting: operation #" in Operation.objects.get(pk=change.pk).message,
            30,
            what="the set-limit to say what it waits for",
        )
        assert Operation.objects.get(pk=change.pk).status == OperationStatus.PENDING

        done = sweep_until_finished(operation, timeout=180)
        left = holder.wait_event("left", timeout=10)
        lost = holder.wait_event("lost", timeout=30)
        acquired = waiter.wait_event("acquired", timeout=60)
        change = finished(change.pk, timeout=60)
    assert done.status == OperationStatus.SUCCEEDED, done.message
    # Its release event, or its process seen ended (whichever reslock notices first).
    assert "reported that its block had stopped" in done.message or "has ended" in done.message
    assert "open again" in done.message
    assert lost["reason"].startswith("the lease was revoked")
    # The oracle: the blocked body left before the next holder got in.
    assert left["t"] < acquired["t"], (left, acquired)
    # The placeholder was counted until then: Prefect never showed the limit free while the
    # blocked body was inside (the waiter would have taken it).
    inside = counter.between(fencing_seen, left["t"])
    assert inside and min(inside) >= 1, inside
    # The set-limit ran after the fence had ended, not beside it.
    assert change.status == OperationStatus.SKIPPED, change.message
    assert "already 1" in change.message
    assert change.started_at >= done.finished_at
    waiter.release()
    assert waiter.wait() == 0


def test_a_revoke_whose_answer_is_lost_counts_as_applied_and_keeps_the_resource_closed(
    prefect_server, flows, celery_worker, operator_client, settings, proxy
):
    # Prefect applies the revoke but its answer comes after the worker has given up on it.
    settings.PREFECT_TIMEOUT_SECONDS = 2
    proxy.route("/decrement-with-lease", "hold", seconds=20)
    name = unique("db-lost-answer")
    holder, waiter, limit = holder_and_waiter(flows, prefect_server, name)
    operation = ask_release(operator_client, limit)
    lost = holder.wait_event("lost", timeout=120)  # its next renewal finds the lease revoked
    left = holder.wait_event("left", timeout=10)
    done = sweep_until_finished(operation, timeout=120)
    acquired = waiter.wait_event("acquired", timeout=60)
    assert left["t"] < acquired["t"], (left, acquired)
    assert lost["reason"].startswith("the lease was revoked")
    assert done.status == OperationStatus.SUCCEEDED, done.message
    assert "revoke_error" in done.params["fence"]
    waiter.release()
    assert waiter.wait() == 0


def test_prefect_failing_while_the_fence_waits_never_opens_the_resource(
    prefect_server, flows, celery_worker, operator_client, proxy
):
    name = unique("db-events-down")
    holder, waiter, limit = holder_and_waiter(flows, prefect_server, name)
    operation = ask_release(operator_client, limit)
    wait_for(
        lambda: (
            Operation.objects.get(pk=operation.pk).params.get("fence", {}).get("stage")
            == "revoking"
        ),
        60,
        interval=0.05,
        what="the revoke",
    )
    proxy.route("/events/filter", "fail", status=500)  # the fence can no longer see the holder
    fencing = status_becomes(operation, OperationStatus.FENCING, timeout=60)
    assert "looking failed" in fencing.message, fencing.message
    lost = holder.wait_event("lost", timeout=90)
    left = holder.wait_event("left", timeout=10)
    time.sleep(3)
    # Still closed while Prefect cannot be read: the waiter stays out.
    assert not waiter.find_events("acquired")
    proxy.ok()
    done = sweep_until_finished(operation, timeout=120)
    acquired = waiter.wait_event("acquired", timeout=60)
    assert left["t"] < acquired["t"] and lost["t"] < acquired["t"]
    assert done.status == OperationStatus.SUCCEEDED, done.message
    waiter.release()
    assert waiter.wait() == 0


def test_a_throttled_placeholder_removal_keeps_the_resource_closed_until_the_sweep_removes_it(
    prefect_server, flows, celery_worker, operator_client, proxy
):
    """Prefect refuses the placeholder's removal with a 429 past the job's patience: it was
    not carried out, so the fence goes back to waiting to remove it, and the sweep removes it
    once; the resource opens then, without a slot left counted."""
    removal = "/concurrency_limits/decrement$"  # by name; the revoke is "-with-lease"
    proxy.route(removal, "fail", status=429, retry_after=600, times=1)
    name = unique("db-throttled-removal")
    holder, waiter, limit = holder_and_waiter(flows, prefect_server, name)
    operation = ask_release(operator_client, limit)
    fencing = status_becomes(operation, OperationStatus.FENCING, timeout=120)
    assert "removing the placeholder slot had to wait" in fencing.message, fencing.message
    assert fencing.params["fence"]["stage"] == "revoking"
    holder.wait_event("left", timeout=10)
    assert not waiter.find_events("acquired")  # the placeholder is still counted
    done = sweep_until_finished(operation, timeout=120)
    assert done.status == OperationStatus.SUCCEEDED and "open again" in done.message, done.message
    waiter.wait_event("acquired", timeout=60)
    removals = [path for _, method, path in proxy.received if path.endswith(removal[:-1])]
    assert len(removals) == 2  # the refused one, then the one Prefect carried out
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 1  # the waiter
    waiter.release()
    assert waiter.wait() == 0


def test_a_lease_over_several_resources_is_refused_on_the_page_and_by_the_worker(
    prefect_server, flows, celery_worker, operator_client
):
    first, second = unique("db-pair-a"), unique("db-pair-b")
    holder = flows.start("helper_holder", names=[first, second], flow_run_name="pair-job")
    holder.wait_event("acquired")
    waiter = flows.start("helper_holder", name=first, flow_run_name="next-job")
    waiter.wait_event("want")
    limit = sync_until(
        prefect_server, first, lambda limit: limit.holder_count == 1 and limit.waiter_count == 1
    )
    sync_until(prefect_server, second, lambda limit: limit.holder_count == 1)
    row = limit.holders.get()
    url = reverse("operate", args=["release", first]) + f"?holder={row.pk}"
    page = operator_client.get(url).content.decode()
    assert "Refused: this lease holds other resources too." in page
    assert second in page
    response = operator_client.post(url, {**form(operator_client, url), "reason": "hangs"})
    assert response.status_code == 400
    assert not Operation.objects.exists()

    # The worker refuses by itself too: it reads the lease's acquire from Prefect, whatever
    # the board showed when the operation was asked for.
    from reslock_web.operations.queue import send

    operation = Operation.objects.create(
        kind=OperationKind.RELEASE_HOLDER,
        limit=limit,
        limit_name=limit.name,
        holder_key=row.key,
        holder=holder_snapshot(row),
        reason="hangs",
        requested_by_name="olga-operator",
        token=uuid.uuid4(),
    )
    send(operation.pk)
    done = finished(operation.pk, timeout=60)
    assert done.status == OperationStatus.SKIPPED, done.message
    assert "also holds" in done.message and second in done.message
    assert "fence" not in done.params or done.params["fence"].get("stage") is None
    with patient_client(prefect_server.api_url) as http:
        for limit_name in (first, second):
            slots = http.get(f"/v2/concurrency_limits/{limit_name}").json()["active_slots"]
            assert slots == 1, limit_name
        acquired = holder.wait_event("acquired")
        renewed = http.post(
            f"/v2/concurrency_limits/leases/{acquired['lease_id']}/renew",
            json={"lease_duration": 60},
        )
        assert renewed.status_code == 204  # the lease was never touched
    assert not holder.find_events("lost")
    holder.release()
    waiter.wait_event("acquired", timeout=60)
    waiter.release()
    assert holder.wait() == 0 and waiter.wait() == 0


def test_an_operation_timeout_too_short_for_the_longest_fence_is_reported_at_start_up(settings):
    from django.core.management import call_command

    from reslock_web.operations import fence

    settings.OPERATION_TIMEOUT_SECONDS = 300
    assert fence.check_operation_timeout() == []
    settings.OPERATION_TIMEOUT_SECONDS = 100
    [warning] = fence.check_operation_timeout()
    assert warning.id == "reslock.W001"
    assert "wait 65 s within its job" in warning.msg and "never opened early" in warning.hint
    # Registered: every manage.py command (migrate, reslock_prepare) shows it.
    with pytest.raises(Exception, match="reslock.W001"):
        call_command("check", fail_level="WARNING")


def test_a_holder_that_goes_silent_while_still_inside_is_taken_as_dead_only_then(
    prefect_server, flows, celery_worker, settings
):
    """From another machine a killed holder cannot be proved dead: the helper's `stopping`
    announcements are the evidence of life, and only silence after them lifts the fence."""
    from reslock_web.operations.queue import send

    settings.OPERATION_TIMEOUT_SECONDS = 40
    name = unique("db-silent")
    holder, waiter, limit = holder_and_waiter(flows, prefect_server, name, block=300)
    row = limit.holders.get(condition=Condition.HOLDING)
    # As the board of another machine sees it: no process identity it could check.
    operation = Operation.objects.create(
        kind=OperationKind.RELEASE_HOLDER,
        limit=limit,
        limit_name=limit.name,
        holder_key=row.key,
        holder={**holder_snapshot(row), "process": {}},
        reason="hangs",
        requested_by_name="olga-operator",
        token=uuid.uuid4(),
    )
    send(operation.pk)
    status_becomes(operation, OperationStatus.FENCING, timeout=90)
    # The renewal finds the lease revoked; the body, blocked, keeps announcing it is inside.
    from reslock_web.celery import app

    def announced() -> bool:
        app.send_task("reslock.sweep")
        fence = Operation.objects.get(pk=operation.pk).params.get("fence", {})
        return fence.get("heard", 0) >= 2

    wait_for(announced, 120, interval=2, what="the holder's stopping announcements")
    assert Operation.objects.get(pk=operation.pk).status == OperationStatus.FENCING
    holder.kill()
    killed_at = time.time()
    done = sweep_until_finished(operation, timeout=150)
    acquired = waiter.wait_event("acquired", timeout=60)
    assert done.status == OperationStatus.SUCCEEDED, done.message
    assert "went silent" in done.message and "taken as dead" in done.message
    # Lifted only after the silence had lasted: never while it was still announcing.
    assert done.finished_at.timestamp() >= killed_at + 10
    assert acquired["t"] > killed_at
    waiter.release()
    assert waiter.wait() == 0
