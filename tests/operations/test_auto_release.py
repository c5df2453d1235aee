"""Safe self-healing: the auto-release policy, its dry run on /audit, and the real thing.

The real one runs on the real stack: a finished run's leftover tag slot made by a real flow is
released by the policy through a real Celery worker, within its grace, while a live holder of
another resource, held by another real flow, is never touched. The adversarial scenarios run
with the policy on in tests/test_safety_suite.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from reslock_web.celery import app
from reslock_web.models import Condition, Operation, OperationStatus
from reslock_web.operations import policy
from tests.support.board_data import make_holder, make_limit, settle
from tests.support.net import wait_for
from tests.support.operating import finished, sync, sync_until, unique

pytestmark = pytest.mark.django_db(transaction=True)


def board_with_every_kind_of_holder():
    """One stale holder the policy may release, and one of each kind it must leave alone."""
    ended = timezone.now() - timedelta(minutes=30)
    stale_tag = make_limit("tag:nightly")
    make_holder(
        stale_tag,
        condition=Condition.STALE,
        source="tag_lease",
        task_run_id=uuid.uuid4(),
        flow_run_name="nightly-1",
        state_type="COMPLETED",
        state_name="Completed",
        state_at=ended,
    )
    # A stale global holder whose lease is unknown: its slot frees itself; lowering by name
    # could let two runs in. Never the policy's.
    unleased = make_limit("db-unleased")
    make_holder(
        unleased, condition=Condition.STALE, source="event", state_type="COMPLETED", state_at=ended
    )
    live = make_limit("db-live")
    make_holder(
        live, condition=Condition.HOLDING, source="event", state_type="RUNNING", state_at=ended
    )
    zombie = make_limit("db-zombie")
    make_holder(
        zombie, condition=Condition.ZOMBIE, source="helper", state_type="RUNNING", state_at=ended
    )
    unsure = make_limit("db-unsure")
    make_holder(
        unsure, condition=Condition.UNCOUNTED, source="helper", state_type="RUNNING", state_at=ended
    )
    for limit in (stale_tag, unleased, live, zombie, unsure):
        settle(limit)
    return stale_tag


def test_the_dry_run_on_the_audit_page_lists_only_what_is_provably_safe(operator_client, settings):
    settings.AUTO_RELEASE = ""
    stale_tag = board_with_every_kind_of_holder()
    [candidate] = policy.candidates()
    assert candidate.limit == stale_tag and candidate.due(timezone.now())
    html = operator_client.get("/audit").content.decode()
    assert "Auto-release policy: off" in html and "Would be released" in html
    assert "nightly-1" in html and "db-unleased" not in html and "db-zombie" not in html
    assert policy.run() == 0 and not Operation.objects.exists()  # off: a dry run only


def test_a_holder_is_released_only_once_its_grace_has_passed_and_only_once(settings):
    settings.AUTO_RELEASE, settings.AUTO_RELEASE_GRACE_MINUTES = "stale", 45
    board_with_every_kind_of_holder()  # its run ended 30 min ago: 15 min to go
    assert policy.run() == 0 and not Operation.objects.exists()
    settings.AUTO_RELEASE_GRACE_MINUTES = 20
    assert policy.run() == 1
    operation = Operation.objects.get()
    assert operation.requested_by is None and operation.requested_by_name == "auto-release policy"
    assert (
        operation.limit.name == "tag:nightly" and "RESLOCK_AUTO_RELEASE=stale" in operation.reason
    )
    assert "crash_flow_run" not in operation.params  # never a whole flow run
    assert policy.run() == 0  # waits for its own operation
    Operation.objects.filter(pk=operation.pk).update(status=OperationStatus.SKIPPED)
    assert policy.run() == 0  # asked once for this claim, whatever came of it
    assert Operation.objects.count() == 1


def test_the_policy_frees_a_finished_runs_slot_and_never_a_live_holders(
    prefect_server, flows, celery_worker, settings
):
    settings.AUTO_RELEASE, settings.AUTO_RELEASE_GRACE_MINUTES = "stale", 0
    tag = unique("resource:auto")
    stale = flows.start("tag_holder", tag=tag, reset_override=True, hold=0.5, flow_run_name="ended")
    assert stale.wait(timeout=90) == 0
    waiter = flows.start("tag_holder", tag=tag, flow_run_name="next-in-line")
    waiter.wait_event("started")
    live_name = unique("db-auto-live")
    live = flows.start("helper_holder", name=live_name, flow_run_name="busy", hold=600)
    live.wait_event("acquired")
    sync_until(prefect_server, f"tag:{tag}", lambda limit: limit.is_stale)
    sync_until(prefect_server, live_name, lambda limit: limit.holder_count == 1)

    def tick():
        sync(prefect_server)
        app.send_task("reslock.auto_release")  # as beat does every minute
        return Operation.objects.filter(limit__name=f"tag:{tag}").first()

    operation = wait_for(tick, 60, interval=2, what="the policy to ask for the release")
    operation = finished(operation.pk, 90)
    assert operation.status == OperationStatus.SUCCEEDED, operation.message
    assert operation.requested_by_name == "auto-release policy"
    assert waiter.wait_event("acquired", timeout=60)["flow_run_name"] == "next-in-line"
    waiter.release()
    assert waiter.wait() == 0
    for _ in range(3):  # the live holder stays, however often the policy looks
        tick()
    assert not Operation.objects.filter(limit__name=live_name).exists()
    assert not live.find_events("lost") and not live.find_events("released")
    live.stop()
