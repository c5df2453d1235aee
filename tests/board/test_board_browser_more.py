"""The board in a real Chromium: the stale and zombie facets, a live refresh that leaves the
operator's place alone (search box, scroll, focus, open menu), keyboard use, and the layout at
phone and desktop widths.

Rows are written straight into our tables, the way a sync's write leaves them, and a change is
made the way that write makes one: new values, the row's `changed_at`, and the board's version
raised in the same transaction, so that the page's one-second poll picks the row up.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from playwright.sync_api import Page, expect

from reslock_web.models import Holder, Limit, Status, SyncRun
from reslock_web.sync.store import raise_board_version
from tests.support.board_data import make_limit

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
WAIT = 15_000  # ms: the machine is shared and slow; a poll runs every second

# Counts the polls the page starts (htmx:beforeRequest on the polling body), including those
# reslock.js cancels, so that a test can tell "skipped" from "not yet due".
COUNT_POLLS = """() => {
  window.__polls = 0;
  document.addEventListener("htmx:beforeRequest", (event) => {
    if (event.detail.elt && event.detail.elt.hasAttribute("data-poll")) window.__polls++;
  });
}"""


def prefix() -> str:
    return f"br{uuid.uuid4().hex[:6]}"


def synced(*limits: Limit) -> None:
    """Finish the setup as a sync would: a good SyncRun for the banner, the version raised."""
    SyncRun.objects.create(ok=True, finished_at=timezone.now(), limits=len(limits), duration_ms=9)
    raise_board_version()


def free_rows(p: str, count: int) -> list[Limit]:
    limits = [make_limit(f"resource:{p}-{i:03d}") for i in range(count)]
    synced(*limits)
    return limits


def change(limit: Limit, **fields: object) -> None:
    """Change one row the way a sync's write does (store.write): values and changed_at in one
    update, the board's version raised before the commit."""
    with transaction.atomic():
        Limit.objects.filter(pk=limit.pk).update(changed_at=timezone.now(), **fields)
        raise_board_version()


def take(limit: Limit) -> None:
    """The row's slot is taken: the same height as a free row, so that layout does not move."""
    change(limit, status=Status.HELD, is_held=True, active_slots=1)


def rows(page: Page):
    return page.locator("#rows tr[id^=limit-]")


def row_of(page: Page, limit: Limit):
    return page.locator(f"#limit-{limit.pk}")


def polls_skipped_while(page: Page, requests: list[str], held) -> None:
    """Several polls came due and none reached the server, and the row kept its old state."""
    page.evaluate("window.__polls = 0")
    sent = len(requests)
    page.wait_for_function("() => window.__polls >= 3", timeout=WAIT)
    assert len(requests) == sent, "a poll went out while the page asked to be left alone"
    expect(held.locator(".badge")).to_have_text("free")


# --- 1. the stale and zombie facets ----------------------------------------------------------
def test_the_stale_and_zombie_facets_count_and_show_their_own_rows(board, live_server):
    p = prefix()
    now = timezone.now()
    stale = make_limit(
        f"resource:{p}-stale",
        status=Status.STALE,
        is_held=True,
        is_stale=True,
        active_slots=1,
        evidence=[{"flag": "stale", "text": "run 'nightly' is Completed but still counted"}],
    )
    stale_tag = make_limit(
        f"tag:{p}-stale-tag", status=Status.STALE, is_held=True, is_stale=True, active_slots=1
    )
    zombie = make_limit(
        f"resource:{p}-zombie",
        status=Status.ZOMBIE,
        has_zombie=True,
        evidence=[{"flag": "zombie", "text": "run 'loader' is Running but its slot is gone"}],
    )
    # Facets follow the flags, not the one-word status: a zombie that is also stale is in both.
    both = make_limit(
        f"resource:{p}-both",
        status=Status.ZOMBIE,
        is_held=True,
        is_stale=True,
        has_zombie=True,
        active_slots=1,
    )
    # Deadlocked is the worse word, yet the row still belongs under zombie.
    dead = make_limit(
        f"resource:{p}-dead",
        status=Status.DEADLOCKED,
        is_held=True,
        has_waiters=True,
        is_deadlocked=True,
        has_zombie=True,
        active_slots=1,
        waiter_count=1,
    )
    held = make_limit(f"resource:{p}-held", status=Status.HELD, is_held=True, active_slots=1)
    Holder.objects.create(
        limit=held,
        key="h",
        source="event",
        flow_run_id=uuid.uuid4(),
        flow_run_name="alive",
        state_type="RUNNING",
        state_name="Running",
        acquired_at=now - timedelta(minutes=3),
    )
    free = make_limit(f"resource:{p}-free")
    every = {stale, stale_tag, zombie, both, dead, held, free}
    synced(*every)
    expected = {
        "stale": [stale, stale_tag, both],
        "zombie": [zombie, both, dead],
    }

    board.goto(f"{live_server.url}/?q={p}")
    expect(rows(board)).to_have_count(len(every), timeout=WAIT)
    for facet, shown in expected.items():
        link = board.locator(f"#facets a.facet-{facet}")
        expect(link.locator(".count")).to_have_text(str(len(shown)))
        link.click()
        expect(board).to_have_url(re.compile(rf"[?&]status={facet}(&|$)"), timeout=WAIT)
        expect(link).to_have_attribute("aria-current", "true")
        expect(rows(board)).to_have_count(len(shown))
        for limit in shown:
            expect(row_of(board, limit)).to_be_visible()
        for limit in every - set(shown):
            expect(row_of(board, limit)).to_have_count(0)
    # The badge says the worst word and its tooltip gives the evidence.
    badge = row_of(board, zombie).locator(".badge")
    expect(badge).to_have_text("zombie")
    expect(badge).to_have_attribute("title", re.compile("its slot is gone"))
    board.reload()  # the facet lives in the URL
    expect(board.locator("#facets a.facet-zombie")).to_have_attribute("aria-current", "true")
    expect(rows(board)).to_have_count(3)


