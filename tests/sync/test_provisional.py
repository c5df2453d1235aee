"""What the listener writes from lock events before Prefect is read again (sync/provisional.py):
held and free at once on limits that need no verdict, nothing on the others. Pure logic over
our own tables; the listener and the pass it runs beside are tested against the real server in
test_listener.py."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from reslock.protocol import EVENT_ACQUIRED, EVENT_RELEASED, EVENT_TIMED_OUT, EVENT_WAITING
from reslock_web.models import Condition, Holder, Limit, Source, Status, SyncState, Waiter
from reslock_web.prefect_io.records import EventInfo
from reslock_web.sync.events import record_events
from reslock_web.sync.provisional import show
from tests.support.board_data import make_held, make_holder, make_limit, make_waiter, settle

pytestmark = pytest.mark.django_db


def helper_event(limit: Limit, event: str, *, run: uuid.UUID, seconds_ago: float = 1, **payload):
    """One of the helper's `reslock.lock.*` events on `limit`, as Prefect streams it."""
    return EventInfo.parse(
        {
            "id": str(uuid.uuid4()),
            "event": event,
            "occurred": (timezone.now() - timedelta(seconds=seconds_ago)).isoformat(),
            "resource": {
                "prefect.resource.id": f"prefect.concurrency-limit.{limit.prefect_id}",
                "prefect.resource.name": limit.name,
            },
            "related": [
                {
                    "prefect.resource.id": f"prefect.flow-run.{run}",
                    "prefect.resource.role": "flow-run",
                    "prefect.resource.name": "nightly-<b>load</b>",
                }
            ],
            "payload": {key: str(value) for key, value in payload.items()},
        }
    )


def applied(*events: EventInfo) -> set[str]:
    """As the listener does: record the events, then show them."""
    record_events(list(events))
    return show(list(events), timezone.now())


def board_version() -> int:
    row = SyncState.objects.filter(name=SyncState.BOARD).first()
    return row.version if row else 0


def free_limit(name: str = "resource:db") -> Limit:
    return settle(make_limit(name))


def test_an_acquire_then_its_release_show_held_then_free_at_once():
    limit = free_limit()
    run, lease = uuid.uuid4(), uuid.uuid4()
    before = board_version()
    acquired = helper_event(limit, EVENT_ACQUIRED, run=run, lease_id=lease)

    assert applied(acquired) == {limit.name}

    limit.refresh_from_db()
    assert (limit.status, limit.active_slots, limit.holder_count, limit.is_held) == (
        Status.HELD,
        1,
        1,
        True,
    )
    assert limit.held_since == acquired.occurred
    holder = Holder.objects.get(limit=limit)
    assert holder.key == str(acquired.id)  # the key a pass gives it: the pass updates this row
    assert (holder.source, holder.condition, holder.lease_id) == (
        Source.HELPER,
        Condition.HOLDING,
        lease,
    )
    assert (holder.flow_run_id, holder.flow_run_name) == (run, "nightly-<b>load</b>")
    assert board_version() != before  # polling pages redraw

    assert applied(helper_event(limit, EVENT_RELEASED, run=run, lease_id=lease)) == {limit.name}

    limit.refresh_from_db()
    assert (limit.status, limit.active_slots, limit.holder_count, limit.held_since) == (
        Status.FREE,
        0,
        0,
        None,
    )
    assert not Holder.objects.filter(limit=limit).exists()


def test_a_wait_queues_and_its_acquire_or_time_out_ends_it():
    limit = free_limit()
    first, second = uuid.uuid4(), uuid.uuid4()
    lease, wait_a, wait_b = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    applied(helper_event(limit, EVENT_ACQUIRED, run=first, lease_id=lease))
    applied(
        helper_event(limit, EVENT_WAITING, run=second, wait_id=wait_a),
        helper_event(limit, EVENT_WAITING, run=uuid.uuid4(), wait_id=wait_b),
    )
    limit.refresh_from_db()
    assert (limit.status, limit.waiter_count) == (Status.CONTENDED, 2)
    assert list(Waiter.objects.filter(limit=limit).values_list("key", "position")) == [
        (f"wait:{wait_a}", 1),
        (f"wait:{wait_b}", 2),
    ]

    # The hand-off: the holder releases, the first waiter gets in, the second gives up.
    applied(
        helper_event(limit, EVENT_RELEASED, run=first, lease_id=lease),
        helper_event(limit, EVENT_ACQUIRED, run=second, lease_id=uuid.uuid4(), wait_id=wait_a),
        helper_event(limit, EVENT_TIMED_OUT, run=uuid.uuid4(), wait_id=wait_b),
    )
    limit.refresh_from_db()
    assert (limit.status, limit.waiter_count, limit.holder_count) == (Status.HELD, 0, 1)
    assert Holder.objects.get(limit=limit).flow_run_id == second


