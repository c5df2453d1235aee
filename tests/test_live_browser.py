"""The live board in Chromium: a real flow takes, queues on and frees a lock, and the board's
row follows within two seconds through the listener and the one-second refresh, while the
rows that did not change are left alone."""

from __future__ import annotations

import time
import uuid

import pytest
from playwright.sync_api import Page

from reslock_web.prefect_api import PrefectAPI
from reslock_web.sync import sync_all
from tests.test_board_browser import create_limits
from tests.test_listener import ListenerProcess

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def seconds_until(page: Page, script: str, arg: object, since: float) -> float:
    """Wait (in the browser) until `script` holds; seconds from `since` (a flow's clock)."""
    page.wait_for_function(script, arg=arg, timeout=20_000, polling=50)
    return time.time() - since


ROW_SHOWS = """([id, text]) => {
  const row = document.getElementById(id);
  return !!row && row.textContent.includes(text);
}"""


def test_the_board_follows_a_real_flow_within_two_seconds(
    board, live_server, prefect_server, flows
):
    tag = uuid.uuid4().hex[:6]
    name, neighbour = f"live-{tag}-db", f"live-{tag}-other"
    create_limits(prefect_server, [name, neighbour])
    with PrefectAPI(prefect_server.api_url) as api:
        assert sync_all(api).ok
    listener = ListenerProcess(prefect_server)
    try:
        board.goto(f"{live_server.url}/?q=live-{tag}")
        board.wait_for_function(
            "n => document.querySelectorAll('#rows tr[id^=limit-]').length === n",
            arg=2,
            timeout=20_000,
        )
        row_id = board.locator("#rows tr", has_text=name).get_attribute("id")
        other_id = board.locator("#rows tr", has_text=neighbour).get_attribute("id")
        # An expando on the neighbour's row: it survives only if that row is never redrawn.
        board.evaluate("id => { document.getElementById(id).untouched = true; }", other_id)
        board.evaluate("id => { document.getElementById(id).firstDraw = true; }", row_id)

        holder = flows.start("helper_holder", name=name, flow_run_name="live-board-holder")
        acquired = holder.wait_event("acquired")
        took = seconds_until(board, ROW_SHOWS, [row_id, "live-board-holder"], acquired["t"])
        assert took <= 2.0, f"holder shown {took:.2f} s after it acquired"
        assert board.evaluate("id => !document.getElementById(id).firstDraw", row_id)

        waiter = flows.start("helper_holder", name=name, flow_run_name="live-board-waiter")
        want = waiter.wait_event("want")
        took = seconds_until(board, ROW_SHOWS, [row_id, "next: live-board-waiter"], want["t"])
        # The helper announces its wait after its first try found the limit full (~0.3 s).
        assert took <= 2.5, f"waiter shown {took:.2f} s after it asked"

        holder.release()
        released = holder.wait_event("released")
        took = seconds_until(
            board,
            "([id, text]) => !document.getElementById(id).textContent.includes(text)",
            [row_id, "live-board-holder"],
            released["t"],
        )
        assert took <= 2.0, f"release shown {took:.2f} s after it happened"

        waiter.wait_event("acquired", timeout=60)
        waiter.release()
        done = waiter.wait_event("released")
        took = seconds_until(board, ROW_SHOWS, [row_id, "free"], done["t"])
        assert took <= 2.0, f"free shown {took:.2f} s after the last release"

        assert board.evaluate("id => document.getElementById(id).untouched === true", other_id)
        assert "free" in board.locator(f"#{other_id}").inner_text()
        assert board.locator("#q").input_value() == f"live-{tag}"  # the search survived
        assert not board.alerts  # type: ignore[attr-defined]
    finally:
        assert listener.stop() == 0
