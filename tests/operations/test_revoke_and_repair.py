"""A stale helper lease revoked from the board, and a leaked global slot lowered once no lease
can be live, on the real stack: the waiter gets in, the old lease stays revoked, and Prefect's
counter is watched throughout."""

from __future__ import annotations

import os
import signal

import pytest
from django.urls import reverse

from reslock_web.models import Condition, Operation, OperationStatus
from tests.support.net import freeze, kill, wait_for
from tests.support.operating import finished, form, sync_until, unique
from tests.support.patient import patient_client
from tests.support.slot_watch import CounterWatch

pytestmark = pytest.mark.django_db(transaction=True)


def test_revoking_a_stale_helper_lease_lets_the_waiter_in_and_ignores_the_old_lease(
    prefect_server, flows, celery_worker, operator_client
):
    name = unique("db-stale")
    old = flows.start("helper_holder", name=name, where="flow", flow_run_name="frozen-job")
    held = old.wait_event("acquired")
    # Its announcement reaches Prefect from a background thread: wait until the board has it.
    sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    # The process hangs (it can neither renew nor release) and its run is then ended from
    # outside: the helper's 60 s lease is still live, so only a revoke frees the slot early.
    freeze(held["pid"])
    try:
        with patient_client(prefect_server.api_url) as http:
            http.post(
                f"/flow_runs/{held['flow_run_id']}/set_state",
                json={"state": {"type": "COMPLETED"}, "force": True},
            ).raise_for_status()
        waiter = flows.start("helper_holder", name=name, flow_run_name="next-job")
        waiter.wait_event("want")
        limit = sync_until(prefect_server, name, lambda limit: limit.is_stale)
        row = limit.holders.get(condition=Condition.STALE)
        assert str(row.lease_id) == held["lease_id"]
        url = reverse("operate", args=["release", name]) + f"?holder={row.pk}"
        assert "Revoke the lease of" in operator_client.get(url).content.decode()
        with CounterWatch(prefect_server, name) as watch:
            operator_client.post(url, {**form(operator_client, url), "reason": "job hung"})
            operation = finished(Operation.objects.get(limit=limit).pk)
            assert operation.status == OperationStatus.SUCCEEDED, operation.message
            assert f"lease {held['lease_id']} revoked" in operation.message
            acquired = waiter.wait_event("acquired", timeout=30)
            # The revoke freed the slot, not the lease running out (60 s after it was taken).
            assert acquired["t"] - operation.started_at.timestamp() < 15
            assert acquired["t"] < held["t"] + 60
            with patient_client(prefect_server.api_url) as http:
                # The old process wakes up late and renews, then releases, its revoked lease.
                renew = http.post(
                    f"/v2/concurrency_limits/leases/{held['lease_id']}/renew",
                    json={"lease_duration": 60},
                )
                assert renew.status_code == 410, renew.text
                http.post(
                    "/v2/concurrency_limits/decrement-with-lease",
                    json={"lease_id": held["lease_id"]},
                ).raise_for_status()
                os.kill(held["pid"], signal.SIGCONT)
                old.release()  # it leaves its block and releases the revoked lease itself
                wait_for(
                    lambda: old.find_events("released") or old.find_events("lost"),
                    30,
                    what="the old holder to leave",
                )
                old.wait(timeout=60)
                assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 1
            assert not waiter.find_events("lost")  # next-job is still inside, alone
            waiter.release()
            waiter.wait_event("released", timeout=30)
        assert max(slots for _, slots in watch.samples) <= 1
    finally:
        kill(held["pid"])


def test_a_global_drift_repair_lowers_a_leaked_slot_once_no_lease_can_be_live(
    prefect_server, flows, celery_worker, operator_client, settings, proxy
):
    settings.GRACE_SECONDS = 0
    # Any lease taken when the slot appeared, announced or not, has run out 5 s + Prefect's
    # repossessor delay later: the repair is allowed then, and only then.
    settings.ASSUMED_LEASE_SECONDS = 5
    name = unique("resource:leak-old")
    assert flows.start("raw_increment_leak", name=name).wait() == 0
    limit = sync_until(prefect_server, name, lambda limit: limit.has_drift)
    url = reverse("operate", args=["repair", name])
    assert "Refused for now" in operator_client.get(url).content.decode()
    wait_for(
        lambda: "Lower the counter of" in operator_client.get(url).content.decode(),
        60,
        interval=1,
        what="the repair to be allowed",
    )
    page = operator_client.get(url).content.decode()
    assert "reslock cannot show that no lease stands behind them" in page
    # Nobody can show that no lease stands behind the slot: the operator must say they take
    # the risk, and the audit trail keeps that.
    response = operator_client.post(url, {**form(operator_client, url), "reason": "leaked"})
    assert response.status_code == 400
    assert "needs your explicit acceptance of the risk" in response.content.decode()
    assert not Operation.objects.exists()
    # The worker decides only on a fresh read of Prefect: while that fails, nothing changes.
    proxy.route("/events/filter", "fail", status=500)
    body = {**form(operator_client, url), "reason": "leaked", "accept_risk": "on"}
    response = operator_client.post(url, body)
    assert response.status_code == 302
    operation = Operation.objects.get(limit=limit)
    wait_for(
        lambda: "could not be read again" in Operation.objects.get(pk=operation.pk).message,
        60,
        what="the failed re-read",
    )
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 1
    proxy.ok()
    operation = finished(operation.pk, timeout=90)
    assert operation.status == OperationStatus.SUCCEEDED, operation.message
    assert "Lowered used slots by 1" in operation.message
    assert operation.params["risk_accepted"].startswith("I take the risk")
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 0
    assert operation.before["active_slots"] == 1 and operation.after["active_slots"] == 0
    limit.refresh_from_db()
    assert not limit.has_drift and limit.active_slots == 0
