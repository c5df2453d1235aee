"""The board and resource pages over synced rows: filters, counts, fragments, escaping."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from django.utils import timezone

from reslock_web.board.format import humane
from reslock_web.models import Condition, LockEvent, SyncRun
from reslock_web.status import timeline
from tests.support.board_data import XSS, make_holder, make_limit, settle
from tests.support.readouts import row_names

pytestmark = pytest.mark.django_db


def test_the_board_lists_every_present_resource_with_its_holder(viewer_client, rows):
    html = viewer_client.get("/").content.decode()
    # Attention first: stale, then contended, then inactive, free last.
    assert row_names(html) == [
        "reports",
        "resource:db-main",
        "resource:paused",
        "resource:free-one",
    ]
    assert "3 h 12 min" in html
    assert "loader" in html and "load-it" in html and "next: second-in-line" in html
    assert "Synced" in html and "4 limits" in html


def test_markup_in_run_names_is_shown_as_text(viewer_client, rows):
    html = viewer_client.get("/").content.decode()
    assert XSS not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=held", ["reports", "resource:db-main"]),
        ("status=contended", ["resource:db-main"]),
        ("status=stale", ["reports"]),
        ("status=free", ["resource:free-one"]),
        ("status=inactive", ["resource:paused"]),
        ("kind=tag", ["reports"]),
        ("q=DB-", ["resource:db-main"]),
        ("q=nothing-like-it", []),
        ("sort=waiters", ["resource:db-main", "reports", "resource:free-one", "resource:paused"]),
    ],
)
def test_filters_and_search_narrow_the_rows(viewer_client, rows, query, expected):
    assert row_names(viewer_client.get(f"/?{query}").content.decode()) == expected


def test_facet_counts_follow_the_search(viewer_client, rows):
    html = viewer_client.get("/?q=e-").content.decode()  # only "resource:free-one"
    counts = dict(re.findall(r'facet-(\w+)"[^>]*>[^<]*<span class="count">(\d+)</span>', html))
    assert counts["all"] == "1" and counts["free"] == "1" and counts["held"] == "0"
    html = viewer_client.get("/?q=re").content.decode()
    counts = dict(re.findall(r'facet-(\w+)"[^>]*>[^<]*<span class="count">(\d+)</span>', html))
    assert counts["all"] == "4" and counts["held"] == "2" and counts["stale"] == "1"
    assert counts["inactive"] == "1" and counts["free"] == "1" and counts["gone"] == "0"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=bogus", "Unknown status filter 'bogus': showing all."),
        ("kind=queue", "Unknown kind 'queue': showing every kind."),
        ("sort=%3Cscript%3E", "Unknown sort '&lt;script&gt;': sorted by attention first."),
        ("page=-3", "Page '-3' is not a page number: showing page 1."),
        ("q=a%00b", "The search contained a NUL character, which was removed."),
    ],
)
def test_bad_parameters_are_explained_not_fatal(viewer_client, rows, query, message):
    response = viewer_client.get(f"/?{query}")
    assert response.status_code == 200
    assert message.replace("'", "&#x27;") in response.content.decode()


def test_a_page_past_the_end_shows_the_last_page(viewer_client, rows):
    assert row_names(viewer_client.get("/?page=999&sort=name").content.decode()) == [
        "reports",
        "resource:db-main",
        "resource:free-one",
        "resource:paused",
    ]


def test_the_poll_fragment_is_only_the_rows_plus_out_of_band_counts(viewer_client, rows):
    response = viewer_client.get("/?status=held", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="rows")
    html = response.content.decode()
    assert html.lstrip().startswith('<tbody id="rows"')
    assert "<form" not in html and "<html" not in html
    assert 'id="facets" class="facets" aria-label="Filter by status" hx-swap-oob="true"' in html
    assert row_names(html) == ["reports", "resource:db-main"]
    assert response["Vary"].count("HX-Request") == 1


def test_the_search_fragment_updates_the_hidden_status_out_of_band(viewer_client, rows):
    html = viewer_client.get(
        "/?status=stale", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="results"
    ).content.decode()
    assert html.lstrip().startswith('<div id="results">')
    assert (
        '<input type="hidden" id="status-input" name="status" value="stale" hx-swap-oob="true">'
        in html
    )


def test_the_resource_page_shows_holder_waiters_and_diagnosis(viewer_client, rows):
    html = viewer_client.get("/resources/resource:db-main").content.decode()
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and XSS not in html
    assert html.index("second-in-line") < html.index("third-in-line")
    assert "renews a 60 s lease" in html
    assert "Nothing is wrong" in html


def test_the_stale_resource_page_says_what_is_wrong_and_what_to_do(viewer_client, rows):
    html = viewer_client.get("/resources/tag:reports").content.decode()
    assert "What is wrong" in html and "still counted" in html


@pytest.mark.parametrize("name", ["resource:a/b/c", "reports: nightly run", "ресурс ✓", "x?y#z"])
def test_any_name_has_a_working_resource_page(viewer_client, name):
    make_limit(name)
    board = viewer_client.get("/").content.decode()
    link = re.search(
        r'<a href="(/resources/[^"]+)">' + re.escape(name.replace("&", "&amp;")), board
    )
    assert link, board
    page = viewer_client.get(link.group(1))
    assert page.status_code == 200 and f"<code>{name}</code>" in page.content.decode()
    assert viewer_client.get("/resources/" + quote(name, safe="")).status_code == 200


def test_an_unknown_resource_is_a_404(viewer_client):
    assert viewer_client.get("/resources/never-synced").status_code == 404


def test_the_timeline_draws_recent_holds_from_events(viewer_client, rows):
    now = timezone.now()
    for index, name in enumerate(["run-a", "run-b"]):
        LockEvent.objects.create(
            event_id=uuid.uuid4(),
            event="prefect.concurrency-limit.acquired",
            occurred=now - timedelta(minutes=30 - index * 10),
            limit_prefect_id=rows.prefect_id,
            limit_name=rows.name,
            flow_run_name=name,
            closed_at=now - timedelta(minutes=25 - index * 10) if index == 0 else None,
        )
    html = viewer_client.get("/resources/resource:db-main").content.decode()
    assert html.count("<rect ") >= 2
    assert "run-a: " in html and "run-b: " in html


def test_the_timeline_finds_its_events_through_indexes_not_by_reading_every_event(rows):
    """With a million events in the table (bench/scale_bench.py), the resource page took
    0.4-0.7 s while SQLite read every event in time order looking for this limit's: by id or
    by name, the query now looks both up in indexes."""
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("the plan checked is SQLite's; PostgreSQL chooses with its statistics")
    query = timeline.acquires(rows, timezone.now() - timeline.WINDOW).order_by("-occurred")
    sql, params = query[: timeline.MAX_BARS].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = [row[-1] for row in cursor.fetchall()]
    assert not [step for step in plan if step.startswith("SCAN reslock_lockevent")], plan


def test_a_failing_sync_is_explained_in_the_banner(viewer_client, rows):
    SyncRun.objects.create(
        ok=False, finished_at=timezone.now(), error="cannot reach Prefect at http://x/api"
    )
    html = viewer_client.get("/").content.decode()
    assert "Sync failing since" in html and "cannot reach Prefect at http://x/api" in html


def test_anonymous_visitors_cannot_see_a_resource(client, rows):
    response = client.get("/resources/resource:db-main")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59, "59 s"),
        (60, "1 min"),
        (3600, "1 h"),
        (11520, "3 h 12 min"),
        (90000, "1 d 1 h"),
        (86400, "1 d"),
    ],
)
def test_durations_read_the_way_people_say_them(seconds, text):
    assert humane(seconds) == text


def test_zombie_holders_are_listed_with_their_evidence(viewer_client, rows):
    zombie = make_limit("resource:z")
    make_holder(
        zombie,
        key="z",
        source="event",
        condition=Condition.ZOMBIE,
        flow_run_id=None,
        flow_run_name="ghost",
        evidence="the process most likely died",
    )
    settle(zombie)
    html = viewer_client.get("/resources/resource:z").content.decode()
    assert "ghost" in html and "the process most likely died" in html


def test_the_banner_and_the_api_say_when_live_updates_are_off(viewer_client, rows):
    from reslock_web.models import Heartbeat

    Heartbeat.objects.beat("listener", connected=True, last_event_at=None, lag_seconds=0.1)
    assert b"Live updates are off" not in viewer_client.get("/").content
    assert viewer_client.get("/api/v1/resources").json()["sync"]["listener"]["connected"] is True
    Heartbeat.objects.beat(
        "listener", connected=False, last_event_at="2026-11-29T12:00:00+00:00", lag_seconds=None
    )
    html = viewer_client.get("/").content.decode()
    assert "Live updates are off" in html and "is not connected to Prefect" in html
    assert viewer_client.get("/api/v1/resources").json()["sync"]["listener"]["connected"] is False


def test_the_banner_counts_one_limit_in_the_singular(viewer_client):
    SyncRun.objects.create(ok=True, finished_at=timezone.now(), limits=1, duration_ms=7)
    html = viewer_client.get("/").content.decode()
    assert "(1 limit, 7 ms)" in html and "1 limits" not in html


def test_every_page_names_its_icon_and_the_icon_is_a_static_file(viewer_client):
    from django.contrib.staticfiles import finders

    html = viewer_client.get("/").content.decode()
    [href] = re.findall(r'<link rel="icon" href="/static/([^"]+)" type="image/svg\+xml">', html)
    found = finders.find(href)  # what collectstatic copies and the web server then serves
    assert found and "<svg" in Path(found).read_text()
