"""Board pages drawn once per board version and query; the banner's answer reused for a second."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reslock_web.board.format import redraw_ages, since
from reslock_web.models import Limit, SyncRun
from reslock_web.sync import health, store
from tests.support.board_data import XSS

pytestmark = pytest.mark.django_db


def held_for(html: str) -> str:
    row = html[html.index('class="row-contended"') :]
    return re.search(r'<td class="col-held"><time [^>]*>([^<]*)</time>', row)[1]


def count_queries(client, url: str) -> tuple[str, int]:
    with CaptureQueriesContext(connection) as queries:
        html = client.get(url).content.decode()
    return html, len(queries)


def test_a_page_drawn_at_one_version_is_served_again_without_reading_rows(viewer_client, rows):
    store.raise_board_version()  # what every sync does when it writes something
    first, drawn = count_queries(viewer_client, "/?sort=waiters")
    again, served = count_queries(viewer_client, "/?sort=waiters")
    results = slice(first.index('<div id="results">'), None)
    assert again[results] == first[results]
    # Counting the facets, the page, its holders and its waiters: none of it the second time.
    assert served <= drawn - 4


def test_rows_change_with_the_version_and_never_before(viewer_client, rows):
    store.raise_board_version()
    assert "next: second-in-line" in viewer_client.get("/").content.decode()
    rows.waiters.filter(position=1).update(flow_run_name="promoted")
    # The store stamps the row and raises the version with its change; unstamped, nothing moves.
    assert "next: promoted" not in viewer_client.get("/").content.decode()
    Limit.objects.filter(pk=rows.pk).update(changed_at=timezone.now())
    assert "next: promoted" not in viewer_client.get("/").content.decode()
    store.raise_board_version()
    assert "next: promoted" in viewer_client.get("/").content.decode()


def test_a_row_drawn_for_one_page_serves_every_other(viewer_client, rows):
    store.raise_board_version()
    viewer_client.get("/?sort=waiters")  # draws every row
    with CaptureQueriesContext(connection) as queries:
        html = viewer_client.get("/?status=contended").content.decode()
    assert "next: second-in-line" in html
    assert not [q for q in queries if "reslock_holder" in q["sql"] or "reslock_waiter" in q["sql"]]


def test_a_row_is_drawn_again_when_its_stamp_moves(viewer_client, rows):
    store.raise_board_version()
    viewer_client.get("/")
    rows.waiters.filter(position=1).update(flow_run_name="promoted")
    Limit.objects.filter(pk=rows.pk).update(changed_at=timezone.now())
    store.raise_board_version()
    html = viewer_client.get("/?status=contended").content.decode()
    assert "next: promoted" in html and "second-in-line" not in html


def test_ages_of_a_cached_page_are_true_when_served(viewer_client, rows):
    store.raise_board_version()
    now = timezone.now()
    with time_machine.travel(now, tick=False) as clock:
        assert held_for(viewer_client.get("/").content.decode()) == "3 h 12 min"
        clock.shift(timedelta(minutes=5))
        assert held_for(viewer_client.get("/").content.decode()) == "3 h 17 min"


def test_every_query_gets_its_own_rows(viewer_client, rows):
    store.raise_board_version()
    assert "reports" in viewer_client.get("/?status=stale").content.decode()
    html = viewer_client.get("/?status=free").content.decode()
    assert "resource:free-one" in html and ">reports<" not in html
    # The facet counts are shared by every status of one search, and stay right.
    assert re.search(r"Stale <span class=\"count\">1</span>", html)


def test_redrawing_ages_touches_only_what_since_wrote():
    when = timezone.now() - timedelta(minutes=7)
    drawn = f"<td>{since(when)}</td><td>{XSS}</td>"
    escaped = '&lt;time datetime="2000-01-01T00:00:00+00:00" data-age="1"&gt;1 s&lt;/time&gt;'
    with time_machine.travel(timezone.now() + timedelta(minutes=60), tick=False):
        redrawn = redraw_ages(drawn + escaped)
    assert "1 h 7 min</time></td>" in redrawn
    assert redrawn.endswith(f"<td>{XSS}</td>{escaped}")  # left exactly as it was


def test_the_banner_follows_syncs_saved_in_this_process_at_once(rows):
    assert not health.freshness().failing
    SyncRun.objects.create(ok=False, finished_at=timezone.now(), error="Prefect answered 500")
    assert health.freshness().failing


def test_the_banner_follows_other_processes_within_a_second(rows, monkeypatch):
    monkeypatch.setattr(health, "REUSE_SECONDS", 0.3)
    assert not health.freshness().failing
    # A row changed without this process saving it: as a worker's sync looks from here.
    SyncRun.objects.filter(ok=True).update(ok=False, error="Prefect answered 500")
    assert not health.freshness().failing  # reused: no read for this poll
    time.sleep(0.35)
    assert health.freshness().failing


def test_a_reused_banner_still_goes_stale_with_the_clock(rows, settings):
    assert not health.freshness().stale
    with time_machine.travel(timezone.now() + timedelta(seconds=3 * settings.SYNC_SECONDS + 1)):
        assert health.freshness().stale


def test_the_api_listing_is_built_once_per_version(viewer_client, rows):
    store.raise_board_version()
    url = "/api/v1/resources?status=contended"
    first, built = count_queries(viewer_client, url)
    again, served = count_queries(viewer_client, url)
    assert json.loads(again)["results"] == json.loads(first)["results"]
    assert served <= built - 3  # the page, its holders and its waiters: not read again
    rows.waiters.filter(position=1).update(flow_run_name="promoted")
    store.raise_board_version()
    waiters = json.loads(viewer_client.get(url).content)["results"][0]["waiters"]
    assert waiters[0]["flow_run"]["name"] == "promoted"
    # A bad page is still refused, from the cache too.
    for _ in range(2):
        assert viewer_client.get(url + "&page=9").status_code == 400
