"""A single limit's re-sync reads and writes that limit's data only, however busy the others are."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from reslock_web.models import Holder, Limit, LockEvent, SyncState
from reslock_web.prefect_io.api import PAGE, PrefectAPI
from reslock_web.sync.gather import gather
from reslock_web.sync.run import sync_all, sync_limit, sync_limits
from tests.support.net import wait_for
from tests.support.operating import unique
from tests.support.patient import patient_client
from tests.support.prefect_events import emit, limit_resource, prefect_events

pytestmark = pytest.mark.django_db(transaction=True)

OTHERS = 30
HOLDS_EACH = 5  # taken and given back on each of the other limits: 300 events in all
ACQUIRED = "prefect.concurrency-limit.acquired"
RELEASED = "prefect.concurrency-limit.released"


def create_limit(http, name: str) -> str:
    response = http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1})
    return response.raise_for_status().json()["id"]


def lock_event(phase: str, limit_id: str, name: str, follows: str | None = None) -> dict:
    """As Prefect's concurrency() sends one from inside a flow run."""
    return {
        "id": str(uuid.uuid4()),
        "event": f"prefect.concurrency-limit.{phase}",
        "occurred": datetime.now(UTC).isoformat(),
        "resource": {
            "prefect.resource.id": limit_resource(limit_id),
            "prefect.resource.name": name,
            "slots-acquired": "1",
            "limit": "1",
        },
        "related": [
            {
                "prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": "busy-run",
            }
        ],
        "follows": follows,
    }


def hold_and_give_back(limit_id: str, name: str) -> list[dict]:
    acquired = lock_event("acquired", limit_id, name)
    return [acquired, lock_event("released", limit_id, name, follows=acquired["id"])]


def stored_by_prefect(http, resources: list[str], count: int) -> None:
    wait_for(
        lambda: len(prefect_events(http, [ACQUIRED, RELEASED], resources)) >= count,
        60,
        interval=1,
        what=f"Prefect's REST API to show {count} lock events",
    )


def test_a_resync_costs_the_same_with_300_events_on_other_limits(prefect_server, proxy):
    target = unique("resource:scoped")
    with patient_client(prefect_server.api_url) as http:
        target_id = create_limit(http, target)
        others = {
            create_limit(http, name): name
            for name in (unique("resource:busy") for _ in range(OTHERS))
        }
        # The target was taken and given back once, and is taken now.
        mine = hold_and_give_back(target_id, target) + [lock_event("acquired", target_id, target)]
        emit(prefect_server.api_url, mine)
        stored_by_prefect(http, [limit_resource(target_id)], len(mine))
    with PrefectAPI(proxy.url) as api:
        assert sync_all(api).ok

    def measured() -> tuple[list[str], list[str]]:
        proxy.received.clear()
        with PrefectAPI(proxy.url) as api, CaptureQueriesContext(connection) as queries:
            run = sync_limit(api, target)
        assert run is not None and run.ok, run and run.error
        writes = [q["sql"] for q in queries if q["sql"].startswith(("UPDATE", "INSERT", "DELETE"))]
        return sorted(path.split("?")[0] for _, _, path in proxy.received), writes

    measured()  # names and runs looked up once, as on any later re-sync
    alone_requests, alone_writes = measured()

    busy = [
        e
        for limit_id, name in others.items()
        for _ in range(HOLDS_EACH)
        for e in hold_and_give_back(limit_id, name)
    ]
    with patient_client(prefect_server.api_url) as http:
        emit(prefect_server.api_url, busy)
        stored_by_prefect(http, [limit_resource(i) for i in others], len(busy))
    with PrefectAPI(proxy.url) as api:
        assert sync_all(api).ok  # the other limits' events are stored, and in the last minute
    assert LockEvent.objects.exclude(limit_prefect_id=target_id).count() >= len(busy)

    events_read = SyncState.objects.get(name=SyncState.EVENTS).events_until
    busy_requests, busy_writes = measured()
    # How far every limit's events were read is the complete passes' mark; this one's is its own.
    assert SyncState.objects.get(name=SyncState.EVENTS).events_until == events_read
    assert Limit.objects.named(target).events_read_until > events_read
    # The limit, one page of its events, its runs: no more than alone, and no more writes
    # (a re-read of the whole workspace's last minute would page through 300 events, and
    # record each release again).
    assert len(busy_requests) <= len(alone_requests)
    assert not [p for p in busy_requests if "/events/filter/next" in p]  # one page each read
    assert len(busy_writes) <= len(alone_writes)
    with PrefectAPI(prefect_server.api_url) as api:
        snapshot = gather(api, only=target)
    assert {e.resource["prefect.resource.id"] for e in snapshot.events} <= {
        limit_resource(target_id)
    }
    assert set(snapshot.stored.compact) == {uuid.UUID(target_id)}
    # Its open acquire, read in an earlier window, is still its holder's claim.
    assert Holder.objects.filter(limit__name=target, key=mine[-1]["id"]).exists()


def test_a_pass_over_more_limits_than_the_listing_has_pages_reads_the_listing(prefect_server):
    """Prefect reads limits by name one at a time: past the listing's page count, a pass over
    many limits (a listener's flush under churn) pages the listing once instead."""
    with PrefectAPI(prefect_server.api_url) as api:
        assert sync_all(api).ok
    pages = Limit.objects.present().count() // PAGE + 1  # as the pass counts them
    with patient_client(prefect_server.api_url) as http:
        # One page more than now, should these limits start a page of their own.
        names = [unique("resource:many") for _ in range(pages + 2)]
        for name in names:
            create_limit(http, name)
    with PrefectAPI(prefect_server.api_url) as api:
        assert sync_all(api).ok
    pages = Limit.objects.present().count() // PAGE + 1

    def pass_over(chosen: list[str]):
        with PrefectAPI(prefect_server.api_url) as api:
            run = sync_limits(api, chosen)
            assert run is not None and run.ok, run and run.error
            return api.sent

    few = pass_over(names[:pages])
    assert few["GET v2/concurrency_limits"] == pages
    assert few["POST v2/concurrency_limits"] == 0
    many = pass_over(names)
    assert many["GET v2/concurrency_limits"] == 0
    assert many["POST v2/concurrency_limits"] == pages
    # The same limits come out of it, and no other.
    assert set(Limit.objects.filter(name__in=names).values_list("status", flat=True)) == {"free"}
    with PrefectAPI(prefect_server.api_url) as api:
        snapshot = gather(api, only=names)
    assert sorted(info.name for info in snapshot.listing) == sorted(names)
