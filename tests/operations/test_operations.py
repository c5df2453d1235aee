"""Operations against a real Prefect server, run by a real Celery worker on real Redis."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.urls import reverse

from reslock_web.models import Condition, Limit, Operation, OperationStatus, Status
from reslock_web.prefect_io.api import PrefectAPI
from tests.support.operating import finished, form, sync, sync_until, unique
from tests.support.patient import patient_client

pytestmark = pytest.mark.django_db(transaction=True)


class SlotWatch:
    """Polls Prefect throughout a test: the most holders a limit ever showed at once."""

    def __init__(self, server, tag: str) -> None:
        self.server, self.tag = server, tag
        self.most_slots = self.most_leases = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with patient_client(self.server.api_url, timeout=5) as http:
            while not self.stop.is_set():
                limit = http.get(f"/v2/concurrency_limits/tag:{self.tag}")
                leases = http.get(f"/concurrency_limits/tag/{self.tag}")
                if limit.status_code == 200 and leases.status_code == 200:
                    self.most_slots = max(self.most_slots, limit.json()["active_slots"])
                    self.most_leases = max(self.most_leases, len(leases.json()["active_slots"]))
                self.stop.wait(0.1)

    def __enter__(self) -> SlotWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.parametrize("crash_flow_run", [False, True], ids=["flow-run-left", "flow-run-too"])
def test_releasing_a_stale_tag_holder_lets_the_waiter_in_once(
    prefect_server, flows, celery_worker, operator_client, crash_flow_run
):
    tag = unique("resource:ops")
    with SlotWatch(prefect_server, tag) as watch:
        stale = flows.start(
            "tag_holder", tag=tag, reset_override=True, hold=0.5, flow_run_name="ended"
        )
        assert stale.wait(timeout=90) == 0
        ended = stale.wait_event("acquired")
        with patient_client(prefect_server.api_url) as http:
            # Its flow still shown Running (busy with other tasks): crashed only when asked.
            http.post(
                f"/flow_runs/{ended['flow_run_id']}/set_state",
                json={"state": {"type": "RUNNING"}, "force": True},
            ).raise_for_status()
        waiter = flows.start("tag_holder", tag=tag, flow_run_name="waiting-one")
        waiter.wait_event("started")
        limit = sync_until(
            prefect_server, f"tag:{tag}", lambda limit: limit.is_stale and limit.waiter_count == 1
        )
        holder = limit.holders.get(condition=Condition.STALE)
        url = reverse("operate", args=["release", limit.name]) + f"?holder={holder.pk}"
        page = operator_client.get(url)
        assert b"Release the slot held by the finished task run" in page.content
        fields = form(operator_client, url)
        body = {**fields, "reason": "task finished, slot stuck"}
        if crash_flow_run:
            body["crash_flow_run"] = "on"
        first = operator_client.post(url, body)
        second = operator_client.post(url, body)  # a double click
        assert first.status_code == second.status_code == 302
        assert first["Location"] == second["Location"]
        [operation] = Operation.objects.filter(limit=limit)
        operation = finished(operation.pk)
        assert operation.status == OperationStatus.SUCCEEDED, operation.message
        assert "task run crashed" in operation.message
        assert ("flow run crashed" in operation.message) is crash_flow_run
        assert operation.params.get("crash_flow_run", False) is crash_flow_run
        with patient_client(prefect_server.api_url) as http:
            crashed = [("task_runs", ended["task_run_id"])]
            if crash_flow_run:
                crashed.append(("flow_runs", ended["flow_run_id"]))
            else:  # a flow run that may be busy with other tasks is left as it is
                state = http.get(f"/flow_runs/{ended['flow_run_id']}").json()["state"]
                assert state["type"] == "RUNNING", state
            for kind, run_id in crashed:
                state = http.get(f"/{kind}/{run_id}").json()["state"]
                assert state["type"] == "CRASHED", (kind, state)
                assert "olga-operator" in state["message"], state["message"]
                assert "task finished, slot stuck" in state["message"]
        acquired = waiter.wait_event("acquired", timeout=60)
        assert acquired["flow_run_name"] == "waiting-one"
        waiter.release()
        assert waiter.wait() == 0
    assert watch.most_slots <= 1 and watch.most_leases <= 1
    # A redelivered message (or a retried task) finds the operation done and does nothing.
    from reslock_web.tasks import operate

    operate.delay(operation.pk)
    operate.apply(args=[operation.pk])
    operation.refresh_from_db()
    assert operation.attempts == 1 and operation.status == OperationStatus.SUCCEEDED
    # The board shows the change (the job synced the limit itself).
    limit.refresh_from_db()
    assert not limit.is_stale
    assert (
        operation.requested_by_name == "olga-operator"
        and operation.reason == "task finished, slot stuck"
    )


def test_releasing_a_live_global_holder_is_refused_with_the_time_it_frees(
    prefect_server, flows, operator_client
):
    name = unique("resource:live")
    holder = flows.start("gcl_holder", name=name)
    holder.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    row = limit.holders.get()
    url = reverse("operate", args=["release", name]) + f"?holder={row.pk}"
    page = operator_client.get(url).content.decode()
    assert "Refused: the holder looks alive." in page
    assert "frees the slot by itself by" in page and "at the latest" in page
    response = operator_client.post(url, {**form(operator_client, url), "reason": "try anyway"})
    assert response.status_code == 400
    assert not Operation.objects.filter(limit=limit).exists()


def test_repairing_a_leaked_tag_counter_lowers_it_to_the_live_holders(
    prefect_server, flows, celery_worker, operator_client, settings
):
    settings.GRACE_SECONDS = 0
    tag = unique("resource:leak")
    with patient_client(prefect_server.api_url) as http:
        http.post(
            "/concurrency_limits/", json={"tag": tag, "concurrency_limit": 2}
        ).raise_for_status()
        holder = flows.start("tag_holder", tag=tag, create=False)
        holder.wait_event("acquired")
        http.post(
            "/v2/concurrency_limits/increment",
            json={"names": [f"tag:{tag}"], "slots": 1, "mode": "concurrency"},
        ).raise_for_status()
    limit = sync_until(
        prefect_server, f"tag:{tag}", lambda limit: limit.has_drift and limit.active_slots == 2
    )
    url = reverse("operate", args=["repair", limit.name])
    assert b"Lower the counter of" in operator_client.get(url).content
    response = operator_client.post(
        url, {**form(operator_client, url), "reason": "leaked increment"}
    )
    assert response.status_code == 302
    operation = finished(Operation.objects.get(limit=limit).pk)
    assert operation.status == OperationStatus.SUCCEEDED, operation.message
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/tag:{tag}").json()["active_slots"] == 1
    assert operation.after["active_slots"] == 1
    limit.refresh_from_db()
    assert not limit.has_drift and limit.active_slots == 1


def test_a_global_drift_repair_waits_until_no_lease_can_be_live(
    prefect_server, flows, operator_client, settings
):
    settings.GRACE_SECONDS = 0
    name = unique("resource:gleak")
    assert flows.start("raw_increment_leak", name=name).wait() == 0
    sync_until(prefect_server, name, lambda limit: limit.has_drift)
    page = operator_client.get(reverse("operate", args=["repair", name])).content.decode()
    assert "Refused for now: a live lease may still stand behind the extra slots." in page
    assert "Try again after" in page


def test_set_limit_activate_and_deactivate_change_prefect_and_the_board(
    prefect_server, celery_worker, operator_client
):
    name = unique("resource:knobs")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    sync(prefect_server)
    for action, extra, check in [
        ("set-limit", {"value": "3"}, lambda data: data["limit"] == 3),
        ("deactivate", {}, lambda data: data["active"] is False),
        ("activate", {}, lambda data: data["active"] is True),
    ]:
        url = reverse("operate", args=[action, name])
        response = operator_client.post(url, {**form(operator_client, url), **extra})
        assert response.status_code == 302, response.content.decode()[:2000]
        operation = finished(Operation.objects.filter(limit__name=name).latest("id").pk)
        assert operation.status == OperationStatus.SUCCEEDED, operation.message
        with patient_client(prefect_server.api_url) as http:
            assert check(http.get(f"/v2/concurrency_limits/{name}").json())
    limit = Limit.objects.named(name)
    assert limit.limit == 3 and limit.active and limit.status == Status.FREE


def test_a_limit_changed_meanwhile_is_skipped_not_overwritten(
    prefect_server, celery_worker, operator_client
):
    name = unique("resource:cas")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
        sync(prefect_server)
        url = reverse("operate", args=["set-limit", name])
        fields = form(operator_client, url)
        http.patch(f"/v2/concurrency_limits/{name}", json={"limit": 5}).raise_for_status()
        operator_client.post(url, {**fields, "value": "2"})
        operation = finished(Operation.objects.get(limit__name=name).pk)
        assert operation.status == OperationStatus.SKIPPED
        assert "changed meanwhile from 1 to 5" in operation.message
        assert http.get(f"/v2/concurrency_limits/{name}").json()["limit"] == 5


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "&#x27;abc&#x27; is not a whole number from 0 to 10,000."),
        ("-1", "&#x27;-1&#x27; is not a whole number from 0 to 10,000."),
        ("1e9", "&#x27;1e9&#x27; is not a whole number from 0 to 10,000."),
        ("", "Enter the new limit, a whole number from 0 to 10,000."),
        ("10001", "10001 is more than 10,000."),
        ("0", "A limit of 0 needs this extra confirmation."),
    ],
)
def test_bad_limit_values_are_explained_and_create_nothing(operator_client, value, message):
    limit = Limit.objects.create(
        prefect_id=uuid.uuid4(),
        name="resource:form",
        kind="global",
        resource="resource:form",
        limit=1,
    )
    url = reverse("operate", args=["set-limit", limit.name])
    response = operator_client.post(url, {**form(operator_client, url), "value": value})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Operation.objects.exists()


def test_a_tampered_limit_id_or_unknown_resource_creates_nothing(operator_client):
    limit = Limit.objects.create(
        prefect_id=uuid.uuid4(), name="resource:t", kind="global", resource="resource:t", limit=1
    )
    url = reverse("operate", args=["set-limit", limit.name])
    fields = {**form(operator_client, url), "value": "2", "limit_id": str(uuid.uuid4())}
    response = operator_client.post(url, fields)
    assert response.status_code == 400
    assert "This form was made for another limit" in response.content.decode()
    assert (
        operator_client.post(
            reverse("operate", args=["set-limit", "resource:nope"]), fields
        ).status_code
        == 404
    )
    assert (
        operator_client.post(reverse("operate", args=["explode", limit.name]), fields).status_code
        == 404
    )
    assert not Operation.objects.exists()


def test_viewers_and_anonymous_users_cannot_operate(client, viewer, operator):
    from django.test import Client

    limit = Limit.objects.create(
        prefect_id=uuid.uuid4(), name="resource:p", kind="global", resource="resource:p", limit=1
    )
    url = reverse("operate", args=["set-limit", limit.name])
    operator_client = Client()
    operator_client.force_login(operator)
    fields = {**form(operator_client, url), "value": "2"}
    assert client.post(url, fields).status_code == 302  # anonymous: to login
    assert client.post(url, fields)["Location"].startswith("/login/")
    client.force_login(viewer)
    assert client.get(url).status_code == 403
    assert client.post(url, fields).status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    assert strict.post(url, fields).status_code == 403  # no CSRF token
    assert not Operation.objects.exists()


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


def test_the_audit_page_lists_operations_with_actor_and_outcome(operator_client, operator):
    limit = Limit.objects.create(
        prefect_id=uuid.uuid4(),
        name="resource:aud",
        kind="global",
        resource="resource:aud",
        limit=1,
    )
    for status in ("succeeded", "skipped"):
        Operation.objects.create(
            kind="set_limit",
            limit=limit,
            limit_name=limit.name,
            requested_by=operator,
            requested_by_name=operator.username,
            token=uuid.uuid4(),
            status=status,
            params={"value": 2},
            reason=f"why {status}",
            message="=cmd|' /C calc'!A0",
        )
    html = operator_client.get(reverse("audit")).content.decode()
    assert html.count("olga-operator") >= 2 and "why succeeded" in html and "why skipped" in html
    only = operator_client.get(reverse("audit") + "?outcome=skipped").content.decode()
    assert "why skipped" in only and "why succeeded" not in only
    csv_response = operator_client.get(reverse("audit") + "?format=csv")
    text = b"".join(csv_response.streaming_content).decode()
    assert text.splitlines()[0].startswith("id,created_at,finished_at,operator,kind")
    assert "olga-operator" in text and "'=cmd" in text  # formulas neutralised


def test_the_audit_filters_by_operator_and_kind_and_shows_before_and_after(
    operator_client, operator, admin
):
    limit = Limit.objects.create(
        prefect_id=uuid.uuid4(),
        name="resource:filt",
        kind="global",
        resource="resource:filt",
        limit=1,
    )
    for user, kind, reason in [
        (operator, "set_limit", "olga sets"),
        (operator, "activate", "olga activates"),
        (admin, "set_limit", "alice sets"),
        (admin, "deactivate", "alice deactivates"),
    ]:
        Operation.objects.create(
            kind=kind,
            limit=limit,
            limit_name=limit.name,
            requested_by=user,
            requested_by_name=user.username,
            token=uuid.uuid4(),
            status="succeeded",
            reason=reason,
            params={"value": 7} if kind == "set_limit" else {},
            before={"limit": 1} if kind == "set_limit" else {},
            after={"limit": 7} if kind == "set_limit" else {},
        )
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


def test_releasing_a_live_helper_holder_fences_until_it_has_stopped(
    prefect_server, flows, celery_worker, operator_client
):
    name = unique("db-fenced")
    holder = flows.start("helper_holder", name=name, flow_run_name="stuck-job")
    holder.wait_event("acquired")
    waiter = flows.start("helper_holder", name=name, flow_run_name="next-job")
    waiter.wait_event("want")
    limit = sync_until(
        prefect_server, name, lambda limit: limit.holder_count == 1 and limit.waiter_count == 1
    )
    row = limit.holders.get()
    url = reverse("operate", args=["release", name]) + f"?holder={row.pk}"
    page = operator_client.get(url).content.decode()
    assert "keep the resource closed until it has stopped" in page
    most = []
    stop = threading.Event()

    def watch():
        with patient_client(prefect_server.api_url, timeout=5) as http:
            while not stop.is_set():
                most.append(http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"])
                stop.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        operator_client.post(url, {**form(operator_client, url), "reason": "job hangs"})
        operation = finished(Operation.objects.get(limit=limit).pk, timeout=120)
        assert operation.status == OperationStatus.SUCCEEDED, operation.message
        lost = holder.wait_event("lost", timeout=60)
        acquired = waiter.wait_event("acquired", timeout=60)
    finally:
        stop.set()
        watcher.join()
    # The stuck holder was stopped before the next one got in. The placeholder is counted for
    # the moment between its PATCH and the revocation that gives the old lease's slot back
    # (two slots, one of them nobody's); a third, a second run inside, never.
    assert lost["t"] < acquired["t"]
    assert max(most) <= 2
    # Its release event, or its process seen ended (whichever reslock notices first).
    assert "reported that its block had stopped" in operation.message or (
        "has ended" in operation.message
    )
    assert "open again" in operation.message
    with patient_client(prefect_server.api_url) as http:
        assert (
            http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 1
        )  # next-job only
    waiter.release()


def test_an_unreachable_prefect_is_retried_then_reported_in_words(operator):
    from reslock_web.operations.jobs import MAX_ATTEMPTS, TryAgain, run

    limit = Limit.objects.create(
        prefect_id=uuid.uuid4(),
        name="resource:far",
        kind="global",
        resource="resource:far",
        limit=1,
    )
    operation = Operation.objects.create(
        kind="activate",
        limit=limit,
        limit_name=limit.name,
        requested_by=operator,
        requested_by_name=operator.username,
        token=uuid.uuid4(),
    )
    down = PrefectAPI("http://127.0.0.1:9/api", timeout=2)  # nothing listens on port 9
    for attempt in range(1, MAX_ATTEMPTS):
        with pytest.raises(TryAgain):
            run(operation.pk, down)
        operation.refresh_from_db()
        assert operation.status == OperationStatus.PENDING and operation.attempts == attempt
        assert "retrying" in operation.message and "cannot reach Prefect" in operation.message
    run(operation.pk, down)  # the last attempt
    operation.refresh_from_db()
    assert operation.status == OperationStatus.FAILED and operation.attempts == MAX_ATTEMPTS
    assert operation.message.startswith(
        "Prefect error: cannot reach Prefect at http://127.0.0.1:9/api"
    )
    run(operation.pk, down)  # a late redelivery changes nothing
    operation.refresh_from_db()
    assert operation.attempts == MAX_ATTEMPTS


def test_the_operate_task_retries_a_transient_failure_with_backoff():
    from reslock_web.operations.jobs import TryAgain
    from reslock_web.tasks import operate

    assert TryAgain in operate.autoretry_for
    assert operate.retry_backoff and operate.retry_jitter and operate.max_retries >= 4
