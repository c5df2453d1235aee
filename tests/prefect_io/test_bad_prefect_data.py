"""Odd data from Prefect is skipped or stored with safe values, never stops a sync, and every
name it brings is shown escaped.

The parsing of Prefect's JSON is pure logic: Hypothesis feeds it generated answers (missing
fields, nulls, wrong types, NaN, huge numbers, markup, NUL, lone surrogates). What the parsing
keeps is then stored by the real store code and drawn by the real pages. Names that a real
Prefect server accepts are also created there and synced end to end.
"""

from __future__ import annotations

import functools
import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from reslock_web.models import Limit, LockEvent
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.prefect_io.records import EventInfo, LimitInfo, RunInfo
from reslock_web.sync import store
from reslock_web.sync.events import event_row, record_events
from reslock_web.sync.run import sync_all
from reslock_web.sync.snapshot import Snapshot
from tests.support.markup import escape, injected

# Hypothesis caches what it learns under a folder of its own: keep it out of the tree.
set_hypothesis_home_dir(str(django_settings.VAR_DIR / "hypothesis"))
quick = settings(max_examples=150, deadline=None, database=None)
# These go through httpx and the JSON codec for each example: somewhat fewer of them.
over_http = settings(quick, max_examples=100)
with_db = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- generated JSON ----------------------------------------------------------------------
MARKUP = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "' onfocus='alert(1)"]
odd_text = st.one_of(
    st.sampled_from(
        [
            *MARKUP,
            "",
            "tag:",
            "tag:..",
            "deployment:",
            "deployment:not-a-uuid",
            f"deployment:{uuid.UUID(int=7)}",
            "line\nbreak",
            "nul\x00name",
            "\ud800lone surrogate",
            "\u202eevil\u202c",
            "😀🔒 שלום",
            "x" * 1_000,
            "tag:" + "y" * 1_000,
        ]
    ),
    st.text(st.characters(codec=None), max_size=30),  # surrogates included
    st.builds(
        lambda a, b: a + b, st.sampled_from(["tag:", "deployment:", ""]), st.text(max_size=20)
    ),
)
numbers = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**31, 2**31 - 1, 10**12, 10**30, -1, 0, True, False]),
)
times = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
    st.datetimes().map(datetime.isoformat),  # naive
    st.sampled_from(
        [
            "0001-01-01T00:00:00+23:00",
            "9999-12-31T23:59:59-23:59",
            "2024-02-30T00:00:00Z",
            "2024-01-01T25:00:00Z",
            "yesterday",
            "",
        ]
    ),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text, times)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
ids = st.one_of(st.uuids().map(str), anything)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """A field as Prefect should send it, or anything else in its place."""
    return st.one_of(strategy, anything)


limit_json = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.uuids().map(str), ids),
        "name": maybe(odd_text),
        "limit": maybe(numbers),
        "active": maybe(st.booleans()),
        "active_slots": maybe(numbers),
        "slot_decay_per_second": maybe(numbers),
        "created": maybe(times),
        "updated": maybe(times),
        "denied_slots": anything,
    },
)
run_json = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.uuids().map(str), ids),
        "name": maybe(odd_text),
        "state_type": maybe(st.sampled_from(["RUNNING", "COMPLETED", "PENDING"])),
        "state_name": maybe(odd_text),
        "state": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "type": maybe(st.sampled_from(["RUNNING", "SCHEDULED"])),
                    "name": maybe(odd_text),
                    "timestamp": maybe(times),
                    "state_details": maybe(
                        st.fixed_dictionaries({}, optional={"deployment_concurrency_lease_id": ids})
                    ),
                },
            )
        ),
        "start_time": maybe(times),
        "created": maybe(times),
        "expected_start_time": maybe(times),
        "flow_run_id": ids,
        "flow_id": ids,
        "deployment_id": ids,
        "task_inputs": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "__parents__": maybe(st.lists(maybe(st.fixed_dictionaries({"id": ids}))))
                },
            )
        ),
        "tags": maybe(st.lists(maybe(odd_text), max_size=4)),
    },
)
resource_json = st.dictionaries(
    st.sampled_from(["prefect.resource.id", "prefect.resource.name", "prefect.resource.role"]),
    maybe(odd_text),
)
event_json = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.uuids().map(str), ids),
        "occurred": maybe(times),
        "event": maybe(
            st.sampled_from(
                [
                    "prefect.concurrency-limit.acquired",
                    "prefect.concurrency-limit.released",
                    "reslock.lock.acquired",
                    "reslock.lock.released",
                    "reslock.lock.waiting",
                    "reslock.lock.timed_out",
                ]
            )
        ),
        "resource": maybe(resource_json),
        "related": maybe(st.lists(maybe(resource_json), max_size=3)),
        "payload": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "lease_id": ids,
                    "wait_id": ids,
                    "lease_duration": maybe(numbers),
                    "reason": anything,
                },
            )
        ),
        "follows": ids,
    },
)


