"""The board's counts: a page's facet counts and, for the whole board, what needs attention,
read in one scan of the limits, saying what one count per filter says."""

from __future__ import annotations

import html as htmllib
import re
from datetime import timedelta

import pytest
from django.core.cache import caches
from django.db import connection
from django.db.models import Q
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reslock_web.board import query as board_query_module
from reslock_web.board.query import NEEDS_ATTENTION, SORTS, BoardQuery, attention
from reslock_web.models import FACETS, Condition, Limit, Status, facet_filter
from reslock_web.sync import store
from tests.support.board_data import make_held, make_holder, make_limit, make_waiter, settle

pytestmark = pytest.mark.django_db


@pytest.fixture
def mixed(db) -> None:
    """A board with a resource in every status, of both kinds, and one gone."""
    now = timezone.now()
    make_limit("resource:free")
    make_limit("tag:paused", active=False)
    make_held("resource:held", since=now - timedelta(hours=1))
    make_held("tag:held", since=now - timedelta(minutes=5))
    for name in ("tag:contended", "resource:contended"):
        limit = make_limit(name)
        make_holder(limit, acquired_at=now - timedelta(minutes=3))
        make_waiter(limit)
        settle(limit)
    waiting = make_limit("tag:waiting")
    make_waiter(waiting)
    settle(waiting)
    make_held("resource:stale", condition=Condition.STALE)
    make_held("tag:zombie", condition=Condition.ZOMBIE)
    make_held("resource:unsure", condition=Condition.UNCOUNTED)
    make_held("tag:drifting", marks={"has_drift"})
    make_held("resource:over", marks={"is_over_limit"})
    make_held("resource:cycle", marks={"is_deadlocked"})
    make_limit("resource:gone-stale", is_stale=True, gone_at=now)


def query(params: str) -> BoardQuery:
    return BoardQuery.from_params(QueryDict(params))


def one_count_per_filter(board_query: BoardQuery) -> dict[str, int]:
    return {name: board_query.base().filter(facet_filter(name)).count() for name in FACETS}


@pytest.mark.parametrize("params", ["", "status=held&sort=name&page=2", "q=tag", "kind=tag"])
def test_the_facet_counts_are_one_count_per_filter(mixed, params):
    board_query = query(params)
    found, _ = board_query.counts()
    assert found == one_count_per_filter(board_query)
    assert found["all"]


def test_the_whole_board_s_counts_bring_what_needs_attention_counted_alone(mixed):
    found, needs = query("status=stale").counts()
    assert needs is not None and attention(needs) == attention()
    expected = []
    for status in NEEDS_ATTENTION:
        rule = facet_filter(status) if status in FACETS else Q(status=status)
        if count := Limit.objects.present().filter(rule).count():
            expected.append((status if status in FACETS else "", Status(status).label, count))
    assert attention(needs) == expected and len(expected) == len(NEEDS_ATTENTION)
    # A search narrows the facets, not the banner: its counts cannot say the whole board's.
    assert query("q=tag").counts()[1] is None and query("kind=tag").counts()[1] is None


def limit_counts(queries) -> int:
    """Scans of the limits that count: the facets' and the banner's aggregates."""
    return sum(bool(re.match(r'SELECT COUNT\("reslock_limit"', q["sql"])) for q in queries)


def banner(html: str) -> str:
    [found] = re.findall(r'<p class="banner attention" role="status">(.*?)</p>', html, re.S)
    return htmllib.unescape(re.sub(r"<[^>]+>", "", found))


def test_a_cold_page_of_the_whole_board_counts_the_limits_once(viewer_client, mixed):
    viewer_client.get("/")  # the session's first reads, apart
    whole = (
        "Needs attention: 1 over the limit, 1 deadlocked, 1 uncounted, 1 zombie, 1 stale, 1 drift."
    )
    for url, scans in [("/", 1), ("/?status=held", 1), ("/?q=tag", 2)]:
        store.raise_board_version()
        caches["board"].clear()
        with CaptureQueriesContext(connection) as queries:
            html = viewer_client.get(url).content.decode()
        assert limit_counts(queries) == scans, url
        assert banner(html) == whole, url
    # Kept with the whole board's counts, the banner is not counted again at this version.
    store.raise_board_version()
    viewer_client.get("/")
    for url, scans in [("/?status=stale", 0), ("/?q=tag", 1)]:
        with CaptureQueriesContext(connection) as queries:
            assert banner(viewer_client.get(url).content.decode()) == whole
        assert limit_counts(queries) == scans, url


@pytest.mark.parametrize("sort", SORTS)
def test_pages_chosen_by_id_first_hold_the_rows_one_ordered_query_gives(mixed, monkeypatch, sort):
    monkeypatch.setattr(board_query_module, "PAGE_SIZE", 4)
    for params in ("", "status=held", "status=free", "q=tag", "kind=global&status=all"):
        board_query = query(f"sort={sort}&{params}")
        matching = board_query.base().filter(facet_filter(board_query.status))
        every = list(matching.order_by(*SORTS[sort][1]).values_list("pk", flat=True))
        shown = []
        for number in range(1, -(-len(every) // 4) + 1):  # every page, once
            board_query.page = number
            page = board_query.paged(("name",), count=len(every))
            shown += [row.pk for row in page.object_list]
        assert shown == every and every, params
