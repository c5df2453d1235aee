"""Lease health on the resource page: how long each live holder's slot outlives it if it stops,
and the leases lost while their run went on (the helper's `lease_lost`); what the run page and
the board's rows read of them.

The last test is the real thing: a helper holder made by a real flow whose lease Prefect takes
back (revoked through Prefect's own API) is stopped by the helper, and the board says so, on
the resource page, the run's page and in the run's JSON.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from reslock.protocol import EVENT_ACQUIRED, EVENT_STOPPING
from reslock_web.models import Condition, Kind, LockEvent
from reslock_web.status.leases import (
    lease_of,
    leases,
    leases_of,
    lost_by_limit,
    lost_by_run,
    lost_recently,
)
from tests.support.board_data import (
    make_holder,
    make_limit,
    make_lost_lease,
    make_stopping,
    settle,
)
from tests.support.operating import sync_until, unique
from tests.support.patient import patient_client

pytestmark = pytest.mark.django_db(transaction=True)


def test_each_kind_of_lease_says_when_the_slot_would_free_and_plain_concurrency_says_nothing():
    now = timezone.now()
    db = make_limit("db-1")
    helper = make_holder(db, source="helper", lease_id=uuid.uuid4(), lease_seconds=120)
    lease = lease_of(db, helper, now)
    assert (lease.seconds, lease.renews_every, lease.known) == (120, 90, True)
    assert lease.frees_by == now + timedelta(seconds=135)  # lease + Prefect's repossessor
    assert lease.words == (
        "Lease 120 s, renewed every 90 s while the run lives: if it stopped now, the slot "
        f"would free by {lease.frees_by:%H:%M:%S} UTC at the latest."
    )
    unsaid = make_holder(db, source="helper", lease_id=uuid.uuid4())
    assert (
        lease_of(db, unsaid, now).seconds == 60
        and "Prefect's default" in lease_of(db, unsaid, now).words
    )
    tag = make_limit("tag:reports")
    assert lease_of(tag, make_holder(tag, source="tag_lease"), now).seconds == 60
    deployment = make_limit(f"deployment:{uuid.uuid4()}", kind=Kind.DEPLOYMENT)
    assert lease_of(deployment, make_holder(deployment, source="deployment"), now).seconds == 300
    assert lease_of(db, make_holder(db, source="event"), now) is None  # nothing readable
    stale = make_holder(db, source="helper", lease_id=uuid.uuid4(), condition=Condition.STALE)
    assert lease_of(db, stale, now) is None  # not a live holder's lease


def test_a_lease_lost_while_the_block_is_still_inside_is_flagged_and_then_listed(client, viewer):
    now = timezone.now()
    db = make_limit("db-2", limit=2)
    lost = uuid.uuid4()
    inside = make_holder(
        db, source="helper", lease_id=lost, lease_seconds=60, flow_run_name="etl-7"
    )
    quiet = make_holder(db, source="helper", lease_id=uuid.uuid4(), lease_seconds=60)
    settle(db)
    LockEvent.objects.create(
        event_id=uuid.uuid4(),
        event=EVENT_STOPPING,
        occurred=now - timedelta(seconds=4),
        limit_prefect_id=db.prefect_id,
        lease_id=lost,
    )
    found = leases(db, [inside, quiet], now)
    assert found[inside.pk].lost_at is not None and found[quiet.pk].lost_at is None
    assert found[inside.pk].words.startswith("Lease lost at")
    # Once the block has stopped, the helper's release closes the acquire as lease_lost.
    LockEvent.objects.create(
        event_id=uuid.uuid4(),
        event=EVENT_ACQUIRED,
        occurred=now - timedelta(minutes=20),
        limit_prefect_id=db.prefect_id,
        lease_id=lost,
        flow_run_id=uuid.uuid4(),
        flow_run_name="etl-7",
        closed_at=now - timedelta(seconds=1),
        closed_reason="lease_lost",
    )
    [listed] = lost_recently(db, now)
    assert listed.run_name == "etl-7"
    client.force_login(viewer)
    html = client.get("/resources/db-2").content.decode()
    assert "badge-lease-lost" in html and "Leases lost while their run went on" in html
    assert "etl-7" in html and "renewed every 45 s" in html


def test_the_leases_of_holders_of_several_limits_are_read_in_one_query(
    django_assert_num_queries,
):
    now = timezone.now()
    lease = uuid.uuid4()  # one helper lease may hold several names
    first, second, tag = (make_limit(name) for name in ("first", "second", "tag:t"))
    on_first = make_holder(first, source="helper", lease_id=lease, lease_seconds=90)
    on_second = make_holder(second, source="helper", lease_id=lease, lease_seconds=90)
    tagged = make_holder(tag, source="tag_lease")
    first, second, tag = (settle(limit) for limit in (first, second, tag))
    make_stopping(first, lease, now - timedelta(seconds=3))  # said of the first name only
    with django_assert_num_queries(1):
        found = leases_of([(first, on_first), (second, on_second), (tag, tagged)], now)
    assert found[on_first.pk].lost_at is not None and found[on_second.pk].lost_at is None
    assert (found[on_second.pk].seconds, found[tagged.pk].seconds) == (90, 60)
    with django_assert_num_queries(0):  # no helper lease: nothing to read
        assert leases_of([(tag, tagged)], now)[tagged.pk].renews_every == 45


def test_a_runs_lost_leases_are_found_on_every_limit_with_the_boards_names(
    django_assert_num_queries,
):
    now = timezone.now()
    run = uuid.uuid4()
    reports = make_limit("tag:reports nightly")
    db = make_limit("db-3")
    newest = make_lost_lease(reports, now - timedelta(minutes=1), flow_run_id=run)
    make_lost_lease(db, now - timedelta(hours=2), flow_run_id=run, flow_run_name="")
    make_lost_lease(db, now - timedelta(hours=25), flow_run_id=run)  # out of the window
    make_lost_lease(db, now - timedelta(minutes=1), flow_run_id=run, closed_reason="exit")
    make_lost_lease(db, now - timedelta(minutes=1))  # another run's
    unknown = make_limit("unsynced")
    make_lost_lease(unknown, now - timedelta(hours=3), flow_run_id=run)
    unknown.delete()  # a limit the board no longer has: the event's own name
    with django_assert_num_queries(1):
        found = lost_by_run(run, now)
    assert [(lost.limit_name, lost.resource) for lost in found] == [
        ("tag:reports nightly", "reports nightly"),
        ("db-3", "db-3"),
        ("unsynced", "unsynced"),
    ]
    assert found[0].lost_at == newest.closed_at and found[0].run_name == "lost-run"


def test_the_limits_that_lost_a_lease_lately_are_read_in_one_query(django_assert_num_queries):
    now = timezone.now()
    lost, stopping, both, quiet = (make_limit(name) for name in ("l", "s", "b", "q"))
    make_lost_lease(lost, now - timedelta(hours=5))
    latest = make_lost_lease(lost, now - timedelta(hours=1)).closed_at
    make_stopping(stopping, uuid.uuid4(), now - timedelta(seconds=10))
    make_lost_lease(both, now - timedelta(hours=23))
    make_stopping(both, uuid.uuid4(), now - timedelta(seconds=1))
    make_lost_lease(quiet, now - timedelta(hours=24, seconds=1))
    make_stopping(quiet, uuid.uuid4(), now - timedelta(seconds=31))
    make_lost_lease(quiet, now - timedelta(hours=1), closed_reason="ended")
    gone = make_limit("gone")
    make_lost_lease(gone, now - timedelta(hours=1))
    gone.delete()
    with django_assert_num_queries(1):
        marks = lost_by_limit(now)
    assert set(marks) == {lost.pk, stopping.pk, both.pk}
    assert (marks[lost.pk].lost, marks[lost.pk].lost_at, marks[lost.pk].stopping) == (
        2,
        latest,
        False,
    )
    assert (marks[stopping.pk].lost, marks[stopping.pk].stopping) == (0, True)
    assert marks[both.pk].stopping and marks[both.pk].lost == 1
    assert len({mark.key for mark in marks.values()}) == 3
    assert all(mark.key.isascii() and mark.key.isalnum() for mark in marks.values())


def test_a_real_holder_whose_lease_prefect_took_back_is_listed_as_lost(
    prefect_server, flows, viewer_client
):
    name = unique("db-lease")
    run = flows.start("helper_holder", name=name, flow_run_name="long-etl", hold=300)
    acquired = run.wait_event("acquired")
    limit = sync_until(prefect_server, name, lambda limit: limit.holder_count == 1)
    html = viewer_client.get(f"/resources/{name}").content.decode()
    assert "Lease 60 s, renewed every 45 s while the run lives" in html
    with patient_client(prefect_server.api_url) as http:
        # What an outage past the lease does: Prefect no longer has the lease.
        http.post(
            "/v2/concurrency_limits/decrement-with-lease",
            json={"lease_id": acquired["lease_id"]},
        ).raise_for_status()
    lost = run.wait_event("lost", timeout=90)  # at the helper's next renewal
    assert "the guarded block was stopped" in lost["message"], lost
    sync_until(prefect_server, name, lambda limit: lost_recently(limit, timezone.now()), 60)
    html = viewer_client.get(f"/resources/{limit.name}").content.decode()
    assert "Leases lost while their run went on" in html and "long-etl" in html
    # The run's own page flags it, and its JSON lists it.
    run_id = acquired["flow_run_id"]
    page = viewer_client.get(f"/runs/{run_id}").content.decode()
    assert "Leases lost while it ran" in page and f">{name}</a> at " in page
    assert "while running: the next run got the resource." in page
    [lost_lease] = viewer_client.get(f"/api/v1/runs/{run_id}").json()["lost_leases"]
    assert lost_lease["resource"]["name"] == name and lost_lease["lost_at"]
    run.stop()
