"""The live refresh: the board sends back what it shows; the server answers with nothing, the
rows that changed, or the whole list."""

from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.utils import timezone

from reslock_web.board import poll as board_poll
from reslock_web.models import Holder, Limit, Status, SyncRun, Waiter
from reslock_web.sync import store
from tests.support.board_data import XSS

pytestmark = pytest.mark.django_db


def drawn_state(html: str) -> str:
    [value] = re.findall(r'<input type="hidden" id="live-state" name="seen" value="([^"]*)"', html)
    return value


def poll(client, query: str, seen: str):
    return client.get(f"/board/changes{query}&seen={quote(seen)}", HTTP_HX_REQUEST="true")


def oob_rows(html: str) -> list[str]:
    return re.findall(r'<template><tr id="(limit-\d+)"[^>]*hx-swap-oob="true"', html)


def touch(limit: Limit, **fields) -> None:
    """Change a row the way the store's write does: stamped, and the board's version raised."""
    Limit.objects.filter(pk=limit.pk).update(changed_at=timezone.now(), **fields)
    store.raise_board_version()


def test_nothing_changed_is_an_empty_answer(viewer_client, rows):
    seen = drawn_state(viewer_client.get("/?q=resource").content.decode())
    response = poll(viewer_client, "?q=resource", seen)
    assert response.status_code == 204 and response.content == b""


def test_a_changed_row_is_the_only_row_sent(viewer_client, rows):
    # In name order the row keeps its place (attention first would move it above the rest).
    seen = drawn_state(viewer_client.get("/?q=resource&sort=name").content.decode())
    free = Limit.objects.get(name="resource:free-one")
    touch(free, status=Status.HELD, is_held=True, active_slots=1, holder_count=1)
    response = poll(viewer_client, "?q=resource&sort=name", seen)
    html = response.content.decode()
    assert response.status_code == 200
    assert oob_rows(html) == [f"limit-{free.pk}"]
    assert "badge-held" in html
    # The counts moved (one more held), so the facets come along; the state is renewed.
    assert 'id="facets"' in html and 'hx-swap-oob="true"' in html
    renewed = drawn_state(html.replace(' hx-swap-oob="true"', ""))
    assert renewed != seen
    assert poll(viewer_client, "?q=resource&sort=name", renewed).status_code == 204


def test_a_resource_that_comes_to_need_attention_redraws_the_banner_on_the_next_poll(
    viewer_client, rows
):
    seen = drawn_state(viewer_client.get("/?q=resource&sort=name").content.decode())
    assert "Needs attention: 1 stale" in htmllib_text(viewer_client.get("/").content.decode())
    free = Limit.objects.get(name="resource:free-one")
    touch(free, status=Status.ZOMBIE, has_zombie=True)
    html = poll(viewer_client, "?q=resource&sort=name", seen).content.decode()
    assert 'id="banner"' in html and "Needs attention" in html
    assert "1 zombie" in htmllib_text(html) and "1 stale" in htmllib_text(html)


def htmllib_text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


def test_a_new_holder_alone_counts_as_a_change(viewer_client, rows):
    """A holder that came with the limit's own columns unchanged still redraws the row."""
    seen = drawn_state(viewer_client.get("/").content.decode())
    Holder.objects.create(
        limit=rows,
        key="second",
        source="event",
        flow_run_name="another-holder",
        flow_run_id=uuid.uuid4(),
    )
    assert poll(viewer_client, "?", seen).status_code == 204  # not stamped: not a change yet
    touch(rows)
    html = poll(viewer_client, "?", seen).content.decode()
    assert oob_rows(html) == [f"limit-{rows.pk}"]


def test_markup_in_a_changed_row_stays_text(viewer_client, rows):
    seen = drawn_state(viewer_client.get("/").content.decode())
    touch(rows, waiter_count=3)
    html = poll(viewer_client, "?", seen).content.decode()
    assert XSS not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_a_row_that_enters_the_page_redraws_the_list(viewer_client, rows):
    seen = drawn_state(viewer_client.get("/?status=held").content.decode())
    touch(Limit.objects.get(name="resource:free-one"), status=Status.HELD, is_held=True)
    response = poll(viewer_client, "?status=held", seen)
    assert response["HX-Retarget"] == "#results" and response["HX-Reswap"] == "outerHTML"
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="results">') and "resource:free-one" in html


def test_a_new_sync_redraws_the_banner_only(viewer_client, rows):
    seen = drawn_state(viewer_client.get("/").content.decode())
    SyncRun.objects.create(ok=False, finished_at=timezone.now(), error="Prefect answered 500")
    html = poll(viewer_client, "?", seen).content.decode()
    assert 'id="banner"' in html and "Prefect answered 500" in html
    assert oob_rows(html) == [] and 'id="facets"' not in html


