"""The board's "lease lost" chip: a quiet mark on the row of a limit that lost a lease in the
last 24 hours, or whose helper is stopping a block whose lease was lost now. Which limits carry
one is read in one query for the whole board, never per row, and the live refresh redraws a
row whose mark came or went, even when the board's version did not move."""

from __future__ import annotations

import html as htmllib
import re
import uuid
from datetime import timedelta

import pytest
import time_machine
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reslock_web.models import Limit
from reslock_web.status.leases import LostMark, lost_by_limit
from reslock_web.sync import store
from tests.board.test_live import drawn_state, oob_rows, poll
from tests.support.board_data import XSS, make_limit, make_lost_lease, make_stopping

pytestmark = pytest.mark.django_db

CHIP = re.compile(r'<span class="badge lease-lost-chip" title="([^"]*)">lease lost</span>')


def row_html(html: str, limit: Limit) -> str:
    found = re.search(rf'<tr id="limit-{limit.pk}".*?</tr>', html, re.S)
    assert found, html
    return found.group(0)


def chip_title(html: str, limit: Limit) -> str | None:
    found = CHIP.search(row_html(html, limit))
    return htmllib.unescape(found[1]) if found else None


def lock_event_queries(queries) -> int:
    return sum("reslock_lockevent" in query["sql"] for query in queries)


def test_a_row_whose_limit_lost_a_lease_lately_carries_the_chip_and_no_other(viewer_client, rows):
    now = timezone.now()
    make_lost_lease(rows, now - timedelta(hours=3), flow_run_name=XSS)
    latest = make_lost_lease(rows, now - timedelta(hours=1)).closed_at
    long_ago = make_limit("resource:long-ago")
    make_lost_lease(long_ago, now - timedelta(hours=25))  # out of the 24-hour window
    ended = make_limit("resource:ended")
    make_lost_lease(ended, now - timedelta(hours=1), closed_reason="exit")  # not a lost lease
    html = viewer_client.get("/").content.decode()
    assert chip_title(html, rows) == (
        "2 lease(s) lost while their run went on in the last 24 h, the latest at "
        f"{latest:%Y-%m-%d %H:%M:%S} UTC: the next run got the resource. See the resource page."
    )
    for quiet in (long_ago, ended, Limit.objects.get(name="resource:free-one")):
        assert chip_title(html, quiet) is None
    assert html.count("lease-lost-chip") == 1 and XSS not in html


def test_a_block_still_inside_whose_lease_was_lost_marks_its_row_now(viewer_client, rows):
    free = Limit.objects.get(name="resource:free-one")
    make_stopping(free, uuid.uuid4(), timezone.now() - timedelta(seconds=3))
    make_stopping(free, uuid.uuid4(), timezone.now() - timedelta(minutes=5))  # long said
    title = chip_title(viewer_client.get("/").content.decode(), free)
    assert title.startswith("A holder's lease was lost while its block is still inside")
    assert "in the last 24 h" not in title


def test_marking_rows_costs_one_query_per_page_however_many_rows_it_marks(viewer_client, db):
    now = timezone.now()
    limits = [make_limit(f"resource:r{index:02}") for index in range(30)]
    viewer_client.get("/")  # the session's first reads, apart
    store.raise_board_version()
    caches["board"].clear()  # both pages drawn cold: the counts, the page, its rows
    with CaptureQueriesContext(connection) as quiet:
        html = viewer_client.get("/?sort=name").content.decode()
    assert "lease-lost-chip" not in html and lock_event_queries(quiet) == 1
    for limit in limits:  # every row of the page marked, both ways
        lease = uuid.uuid4()
        make_lost_lease(limit, now - timedelta(hours=1), lease_id=lease)
        make_stopping(limit, lease, now - timedelta(seconds=2))
    store.raise_board_version()
    caches["board"].clear()
    with CaptureQueriesContext(connection) as marked:
        html = viewer_client.get("/?sort=name").content.decode()
    assert html.count("lease-lost-chip") == 30
    assert lock_event_queries(marked) == 1 and len(marked) == len(quiet)
    # The same version within the same quarter minute: the marks are not read again.
    with CaptureQueriesContext(connection) as again:
        viewer_client.get("/?sort=name&status=all")
        viewer_client.get("/?q=resource:r1")
    assert lock_event_queries(again) == 0


def test_a_poll_finds_a_new_mark_without_the_version_moving_and_drops_it_after_a_day(
    viewer_client, rows
):
    free = Limit.objects.get(name="resource:free-one")
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        store.raise_board_version()
        seen = drawn_state(viewer_client.get("/?sort=name").content.decode())
        # The helper's release closes the hold as lease_lost: no row of the board changes.
        make_lost_lease(free, start - timedelta(seconds=30))
        with CaptureQueriesContext(connection) as queries:
            assert poll(viewer_client, "?sort=name", seen).status_code == 204
        assert lock_event_queries(queries) == 0  # the read of this quarter minute, reused
        clock.shift(15)
        html = poll(viewer_client, "?sort=name", seen).content.decode()
        assert oob_rows(html) == [f"limit-{free.pk}"] and "lease-lost-chip" in html
        renewed = drawn_state(html.replace(' hx-swap-oob="true"', ""))
        assert poll(viewer_client, "?sort=name", renewed).status_code == 204
        # A full page drawn at this version shows it too (not the page drawn before it).
        assert chip_title(viewer_client.get("/?sort=name").content.decode(), free)
        clock.shift(timedelta(hours=24))
        html = poll(viewer_client, "?sort=name", renewed).content.decode()
        assert f"limit-{free.pk}" in oob_rows(html)
        assert chip_title(html, free) is None and "lease-lost-chip" not in html


def test_the_marks_of_a_mix_of_lock_events_count_only_recent_lost_leases_and_fresh_stops(db):
    now = timezone.now()
    lost, stopping, quiet = (make_limit(f"resource:{name}") for name in ("lost", "stop", "quiet"))
    make_lost_lease(lost, now - timedelta(hours=23))
    latest = make_lost_lease(lost, now - timedelta(minutes=2)).closed_at
    make_lost_lease(lost, now - timedelta(hours=25))  # out of the window
    make_stopping(stopping, uuid.uuid4(), now - timedelta(seconds=5))
    make_lost_lease(stopping, now - timedelta(hours=1), closed_reason="exit")  # not lost
    make_stopping(quiet, uuid.uuid4(), now - timedelta(minutes=1))  # said long ago
    make_lost_lease(quiet, now - timedelta(hours=2), closed_reason="ended")
    unsynced = Limit(prefect_id=uuid.uuid4(), name="resource:elsewhere")  # never stored
    make_lost_lease(unsynced, now - timedelta(hours=1))
    make_stopping(unsynced, uuid.uuid4(), now)
    assert lost_by_limit(now) == {
        lost.pk: LostMark(2, latest, False),
        stopping.pk: LostMark(0, None, True),
    }


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's plan")
def test_the_marks_read_only_the_rows_they_mark_through_their_own_indexes(db):
    """Not every helper hold closed in the last day, nor every stopping ever announced: with a
    million lock events those reads cost more than the rest of a page."""
    with CaptureQueriesContext(connection) as queries:
        lost_by_limit(timezone.now())
    [read] = queries.captured_queries
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {read['sql']}")
        plan = " | ".join(row[-1] for row in cursor.fetchall())
    assert "USING INDEX lockevent_lease_lost (event=? AND closed_reason=? AND closed_at>?)" in plan
    assert "USING INDEX lockevent_stopping (event=? AND occurred>?)" in plan
