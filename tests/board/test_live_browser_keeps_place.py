"""The live refresh in a real Chromium leaves the operator's place alone: the search box's focus,
text and caret, the scroll position, focus in the rows or on a facet, an open menu, the selects.

Rows are written straight into our tables, the way a sync's write leaves them
(tests/support/board_page.py), so that the page's one-second poll picks a change up.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from reslock_web.models import Limit
from tests.support.board_page import (
    WAIT,
    free_rows,
    prefix,
    row_of,
    rows,
    tab_stops,
    take,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


# Counts the polls the page starts (htmx:beforeRequest on the polling body), including those
# reslock.js cancels, so that a test can tell "skipped" from "not yet due".
COUNT_POLLS = """() => {
  window.__polls = 0;
  document.addEventListener("htmx:beforeRequest", (event) => {
    if (event.detail.elt && event.detail.elt.hasAttribute("data-poll")) window.__polls++;
  });
}"""


def polls_skipped_while(page: Page, requests: list[str], held) -> None:
    """Several polls came due and none reached the server, and the row kept its old state."""
    page.evaluate("window.__polls = 0")
    sent = len(requests)
    page.wait_for_function("() => window.__polls >= 3", timeout=WAIT)
    assert len(requests) == sent, "a poll went out while the page asked to be left alone"
    expect(held.locator(".badge")).to_have_text("free")


def test_the_search_box_keeps_focus_text_and_caret_while_a_change_arrives(board, live_server):
    p = prefix()
    first, *_ = free_rows(p, 3)
    board.goto(f"{live_server.url}/")
    search = board.get_by_label("Search resources")
    search.click()
    search.press_sequentially(f"{p}-00", delay=30)
    expect(board).to_have_url(re.compile(rf"q={p}-00"), timeout=WAIT)
    expect(rows(board)).to_have_count(3)
    # Typing paused with the caret inside the text (after the prefix), not at its end.
    caret = len(p)
    search.evaluate("(el, at) => el.setSelectionRange(at, at)", caret)
    take(first)
    expect(row_of(board, first).locator(".badge")).to_have_text("held", timeout=WAIT)
    expect(search).to_be_focused()
    expect(search).to_have_value(f"{p}-00")
    assert search.evaluate("el => [el.selectionStart, el.selectionEnd]") == [caret, caret]
    # The next key lands where the caret was left.
    board.keyboard.type("X")
    expect(search).to_have_value(f"{p}X-00")


def test_the_page_keeps_its_scroll_position_while_rows_change(board, live_server, artifacts):
    p = prefix()
    limits = free_rows(p, 55)  # more than a page of 50: the page scrolls
    board.set_viewport_size({"width": 1280, "height": 720})
    # In name order the rows that change keep their places (attention first would move them
    # to the top, and the list with them).
    board.goto(f"{live_server.url}/?q={p}&sort=name")
    expect(rows(board)).to_have_count(50, timeout=WAIT)
    target, above = limits[30], limits[3]
    board.evaluate("y => window.scrollTo(0, y)", row_of(board, target).bounding_box()["y"] - 300)
    scrolled = board.evaluate("window.scrollY")
    assert scrolled > 500
    # One row in view and one above it change; both keep their height, so nothing should move.
    take(target)
    take(above)
    expect(row_of(board, target).locator(".badge")).to_have_text("held", timeout=WAIT)
    expect(row_of(board, above).locator(".badge")).to_have_text("held")
    expect(board.locator("#facets a.facet-held .count")).to_have_text("2")
    assert board.evaluate("window.scrollY") == scrolled
    expect(row_of(board, target)).to_be_in_viewport()
    board.screenshot(path=artifacts / "board-scrolled-after-change.png")


def three_rows_polled(board: Page, live_server) -> tuple[Limit, list[str]]:
    """A board of three free rows whose polls are counted; the first row and the poll URLs."""
    p = prefix()
    first, *_ = free_rows(p, 3)
    requests: list[str] = []
    board.on("request", lambda r: "/board/changes" in r.url and requests.append(r.url))
    board.goto(f"{live_server.url}/?q={p}")
    expect(rows(board)).to_have_count(3, timeout=WAIT)
    board.evaluate(COUNT_POLLS)
    return first, requests


def test_a_poll_waits_while_focus_is_in_the_rows_and_applies_after_it_leaves(board, live_server):
    first, requests = three_rows_polled(board, live_server)
    link = row_of(board, first).locator(".resource a")
    link.evaluate("el => { el.focus(); el.sameLink = true; }")
    take(first)
    # Redrawing the row would take the focused link away from the keyboard user.
    polls_skipped_while(board, requests, row_of(board, first))
    expect(link).to_be_focused()
    assert link.evaluate("el => el.sameLink === true")
    board.get_by_label("Search resources").focus()
    expect(row_of(board, first).locator(".badge")).to_have_text("held", timeout=WAIT)


def test_a_poll_waits_while_a_menu_is_open_and_applies_after_it_closes(board, live_server):
    first, requests = three_rows_polled(board, live_server)
    # The board draws no <details> menu of its own today; reslock.js promises to hold every
    # poll while any details[open] is on the page, so one is added the way a menu would be.
    board.evaluate(
        """() => {
          const menu = document.createElement("details");
          menu.id = "menu";
          menu.innerHTML = "<summary>Actions</summary><a href='#'>Release…</a>";
          document.querySelector("#main").prepend(menu);
        }"""
    )
    menu = board.locator("#menu")
    menu.locator("summary").click()
    expect(menu).to_have_attribute("open", "")
    take(first)
    polls_skipped_while(board, requests, row_of(board, first))
    expect(menu).to_have_attribute("open", "")
    menu.locator("summary").click()  # closed: the next poll brings the change
    expect(row_of(board, first).locator(".badge")).to_have_text("held", timeout=WAIT)


def test_the_kind_and_sort_selects_keep_focus_and_value_while_rows_refresh(board, live_server):
    p = prefix()
    first, *_ = free_rows(p, 3)
    board.goto(f"{live_server.url}/?q={p}&sort=changed")
    expect(rows(board)).to_have_count(3, timeout=WAIT)
    sort = board.get_by_label("Sort by")
    sort.focus()
    # The selects sit outside the refreshed part: polls go on and leave them alone.
    take(first)
    expect(row_of(board, first).locator(".badge")).to_have_text("held", timeout=WAIT)
    expect(sort).to_be_focused()
    expect(sort).to_have_value("changed")
    expect(board.get_by_label("Kind")).to_have_value("")


def test_a_focused_facet_keeps_focus_when_the_refresh_redraws_the_counts(board, live_server):
    p = prefix()
    first, *_ = free_rows(p, 3)
    board.goto(f"{live_server.url}/?q={p}")
    expect(rows(board)).to_have_count(3, timeout=WAIT)
    tab_stops(board, until="facet-held")
    take(first)  # the held count moves: the live refresh redraws the facets
    expect(board.locator("#facets a.facet-held .count")).to_have_text("1", timeout=WAIT)
    expect(board.locator("#facets a.facet-held")).to_be_focused()
    expect(row_of(board, first).locator(".badge")).to_have_text("held")
