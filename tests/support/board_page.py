"""The board in a real Chromium, fed straight from our tables: rows written the way a sync's
write leaves them, and the locators, waits and key presses the browser tests share.

A change is made the way that write makes one: new values, the row's `changed_at`, and the
board's version raised in the same transaction, so that the page's one-second poll picks the
row up.
"""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone
from playwright.sync_api import Page

from reslock_web.models import Limit, Status, SyncRun
from reslock_web.sync.store import raise_board_version
from tests.support.board_data import make_limit

WAIT = 15_000  # ms: the machine is shared and slow; a poll runs every second


def prefix(letters: str = "br") -> str:
    """A fresh start for a test's resource names, to search the board by."""
    return f"{letters}{uuid.uuid4().hex[:6]}"


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


# Where the keyboard focus is, in words a test can compare.
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