@pytest.mark.parametrize(
    "premise",
    [
        "stale holder",
        "drift",
        "count not explained by its holders",
        "inactive",
        "cross-limit cycle",
        "deadlocked waiter",
        "tag limit",
        "gone",
        "holder leaving",
    ],
)
def test_a_limit_a_pass_has_a_verdict_on_is_left_to_the_next_pass(premise):
    """Limits of two where a holder is there: room for the acquire, so only the verdict
    keeps it off."""
    name = "tag:db" if premise == "tag limit" else "resource:db"
    if premise == "stale holder":
        limit = make_held(name, condition=Condition.STALE, limit=2)
    elif premise == "holder leaving":
        limit = make_held(name, condition=Condition.LEAVING, limit=2)
    elif premise == "deadlocked waiter":
        limit = make_limit(name, limit=2)
        make_holder(limit, source=Source.HELPER, key=str(uuid.uuid4()))
        make_waiter(limit, deadlocked_by=limit.holders.get(), source=Source.HELPER, key="wait:x")
        limit = settle(limit)
    else:
        limit = free_limit(name)
    if premise == "drift":
        limit.drift_since = timezone.now()
        settle(limit, marks=["has_drift"])
    elif premise == "count not explained by its holders":
        limit.active_slots = 1
        limit.save()
    elif premise == "inactive":
        limit.active = False
        settle(limit)
    elif premise == "cross-limit cycle":
        limit.deadlock_cycle = "a waits for b, b waits for a"
        settle(limit)
    elif premise == "gone":
        limit.gone_at = timezone.now()
        limit.save()
    limit.refresh_from_db()
    before = {f: getattr(limit, f) for f in ("status", "active_slots", "holder_count")}
    holders = set(Holder.objects.filter(limit=limit).values_list("pk", "condition"))

    shown = applied(helper_event(limit, EVENT_ACQUIRED, run=uuid.uuid4(), lease_id=uuid.uuid4()))

    assert shown == set()
    limit.refresh_from_db()
    assert {f: getattr(limit, f) for f in before} == before
    assert set(Holder.objects.filter(limit=limit).values_list("pk", "condition")) == holders


def test_more_holders_than_the_limit_are_left_to_a_pass():
    """Events out of order (the next acquire before the last release) would show two holders
    of a limit of one: only a pass, with Prefect's count, may say so."""
    limit = free_limit()
    applied(helper_event(limit, EVENT_ACQUIRED, run=uuid.uuid4(), lease_id=uuid.uuid4()))
    version = board_version()

    shown = applied(helper_event(limit, EVENT_ACQUIRED, run=uuid.uuid4(), lease_id=uuid.uuid4()))

    assert shown == set()
    limit.refresh_from_db()
    assert (limit.holder_count, limit.active_slots, limit.status) == (1, 1, Status.HELD)
    assert board_version() == version


def test_a_hold_long_enough_to_warn_of_is_left_to_a_pass(settings):
    settings.LONG_HOLD_SECONDS = 60
    limit = free_limit()
    applied(
        helper_event(
            limit, EVENT_ACQUIRED, run=uuid.uuid4(), lease_id=uuid.uuid4(), seconds_ago=120
        )
    )
    assert not Holder.objects.filter(limit=limit).exists()


def test_only_the_acquires_given_join_never_other_open_ones_a_pass_has_judged():
    limit = free_limit()
    earlier = helper_event(limit, EVENT_ACQUIRED, run=uuid.uuid4(), lease_id=uuid.uuid4())
    record_events([earlier])  # recorded by a pass that judged it: no holder row came of it
    waited = helper_event(limit, EVENT_WAITING, run=uuid.uuid4(), wait_id=uuid.uuid4())

    assert applied(waited) == {limit.name}

    assert not Holder.objects.filter(limit=limit).exists()
    assert Waiter.objects.filter(limit=limit).count() == 1


def test_events_already_shown_change_nothing_more():
    limit = free_limit()
    acquired = helper_event(limit, EVENT_ACQUIRED, run=uuid.uuid4(), lease_id=uuid.uuid4())
    applied(acquired)
    version, changed_at = board_version(), Limit.objects.get(pk=limit.pk).changed_at

    assert show([acquired], timezone.now()) == {limit.name}  # shown: nothing left to do

    assert board_version() == version
    assert Limit.objects.get(pk=limit.pk).changed_at == changed_at
    assert Holder.objects.filter(limit=limit).count() == 1


def test_a_limit_changed_in_prefect_is_left_to_its_re_sync():
    """Only holds and waits are written here: a changed limit's new value comes from Prefect,
    and until then the board is behind on it (the listener counts it so)."""
    limit = free_limit()
    updated = helper_event(limit, "prefect.concurrency-limit.updated", run=uuid.uuid4())

    assert applied(updated) == set()
