"""More operations on the real stack: deployment holders, holders that left, permanent
Prefect errors, superusers, and the audit page's filters."""

from __future__ import annotations

import uuid

import pytest
from django.urls import reverse

from reslock_web.models import Limit, Operation, OperationStatus
from tests.support.patient import patient_client
from tests.test_operations import form, sync, sync_until, unique

pytestmark = pytest.mark.django_db(transaction=True)


def test_releasing_a_live_deployment_run_is_refused_and_says_to_cancel_it(
    prefect_server, flows, operator_client
):
    run = flows.start("deployment_limit", runs=2, flow_run_name=unique("dep-live"))
    deployed = run.wait_event("deployed")
    run.wait_event("acquired")
    name = f"deployment:{deployed['deployment_id']}"
    limit = sync_until(
        prefect_server, name, lambda limit: limit.holder_count == 1 and limit.waiter_count == 1
    )
    row = limit.holders.get()
    url = reverse("operate", args=["release", name]) + f"?holder={row.pk}"
    page = operator_client.get(url).content.decode()
    assert "Refused: the deployment run looks alive." in page
    assert "Cancel the flow run in Prefect instead" in page and "225 s" in page
    response = operator_client.post(url, {**form(operator_client, url), "reason": "stuck?"})
    assert response.status_code == 400
    assert not Operation.objects.filter(limit=limit).exists()
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 1
    run.release()


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


def test_a_superuser_outside_the_operators_group_can_operate(admin_client, admin):
    limit = Limit.objects.create(
        prefect_id=uuid.uuid4(), name="resource:su", kind="global", resource="resource:su", limit=1
    )
    assert not admin.groups.exists()
    url = reverse("operate", args=["set-limit", limit.name])
    response = admin_client.post(url, {**form(admin_client, url), "value": "2"})
    assert response.status_code == 302
    operation = Operation.objects.get(limit=limit)
    assert operation.requested_by_name == "alice-admin" and operation.params["value"] == 2


def test_the_audit_filters_by_operator_and_kind_and_shows_before_and_after(
    operator_client, operator, admin
):
    limit = Limit.objects.create(
        prefect_id=uuid.uuid4(), name="resource:filt", kind="global", resource="resource:filt",
        limit=1,
    )  # fmt: skip
    for user, kind, reason in [
        (operator, "set_limit", "olga sets"),
        (operator, "activate", "olga activates"),
        (admin, "set_limit", "alice sets"),
        (admin, "deactivate", "alice deactivates"),
    ]:
        Operation.objects.create(
            kind=kind, limit=limit, limit_name=limit.name, requested_by=user,
            requested_by_name=user.username, token=uuid.uuid4(), status="succeeded",
            reason=reason, params={"value": 7} if kind == "set_limit" else {},
            before={"limit": 1} if kind == "set_limit" else {},
            after={"limit": 7} if kind == "set_limit" else {},
        )  # fmt: skip
    audit = reverse("audit")

    def shown(query: str) -> set[str]:
        html = operator_client.get(audit + query).content.decode()
        return {
            r
            for r in ("olga sets", "olga activates", "alice sets", "alice deactivates")
            if r in html
        }

    assert shown("?operator=olga-operator") == {"olga sets", "olga activates"}
    assert shown("?operator=alice-admin") == {"alice sets", "alice deactivates"}
    assert shown("?kind=set_limit") == {"olga sets", "alice sets"}
    assert shown("?kind=deactivate") == {"alice deactivates"}
    assert shown("?operator=alice-admin&kind=set_limit") == {"alice sets"}
    html = operator_client.get(audit + "?kind=set_limit&operator=olga-operator").content.decode()
    assert "limit 1 → limit 7" in html
    response = operator_client.get(audit + "?kind=set_limit&operator=olga-operator&format=csv")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 2 and "olga sets" in lines[1]
    assert "{'limit': 1}" in lines[1] and "{'limit': 7}" in lines[1]
