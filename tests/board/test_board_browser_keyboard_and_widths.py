"""The board in a real Chromium by keyboard alone (Tab in reading order, Enter on a facet and on a
resource), and its layout at phone and desktop widths.

Rows are written straight into our tables, the way a sync's write leaves them
(tests/support/board_page.py).
"""

from __future__ import annotations

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.support.board_data import make_holder, make_limit, make_waiter, settle
from tests.support.board_page import (
    WAIT,
    free_rows,
    prefix,
    rows,
    synced,
    tab_stops,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


# --- the keyboard ----------------------------------------------------------------------------
def test_tab_walks_search_filters_facets_rows_and_pager_in_reading_order(board, live_server):
    p = prefix()
    free_rows(p, 52)
    board.goto(f"{live_server.url}/?q={p}")
    expect(rows(board)).to_have_count(50, timeout=WAIT)
    stops = tab_stops(board, until="pager:next")
    order = [
        "#q",
        "#kind",
        "#sort",
        "facet-all",
        "facet-stale",
        "facet-zombie",
        "facet-inactive",
        f"resource:resource:{p}-000",
        f"resource:resource:{p}-049",
        "pager:next",
    ]
    positions = [stops.index(stop) for stop in order]
    assert positions == sorted(positions), stops
    # Enter on "Next" turns the page; the last page has no "Next", so focus goes to "Previous".
    board.keyboard.press("Enter")
    expect(board).to_have_url(re.compile(r"page=2"), timeout=WAIT)
    expect(rows(board)).to_have_count(2)
    expect(board.locator(".pager a[rel=prev]")).to_be_focused()


def test_enter_on_a_facet_filters_and_enter_on_a_resource_opens_it(board, live_server):
    p = prefix()
    limits = free_rows(p, 2)
    stale = make_limit(f"resource:{p}-stale", is_held=True, is_stale=True)
    synced(*limits, stale)
    board.goto(f"{live_server.url}/?q={p}")
    expect(rows(board)).to_have_count(3, timeout=WAIT)
    tab_stops(board, until="facet-stale")
    board.keyboard.press("Enter")
    expect(board).to_have_url(re.compile(r"status=stale"), timeout=WAIT)
    expect(rows(board)).to_have_count(1)
    # The redrawn facet keeps the focus: the keyboard goes on from there, not from the top.
    stale_facet = board.locator("#facets a.facet-stale")
    expect(stale_facet).to_have_attribute("aria-current", "true")
    expect(stale_facet).to_be_focused()
    board.keyboard.press("Tab")
    expect(board.locator("#facets a.facet-zombie")).to_be_focused()
    tab_stops(board, until=f"resource:resource:{p}-stale")
    board.keyboard.press("Enter")
    expect(board).to_have_url(re.compile(r"/resources/"), timeout=WAIT)
    expect(board.get_by_role("heading", name=f"resource:{p}-stale")).to_be_visible()


# --- phone and desktop widths ----------------------------------------------------------------
@pytest.mark.parametrize(("width", "height"), [(390, 844), (1280, 800)])
def test_the_board_fits_the_width_with_search_and_names_in_view(
    board, live_server, artifacts, width, height
):
    p = prefix()
    now = timezone.now()
    limits = free_rows(p, 12)
    # Long names without spaces and a long run name: what pushes a narrow table wider.
    long = make_limit(f"resource:{p}-{'warehouse-eu-west-1-replica-' * 3}primary")
    make_holder(
        long,
        key="h",
        source="event",
        flow_run_name="nightly-rebuild-of-every-partition-" * 2,
        flow_name="loader",
        state_type="RUNNING",
        state_name="Running",
        acquired_at=now,
    )
    make_waiter(long, source="event", flow_run_name="next-run")
    settle(long)
    synced(*limits, long)
    board.set_viewport_size({"width": width, "height": height})
    board.goto(f"{live_server.url}/?q={p}")
    expect(rows(board)).to_have_count(13, timeout=WAIT)
    inner = board.evaluate("window.innerWidth")
    scroll = board.evaluate("document.documentElement.scrollWidth")
    assert scroll <= inner, f"the page is {scroll} px wide in a {inner} px window"
    expect(board.get_by_label("Search resources")).to_be_in_viewport()
    for index in range(3):
        name = rows(board).nth(index).locator(".resource a")
        expect(name).to_be_visible()
        box = name.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= inner, (index, box)
    board.screenshot(path=artifacts / f"board-{width}.png", full_page=True)
