"""A waiting run's own page in a real Chromium, over the real stack (Prefect server, real
flows, sync, a Celery worker): the operator finds the run, sees what blocks it, releases the
stale holder ahead of it from there, and watches the run get in."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from reslock_web.models import OperationStatus
from tests.support.operating import stale_tag, sync_until, unique
from tests.support.personas import logged_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_frees_a_waiting_run_from_its_own_page(
    page, live_server, prefect_server, flows, celery_worker, operator, artifacts
):
    tag = unique("resource:why")
    stale_tag(flows, prefect_server, tag)  # its run "<tag>-ended" is over, its slot counted
    waiting = flows.start("tag_holder", tag=tag, create=False, flow_run_name=f"{tag}-waiting")
    run_id = waiting.wait_event("started")["flow_run_id"]
    sync_until(
        prefect_server, f"tag:{tag}", lambda limit: limit.is_stale and limit.waiter_count == 1
    )

    # The board's search finds the resource by the waiting run's name; its row names the run
    # as next in line, and the name leads to the run's page.
    logged_in(page, live_server, operator)
    page.goto(f"{live_server.url}/?q={tag}-WAITING")
    rows = page.locator("#rows tr[id^=limit-]")
    expect(rows).to_have_count(1)
    rows.first.get_by_role("link", name=f"{tag}-waiting").click()
    expect(page).to_have_url(f"{live_server.url}/runs/{run_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{tag}-waiting")

    # What blocks it, in words: its place in the queue and the stale holder ahead of it.
    why = page.locator("#live article[id^=wait-] p.why")
    expect(why).to_have_count(1)
    expect(why).to_contain_text(f"for {tag} (1st in line), held by ")
    expect(why).to_contain_text(f"{tag}-ended since")
    expect(why).to_contain_text("which is stale (its run is over, its slot is still counted)")
    expect(page.get_by_role("link", name="this flow run in the Prefect UI")).to_have_attribute(
        "href", re.compile(rf"/runs/flow-run/{run_id}$")
    )
    page.screenshot(path=artifacts / "run-page-waiting.png", full_page=True)

    # Released from here, through the resource's own confirmation page.
    why.get_by_role("link", name="release it here").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(
        "Release the slot held by the finished task run"
    )
    page.get_by_label("Reason").fill("its run ended, the slot did not; a run waits for it")
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(re.compile(r"/operations/\d+$"))
    expect(page.locator("#op-status .badge")).to_have_text(
        OperationStatus.SUCCEEDED.label, timeout=60_000
    )
    # The operation names the holder it released, linked to that run's page.
    expect(page.locator("#op-status").get_by_role("link", name=f"{tag}-ended")).to_be_visible()

    # The waiting run gets in, and its page, left open, shows it holding the resource.
    page.goto(f"{live_server.url}/runs/{run_id}")
    acquired = waiting.wait_event("acquired", timeout=60)
    assert acquired["flow_run_id"] == run_id
    # What beat or the live listener does; the page's own poll then redraws it.
    sync_until(
        prefect_server,
        f"tag:{tag}",
        lambda limit: limit.holders.filter(flow_run_id=run_id).exists(),
    )
    hold = page.locator("#live article[id^=hold-] p.why")
    expect(hold).to_contain_text(f"holding {tag} since", timeout=15_000)
    expect(page.get_by_text("It waits for nothing on the board.")).to_be_visible()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{tag}-waiting")
    page.screenshot(path=artifacts / "run-page-holding.png", full_page=True)
    waiting.release()
    assert waiting.wait(timeout=60) == 0
