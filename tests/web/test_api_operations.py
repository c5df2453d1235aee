"""Operations for scripts: `POST /api/v1/operations`, `GET /api/v1/operations/<id>` and
`manage.py reslock_release`, through the same checks, plans, refusals and audit as the pages.

The releases run for real: a stale tag holder made by a real flow on a real Prefect server,
released by a real Celery worker, and the waiting run gets in.
"""

from __future__ import annotations

import io
import json

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.utils import timezone

from reslock_web.models import ApiToken, Condition, Holder, Operation, OperationStatus
from reslock_web.operations.plans import plan_release
from tests.support.board_data import make_holder, make_limit, settle
from tests.support.operating import finished, sync_until, unique
from tests.support.patient import patient_client

pytestmark = pytest.mark.django_db(transaction=True)


def bearer(user) -> dict[str, str]:
    _, secret = ApiToken.objects.issue(user, "script")
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def post(client, body: object, key: str | None = "run-1", **headers: str):
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post("/api/v1/operations", data, content_type="application/json", **headers)


def stale_tag_holder(prefect_server, flows):
    """A tag limit whose holder's task run is over while its slot is still counted, and a run
    waiting behind it: what an operator releases."""
    tag = unique("resource:api-ops")
    stale = flows.start("tag_holder", tag=tag, reset_override=True, hold=0.5, flow_run_name="ended")
    assert stale.wait(timeout=90) == 0
    ended = stale.wait_event("acquired")
    waiter = flows.start("tag_holder", tag=tag, flow_run_name="waiting-one")
    waiter.wait_event("started")
    limit = sync_until(
        prefect_server, f"tag:{tag}", lambda limit: limit.is_stale and limit.waiter_count == 1
    )
    return limit, ended, waiter


def live_global_holder() -> Holder:
    """A global-limit holder whose run is Running: every page refuses to release it."""
    limit = make_limit("db-live")
    holder = make_holder(
        limit,
        key="event-1",
        source="event",
        flow_run_name="nightly",
        state_type="RUNNING",
        state_name="Running",
        lease_seconds=60,
    )
    settle(limit)
    return holder


def test_a_script_releases_a_stale_holder_once_however_often_it_retries(
    client, prefect_server, flows, celery_worker, operator
):
    limit, ended, waiter = stale_tag_holder(prefect_server, flows)
    body = {
        "kind": "release",
        "resource": limit.name,
        "holder": ended["task_run_id"],
        "reason": "task finished, slot stuck",
    }
    auth = bearer(operator)
    first = post(client, body, **auth)
    assert first.status_code == 202, first.content
    again = post(client, body, **auth)  # a retry after a timeout: the same operation
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert first["Location"] == f"/api/v1/operations/{first.json()['id']}"
    [operation] = Operation.objects.filter(limit=limit)
    assert operation.params["requested_via"] == "api"
    assert operation.requested_by_name == "olga-operator"
    operation = finished(operation.pk)
    assert operation.status == OperationStatus.SUCCEEDED, operation.message
    followed = client.get(f"/api/v1/operations/{operation.pk}", **auth).json()
    assert followed["status"] == "succeeded" and followed["finished"] is True
    assert followed["reason"] == "task finished, slot stuck"
    assert waiter.wait_event("acquired", timeout=60)["flow_run_name"] == "waiting-one"
    waiter.release()
    assert waiter.wait() == 0
    with patient_client(prefect_server.api_url) as http:
        state = http.get(f"/task_runs/{ended['task_run_id']}").json()["state"]
    assert state["type"] == "CRASHED" and "olga-operator" in state["message"]


def test_the_command_releases_through_the_same_path_and_waits_for_the_outcome(
    prefect_server, flows, celery_worker, operator
):
    limit, ended, waiter = stale_tag_holder(prefect_server, flows)
    out = io.StringIO()
    call_command(
        "reslock_release",
        limit.name,
        holder="ended",  # the one holder whose flow run goes by that name
        reason="stuck since the night",
        username="olga-operator",
        wait=90,
        stdout=out,
    )
    [operation] = Operation.objects.filter(limit=limit)
    assert f"operation {operation.pk} succeeded" in out.getvalue()
    assert operation.params["requested_via"] == "command"
    assert operation.reason == "stuck since the night"
    assert waiter.wait_event("acquired", timeout=60)["flow_run_name"] == "waiting-one"
    waiter.release()
    assert waiter.wait() == 0


