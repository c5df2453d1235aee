"""Lease health in the resource API: each holder's lease says what renews its slot and by when
it would free if the holder stopped now, and the leases lost while their run went on are
listed; what a holder's lease said before stays as it was."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from tests.support.board_data import (
    XSS,
    make_holder,
    make_limit,
    make_lost_lease,
    make_stopping,
    settle,
)

pytestmark = pytest.mark.django_db


def test_each_holder_of_a_resource_gains_its_lease_health(viewer_client):
    db = make_limit("db-9", limit=3, active_slots=2)
    helper = make_holder(db, source="helper", lease_id=uuid.uuid4(), lease_seconds=120)
    stopping = make_holder(db, source="helper", lease_id=uuid.uuid4())
    make_stopping(db, stopping.lease_id, timezone.now() - timedelta(seconds=2))
    make_holder(db, source="event", flow_run_name=XSS)  # a plain concurrency()
    settle(db)
    before = timezone.now()
    data = viewer_client.get("/api/v1/resources/db-9").json()
    after = timezone.now()
    holders = {holder["lease"]["id"]: holder for holder in data["holders"]}
    lease = holders[str(helper.lease_id)]["lease"]
    assert lease["seconds"] == 120  # as before: what the holder announced
    health = lease["health"]
    assert set(health) == {"seconds", "renews_every", "frees_by", "known", "lost_at"}
    assert (health["seconds"], health["renews_every"], health["known"]) == (120, 90, True)
    # The lease and Prefect's 15 s repossessor, from now.
    frees_by = datetime.fromisoformat(health["frees_by"])
    assert before + timedelta(seconds=135) <= frees_by <= after + timedelta(seconds=135)
    assert health["lost_at"] is None
    unsaid = holders[str(stopping.lease_id)]["lease"]
    assert unsaid["seconds"] is None and unsaid["health"]["known"] is False
    assert unsaid["health"]["seconds"] == 60 and unsaid["health"]["lost_at"] is not None
    assert holders[None]["flow_run"]["name"] == XSS  # JSON, as given
    # Nothing the board can read of a plain concurrency()'s lease.
    assert holders[None]["lease"] == {"id": None, "seconds": None, "health": None}


def test_the_resource_api_lists_the_leases_lost_while_their_run_went_on(viewer_client):
    now = timezone.now()
    db = make_limit("db-10")
    run = uuid.uuid4()
    lost = make_lost_lease(db, now - timedelta(minutes=3), flow_run_id=run, flow_run_name=XSS)
    make_lost_lease(db, now - timedelta(hours=30))  # older than the day the board keeps
    make_lost_lease(db, now - timedelta(minutes=1), closed_reason="released")
    data = viewer_client.get("/api/v1/resources/db-10").json()
    assert data["lost_leases"] == [
        {
            "resource": {
                "name": "db-10",
                "resource": "db-10",
                "page": "/resources/db-10",
                "api": "/api/v1/resources/db-10",
            },
            "flow_run": {"id": str(run), "name": XSS},
            "acquired_at": lost.occurred.isoformat(),
            "lost_at": lost.closed_at.isoformat(),
        }
    ]
    # The listing keeps its shape: lease health is read per resource, in its own answer.
    [listed] = viewer_client.get("/api/v1/resources?search=db-10").json()["results"]
    assert "lost_leases" not in listed