# --- 2. live refresh keeps the operator's place ----------------------------------------------
def test_the_board_opens_with_the_deadlocked_and_zombie_resources_on_top(board, live_server):
    p = prefix()
    now = timezone.now()
    held = [
        make_limit(f"resource:{p}-a{i}", status=Status.HELD, is_held=True, held_since=now)
        for i in range(3)
    ]
    zombie = make_limit(f"resource:{p}-y-zombie", status=Status.ZOMBIE, has_zombie=True)
    dead = make_limit(
        f"resource:{p}-z-dead", status=Status.DEADLOCKED, is_deadlocked=True, has_waiters=True
    )
    synced(*held, zombie, dead)
    board.goto(f"{live_server.url}/?q={p}")
    names = board.locator("#rows th.resource a")
    expect(names.nth(0)).to_have_text(dead.name, timeout=WAIT)
    expect(names.nth(1)).to_have_text(zombie.name)
    banner = board.locator("p.banner.attention")
    expect(banner).to_have_text("Needs attention: 1 deadlocked, 1 zombie.")
    # The count is a way in: it filters the board to those resources.
    banner.get_by_role("link", name="1 zombie").click()
    expect(board).to_have_url(re.compile(r"status=zombie"))
    expect(names).to_have_count(1)
    expect(names.nth(0)).to_have_text(zombie.name)
    # Name order is one choice away.
    board.goto(f"{live_server.url}/?q={p}")
    board.get_by_label("Sort by").select_option("name")
    expect(names.nth(0)).to_have_text(held[0].name, timeout=WAIT)


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
    board.goto(f"{live_server.url}/?q={p}")
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


# --- 3. keyboard -----------------------------------------------------------------------------
TAB_STOP = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return "body";
  if (el.id) return "#" + el.id;
  const facet = [...el.classList].find((c) => c.startsWith("facet-"));
  if (facet) return facet;
  if (el.closest("#rows .resource")) return "resource:" + el.textContent.trim();
  if (el.closest("#rows")) return "row-link";
  if (el.closest(".pager")) return "pager:" + el.rel;
  return el.tagName.toLowerCase() + ":" + el.textContent.trim().slice(0, 20);
}"""


def tab_stops(page: Page, until: str, limit: int = 150) -> list[str]:
    stops: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        stops.append(page.evaluate(TAB_STOP))
        if stops[-1] == until:
            return stops
    raise AssertionError(f"{until} not reached by Tab: {stops}")


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
    stale = make_limit(f"resource:{p}-stale", status=Status.STALE, is_held=True, is_stale=True)
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


# --- 4. phone and desktop widths -------------------------------------------------------------
@pytest.mark.parametrize(("width", "height"), [(390, 844), (1280, 800)])
def test_the_board_fits_the_width_with_search_and_names_in_view(
    board, live_server, artifacts, width, height
):
    p = prefix()
    now = timezone.now()
    limits = free_rows(p, 12)
    # Long names without spaces and a long run name: what pushes a narrow table wider.
    long = make_limit(
        f"resource:{p}-{'warehouse-eu-west-1-replica-' * 3}primary",
        status=Status.CONTENDED,
        is_held=True,
        has_waiters=True,
        active_slots=1,
        waiter_count=1,
        held_since=now,
    )
    Holder.objects.create(
        limit=long,
        key="h",
        source="event",
        flow_run_id=uuid.uuid4(),
        flow_run_name="nightly-rebuild-of-every-partition-" * 2,
        flow_name="loader",
        state_type="RUNNING",
        state_name="Running",
        acquired_at=now,
    )
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
