"""Releasing a helper holder killed with SIGKILL, from the board, on the machine it ran on.

Its run goes on showing Running, but /proc proves its process has ended: the release revokes
its lease at once instead of fencing (waiting for a report that never comes). Real Prefect,
real flow processes, a real Celery worker.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from reslock.process import process_gone, process_identity
from reslock_web.models import Condition, Operation, OperationStatus
from reslock_web.prefect_io.records import EventInfo
from reslock_web.sync.claims import claim_from_row
from reslock_web.sync.events import event_row
from tests.support.operating import finished, form, sync, sync_until, unique
from tests.support.patient import patient_client
from tests.support.prefect_limits import LEASE, REPOSSESS, slots
from tests.support.slot_watch import CounterWatch

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT_ENTRY = 10  # seconds: a waiter polls a full limit at most every few seconds


def test_a_killed_helper_holder_released_from_the_board_lets_the_waiter_in_at_once(
    prefect_server, flows, celery_worker, operator_client
):
    name = unique("db-dead")
    holder = flows.start("helper_holder", name=name, lease_duration=LEASE, flow_run_name="killed")
    first = holder.wait_event("acquired")
    waiter = flows.start("helper_holder", name=name, flow_run_name="next-job")
    waiter.wait_event("want")
    limit = sync_until(
        prefect_server, name, lambda limit: limit.holder_count == 1 and limit.waiter_count == 1
    )
    row = limit.holders.get()
    assert row.lease_id and str(row.lease_id) == first["lease_id"]
    assert row.process["pid"] == holder.pid and not process_gone(row.process)
    url = reverse("operate", args=["release", name]) + f"?holder={row.pk}"
    # Alive: the release is fenced, as before.
    alive = operator_client.get(url).content.decode()
    assert "keep the resource closed until it has stopped" in alive
    assert "placeholder slot" in alive and "has ended" not in alive

    with CounterWatch(prefect_server, name) as peak:
        holder.kill()  # SIGKILL, and reaped: its run still shows Running, its lease lives on
        sync(prefect_server)
        row.refresh_from_db()
        assert row.condition == Condition.HOLDING and process_gone(row.process)
        page = operator_client.get(url).content.decode()
        assert f"pid {holder.pid} on this machine) has ended" in page
        assert "revoking its lease frees the slot at once and nothing can still be inside" in page
        assert "placeholder slot" not in page  # no fence, no wait
        released = time.time()
        operator_client.post(url, {**form(operator_client, url), "reason": "process was killed"})
        operation = finished(Operation.objects.get(limit=limit).pk, timeout=60)
        entered = waiter.wait_event("acquired", timeout=LEASE + REPOSSESS)
        assert operation.status == OperationStatus.SUCCEEDED, operation.message
        assert "had ended" in operation.message and "open again" in operation.message
        assert entered["t"] - released < PROMPT_ENTRY, entered["t"] - released

        # The killed holder, were it to come back, frees nobody's slot with its old lease.
        with patient_client(prefect_server.api_url) as http:
            renewed = http.post(
                f"/v2/concurrency_limits/leases/{first['lease_id']}/renew",
                json={"lease_duration": LEASE},
            )
            assert renewed.status_code in (404, 410), renewed.text
            late = http.post(
                "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": first["lease_id"]}
            )
            assert late.status_code < 300, late.text
            time.sleep(2)
            assert slots(http, name) == 1  # next-job, still inside
    assert max(peak.counts) <= 1, peak.counts
    assert not waiter.find_events("lost")
    waiter.release()
    assert waiter.wait() == 0


def acquired_event(process: object, event: str = "reslock.lock.acquired") -> EventInfo:
    return EventInfo.parse(
        {
            "id": str(uuid.uuid4()),
            "event": event,
            "occurred": datetime.now(UTC).isoformat(),
            "resource": {"prefect.resource.id": f"prefect.concurrency-limit.{uuid.uuid4()}"},
            "payload": {"lease_id": str(uuid.uuid4()), "lease_duration": 60, "process": process},
        }
    )


def test_a_process_identity_from_prefect_is_kept_only_when_well_formed():
    good = process_identity()
    assert event_row(acquired_event(good)).process == good
    assert claim_from_row(event_row(acquired_event(good))).process == good
    for bad in [None, "pid 1", [good], {**good, "pid": "1"}, {**good, "start_ticks": None}]:
        assert event_row(acquired_event(bad)).process == {}, bad
    # Only the helper's acquire names a holder's process.
    assert event_row(acquired_event(good, "reslock.lock.released")).process == {}
