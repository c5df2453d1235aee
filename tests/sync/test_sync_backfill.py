"""A first sync reads days of lock events: in batches, resumable, with its progress shown."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from django.core.management import call_command

from reslock_web.models import LockEvent, SyncState
from reslock_web.prefect_io import api as api_module
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync import backfill
from reslock_web.sync.run import sync_all
from tests.support.net import wait_for
from tests.support.operating import unique
from tests.support.prefect_events import emit

pytestmark = pytest.mark.django_db(transaction=True)


def past_acquires(name: str, count: int) -> list[dict]:
    """`count` acquires of one limit, half an hour apart, the first three days ago."""
    limit_id = uuid.uuid4()
    start = datetime.now(UTC) - timedelta(days=3)
    return [
        {
            "id": str(uuid.uuid4()),
            "event": "prefect.concurrency-limit.acquired",
            "occurred": (start + timedelta(minutes=30 * i)).isoformat(),
            "resource": {
                "prefect.resource.id": f"prefect.concurrency-limit.{limit_id}",
                "prefect.resource.name": name,
                "slots-acquired": "1",
                "limit": "1",
            },
            "related": [],
            "payload": {},
        }
        for i in range(count)
    ]


def test_a_first_sync_reads_past_events_in_batches_and_resumes_where_it_stopped(
    prefect_server, proxy, monkeypatch, viewer_client
):
    monkeypatch.setattr(backfill, "BACKFILL_BATCH", 50)  # one of Prefect's pages
    name = unique("resource:backfilled")
    events = past_acquires(name, 130)
    emit(prefect_server.api_url, events)
    with httpx.Client(base_url=prefect_server.api_url) as http:
        wait_for(
            lambda: (
                len(
                    [
                        e
                        for e in prefect_events_since(http, days=4)
                        if e["resource"].get("prefect.resource.name") == name
                    ]
                )
                == 130
            ),
            60,
            what="Prefect to store the 130 past events",
        )
    # The first page comes, every later one fails: the pass stops after its first batch.
    proxy.route("/events/filter/next", "fail", status=500)
    with PrefectAPI(proxy.url) as api:
        run = sync_all(api)
    assert run is not None and not run.ok
    assert LockEvent.objects.filter(limit_name=name).count() == 50
    fiftieth = datetime.fromisoformat(events[49]["occurred"])
    assert SyncState.objects.get(name=SyncState.EVENTS).events_until == fiftieth
    banner = viewer_client.get("/").content.decode()
    assert "Reading past lock events:" in banner and "% done" in banner

    proxy.clear()
    out, err = io.StringIO(), io.StringIO()
    call_command("reslock_sync", stdout=out, stderr=err)  # resumes from the fiftieth event
    assert LockEvent.objects.filter(limit_name=name).count() == 130
    assert "past lock events, up to" in err.getvalue()  # how far it got, as it goes
    assert len(out.getvalue().splitlines()) == 1 and "new events" in out.getvalue()
    assert SyncState.objects.get(name=SyncState.BACKFILL).window_start is None
    assert "Reading past lock events" not in viewer_client.get("/").content.decode()


def prefect_events_since(http: httpx.Client, days: float) -> list[dict]:
    now = datetime.now(UTC)
    body = {
        "filter": {
            "occurred": {
                "since": (now - timedelta(days=days)).isoformat(),
                "until": now.isoformat(),
            },
            "event": {"name": ["prefect.concurrency-limit.acquired"]},
            "order": "ASC",
        },
        "limit": 50,
    }
    page = http.post("/events/filter", json=body).json()
    found = list(page["events"])
    while page.get("next_page"):
        page = http.get(page["next_page"]).json()
        found += page["events"]
    return found


def test_a_first_sync_asking_prefect_anew_each_page_records_every_past_event_once(
    prefect_server, monkeypatch
):
    """Prefect pages events by offset; the read asks anew from the last event's time instead
    of going deep (api.EVENTS_PAGES_PER_QUERY). Here after every page, with the events in
    threes at one instant, so that new queries start inside an instant."""
    monkeypatch.setattr(api_module, "EVENTS_PAGES_PER_QUERY", 1)
    name = unique("resource:instants")
    events = past_acquires(name, 130)
    for index, event in enumerate(events):
        event["occurred"] = events[index - index % 3]["occurred"]
    emit(prefect_server.api_url, events)
    with httpx.Client(base_url=prefect_server.api_url) as http:
        wait_for(
            lambda: (
                sum(
                    e["resource"].get("prefect.resource.name") == name
                    for e in prefect_events_since(http, days=4)
                )
                == 130
            ),
            60,
            what="Prefect to store the 130 past events",
        )
    with PrefectAPI(prefect_server.api_url) as api:
        read = [
            event.id
            for event in api.events(
                datetime.now(UTC) - timedelta(days=4),
                datetime.now(UTC),
                ["prefect.concurrency-limit."],
            )
            if event.resource.get("prefect.resource.name") == name
        ]
        assert sorted(read) == sorted(uuid.UUID(e["id"]) for e in events)
        run = sync_all(api)
    assert run is not None and run.ok, run and run.error
    assert LockEvent.objects.filter(limit_name=name).count() == 130
