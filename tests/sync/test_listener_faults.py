"""The listener through bad weather: malformed events on the stream, a Prefect server restart."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from reslock_web.models import AppliedEvent, Condition, Heartbeat, Holder, Limit
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.listener import SETTLE_SECONDS
from reslock_web.sync.run import sync_all
from tests.support.flows import FlowRunner
from tests.support.listener_process import (
    ListenerProcess,
    assert_each_applied_once,
    change_a_quiet_limit,
)
from tests.support.net import wait_for
from tests.support.prefect_server import PrefectServer

pytestmark = pytest.mark.django_db(transaction=True)

# Events a buggy script or an old client could send: names of ours, contents of no use.
EMIT_BAD_EVENTS = textwrap.dedent(
    """
    import asyncio, json, sys, uuid
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    name = sys.argv[1]
    bad = [
        ("reslock.lock.acquired", {"prefect.resource.id": "prefect.concurrency-limit.not-a-uuid",
          "prefect.resource.name": name}, {"lease_id": "zzz", "lease_seconds": "forever"}),
        ("reslock.lock.waiting", {"prefect.resource.id": "prefect.concurrency-limit.",
          "prefect.resource.name": name}, {"wait_id": 12, "names": "not a list"}),
        ("reslock.lock.released", {"prefect.resource.id": f"prefect.concurrency-limit.{uuid.uuid4()}",
          "prefect.resource.name": "<script>alert(1)</script>"}, {"lease_id": str(uuid.uuid4())}),
        ("prefect.concurrency-limit.acquired", {"prefect.resource.id": "nonsense"}, {"slots": "x"}),
        ("prefect.flow-run.Running", {"prefect.resource.id": "prefect.flow-run.not-a-uuid"}, {}),
        ("prefect.task-run.Pending", {"prefect.resource.id": f"prefect.task-run.{uuid.uuid4()}"},
          {"validated_state": None}),
    ]

    async def main():
        async with PrefectEventsClient() as client:
            for event, resource, payload in bad:
                await client.emit(Event(event=event, resource=resource, payload=payload))
        print(json.dumps(len(bad)))

    asyncio.run(main())
    """
)


def test_malformed_events_are_skipped_and_the_stream_goes_on(prefect_server, flows):
    name = f"db-bad-{uuid.uuid4().hex[:8]}"
    listener = ListenerProcess(prefect_server)
    try:
        applied = AppliedEvent.objects.count()
        sent = subprocess.run(
            [sys.executable, "-c", EMIT_BAD_EVENTS, name],
            env=prefect_server.client_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        # The four lock events are recorded; the two run events name no run that holds or
        # waits, so the listener passes them over without a trace.
        wait_for(
            lambda: AppliedEvent.objects.count() >= applied + 4, 20, what="the bad events to pass"
        )
        assert listener.process.poll() is None
        assert not Holder.objects.filter(limit__name=name).exists()
        assert not Limit.objects.filter(name="<script>alert(1)</script>").exists()
        # A real lock right after them is applied as fast as ever.
        holder = flows.start("helper_holder", name=name, flow_run_name="after-the-noise")
        holder.wait_event("acquired")
        wait_for(
            lambda: Holder.objects.filter(
                limit__name=name, condition=Condition.HOLDING, flow_run_name="after-the-noise"
            ).exists(),
            60,
            interval=0.05,
            what="the real acquire, right after the noise",
        )
        holder.release()
        holder.wait_event("released")
        beat = Heartbeat.objects.get(service="listener")
        assert beat.pid == listener.process.pid and beat.detail["connected"]
    finally:
        assert listener.stop() == 0


@pytest.fixture
def own_prefect():
    """A Prefect server of this test's own: it is stopped and started again."""
    server = PrefectServer.create()
    server.start()
    yield server
    server.stop()
    shutil.rmtree(server.home, ignore_errors=True)


def sync_until(server, check, timeout=90):
    def attempt():
        with PrefectAPI(server.api_url) as api:
            sync_all(api)
        return check()

    return wait_for(attempt, timeout, interval=1, what="the board to settle")


def test_a_prefect_restart_ends_with_the_board_correct(own_prefect, tmp_path):
    """Prefect keeps leases in memory: a restart loses them while `active_slots` keeps its
    count, and the holder's release afterwards frees nothing. The board must end with no
    holder, the leaked slot flagged as drift, and never two rows for one holder."""
    flows = FlowRunner(own_prefect, tmp_path)
    name = f"db-restart-{uuid.uuid4().hex[:8]}"
    listener = ListenerProcess(own_prefect)
    try:
        holder = flows.start("helper_holder", name=name, flow_run_name="before-restart")
        holder.wait_event("acquired")
        wait_for(
            lambda: Holder.objects.filter(limit__name=name, condition=Condition.HOLDING).exists(),
            10,
            what="the holder on the board",
        )
        # Applied before the restart; sent again after it (Prefect's replay on connect, the
        # listener's own catch-up and settling reads), they must not be applied again.
        quiet = change_a_quiet_limit(own_prefect)
        own_prefect.stop()
        wait_for(
            lambda: not Heartbeat.objects.get(service="listener").detail.get("connected"),
            30,
            what="the listener to notice Prefect is gone",
        )
        own_prefect.start()
        wait_for(
            lambda: (
                (beat := Heartbeat.objects.get(service="listener")).detail.get("connected")
                and beat.pid == listener.process.pid
            ),
            60,
            what="the listener to reconnect",
        )
        reconnected = time.monotonic()
        # The holder finishes after the restart: its release is a no-op, the count stays.
        holder.release()
        holder.wait_event("released")

        def settled():
            limit = Limit.objects.named(name)
            live = limit.holders.exclude(condition=Condition.LEAVING).count()
            assert Holder.objects.filter(limit__name=name).count() <= 1  # never duplicated
            return limit.has_drift and live == 0 and limit.active_slots == 1

        sync_until(own_prefect, settled)
        assert holder.wait() == 0
        # The settling read re-reads the minute before the reconnect SETTLE_SECONDS after it:
        # a wait on the listener's own schedule, since it leaves no trace when it finds nothing.
        time.sleep(max(0.0, reconnected + SETTLE_SECONDS + 5 - time.monotonic()))
        assert_each_applied_once(quiet, [listener.process.pid])
    finally:
        flows.stop_all()
        assert listener.stop() == 0
