"""The listener writes what a lock event says while its own pass over a few limits waits on
Prefect (sync/provisional.py, `run.write_between_passes`): the pass then writes over rows that
changed since it read them. Real Prefect behind a slow hop, a real helper holding the lock."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import close_old_connections, transaction
from django.utils import timezone

from reslock.protocol import EVENT_ACQUIRED, EVENT_RELEASED
from reslock_web.models import Condition, Holder, Limit, Status, SyncRun
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.events import record_events
from reslock_web.sync.listener import Listener
from reslock_web.sync.lock import try_lock, unlock
from reslock_web.sync.provisional import show
from reslock_web.sync.run import sync_limit, sync_limits, write_between_passes
from tests.support.net import wait_for
from tests.support.operating import unique
from tests.support.prefect_limits import create_limits

pytestmark = pytest.mark.django_db(transaction=True)


def helper_events(server, name: str, kind: str, since) -> list:
    """The helper's `kind` events on `name`, once Prefect's REST API has them."""
    with PrefectAPI.for_url(server.api_url) as api:
        return wait_for(
            lambda: [
                e
                for e in api.events(since, timezone.now() + timedelta(minutes=1), ["reslock."])
                if e.event == kind and e.resource.get("prefect.resource.name") == name
            ],
            60,
            what=f"the helper's {kind} in Prefect",
        )


def test_a_release_applied_while_the_listener_re_syncs_stays_on_the_board_after_it(
    prefect_server, flows, proxy, settings
):
    """The listener's re-sync of a limit waits on Prefect; the holder releases meanwhile. The
    board shows the release at once, and the pass, which read Prefect before it, does not
    bring the holder back: its write is followed by the events applied since it began."""
    name = unique("resource:confirm")
    create_limits(prefect_server, [name])
    started = timezone.now() - timedelta(seconds=5)
    with PrefectAPI.for_url(prefect_server.api_url) as api:
        assert sync_limit(api, name).ok
    holder = flows.start("helper_holder", name=name, flow_run_name="confirm-holder")
    holder.wait_event("acquired")
    listener = Listener(api_url=proxy.url)
    listener.inbox.append((helper_events(prefect_server, name, EVENT_ACQUIRED, started)[0], None))
    listener._apply()
    assert Limit.objects.get(name=name).status == Status.HELD  # shown before any re-sync
    assert listener.pending == {name: None}  # to be confirmed; the board is not behind on it
    assert listener._take_lag() < 60

    # The pass reads the limit and its events, then waits 30 s for the holder's run.
    settings.PREFECT_TIMEOUT_SECONDS = 60
    proxy.route("runs/filter", "hold", seconds=30, times=1)
    thread = threading.Thread(target=lambda: _resync(listener))
    thread.start()
    try:
        wait_for(lambda: proxy.received_at("runs/filter"), 60, what="the pass to ask for runs")
        holder.release()
        holder.wait_event("released")
        released = helper_events(prefect_server, name, EVENT_RELEASED, started)
        listener.inbox.append((released[0], None))
        listener._apply()
        assert thread.is_alive(), "the pass ended before the release was applied"
        assert Limit.objects.get(name=name).status == Status.FREE
    finally:
        thread.join(180)
        proxy.ok()
    run = SyncRun.objects.filter(scope=name).latest("started_at")
    assert run.ok, run.error
    limit = Limit.objects.get(name=name)
    assert (limit.status, limit.holder_count, limit.active_slots) == (Status.FREE, 0, 0)
    assert not Holder.objects.filter(limit=limit).exists()


def _resync(listener: Listener) -> None:
    try:
        with PrefectAPI.for_url(listener.api_url) as api:
            listener._resync(api)
    finally:
        close_old_connections()


def test_an_acquire_shown_while_a_pass_reads_prefect_is_kept_by_its_write(
    prefect_server, flows, proxy
):
    name = unique("resource:beside")
    create_limits(prefect_server, [name])
    started = timezone.now() - timedelta(seconds=5)
    with PrefectAPI.for_url(prefect_server.api_url) as api:
        assert sync_limit(api, name).ok
        assert Limit.objects.get(name=name).status == Status.FREE
        holder = flows.start("helper_holder", name=name, flow_run_name="beside-holder")
        holder.wait_event("acquired")
        acquired = wait_for(
            lambda: [
                e
                for e in api.events(started, timezone.now() + timedelta(minutes=1), ["reslock."])
                if e.event == EVENT_ACQUIRED and e.resource.get("prefect.resource.name") == name
            ],
            60,
            what="the helper's acquire in Prefect",
        )
    # Recorded as the listener records it: the pass below reads it as a claim.
    record_events(acquired)

    proxy.slow(3)  # each answer of Prefect's takes 3 s: the pass reads, then waits
    outcome = {}

    def pass_over_the_limit() -> None:
        try:
            with PrefectAPI.for_url(proxy.url) as slow_api:
                outcome["run"] = sync_limits(slow_api, [name])
        finally:
            close_old_connections()

    thread = threading.Thread(target=pass_over_the_limit)
    thread.start()
    try:
        # It reads the limit, then asks for its events and reads our rows while Prefect
        # answers (gather.py): from then on, they change under it.
        wait_for(lambda: proxy.received_at("/events/filter"), 60, what="the pass's events")
        time.sleep(1)
        with write_between_passes() as may:
            assert may  # this process's own pass over a few limits: it reads them again
            with transaction.atomic():
                assert show(acquired, timezone.now()) == {name}
        shown = Holder.objects.get(limit__name=name)
        assert (shown.key, shown.flow_run_name) == (str(acquired[0].id), "beside-holder")
        assert thread.is_alive()  # shown before the pass has Prefect's answers
    finally:
        thread.join(180)
        proxy.ok()
    run = outcome["run"]
    assert run is not None and run.ok, run and run.error  # no second row for the same claim
    kept = Holder.objects.get(limit__name=name)
    assert kept.pk == shown.pk and kept.condition == Condition.HOLDING
    assert kept.state_type == "RUNNING"  # what the pass read of the run, on the same row
    assert Limit.objects.get(name=name).status == Status.HELD
    holder.release()
    holder.wait_event("released")


def test_nothing_is_written_beside_another_process_pass():
    """A pass of another process (here: a lock token that is not one of this process's
    passes) may have read our rows and not written them yet."""
    token = try_lock(timezone.now())
    assert token is not None
    try:
        with write_between_passes() as may:
            assert may is False
    finally:
        unlock(token)
    with write_between_passes() as may:
        assert may is True  # free: taken for the block
    token = try_lock(timezone.now())
    assert token is not None  # and freed after it
    unlock(token)
