"""Lease health on a flow run's page and in its JSON: each lock it holds says what renews its
slot and by when the slot would free if the run stopped now; a lease lost while it ran (the
helper's `lease_lost`, last 24 h) is flagged, on whatever resource it was."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from reslock_web.board.runs import run_locks
from reslock_web.models import Condition
from tests.board.test_run_page import ESCAPED_XSS, article, text
from tests.support.board_data import (
    XSS,
    make_holder,
    make_limit,
    make_lost_lease,
    make_stopping,
    make_waiter,
    settle,
)

pytestmark = pytest.mark.django_db


class Run:
    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


@pytest.fixture
def run(db) -> Run:
    """Flow run "etl" holds "db" through the helper (a 120 s lease) and "cache" through a lease
    Prefect took back (its block still inside); it waits for "queue", held by another run's
    helper; and it lost its lease on a resource named with markup an hour ago."""
    now = timezone.now()
    run_id = uuid.uuid4()
    mine = {"flow_run_id": run_id, "flow_run_name": "etl", "source": "helper"}
    db = make_limit("db")
    healthy = make_holder(db, lease_id=uuid.uuid4(), lease_seconds=120, **mine)
    cache = make_limit("cache")
    lost_now = make_holder(cache, lease_id=uuid.uuid4(), lease_seconds=60, **mine)
    make_stopping(cache, lost_now.lease_id, now - timedelta(seconds=4))
    queue = make_limit("queue")
    other = make_holder(queue, source="helper", lease_id=uuid.uuid4(), flow_run_name="other")
    make_waiter(queue, key="w", **mine)
    db, cache, queue = (settle(limit) for limit in (db, cache, queue))
    hostile = make_limit(f"resource:{XSS}", resource=XSS)
    lost = make_lost_lease(
        hostile, now - timedelta(hours=1), flow_run_id=run_id, flow_run_name="etl"
    )
    # Someone else's lost lease, and one of this run's older than a day: neither is listed.
    make_lost_lease(db, now - timedelta(minutes=5), flow_run_name="someone-else")
    make_lost_lease(db, now - timedelta(hours=25), flow_run_id=run_id)
    return Run(id=run_id, healthy=healthy, lost_now=lost_now, other=other, lost=lost, db=db)


def test_each_lock_the_run_holds_says_its_lease_and_a_lost_one_is_flagged(viewer_client, run):
    html = viewer_client.get(f"/runs/{run.id}").content.decode()
    healthy = text(article(html, f"hold-{run.healthy.pk}"))
    assert re.search(
        r"Lease 120 s, renewed every 90 s while the run lives: if it stopped now, the slot "
        r"would free by \d\d:\d\d:\d\d UTC at the latest\.",
        healthy,
    )
    lost_now = article(html, f"hold-{run.lost_now.pk}")
    assert '<span class="badge badge-lease-lost">lease lost</span>' in lost_now
    assert "Lease lost at" in text(lost_now) and "the helper is stopping the block" in lost_now
    assert "badge-lease-lost" not in article(html, f"hold-{run.healthy.pk}")


def test_a_lease_the_run_lost_while_it_ran_is_flagged_with_its_resource(viewer_client, run):
    html = viewer_client.get(f"/runs/{run.id}").content.decode()
    section = re.search(r'<section class="card lost-leases-card".*?</section>', html, re.S)
    assert section, html
    lost_at = run.lost.closed_at
    assert text(section.group(0)).count("It lost its lease on") == 1
    assert (
        f"It lost its lease on {XSS} at {lost_at:%H:%M:%S} UTC while running: the next run "
        "got the resource."
    ) in text(section.group(0))
    assert f">{ESCAPED_XSS}</a>" in section.group(0) and XSS not in html
    assert "someone-else" not in html


def test_a_run_that_holds_nothing_now_still_shows_the_lease_it_lost(viewer_client, db):
    gone_by = uuid.uuid4()
    db_limit = make_limit("resource:db-7")
    make_lost_lease(
        db_limit, timezone.now() - timedelta(minutes=2), flow_run_id=gone_by, flow_run_name="n-7"
    )
    html = viewer_client.get(f"/runs/{gone_by}").content.decode()
    assert "Nothing on the board" in html and "It lost its lease on" in text(html)
    assert '<a href="/resources/resource:db-7">resource:db-7</a>' in html
    assert "<h1>n-7</h1>" in html  # named by its lost hold


def test_the_run_api_gives_each_holder_its_lease_health_and_lists_lost_leases(viewer_client, run):
    data = viewer_client.get(f"/api/v1/runs/{run.id}").json()
    holds = {hold["resource"]["name"]: hold for hold in data["holds"]}
    lease = holds["db"]["lease"]
    # What the holder said stays as it was; the health comes beside it.
    assert (lease["id"], lease["seconds"]) == (str(run.healthy.lease_id), 120)
    health = lease["health"]
    assert (health["seconds"], health["renews_every"], health["known"]) == (120, 90, True)
    assert health["lost_at"] is None and health["frees_by"].endswith("+00:00")
    assert holds["cache"]["lease"]["health"]["lost_at"] is not None
    [wait] = data["waits"]
    assert wait["blocked_by"][0]["lease"]["health"]["seconds"] == 60  # the helper's default
    assert wait["blocked_by"][0]["lease"]["health"]["known"] is False
    [lost] = data["lost_leases"]
    assert lost == {
        "resource": {
            "name": f"resource:{XSS}",
            "resource": XSS,
            "page": reverse("resource", args=[f"resource:{XSS}"]),
            "api": reverse("api-resource", args=[f"resource:{XSS}"]),
        },
        "flow_run": {"id": str(run.id), "name": "etl"},
        "acquired_at": run.lost.occurred.isoformat(),
        "lost_at": run.lost.closed_at.isoformat(),
    }


def test_a_holder_whose_lease_the_board_cannot_read_has_no_health(viewer_client, db):
    run_id = uuid.uuid4()
    plain = make_limit("plain")
    make_holder(plain, source="event", flow_run_id=run_id)  # a plain concurrency()
    stale = make_limit("stale-one")
    make_holder(
        stale, source="helper", lease_id=uuid.uuid4(), flow_run_id=run_id, condition=Condition.STALE
    )
    settle(plain)
    settle(stale)
    data = viewer_client.get(f"/api/v1/runs/{run_id}").json()
    assert [hold["lease"]["health"] for hold in data["holds"]] == [None, None]
    assert data["lost_leases"] == []
    html = viewer_client.get(f"/runs/{run_id}").content.decode()
    assert "lease-health" not in html and "lost-leases-card" not in html


def test_the_run_reads_its_leases_in_two_queries_however_many_locks_it_holds(
    run, django_assert_max_num_queries
):
    for index in range(5):
        more = make_limit(f"more-{index}")
        make_holder(more, source="helper", lease_id=uuid.uuid4(), flow_run_id=run.id)
        settle(more)
    # The limits, their holders, their waiters; the `stopping` announcements; the lost leases.
    with django_assert_max_num_queries(5):
        locks = run_locks(run.id)
    assert len(locks.holds) == 7 and all(hold.lease for hold in locks.holds)
    assert [lost.resource for lost in locks.lost] == [XSS]
