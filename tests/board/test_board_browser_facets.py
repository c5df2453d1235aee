"""The board in a real Chromium: the stale and zombie facets count and show their own rows, and the
board opens with the deadlocked and zombie resources on top, named in the banner.

Rows are written straight into our tables, the way a sync's write leaves them
(tests/support/board_page.py).
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from reslock_web.models import Condition
from tests.support.board_data import make_held, make_holder, make_limit, make_waiter, settle
from tests.support.board_page import (
    WAIT,
    prefix,
    row_of,
    rows,
    synced,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


# --- the stale and zombie facets -------------------------------------------------------------
def test_the_stale_and_zombie_facets_count_and_show_their_own_rows(board, live_server):
    p = prefix()
    now = timezone.now()
    stale = make_limit(
        f"resource:{p}-stale",
        is_held=True,
        is_stale=True,
        active_slots=1,
        evidence=[{"flag": "stale", "text": "run 'nightly' is Completed but still counted"}],
    )
    stale_tag = make_limit(f"tag:{p}-stale-tag", is_held=True, is_stale=True, active_slots=1)
    zombie = make_limit(
        f"resource:{p}-zombie",
        has_zombie=True,
        evidence=[{"flag": "zombie", "text": "run 'loader' is Running but its slot is gone"}],
    )
    # Facets follow the flags, not the one-word status: a zombie that is also stale is in both.
    both = make_limit(
        f"resource:{p}-both", is_held=True, is_stale=True, has_zombie=True, active_slots=1
    )
    # Deadlocked is the worse word, yet the row still belongs under zombie: a zombie, and a
    # waiter nested in the live holder.
    dead = make_limit(f"resource:{p}-dead")
    make_holder(dead, condition=Condition.ZOMBIE)
    make_waiter(dead, deadlocked_by=make_holder(dead))
    settle(dead)
    held = make_limit(f"resource:{p}-held")
    make_holder(
        held,
        key="h",
        source="event",
        flow_run_name="alive",
        state_type="RUNNING",
        state_name="Running",
        acquired_at=now - timedelta(minutes=3),
    )
    settle(held)
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


# --- the first order -------------------------------------------------------------------------
def test_the_board_opens_with_the_deadlocked_and_zombie_resources_on_top(board, live_server):
    p = prefix()
    now = timezone.now()
    held = [make_held(f"resource:{p}-a{i}", since=now) for i in range(3)]
    zombie = make_limit(f"resource:{p}-y-zombie", has_zombie=True)
    dead = make_limit(f"resource:{p}-z-dead", is_deadlocked=True, has_waiters=True)
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