@pytest.mark.parametrize("seen", ["", "garbage", "1.a.b.x:y", "1.a.b.1:ü", "9" * 40 + ".a.b."])
def test_a_state_we_did_not_write_redraws_everything(viewer_client, rows, seen):
    response = poll(viewer_client, "?", seen)
    assert response.status_code == 200 and response["HX-Retarget"] == "#results"


def test_the_refresh_needs_a_login(client, rows):
    response = client.get("/board/changes?seen=x")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_a_waiter_moving_up_marks_the_limit_changed(rows):
    """The store stamps a limit whose holders or waiters changed, not only its own columns."""
    from reslock_web.sync import store

    before = rows.changed_at
    Waiter.objects.filter(limit=rows).delete()
    kept, touched = store._reconcile(Waiter, store.WAITER_FIELDS, {}, [(rows, [])])
    assert kept == [] and touched == set()
    waiters = {rows.pk: {"a": Waiter(limit=rows, key="a", position=1)}}
    waiters[rows.pk]["a"].save()
    _, touched = store._reconcile(
        Waiter, store.WAITER_FIELDS, waiters, [(rows, [("a", {"position": 2})])]
    )
    assert touched == {rows.pk}
    _, touched = store._reconcile(
        Waiter, store.WAITER_FIELDS, waiters, [(rows, [("a", {"position": 2})])]
    )
    assert touched == set()  # the same place in line again: nothing to redraw
    assert Limit.objects.get(pk=rows.pk).changed_at == before


def test_the_resource_page_poll_is_empty_until_the_limit_changes(viewer_client, rows):
    url = "/resources/resource:db-main"
    html = viewer_client.get(url).content.decode()
    [poll_url] = re.findall(r'<div id="live" data-poll hx-get="([^"]+)"', html)
    poll_url = poll_url.replace("&amp;", "&")
    headers = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "live"}
    assert viewer_client.get(poll_url, **headers).status_code == 204
    touch(rows, waiter_count=5)
    response = viewer_client.get(poll_url, **headers)
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith('<div id="live"')


def test_the_resource_page_redraws_every_half_minute_for_its_wording(viewer_client, rows):
    stamp = board_poll.version(Limit.objects.get(pk=rows.pk).changed_at)
    headers = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "live"}
    url = "/resources/resource:db-main?seen="
    fresh, old = int(time.time()), int(time.time()) - 31
    assert viewer_client.get(f"{url}{stamp}~{fresh}", **headers).status_code == 204
    assert viewer_client.get(f"{url}{stamp}~{old}", **headers).status_code == 200
    assert viewer_client.get(f"{url}{stamp}~x", **headers).status_code == 200


def test_ages_are_drawn_for_the_browser_to_count_on(viewer_client, rows):
    html = viewer_client.get("/").content.decode()
    held = rows.held_since
    assert f'<time datetime="{held.isoformat()}" data-age="{3 * 3600 + 12 * 60}' in html or (
        f'<time datetime="{held.isoformat()}" data-age="{3 * 3600 + 12 * 60 + 1}' in html
    )
    assert "3 h 12 min</time>" in html


def test_state_round_trips():
    when = timezone.now()
    seen = board_poll.Seen.of(1, 7, [(1, when), (2, when - timedelta(seconds=1))], "f", "b")
    assert board_poll.Seen.parse(seen.encode()) == seen
    assert board_poll.compare(seen, seen).nothing
    moved = board_poll.Seen.of(1, 7, [(1, when), (2, when)], "f", "b")
    assert board_poll.compare(seen, moved).rows == (2,)
    assert board_poll.compare(
        seen, board_poll.Seen.of(1, 8, [(1, when), (2, when)], "f", "b")
    ).everything


def test_the_board_version_answers_most_polls_without_reading_rows(
    viewer_client, rows, django_assert_max_num_queries
):
    """Writers raise one version with their changes; a poll that finds it (and the banner)
    as drawn is done after a few small reads, rows never compared."""
    seen = drawn_state(viewer_client.get("/").content.decode())
    Limit.objects.filter(pk=rows.pk).update(waiter_count=9, changed_at=timezone.now())
    with django_assert_max_num_queries(12):  # session, user, version, banner
        assert poll(viewer_client, "?", seen).status_code == 204
    store.raise_board_version()
    assert oob_rows(poll(viewer_client, "?", seen).content.decode()) == [f"limit-{rows.pk}"]


def test_a_change_elsewhere_renews_the_state_so_the_next_poll_is_cheap(viewer_client, rows):
    seen = drawn_state(viewer_client.get("/?q=resource:free").content.decode())
    touch(Limit.objects.get(name="tag:reports"), waiter_count=4)  # not on this page
    html = poll(viewer_client, "?q=resource:free", seen).content.decode()
    assert oob_rows(html) == [] and 'id="facets"' not in html
    renewed = drawn_state(html.replace(' hx-swap-oob="true"', ""))
    assert renewed != seen
    assert poll(viewer_client, "?q=resource:free", renewed).status_code == 204
