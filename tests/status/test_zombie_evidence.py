"""Which holder lost its slot is decided by evidence about each holder, never by their order.

Prefect only counts a global limit's slots. When the count falls below what the holders take,
the board must not guess from who came first: the holder whose process is shown ended is the
zombie (and only it may be marked crashed), and a live holder the count misses is the worst
state there is (another run can get in), never a zombie. Real Prefect, real flow processes
holding through reslock's helper, a real Celery worker.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from reslock_web.models import Condition, LockEvent, Operation, OperationStatus, Status
from tests.support.operating import finished, form, sync_until, unique
from tests.support.patient import patient_client
from tests.support.prefect_limits import LEASE, REPOSSESS, slots
from tests.support.slot_watch import CounterWatch

pytestmark = pytest.mark.django_db(transaction=True)


def run_state(server, kind: str, run_id: str) -> str:
    with patient_client(server.api_url) as http:
        return http.get(f"/{kind}/{run_id}").json()["state"]["type"]


def test_the_killed_newer_holder_is_the_zombie_and_releasing_it_frees_nobody_elses_slot(
    prefect_server, flows, celery_worker, operator_client, settings
):
    """Limit 2, two holders: the newer one is killed and its lease runs out, so Prefect
    counts 1. Picking by recency would keep the dead newer one and call the live older one a
    zombie, and "mark crashed" would end a live run."""
    settings.GRACE_SECONDS = 2
    name = unique("db-pair")
    older = flows.start(
        "helper_holder", name=name, limit=2, lease_duration=LEASE, flow_run_name=unique("older")
    )
    first = older.wait_event("acquired")
    newer = flows.start(
        "helper_holder", name=name, limit=2, lease_duration=LEASE, flow_run_name=unique("newer")
    )
    second = newer.wait_event("acquired")
    sync_until(prefect_server, name, lambda limit: limit.holder_count == 2)
    newer.kill()  # SIGKILL, reaped: its runs stay Running, its lease runs out
    limit = sync_until(
        prefect_server, name, lambda limit: limit.has_zombie, timeout=LEASE + REPOSSESS + 45
    )
    assert limit.status == Status.ZOMBIE and limit.active_slots == 1
    zombie = limit.holders.get(condition=Condition.ZOMBIE)
    assert str(zombie.flow_run_id) == second["flow_run_id"]
    assert f"pid {newer.pid} on this machine) has ended" in zombie.evidence
    live = limit.holders.get(condition=Condition.HOLDING)
    assert str(live.flow_run_id) == first["flow_run_id"]
    page = operator_client.get(reverse("resource", args=[name])).content.decode()
    assert f'id="holder-{zombie.pk}" class="holder-zombie"' in page
    assert f'id="holder-{live.pk}" class="holder-holding"' in page

    # Released through the board: a form post, an Operation, the worker (which syncs and
    # judges again before it acts).
    url = reverse("operate", args=["release", name]) + f"?holder={zombie.pk}"
    assert "Mark the dead run" in operator_client.get(url).content.decode()
    with CounterWatch(prefect_server, name) as watch:
        operator_client.post(url, {**form(operator_client, url), "reason": "killed"})
        operation = finished(Operation.objects.get(limit=limit).pk, timeout=90)
    assert operation.status == OperationStatus.SUCCEEDED, operation.message
    assert run_state(prefect_server, "flow_runs", second["flow_run_id"]) == "CRASHED"
    assert run_state(prefect_server, "task_runs", second["task_run_id"]) == "CRASHED"
    assert run_state(prefect_server, "flow_runs", first["flow_run_id"]) == "RUNNING"
    assert set(watch.counts) == {1}, watch.counts  # the live holder's slot was never freed
    with patient_client(prefect_server.api_url) as http:
        assert slots(http, name) == 1
    assert not older.find_events("lost")
    older.release()
    assert older.wait() == 0


def test_a_count_lowered_under_a_live_holder_is_over_the_limit_never_a_zombie(
    prefect_server, flows, operator_client, settings
):
    """Prefect's UI "Reset" is PATCH active_slots=0: the live holder is inside uncounted and
    the next run can get in. Called a zombie, it would be offered for "mark crashed"."""
    settings.GRACE_SECONDS = 2
    name = unique("db-reset")
    holder = flows.start("helper_holder", name=name, lease_duration=LEASE)
    holder.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    with patient_client(prefect_server.api_url) as http:
        http.patch(f"/v2/concurrency_limits/{name}", json={"active_slots": 0}).raise_for_status()
    limit = sync_until(prefect_server, name, lambda limit: limit.status == Status.OVER_LIMIT)
    assert limit.is_over_limit and not limit.has_zombie and limit.active_slots == 0
    [row] = limit.holders.all()
    assert row.condition == Condition.HOLDING
    [first, *_] = limit.evidence
    assert first["flag"] == "over_limit"
    assert "A live run is inside without a counted slot" in first["text"]
    assert "another run can get in" in first["text"]
    assert f"pid {holder.pid} on this machine) still runs" in row.evidence
    # Prefect 3.9.1 dates each event it received by its own clock too.
    acquired = LockEvent.objects.get(limit_name=name, event="reslock.lock.acquired")
    assert acquired.received is not None
    page = operator_client.get(reverse("resource", args=[name])).content.decode()
    assert "badge-over_limit" in page and "badge-zombie" not in page
    plan = operator_client.get(
        reverse("operate", args=["release", name]) + f"?holder={row.pk}"
    ).content.decode()
    assert "Mark the dead run" not in plan
    holder.release()
    assert holder.wait() == 0


def test_a_plain_concurrency_holder_whose_heartbeat_outlives_its_lost_slot_is_over_the_limit(
    prefect_server, flows, settings
):
    """Prefect's own `concurrency()` records no process: once the count is lowered under it,
    reslock cannot tell whether it still runs until its flow run's heartbeat, received after
    the slot was lost, shows it alive. At no point is it a zombie."""
    settings.GRACE_SECONDS = 2
    flows.env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = "30"  # Prefect's shortest
    name = unique("db-plain")
    holder = flows.start("gcl_holder", name=name)
    holder.wait_event("acquired")
    sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    with patient_client(prefect_server.api_url) as http:
        http.patch(f"/v2/concurrency_limits/{name}", json={"active_slots": 0}).raise_for_status()
    seen: list[str] = []
    limit = sync_until(
        prefect_server,
        name,
        lambda limit: seen.append(limit.status) or limit.status == Status.OVER_LIMIT,
        timeout=90,
    )
    assert Status.ZOMBIE not in seen, seen
    [row] = limit.holders.all()
    assert row.condition == Condition.HOLDING and row.process == {}
    assert "its flow run sent a heartbeat at" in row.evidence
    holder.release()
    assert holder.wait() == 0
