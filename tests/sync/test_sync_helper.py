"""Locks taken through reslock's flow helper: holder with its lease, waiters in order."""

from __future__ import annotations

import uuid

import pytest

from reslock_web.models import Condition, Limit, Source, Status
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.run import sync_all
from tests.support.net import wait_for
from tests.support.operating import sync_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_helper_holder_and_its_waiters_show_in_the_order_they_began_waiting(
    prefect_server, flows
):
    name = f"db-{uuid.uuid4().hex[:8]}"
    holder = flows.start("helper_holder", name=name, flow_run_name="first-holder")
    acquired = holder.wait_event("acquired")
    waiters = []
    for order in ("second", "third", "fourth"):
        waiter = flows.start("helper_holder", name=name, flow_run_name=f"{order}-in-line")
        waiter.wait_event("want")
        waiters.append(waiter)
        # Each is seen waiting before the next starts: the helper announces its wait only
        # after its first try found the limit full, so "want" alone does not fix the order.
        count = len(waiters)
        sync_until(prefect_server, name, lambda limit, n=count: limit.waiter_count == n, timeout=40)
    limit = sync_until(
        prefect_server,
        name,
        lambda limit: limit.waiter_count == 3 and limit.holder_count == 1,
        timeout=40,
    )
    assert limit.kind == "global" and limit.status == Status.CONTENDED
    [row] = limit.holders.exclude(condition=Condition.LEAVING)
    assert row.source == Source.HELPER and row.flow_run_name == "first-holder"
    assert str(row.lease_id) == acquired["lease_id"] and row.lease_seconds == 60
    queue = [w.flow_run_name for w in limit.waiters.order_by("position")]
    assert queue == ["second-in-line", "third-in-line", "fourth-in-line"]
    holder.release()
    assert holder.wait() == 0
    # Prefect serves waiters by retry, not strictly first come: whoever got in is the holder.
    got_in = wait_for(
        lambda: next((w for w in waiters if w.find_events("acquired")), None),
        90,
        what="a waiter to get in",
    )
    lease = got_in.find_events("acquired")[0]["lease_id"]
    limit = sync_until(
        prefect_server,
        name,
        lambda limit: limit.waiter_count == 2 and str(limit.holders.get().lease_id) == lease,
        timeout=40,
    )
    assert limit.holders.get().flow_run_name == got_in.params["flow_run_name"]
    assert got_in.params["flow_run_name"] not in [w.flow_run_name for w in limit.waiters.all()]
    for waiter in waiters:
        waiter.stop()


def test_a_run_that_takes_the_lock_again_and_again_is_never_called_a_zombie(
    prefect_server, flows, settings
):
    """Each release ends that hold for good, even though the run goes on Running: the board
    must not wait out the grace period and then call the earlier holds zombies."""
    # A lost slot would be called a zombie after 8 s: longer than Prefect's REST API takes to
    # show the release (a second or two, over five seen on a loaded machine late in a run),
    # shorter than the run's pause between holds.
    settings.GRACE_SECONDS = 8
    name = f"db-loop-{uuid.uuid4().hex[:8]}"
    # Held long enough for a sync to see each holder, then free for longer than the grace
    # period.
    looper = flows.start("helper_loop", name=name, cycles=2, hold=8.0, gap=14.0)
    looper.wait_event("acquired", n=0)
    seen: list[tuple[str, list[str]]] = []

    def watch():
        with PrefectAPI(prefect_server.api_url) as api:
            assert sync_all(api).ok
        limit = Limit.objects.named(name)
        seen.append((limit.status, sorted(limit.holders.values_list("condition", flat=True))))
        return looper.find_events("done")

    wait_for(watch, 120, interval=0.3, what="the loop to finish")
    statuses = [status for status, _ in seen]
    assert Status.ZOMBIE not in statuses, "\n".join(map(str, seen))
    assert (Status.HELD, [Condition.HOLDING]) in seen and Status.FREE in statuses
    assert all(
        conditions in ([], [Condition.HOLDING], [Condition.LEAVING]) for _, conditions in seen
    ), seen
    assert looper.wait() == 0
