"""What the worker ends with when Prefect moved on or refuses, on the real stack: a holder that
left before the worker ran is skipped, a limit deleted meanwhile or a change Prefect refuses
fails in words, without retrying."""

from __future__ import annotations

import pytest
from django.urls import reverse

from reslock_web.models import Operation, OperationStatus
from tests.support.operating import form, sync, sync_until, unique
from tests.support.patient import patient_client

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_holder_that_left_before_the_worker_ran_is_skipped(
    prefect_server, flows, operator_client
):
    from reslock_web.tasks import operate

    name = unique("db-left")
    holder = flows.start("helper_holder", name=name, flow_run_name="gone-soon")
    holder.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    row = limit.holders.get()
    url = reverse("operate", args=["release", name]) + f"?holder={row.pk}"
    # No worker runs: the operation waits while the holder leaves by itself.
    response = operator_client.post(url, {**form(operator_client, url), "reason": "hangs"})
    assert response.status_code == 302
    operation = Operation.objects.get(limit=limit)
    assert operation.status == OperationStatus.PENDING
    holder.release()
    assert holder.wait(timeout=60) == 0
    operate.apply(args=[operation.pk])  # the worker's run of it, now
    operation.refresh_from_db()
    assert operation.status == OperationStatus.SKIPPED, operation.message
    assert "already left" in operation.message
    with patient_client(prefect_server.api_url) as http:
        data = http.get(f"/v2/concurrency_limits/{name}").json()
    assert data["active_slots"] == 0 and data["limit"] == 1  # no placeholder, nothing changed
    assert "placeholder" not in operation.params


def test_a_limit_deleted_before_the_worker_ran_fails_in_words_without_retrying(
    prefect_server, operator_client
):
    from reslock_web.tasks import operate

    name = unique("resource:deleted")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
        sync(prefect_server)
        url = reverse("operate", args=["set-limit", name])
        assert (
            operator_client.post(url, {**form(operator_client, url), "value": "4"}).status_code
            == 302
        )
        http.delete(f"/v2/concurrency_limits/{name}").raise_for_status()
    operation = Operation.objects.get(limit__name=name)
    operate.apply(args=[operation.pk])
    operation.refresh_from_db()
    assert operation.status == OperationStatus.FAILED, operation.message
    assert "no longer exists in Prefect" in operation.message
    assert "nothing was changed" in operation.message
    assert operation.attempts == 1


def test_a_change_prefect_refuses_fails_in_words_without_retrying(
    prefect_server, proxy, operator_client
):
    from reslock_web.tasks import operate

    name = unique("resource:refused")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    sync(prefect_server)
    url = reverse("operate", args=["deactivate", name])
    assert operator_client.post(url, form(operator_client, url)).status_code == 302
    operation = Operation.objects.get(limit__name=name)
    proxy.fail(422)  # every answer is Prefect's "unprocessable": no retry can fix that
    operate.apply(args=[operation.pk])
    proxy.ok()
    operation.refresh_from_db()
    assert operation.status == OperationStatus.FAILED, operation.message
    assert operation.message.startswith("Failed: Prefect refused the change (HTTP 422)")
    assert "not retried" in operation.message and operation.attempts == 1
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active"] is True
