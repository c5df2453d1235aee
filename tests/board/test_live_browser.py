"""The live board in Chromium: a real flow takes, queues on and frees a lock, and the board's
row follows through the listener and the one-second refresh, without a reload, while the
rows that did not change are left alone."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import Page

from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.run import sync_all
from tests.support.listener_process import ListenerProcess
from tests.support.prefect_limits import create_limits

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def shows(page: Page, script: str, arg: object) -> None:
    """Wait (in the browser) until `script` holds. Generous: how fast the board follows is
    measured by bench/freshness_bench.py, not here."""
    page.wait_for_function(script, arg=arg, timeout=60_000, polling=50)


ROW_SHOWS = """([id, text]) => {
  const row = document.getElementById(id);
  return !!row && row.textContent.includes(text);
}"""


def test_the_board_follows_a_real_flow_without_a_reload(board, live_server, prefect_server, flows):
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
        holder.wait_event("acquired")
        shows(board, ROW_SHOWS, [row_id, "live-board-holder"])
        assert board.evaluate("id => !document.getElementById(id).firstDraw", row_id)

        waiter = flows.start("helper_holder", name=name, flow_run_name="live-board-waiter")
        waiter.wait_event("want")
        shows(board, ROW_SHOWS, [row_id, "next: live-board-waiter"])

        holder.release()
        holder.wait_event("released")
        shows(
            board,
            "([id, text]) => !document.getElementById(id).textContent.includes(text)",
            [row_id, "live-board-holder"],
        )

        waiter.wait_event("acquired", timeout=60)
        waiter.release()
        waiter.wait_event("released")
        shows(board, ROW_SHOWS, [row_id, "free"])

        assert board.evaluate("id => document.getElementById(id).untouched === true", other_id)
        assert "free" in board.locator(f"#{other_id}").inner_text()
        assert board.locator("#q").input_value() == f"live-{tag}"  # the search survived
        assert not board.alerts  # type: ignore[attr-defined]
    finally:
        assert listener.stop() == 0
