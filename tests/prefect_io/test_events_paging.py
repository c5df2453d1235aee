"""A long window of events is read whole, in order, each event once, and no query of Prefect's
goes deeper than EVENTS_PAGES_PER_QUERY pages, nor counts many more events than it reads.

Prefect's /events/filter pages by offset (prefect/server/events/storage/database.py): the
query behind a next_page skips every event before it, so a read that only followed next_page
through a million events made Prefect skip half a million rows per page on average; and the
first page of every query counts all of the query's events. The fake below answers as
Prefect's server does: events in [since, until], ordered by occurred only (events of one
instant in the order stored), counted, fifty a page, the next page's token holding the filter
and the offset.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from django.conf import settings as django_settings
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from reslock_web.prefect_io import api as api_module
from reslock_web.prefect_io.api import EVENTS_PAGE, PrefectAPI

set_hypothesis_home_dir(str(django_settings.VAR_DIR / "hypothesis"))
T0 = datetime(2026, 12, 1, tzinfo=UTC)


class OffsetPagedPrefect:
    def __init__(self, events: list[dict]) -> None:
        self.events = events
        self.offsets: list[int] = []  # the offset of every page asked for
        self.counted: list[int] = []  # each query's count of its events (one per POST)

    def api(self) -> PrefectAPI:
        api = PrefectAPI("http://prefect.invalid/api")
        api._http.close()
        api._http = httpx.Client(
            base_url="http://prefect.invalid/api/", transport=httpx.MockTransport(self.answer)
        )
        return api

    def answer(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            body = json.loads(request.content)
            event_filter, offset, size = body["filter"], 0, body["limit"]
        else:
            token = json.loads(base64.b64decode(request.url.params["page-token"]))
            event_filter, offset, size = token["filter"], token["offset"], token["size"]
        since = datetime.fromisoformat(event_filter["occurred"]["since"])
        until = datetime.fromisoformat(event_filter["occurred"]["until"])
        matching = sorted(
            (e for e in self.events if since <= datetime.fromisoformat(e["occurred"]) <= until),
            key=lambda e: datetime.fromisoformat(e["occurred"]),  # stable: ties as stored
        )
        self.offsets.append(offset)
        if request.method == "POST":
            self.counted.append(len(matching))
        next_page = None
        if offset + size < len(matching):
            token = {"filter": event_filter, "offset": offset + size, "size": size}
            encoded = base64.b64encode(json.dumps(token).encode()).decode()
            # Built from the server's own address, as Prefect does.
            next_page = f"http://10.0.0.9:4200/api/events/filter/next?page-token={encoded}"
        page = {
            "events": matching[offset : offset + size],
            "total": len(matching),
            "next_page": next_page,
        }
        return httpx.Response(200, json=page)


def events_at(seconds: list[float]) -> list[dict]:
    limit_id = uuid.uuid4()
    return [
        {
            "id": str(uuid.uuid4()),
            "event": "prefect.concurrency-limit.acquired",
            "occurred": (T0 + timedelta(seconds=at)).isoformat(),
            "resource": {"prefect.resource.id": f"prefect.concurrency-limit.{limit_id}"},
            "related": [],
            "payload": {},
        }
        for at in seconds
    ]


def read(prefect: OffsetPagedPrefect) -> list[str]:
    with prefect.api() as api:
        found = api.events(T0, T0 + timedelta(days=7), ["prefect.concurrency-limit."])
        return [str(event.id) for event in found]


def in_prefect_order(events: list[dict]) -> list[str]:
    return [e["id"] for e in sorted(events, key=lambda e: e["occurred"])]


def test_a_long_window_is_read_in_order_and_no_query_goes_deep_or_counts_much():
    events = events_at([i * 7.5 for i in range(5_000)])  # 100 pages
    prefect = OffsetPagedPrefect(events)
    assert read(prefect) == in_prefect_order(events)
    read_per_query = api_module.EVENTS_PAGES_PER_QUERY * EVENTS_PAGE
    assert max(prefect.offsets) == read_per_query - EVENTS_PAGE
    # The same pages as before, give or take the one event read again at each new start.
    assert len(prefect.offsets) <= 5_000 // EVENTS_PAGE + len(prefect.counted)
    # The first query counts the window; each later one about twice what it reads.
    assert prefect.counted[0] == 5_000
    assert max(prefect.counted[1:]) <= 2 * read_per_query + 1


def test_events_of_one_instant_across_a_new_query_are_each_read_once():
    # 70 events in each second: every new query starts in the middle of an instant.
    seconds = [float(i // 70) for i in range(3_000)]
    prefect = OffsetPagedPrefect(events_at(seconds))
    ids = read(prefect)
    assert sorted(ids) == sorted(e["id"] for e in prefect.events)
    assert len(set(ids)) == len(ids)
    assert max(prefect.offsets) < api_module.EVENTS_PAGES_PER_QUERY * EVENTS_PAGE


def test_more_events_in_one_instant_than_a_query_reads_are_all_read():
    seconds = [0.0] * 1_500 + [1.0 + i for i in range(100)]
    prefect = OffsetPagedPrefect(events_at(seconds))
    ids = read(prefect)
    assert sorted(ids) == sorted(e["id"] for e in prefect.events)
    assert len(set(ids)) == len(ids)


@settings(max_examples=60, deadline=None, database=None)
@given(
    # Dense instants (many events each) and sparse ones (long gaps, windows read whole).
    seconds=st.lists(st.integers(0, 40) | st.integers(0, 600_000), max_size=400),
    pages_per_query=st.integers(1, 3),
)
def test_any_window_is_read_whole_each_event_once_oldest_first(seconds, pages_per_query):
    original = api_module.EVENTS_PAGES_PER_QUERY
    api_module.EVENTS_PAGES_PER_QUERY = pages_per_query
    try:
        prefect = OffsetPagedPrefect(events_at([float(s) for s in seconds]))
        ids = read(prefect)
    finally:
        api_module.EVENTS_PAGES_PER_QUERY = original
    assert sorted(ids) == sorted(e["id"] for e in prefect.events)
    assert len(set(ids)) == len(ids)
    when = {e["id"]: e["occurred"] for e in prefect.events}
    assert [when[i] for i in ids] == sorted(when[i] for i in ids)