def storable(text: str) -> bool:
    """What every database takes: no NUL, valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def storable_time(when: datetime | None) -> bool:
    return when is None or (when.tzinfo is not None and when.astimezone(UTC) is not None)


# --- parsing: pure functions -------------------------------------------------------------
@quick
@given(data=limit_json)
@example(data={"id": str(uuid.uuid4()), "name": "big", "limit": 10**12, "active_slots": 2**31})
@example(data={"id": str(uuid.uuid4()), "name": "nan", "limit": math.nan, "active_slots": math.inf})
@example(data={"id": str(uuid.uuid4()), "name": "neg", "limit": -5, "active_slots": -1})
@example(data={"id": str(uuid.uuid4()), "name": "decay", "slot_decay_per_second": math.nan})
@example(data={"id": str(uuid.uuid4()), "name": "nul\x00name", "limit": 1})
@example(data={"id": str(uuid.uuid4()), "name": "t", "created": "0001-01-01T00:00:00+23:00"})
def test_a_limit_is_parsed_into_storable_values_or_skipped(data):
    info = LimitInfo.parse(data)
    if info is None:
        return
    assert info.id == uuid.UUID(str(data["id"]))
    assert info.name and storable(info.name) and len(info.name) <= 500
    assert data["name"].startswith(info.name)
    for count in (info.limit, info.active_slots):
        assert isinstance(count, int) and 0 <= count <= 2**31 - 1
    assert math.isfinite(info.slot_decay_per_second) and info.slot_decay_per_second >= 0
    assert storable_time(info.created) and storable_time(info.updated)
    raw_limit = data.get("limit")
    if isinstance(raw_limit, int) and not isinstance(raw_limit, bool) and raw_limit >= 2**31:
        assert info.limit == 2**31 - 1  # the most our column holds: never wrapped or negative


@quick
@given(data=run_json)
@example(data={"id": str(uuid.uuid4()), "tags": 5})
@example(data={"id": str(uuid.uuid4()), "tags": "db", "name": "\ud800x"})
@example(data={"id": str(uuid.uuid4()), "start_time": "9999-12-31T23:59:59-23:59"})
def test_a_run_is_parsed_into_storable_values_or_skipped(data):
    run = RunInfo.parse(data)
    if run is None:
        assert uuid_of(data.get("id")) is None
        return
    for text in (run.name, run.state_type, run.state_name, *run.tags):
        assert isinstance(text, str) and storable(text)
    for when in (run.state_at, run.start_time, run.created, run.expected_start_time):
        assert storable_time(when)


@quick
@given(data=event_json)
@example(
    data={"id": str(uuid.uuid4()), "occurred": "2024-01-01T00:00:00Z", "event": "x", "related": 3}
)
@example(
    data={
        "id": str(uuid.uuid4()),
        "occurred": "2024-01-01T00:00:00Z",
        "event": "reslock.lock.acquired",
        "payload": {"lease_duration": math.inf},
    }
)
def test_an_event_is_parsed_into_storable_values_or_skipped(data):
    event = EventInfo.parse(data)
    if event is None:
        return
    assert storable(event.event) and storable_time(event.occurred)
    for mapping in (event.resource, *event.related):
        assert all(storable(k) and storable(v) for k, v in mapping.items())
    row = event_row(event)  # the values the database will get
    assert row.lease_seconds is None or 0 < row.lease_seconds < 2**31
    assert storable(row.limit_name) and storable(row.flow_run_name)


def uuid_of(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


# --- one bad item never loses the good ones --------------------------------------------
_answers: dict[str, object] = {}


@functools.cache
def _fake_api() -> PrefectAPI:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.dumps(_answers[request.url.path.removeprefix("/api/")], allow_nan=True)
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    api = PrefectAPI("http://prefect.invalid/api")
    api._http.close()
    api._http = httpx.Client(
        base_url="http://prefect.invalid/api/", transport=httpx.MockTransport(answer)
    )
    return api


def fake_prefect(answers: dict[str, object]) -> PrefectAPI:
    """A PrefectAPI whose HTTP answers are the given JSON (the parsing is what is tested).
    One client serves every example: building one per example would dominate the run."""
    _answers.clear()
    _answers.update(answers)
    return _fake_api()


good_limit = st.builds(
    lambda i, name, n: {"id": str(i), "name": name, "limit": n, "active_slots": 0, "active": True},
    st.uuids(),
    st.text(min_size=1, max_size=20).filter(storable),
    st.integers(0, 10_000),
)


@over_http
@given(
    good=st.lists(good_limit, max_size=5, unique_by=lambda d: d["id"]),
    bad=st.lists(anything | limit_json, max_size=5),
    seed=st.randoms(),
)
@example(good=[], bad=[{"id": str(uuid.uuid4()), "name": "x", "limit": math.inf}], seed=None)
def test_a_listing_keeps_every_good_limit_whatever_else_it_holds(good, bad, seed):
    items = good + bad
    if seed is not None:
        seed.shuffle(items)
    listing = fake_prefect({"v2/concurrency_limits/filter": items}).list_limits()
    names = {info.id: info.name for info in listing.limits}
    for item in good:
        assert names[uuid.UUID(item["id"])] == item["name"]
    parsed = [info for i in items if isinstance(i, dict) and (info := LimitInfo.parse(i))]
    assert len(listing.limits) == len({info.id for info in parsed})  # one per limit
    assert listing.skipped == len([i for i in items if isinstance(i, dict)]) - len(parsed)


@over_http
@given(
    events=st.lists(anything | event_json, max_size=6),
    next_page=anything.filter(lambda v: not isinstance(v, str)),  # a link is Prefect's own
)
def test_an_events_page_of_anything_yields_only_parsed_events(events, next_page):
    good = {
        "id": str(uuid.uuid4()),
        "occurred": "2024-01-01T00:00:00Z",
        "event": "prefect.concurrency-limit.acquired",
    }
    page = {"events": [good, *events], "next_page": next_page}
    now = timezone.now()
    api = fake_prefect({"events/filter": page})
    found = list(api.events(now - timedelta(days=1), now, ["prefect."]))
    assert found[0].id == uuid.UUID(good["id"])
    assert all(isinstance(event, EventInfo) for event in found)


# --- stored and shown ----------------------------------------------------------------------
def snapshot_of(listing: list[LimitInfo]) -> Snapshot:
    now = timezone.now()
    return Snapshot(
        now=now,
        only=None,
        listing=listing,
        tag_holders={},
        tag_checked=set(),
        events=[],
        events_until=now,
        claims={},
        queued={},
    )


@with_db
@given(items=st.lists(limit_json, max_size=6), copies=st.integers(1, 2))
@example(
    items=[
        {"id": str(uuid.UUID(int=1)), "name": MARKUP[0], "limit": 10**12, "active_slots": 2**31},
        {"id": str(uuid.UUID(int=2)), "name": "tag:", "limit": 1, "active_slots": 1},
        {"id": str(uuid.UUID(int=3)), "name": "deployment:not-a-uuid", "limit": 1},
        {"id": str(uuid.UUID(int=4)), "name": "line\nbreak", "limit": 1},
        {"id": str(uuid.UUID(int=5)), "name": MARKUP[1] * 100, "limit": 1},
    ],
    copies=1,
)
@example(items=[{"id": str(uuid.UUID(int=6)), "name": "twice", "limit": 1}], copies=2)
def test_whatever_the_parsing_keeps_is_stored_and_shown_escaped(viewer_client, items, copies):
    # A limit listed twice: offset paging repeats one when a limit is created meanwhile.
    listing = fake_prefect({"v2/concurrency_limits/filter": items * copies}).list_limits().limits
    with transaction.atomic():
        store.write(snapshot_of(listing), grace=timedelta(seconds=20), long_hold=timedelta(hours=1))
    board = viewer_client.get("/")
    assert board.status_code == 200
    assert injected(board.content.decode()) == []
    for info in {info.id: info for info in listing}.values():
        row = Limit.objects.get(prefect_id=info.id)
        assert (row.name, row.limit, row.active_slots) == (info.name, info.limit, info.active_slots)
        assert row.resource, "every row has something to click on the board"
        page = viewer_client.get(f"/resources/{quote(info.name, safe='')}")
        assert page.status_code == 200, info.name
        html = page.content.decode()
        assert injected(html) == []
        assert f"<code>{escape(info.name)}</code>" in html
        api = viewer_client.get(f"/api/v1/resources/{quote(info.name, safe='')}")
        assert api.status_code == 200 and api.json()["limit"] == info.limit


@with_db
@given(items=st.lists(event_json, max_size=8))
def test_any_parsed_events_are_recorded_once(db, items):
    events = [event for item in items if (event := EventInfo.parse(item))]
    with transaction.atomic():
        record_events(events)
        record_events(events)  # the sync and the listener both see every event
    assert LockEvent.objects.filter(event_id__in=[e.id for e in events]).count() == len(
        {e.id for e in events}
    )


# --- end to end with a real Prefect server -----------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_real_prefect_with_odd_limits_syncs_fully_and_shows_them_escaped(
    prefect_server, viewer_client
):
    tag = uuid.uuid4().hex[:6]
    odd = {  # name -> (limit, active_slots): what Prefect itself accepts
        f'" onmouseover="alert(1) {tag}': (1, 0),
        f"' or 1=1 -- {tag}": (1, 0),
        f"line\nbreak {tag}": (1, 0),
        f"\u202eevil\u202c 😀 שלום {tag}": (1, 0),
        f"long {tag} " + "x" * 990: (1, 0),
        f"big {tag}": (2**31, 0),
        f"huge {tag}": (10**12, 0),
        "tag:": (1, 1),  # a tag limit naming no tag, with a slot counted
        "tag:..": (1, 1),
        f"deployment:not-a-uuid-{tag}": (1, 0),
        f"nul\x00{tag}": (1, 0),  # Prefect stores it; no database of ours can
    }
    with httpx.Client(base_url=prefect_server.api_url, timeout=30) as http:
        for name, (limit, slots) in odd.items():
            body = {"name": name, "limit": limit, "active_slots": slots}
            response = http.post("/v2/concurrency_limits/", json=body)
            assert response.status_code in (200, 201, 409), response.text  # 409: an earlier run
    with PrefectAPI(prefect_server.api_url) as api:
        run = sync_all(api)
    assert run is not None and run.ok, run and run.error
    names = Limit.objects.values_list("name", flat=True)
    assert not [name for name in names if "nul" in name and tag in name]  # skipped, not mangled
    for name, (limit, _) in odd.items():
        if "\x00" in name:
            continue
        row = Limit.objects.get(name=name[:500])
        assert row.limit == min(limit, 2**31 - 1), name
        assert row.resource
        page = viewer_client.get(f"/resources/{quote(name[:500], safe='')}")
        assert page.status_code == 200, name
        assert injected(page.content.decode()) == []
        assert f"<code>{escape(name[:500])}</code>" in page.content.decode()
    board = viewer_client.get("/", {"q": tag})
    html = board.content.decode()
    assert board.status_code == 200 and injected(html) == []
    assert escape(f'" onmouseover="alert(1) {tag}') in html
    assert Limit.objects.get(name="tag:").resource == "tag:"
