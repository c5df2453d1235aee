"""More operations on the real stack: deployment holders, holders that left, permanent
Prefect errors, superusers, and the audit page's filters."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from reslock_web.models import Condition, Holder, Limit, Operation, OperationStatus, Status
from tests.support.net import wait_for
from tests.support.operating import finished, form, sync, sync_until, unique
from tests.support.patient import patient_client
from tests.support.slot_watch import CounterWatch

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


def freeze(pid: int) -> None:
    """SIGSTOP: the process neither renews nor releases anything until it is continued."""
    os.kill(pid, signal.SIGSTOP)


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


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


class DeploymentLostSlot:
    """A deployment with concurrency_limit 1 whose first run's process hung and whose lease
    ran out, so that Prefect shows it Running without a counted slot; the next run holds the
    slot legitimately, and any further runs wait (AwaitingConcurrencySlot). Nothing shows the
    hung process dead (a deployment run carries no process identity), and it is not: continued,
    it would work on inside without a slot."""

    def __init__(self, server, flows, runs: int) -> None:
        self.runner = flows.start("deployment_limit", runs=runs, flow_run_name=unique("dep-hung"))
        self.name = f"deployment:{self.runner.wait_event('deployed')['deployment_id']}"
        self.hung = self.runner.wait_event("acquired")
        # The process hangs: it renews nothing and never reports an end.
        freeze(self.hung["pid"])
        with patient_client(server.api_url) as http:
            state = http.get(f"/flow_runs/{self.hung['flow_run_id']}").json()["state"]
            lease_id = state["state_details"]["deployment_concurrency_lease_id"]
            # Its 300 s lease runs out: what Prefect's repossessor then does (lower the count
            # by the lease and revoke it), done now instead of five minutes from now.
            http.post(
                "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease_id}
            ).raise_for_status()
        # The next run gets the free slot with a lease of its own when its
        # AwaitingConcurrencySlot time is due, within 30 s.
        [self.live] = wait_for(self.others_in, 90, what="the next run to get the slot")
        self.limit = sync_until(
            server,
            self.name,
            lambda limit: (
                limit.holders.filter(condition=Condition.UNCOUNTED).exists()
                and limit.holders.filter(condition=Condition.HOLDING).count() == 1
            ),
        )
        self.lost = self.limit.holders.get(condition=Condition.UNCOUNTED)
        assert str(self.lost.flow_run_id) == self.hung["flow_run_id"]

    def others_in(self) -> list[dict]:
        """The "acquired" events of every run but the hung one, in order."""
        return [
            event
            for event in self.runner.find_events("acquired")
            if event["flow_run_id"] != self.hung["flow_run_id"]
        ]

    def end(self) -> None:
        kill(self.hung["pid"])


def test_a_hung_deployment_run_whose_lease_ran_out_is_uncounted_and_never_released(
    prefect_server, flows, operator_client, settings
):
    settings.GRACE_SECONDS = 0
    setup = DeploymentLostSlot(prefect_server, flows, runs=2)
    try:
        assert setup.limit.status == Status.UNCOUNTED and not setup.limit.has_zombie
        assert "cannot tell whether it still runs inside" in setup.lost.evidence
        url = reverse("operate", args=["release", setup.name]) + f"?holder={setup.lost.pk}"
        page = operator_client.get(url).content.decode()
        assert "Refused: nothing shows that this run has stopped." in page
        assert "Mark the dead run" not in page
        response = operator_client.post(url, {**form(operator_client, url), "reason": "dead?"})
        assert response.status_code == 400
        assert not Operation.objects.filter(limit=setup.limit).exists()
        with patient_client(prefect_server.api_url) as http:
            state = http.get(f"/flow_runs/{setup.hung['flow_run_id']}").json()["state"]
            assert state["type"] == "RUNNING"
            assert http.get(f"/v2/concurrency_limits/{setup.name}").json()["active_slots"] == 1
        setup.runner.release(setup.live)
    finally:
        setup.end()


def test_the_worker_acts_on_a_zombie_only_if_its_own_sync_judges_one(
    prefect_server, flows, operator_client, settings
):
    """A zombie verdict made elsewhere (a board whose sync ran on the machine where the process
    was seen ended, or an older verdict) is not enough: the worker syncs and judges again, with
    the same rule, where it runs, and leaves a run nothing shows dead alone."""
    from reslock_web.tasks import operate

    settings.GRACE_SECONDS = 0
    setup = DeploymentLostSlot(prefect_server, flows, runs=2)
    try:
        # The board's stored verdict says zombie; what the worker finds must decide.
        Holder.objects.filter(pk=setup.lost.pk).update(condition=Condition.ZOMBIE)
        url = reverse("operate", args=["release", setup.name]) + f"?holder={setup.lost.pk}"
        assert "Mark the dead run" in operator_client.get(url).content.decode()
        response = operator_client.post(url, {**form(operator_client, url), "reason": "dead"})
        assert response.status_code == 302
        operation = Operation.objects.get(limit=setup.limit)
        operate.apply(args=[operation.pk])
        operation.refresh_from_db()
        assert operation.status == OperationStatus.SKIPPED, operation.message
        assert "uncounted now, not a zombie" in operation.message
        with patient_client(prefect_server.api_url) as http:
            state = http.get(f"/flow_runs/{setup.hung['flow_run_id']}").json()["state"]
            assert state["type"] == "RUNNING"
            assert http.get(f"/v2/concurrency_limits/{setup.name}").json()["active_slots"] == 1
        assert "placeholder" not in operation.params
        setup.runner.release(setup.live)
    finally:
        setup.end()


def test_a_deployment_drift_repair_waits_for_its_window_and_the_risk_box_then_lowers_only_what_was_shown(
    prefect_server, flows, celery_worker, operator_client, settings, monkeypatch
):
    from reslock_web.operations import plans

    settings.GRACE_SECONDS = 0
    settings.ASSUMED_LEASE_SECONDS = 10  # what global-limit holders are assumed to take
    runner = flows.start("deployment_limit", runs=2, flow_run_name=unique("dep-drift"))
    name = f"deployment:{runner.wait_event('deployed')['deployment_id']}"
    runner.wait_event("acquired")
    with patient_client(prefect_server.api_url) as http:
        # A slot counted with no lease behind it (a script's raw increment, a lost lease):
        # the limit is full, so it is set, as an increment would be refused.
        http.patch(f"/v2/concurrency_limits/{name}", json={"active_slots": 2}).raise_for_status()
    limit = sync_until(
        prefect_server,
        name,
        lambda limit: limit.has_drift and limit.holder_count == 1 and limit.waiter_count == 1,
    )
    url = reverse("operate", args=["repair", name])
    body = {**form(operator_client, url), "reason": "leaked", "accept_risk": "on"}
    response = operator_client.post(url, body)
    assert response.status_code == 400
    assert "Refused for now: a live lease may still stand behind" in response.content.decode()

    # Past the assumed lease and Prefect's repossessor delay it is still refused: a deployment
    # slot may be held under Prefect's own 300 s lease, which no run on the board names.
    wait_for(
        lambda: timezone.now() >= limit.drift_since + timedelta(seconds=10 + 15 + 1),
        60,
        what="the assumed lease's window to pass",
    )
    sync(prefect_server)
    page = operator_client.get(url).content.decode()
    assert "Refused for now" in page and "A lease of up to 300 s" in page
    assert not Operation.objects.exists()

    # A Prefect whose deployment leases were as short: the window has passed.
    monkeypatch.setattr(plans, "DEPLOYMENT_LEASE", 10)
    page = operator_client.get(url).content.decode()
    assert "by at most 1 (from 2 to 1)" in page
    # Without the box it stays refused: nobody can show that no lease stands behind the slot.
    response = operator_client.post(url, {**form(operator_client, url), "reason": "leaked"})
    assert response.status_code == 400
    assert "needs your explicit acceptance of the risk" in response.content.decode()
    assert not Operation.objects.exists()

    # One more slot is counted after the operator looked (a run reslock cannot see): the
    # worker's fresh read finds two extra, and it lowers only the one that was shown.
    body = {**form(operator_client, url), "reason": "leaked", "accept_risk": "on"}
    with patient_client(prefect_server.api_url) as http:
        http.patch(f"/v2/concurrency_limits/{name}", json={"active_slots": 3}).raise_for_status()
        response = operator_client.post(url, body)
        assert response.status_code == 302
        operation = finished(Operation.objects.get(limit=limit).pk)
        assert operation.status == OperationStatus.SUCCEEDED, operation.message
        assert "Lowered used slots by 1" in operation.message
        assert operation.params["shown_extra"] == 1
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 2
    # The live run keeps its slot and the waiting run stays out.
    assert len(runner.find_events("acquired")) == 1
    runner.release()


def test_a_deployment_run_crashed_in_its_in_process_retry_is_not_offered_for_release(
    prefect_server, flows, operator_client, settings
):
    """Prefect 3.9 frees a deployment slot only when a run leaves Pending, Running or
    Cancelling (core_policy.py, ReleaseFlowConcurrencySlots). A run waiting for an in-process
    retry is Scheduled/AwaitingRetry and keeps its lease; forced to Crashed from there, it is
    over while its lease is still counted, and its final state still names the lease
    (PreserveDeploymentConcurrencyLeaseId). Its process is alive, though: when its retry is
    due it takes the run back to Running under that same lease. Revoking the lease of that
    "stale" run would let the next run in beside it, so the board offers no release: it
    shows the slot as drift, whose repair waits for its window and the operator's risk."""
    settings.GRACE_SECONDS = 5
    runner = flows.start(
        "deployment_limit",
        runs=2,
        fail_first=True,
        retry_delay=30,
        flow_run_name=unique("dep-retry"),
    )
    name = f"deployment:{runner.wait_event('deployed')['deployment_id']}"
    failing = runner.wait_event("failing", timeout=90)
    run_id = failing["flow_run_id"]
    flagged: list[tuple[str, str]] = []

    def board(check, what: str) -> Limit:
        """Sync until `check` holds, noting every verdict the board gives the retrying run."""

        def attempt():
            sync(prefect_server)
            limit = Limit.objects.named(name)
            flagged.extend(
                (h.condition, h.evidence)
                for h in limit.holders.filter(flow_run_id=run_id)
                if h.condition in (Condition.STALE, Condition.ZOMBIE)
            )
            return limit if check(limit) else None

        return wait_for(attempt, 60, interval=0.5, what=what)

    with patient_client(prefect_server.api_url) as http:

        def state() -> dict:
            return http.get(f"/flow_runs/{run_id}").json()["state"]

        retrying = wait_for(
            lambda: (s := state())["name"] == "AwaitingRetry" and s, 30, what="AwaitingRetry"
        )
        lease_id = retrying["state_details"]["deployment_concurrency_lease_id"]
        assert lease_id
        limit = board(lambda limit: limit.holder_count == 1, "the retrying run to hold")
        assert str(limit.holders.get().lease_id) == lease_id
        # Ended from outside while it waits for its retry, as from Prefect's UI.
        http.post(
            f"/flow_runs/{run_id}/set_state",
            json={"state": {"type": "CRASHED", "message": "ended by hand"}, "force": True},
        ).raise_for_status()
        crashed = state()
        assert crashed["type"] == "CRASHED"
        assert crashed["state_details"]["deployment_concurrency_lease_id"] == lease_id
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 1

        limit = board(lambda limit: limit.has_drift and limit.waiter_count == 1, "the drift")
        assert not limit.holders.exclude(condition=Condition.LEAVING).exists()
        page = operator_client.get(reverse("operate", args=["repair", name])).content.decode()
        assert "Refused for now: a live lease may still stand behind the extra slots." in page

        # Its process was alive: the retry takes the run back to Running under its lease.
        back = runner.wait_event("acquired", timeout=90, flow_run_id=run_id)
        running = state()
        assert running["type"] == "RUNNING", running
        assert running["state_details"]["deployment_concurrency_lease_id"] == lease_id
        board(
            lambda limit: (
                not limit.has_drift
                and limit.holders.filter(condition=Condition.HOLDING, lease_id=lease_id).exists()
            ),
            "the run to hold again",
        )
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active_slots"] == 1
    # Never called stale (a revoke offered) or zombie: its process was alive all along.
    assert not flagged, flagged
    # The other run never got in beside it.
    assert [e["flow_run_id"] for e in runner.find_events("acquired")] == [run_id]
    assert back["t"] > failing["t"]
    runner.release()
