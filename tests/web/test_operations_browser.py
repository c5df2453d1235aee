"""Operating from the browser: the clicks, the confirmation, the live status, bulk release."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from reslock_web.models import Limit, Operation, OperationStatus
from tests.support.operating import stale_tag
from tests.support.patient import patient_client
from tests.support.personas import logged_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_releases_a_stale_holder_and_watches_it_finish(
    page, live_server, prefect_server, flows, celery_worker, operator, artifacts
):
    tag = f"resource:click-{uuid.uuid4().hex[:6]}"
    stale_tag(flows, prefect_server, tag)
    logged_in(page, live_server, operator)
    page.goto(f"{live_server.url}/?q={tag}")
    page.get_by_role("link", name=tag, exact=True).click()
    page.get_by_role("link", name="Release…").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(
        "Release the slot held by the finished task run"
    )
    page.get_by_role("button", name="Confirm").click()  # no reason yet
    expect(page.get_by_role("alert").filter(has_text="Say why")).to_be_visible()
    page.get_by_label("Reason").fill("the task ended, its slot did not")
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(re.compile(r"/operations/\d+$"))
    expect(page.locator("#op-status .badge")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#op-status")).to_contain_text("task run crashed")
    page.screenshot(path=artifacts / "operation.png", full_page=True)
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/tag:{tag}").json()["active_slots"] == 0
    page.get_by_role("link", name="Audit trail").click()
    # The policy's dry run above it may list other tests' leftovers: read the operations table.
    newest = page.get_by_role("table", name="Operations").locator("tbody tr").first
    expect(newest).to_contain_text("olga-operator")
    expect(newest).to_contain_text("succeeded")


def test_a_viewer_sees_no_operate_buttons(page, live_server, viewer):
    Limit.objects.create(
        prefect_id=uuid.uuid4(),
        name="resource:look",
        kind="global",
        resource="resource:look",
        limit=1,
    )
    logged_in(page, live_server, viewer)
    page.goto(f"{live_server.url}/resources/resource:look")
    expect(page.get_by_role("heading", name="resource:look")).to_be_visible()
    expect(page.get_by_role("link", name="Change the limit…")).to_have_count(0)
    page.goto(f"{live_server.url}/operate/set-limit/resource:look")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()


def test_bulk_release_previews_then_releases_every_stale_holder(
    page, live_server, prefect_server, flows, celery_worker, operator
):
    prefix = f"resource:bulk-{uuid.uuid4().hex[:6]}"
    for suffix in ("a", "b"):
        stale_tag(flows, prefect_server, f"{prefix}-{suffix}")
    logged_in(page, live_server, operator)
    page.goto(f"{live_server.url}/?q={prefix}&status=stale")
    page.get_by_role("link", name="Release every stale or zombie holder shown…").click()
    expect(page.get_by_text("Dry run: nothing has changed yet. 2 of 2 holder(s)")).to_be_visible()
    assert not Operation.objects.exists()
    page.get_by_label("Reason").fill("cleanup after incident")
    page.get_by_role("button", name="Release 2 holder(s)").click()
    expect(page.locator("#bulk-status")).to_contain_text("2 of 2 finished", timeout=90_000)
    statuses = set(Operation.objects.values_list("status", flat=True))
    assert statuses == {OperationStatus.SUCCEEDED}
    assert len({op.bulk for op in Operation.objects.all()}) == 1
