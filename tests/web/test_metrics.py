"""/metrics: Prometheus text computed from our tables, behind a bearer token."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from reslock_web.models import Heartbeat, Holder, Limit, Operation, SyncRun
from tests.support.board_data import make_holder, make_limit, make_waiter, settle
from tests.support.readouts import METRICS_TOKEN, samples, scrape

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def holder(on: Limit, key: str, since: datetime, condition: str = "holding") -> Holder:
    return make_holder(on, key=key, source="event", condition=condition, acquired_at=since)


def test_without_a_token_configured_the_endpoint_is_off_and_says_how_to_turn_it_on(
    client, settings
):
    settings.METRICS_TOKEN = ""
    answer = scrape(client, "anything")
    assert answer.status_code == 404
    assert "set RESLOCK_METRICS_TOKEN" in answer.content.decode()


def test_a_missing_or_wrong_token_or_a_mere_session_is_refused(client, token, admin):
    assert client.get("/metrics").status_code == 401
    assert scrape(client, METRICS_TOKEN + "x").status_code == 401
    assert client.get("/metrics", headers={"Authorization": METRICS_TOKEN}).status_code == 401
    client.force_login(admin)
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert "reslock_" not in refused.content.decode()


def test_it_reports_resources_holders_waiters_sync_listener_and_operations(client, token):
    with time_machine.travel(NOW, tick=False):
        held = make_limit("db-1")
        holder(held, "a", NOW - timedelta(seconds=300))
        settle(held)
        stale = make_limit("tag:etl")
        holder(stale, "b", NOW - timedelta(seconds=7200), condition="stale")
        holder(stale, "gone-by-now", NOW - timedelta(days=9), condition="leaving")
        make_waiter(stale, key="w2", source="event", waiting_since=NOW - timedelta(seconds=30))
        settle(stale)
        nested = make_limit("tag:nest")
        nest_holder = holder(nested, "c", NOW - timedelta(seconds=60))
        make_waiter(
            nested,
            key="w1",
            source="tag_lease",
            waiting_since=NOW - timedelta(seconds=90),
            deadlocked_by=nest_holder,
        )
        settle(nested, marks={"has_drift"})  # a self-deadlock, and drift under its badge
        make_limit("db-2")  # free
        # Gone, with the status of its last sync: counted as gone, never as held.
        gone = make_limit("db-old", gone_at=NOW - timedelta(days=1), status="held")
        holder(gone, "d", NOW - timedelta(days=30))  # a gone limit's holder is no hold
        SyncRun.objects.create(
            started_at=NOW - timedelta(seconds=50),
            finished_at=NOW - timedelta(seconds=49),
            ok=True,
            duration_ms=800,
        )
        for ago in (30, 20):
            SyncRun.objects.create(
                started_at=NOW - timedelta(seconds=ago),
                finished_at=NOW - timedelta(seconds=ago - 1),
                ok=False,
                error="Prefect answered 500",
                duration_ms=1500,
            )
        SyncRun.objects.create(started_at=NOW - timedelta(seconds=90), ok=False, duration_ms=5)
        Heartbeat.objects.beat("listener", connected=True, lag_seconds=2.5)
        for kind, status in [
            ("set_limit", "succeeded"),
            ("set_limit", "succeeded"),
            ("release_holder", "failed"),
            ("activate", "pending"),
        ]:
            Operation.objects.create(
                kind=kind,
                status=status,
                limit=held,
                limit_name=held.name,
                requested_by_name="olga",
                token=uuid.uuid4(),
            )
        answer = scrape(client)
    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/plain; version=0.0.4")
    got = samples(answer)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("reslock_resources", status="held", kind="global") == 1
    assert value("reslock_resources", status="free", kind="global") == 1
    assert value("reslock_resources", status="stale", kind="tag") == 1
    assert value("reslock_resources", status="deadlocked", kind="tag") == 1
    assert value("reslock_resources", status="gone", kind="global") == 1
    assert value("reslock_resources", status="zombie", kind="deployment") == 0  # zeros are there
    assert value("reslock_resources_flagged", flag="stale") == 1
    assert value("reslock_resources_flagged", flag="drift") == 1  # under a "deadlocked" badge
    assert value("reslock_resources_flagged", flag="zombie") == 0
    assert value("reslock_holders", condition="holding") == 2
    assert value("reslock_holders", condition="stale") == 1
    assert value("reslock_oldest_hold_seconds") == 7200
    assert value("reslock_waiters") == 2
    assert value("reslock_waiters_deadlocked") == 1
    assert value("reslock_oldest_wait_seconds") == 90
    assert value("reslock_last_sync_duration_seconds") == 1.5
    assert (
        value("reslock_last_sync_success_timestamp_seconds")
        == (NOW - timedelta(seconds=49)).timestamp()
    )
    assert value("reslock_sync_failed_runs") == 3
    assert value("reslock_sync_consecutive_failures") == 2
    assert value("reslock_listener_connected") == 1
    assert value("reslock_listener_lag_seconds") == 2.5
    assert value("reslock_listener_last_seen_timestamp_seconds") == NOW.timestamp()
    assert value("reslock_worker_last_seen_timestamp_seconds") == 0
    assert value("reslock_operations_total", kind="set_limit", outcome="succeeded") == 2
    assert value("reslock_operations_total", kind="release_holder", outcome="failed") == 1
    assert value("reslock_operations_total", kind="activate", outcome="pending") == 1
    assert value("reslock_operations_total", kind="deactivate", outcome="skipped") == 0


def test_a_quiet_listener_and_a_recovered_sync_read_as_such(client, token):
    with time_machine.travel(NOW, tick=False) as clock:
        Heartbeat.objects.beat("listener", connected=True, lag_seconds=1)
        SyncRun.objects.create(started_at=NOW, finished_at=NOW, ok=False, duration_ms=10)
        SyncRun.objects.create(
            started_at=NOW + timedelta(seconds=5),
            finished_at=NOW + timedelta(seconds=6),
            ok=True,
            duration_ms=300,
        )
        clock.shift(timedelta(seconds=60))  # the listener missed its beats
        got = samples(scrape(client))
    assert got[("reslock_listener_connected", ())] == 0
    assert got[("reslock_sync_consecutive_failures", ())] == 0
    assert got[("reslock_sync_failed_runs", ())] == 1
    assert got[("reslock_last_sync_duration_seconds", ())] == 0.3
    assert got[("reslock_oldest_hold_seconds", ())] == 0  # nothing held


def test_a_scrape_costs_the_same_few_queries_however_many_rows(client, token):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert scrape(client).status_code == 200
        return len(captured)

    first = make_limit("only-one")
    holder(first, "x", NOW)
    settle(first)
    few = queries()
    for n in range(40):
        many = make_limit(f"many-{n}")
        holder(many, "x", NOW)
        make_waiter(many, key="w", source="event", waiting_since=NOW)
        settle(many)
        Operation.objects.create(
            kind="activate",
            limit=many,
            limit_name=many.name,
            requested_by_name="olga",
            token=uuid.uuid4(),
        )
    assert queries() == few <= 12