def test_a_release_the_page_would_refuse_is_refused_with_its_words_and_records_nothing(
    client, operator
):
    holder = live_global_holder()
    # The refusal says by when the holder's slot would free: one clock for the plan and the API.
    with time_machine.travel(timezone.now(), tick=False):
        plan = plan_release(holder.limit, holder)
        assert not plan.allowed
        response = post(
            client,
            {"kind": "release", "resource": "db-live", "holder": "nightly", "reason": "why not"},
            **bearer(operator),
        )
    assert response.status_code == 409
    assert response.json()["summary"] == plan.summary and response.json()["safety"] == plan.safety
    with pytest.raises(CommandError, match="Refused"):
        call_command(
            "reslock_release", "db-live", holder="nightly", reason="x", username="olga-operator"
        )
    assert not Operation.objects.exists()


@pytest.mark.parametrize(
    ("body", "key", "status", "words"),
    [
        ({"kind": "release", "resource": "db-live", "holder": "nightly"}, "k", 400, "reason"),
        ({"kind": "explode", "resource": "db-live"}, "k", 400, "kind must be one of"),
        ({"kind": "activate", "resource": "no-such-thing"}, "k", 404, "no resource named"),
        ({"kind": "release", "resource": "db-live", "holder": "nobody"}, "k", 400, "one holder"),
        ({"kind": "set-limit", "resource": "db-live", "value": "²"}, "k", 400, "whole number"),
        ({"kind": "activate", "resource": "db-live"}, None, 400, "Idempotency-Key"),
        ({"kind": "activate", "resource": "db-live"}, "x" * 201, 400, "Idempotency-Key"),
        ("[1, 2", "k", 400, "JSON object"),
        ([1, 2], "k", 400, "JSON object"),
    ],
    ids=[
        "no-reason",
        "unknown-kind",
        "unknown-resource",
        "unknown-holder",
        "not-a-number",
        "no-key",
        "long-key",
        "broken-json",
        "not-an-object",
    ],
)
def test_bad_requests_are_explained_and_create_nothing(client, operator, body, key, status, words):
    live_global_holder()
    response = post(client, body, key=key, **bearer(operator))
    assert response.status_code == status, response.content
    assert words in json.dumps(response.json())
    assert not Operation.objects.exists()


def test_only_an_operators_token_may_ask_and_a_session_is_never_enough(client, operator, viewer):
    live_global_holder()
    body = {"kind": "deactivate", "resource": "db-live"}
    assert post(client, body).status_code == 401  # nobody
    client.force_login(operator)
    # A logged-in browser is not accepted: with CSRF off here, a session would let any page
    # of another site ask for operations in the operator's name.
    assert post(client, body).status_code == 401
    client.logout()
    assert post(client, body, HTTP_AUTHORIZATION="Bearer rl_wrong").status_code == 401
    assert post(client, body, **bearer(viewer)).status_code == 403
    assert not Operation.objects.exists()
    asked = post(client, body, **bearer(operator))
    assert asked.status_code == 202
    # The same key for another operation is a mistake in the script, not a retry.
    other = post(client, {"kind": "activate", "resource": "db-live"}, **bearer(operator))
    assert other.status_code == 409 and "another operation" in other.json()["error"]
    assert Operation.objects.count() == 1


def test_the_command_says_who_and_what_is_wrong(operator, viewer):
    live_global_holder()
    cases = [
        ({"username": "nobody-here"}, "No active user"),
        ({"username": "victor-viewer"}, "may not operate"),
        ({"username": "olga-operator", "holder": "someone"}, "names no single holder"),
    ]
    for options, words in cases:
        arguments = {"holder": "nightly", "reason": "x", **options}
        with pytest.raises(CommandError, match=words):
            call_command("reslock_release", "db-live", **arguments)
    with pytest.raises(CommandError, match="No resource named"):
        call_command("reslock_release", "gone", holder="x", reason="x", username="olga-operator")
    assert not Operation.objects.exists()
    assert Holder.objects.get().condition == Condition.HOLDING
