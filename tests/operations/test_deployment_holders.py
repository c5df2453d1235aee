"""Operations on the holders of a deployment's concurrency limit, on the real stack: a live run
is refused (cancel it in Prefect instead), a hung run whose lease ran out is uncounted and never
released, the worker judges a zombie again where it runs, a drift repair waits for Prefect's
300 s deployment lease and the operator's risk, and a run crashed in its in-process retry is
not offered for release."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from reslock_web.models import Condition, Holder, Limit, Operation, OperationStatus, Status
from tests.support.net import freeze, kill, wait_for
from tests.support.operating import finished, form, sync, sync_until, unique
from tests.support.patient import patient_client

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
