"""A real Chromium logs in through the form and reaches the board."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.support.personas import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_chromium_logs_in_and_sees_the_board(page: Page, live_server, viewer, artifacts):
    page.goto(live_server.url + "/")
    expect(page).to_have_url(live_server.url + "/login/?next=/")
    page.get_by_label("Username").fill(viewer.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Lock board")).to_be_visible()
    assert page.evaluate("typeof htmx") == "object"  # htmx loaded from our own static files
    assert page.evaluate("htmx.version").startswith("2.")
    page.screenshot(path=artifacts / "login-board.png", full_page=True)
