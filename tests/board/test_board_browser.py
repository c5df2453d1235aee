"""The board in a real Chromium, over the real stack: Prefect server, real flows, sync, board."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.support.board_page import prefix, rows
from tests.support.patient import patient_client
from tests.support.periodic_sync import PeriodicSync
from tests.support.prefect_limits import create_limits

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def syncing(prefect_server):
    with PeriodicSync(prefect_server.api_url) as periodic:
        yield periodic


def test_typing_a_search_narrows_the_rows_and_updates_the_url(
    board, live_server, prefect_server, syncing, artifacts
):
    p = prefix("ui")
    create_limits(prefect_server, [f"resource:{p}-alpha", f"resource:{p}-beta", f"tag:{p}-gamma"])
    board.goto(f"{live_server.url}/?q={p}")
    expect(rows(board)).to_have_count(3, timeout=20_000)
    board.get_by_label("Search resources").fill(f"{p}-BE")
    expect(rows(board)).to_have_count(1)
    expect(rows(board).first).to_contain_text(f"resource:{p}-beta")
    expect(board).to_have_url(re.compile(rf"q={p}-BE"))
    expect(board.get_by_label("Search resources")).to_be_focused()
    board.reload()  # the search survives a reload: it lives in the URL
    expect(rows(board)).to_have_count(1)
    expect(board.get_by_label("Search resources")).to_have_value(f"{p}-BE")
    board.get_by_label("Kind").select_option("tag")
    board.get_by_label("Search resources").fill(p)
    expect(rows(board)).to_have_count(1)
    expect(rows(board).first).to_contain_text(f"{p}-gamma")


def test_each_facet_shows_its_rows_and_counts(
    board, live_server, prefect_server, syncing, flows, settings
):
    settings.GRACE_SECONDS = 0
    p = prefix("ui")
    create_limits(prefect_server, [f"resource:{p}-free", f"resource:{p}-off"])
    with patient_client(prefect_server.api_url) as http:
        http.patch(
            f"/v2/concurrency_limits/resource:{p}-off", json={"active": False}
        ).raise_for_status()
    holder = flows.start("gcl_holder", name=f"resource:{p}-held")
    holder.wait_event("acquired")
    assert flows.start("raw_increment_leak", name=f"resource:{p}-leak").wait() == 0
    nested = flows.start("nested_tags", tag=f"{p}-nest")
    nested.wait_event("calling_inner")
    expected = {
        "held": [f"resource:{p}-held", f"resource:{p}-leak", f"{p}-nest"],
        "deadlocked": [f"{p}-nest"],
        "drift": [f"resource:{p}-leak"],
        "inactive": [f"resource:{p}-off"],
        "free": [f"resource:{p}-free"],
        "waiting": [f"{p}-nest"],
        "contended": [f"{p}-nest"],
    }
    board.goto(f"{live_server.url}/?q={p}")
    expect(rows(board)).to_have_count(5, timeout=30_000)
    for facet, names in expected.items():
        link = board.locator(f"#facets a.facet-{facet}")
        expect(link.locator(".count")).to_have_text(str(len(names)), timeout=30_000)
        link.click()
        expect(board).to_have_url(re.compile(f"status={facet}"))
        expect(rows(board)).to_have_count(len(names))
        for name in names:
            expect(board.locator("#rows")).to_contain_text(name)
        expect(link).to_have_attribute("aria-current", "true")
    expect(board.locator("#facets a.facet-all .count")).to_have_text("5")


def test_a_resource_page_shows_its_holder_and_its_waiters_in_order(
    board, live_server, prefect_server, syncing, flows, artifacts
):
    tag = prefix("ui")
    first = flows.start("tag_holder", tag=tag, flow_run_name=f"{tag}-first")
    first.wait_event("acquired")
    for order in ("second", "third"):
        flows.start("tag_holder", tag=tag, flow_run_name=f"{tag}-{order}").wait_event("started")
    board.goto(f"{live_server.url}/?q={tag}")
    expect(rows(board).first.locator(".badge")).to_have_text("contended", timeout=30_000)
    board.get_by_role("link", name=tag, exact=True).click()
    expect(board.get_by_role("heading", name=tag, exact=True)).to_be_visible()
    holders = board.locator("section[aria-labelledby=holders-h] tbody tr")
    expect(holders).to_have_count(1)
    expect(holders.first).to_contain_text(f"{tag}-first")
    waiters = board.locator("ol.waiters li")
    expect(waiters).to_have_count(2, timeout=20_000)
    expect(waiters.nth(0)).to_contain_text(f"{tag}-second")
    expect(waiters.nth(1)).to_contain_text(f"{tag}-third")
    board.screenshot(path=artifacts / "resource-page.png", full_page=True)


def test_a_lock_taken_while_the_board_is_open_appears_without_a_reload(
    board, live_server, prefect_server, syncing, flows
):
    p = prefix("ui")
    name = f"resource:{p}-live"
    create_limits(prefect_server, [name])
    board.goto(f"{live_server.url}/?q={p}")
    row = rows(board).first
    expect(row.locator(".badge")).to_have_text("free", timeout=20_000)
    board.evaluate("window.__marker = 'same page'")
    flows.start("gcl_holder", name=name, flow_run_name=f"{p}-late-comer").wait_event("acquired")
    expect(row.locator(".badge")).to_have_text("held", timeout=30_000)
    # The counter moves at once; the holder's name comes with its event, a few seconds later.
    expect(row).to_contain_text(f"{p}-late-comer", timeout=30_000)
    assert board.evaluate("window.__marker") == "same page"  # no reload happened


def test_markup_in_a_flow_run_name_is_shown_as_text(
    board, live_server, prefect_server, syncing, flows, artifacts
):
    p = prefix("ui")
    name = f"resource:{p}-xss"
    flows.start("gcl_holder", name=name, flow_run_name=XSS).wait_event("acquired")
    board.goto(f"{live_server.url}/?q={p}")
    row = rows(board).first
    expect(row.locator(".holder")).to_contain_text(XSS, timeout=30_000)
    assert board.locator("#rows img").count() == 0
    board.get_by_role("link", name=name, exact=True).click()
    expect(board.locator("section[aria-labelledby=holders-h]")).to_contain_text(XSS, timeout=20_000)
    assert board.locator("main img").count() == 0
    assert board.alerts == []  # type: ignore[attr-defined]
    board.goto(f"{live_server.url}/")
    board.screenshot(path=artifacts / "board.png", full_page=True)
    board.set_viewport_size({"width": 390, "height": 844})
    board.screenshot(path=artifacts / "board-phone.png", full_page=True)
