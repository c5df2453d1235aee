"""Recording lock events: a Prefect release pairs with the acquire it ends (database only)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from reslock_web.models import LockEvent
from reslock_web.prefect_io.records import EventInfo
from reslock_web.status.diagnosis import ALIVE, Claim, Life
from reslock_web.sync.events import record_events
from reslock_web.sync.verdicts import life_reader

pytestmark = pytest.mark.django_db

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LIMIT = uuid.uuid4()


def lock_event(
    phase: str,
    minute: int,
    *,
    flow_run: uuid.UUID | None,
    task_run: uuid.UUID | None = None,
    slots: int = 1,
    follows: uuid.UUID | None = None,
) -> EventInfo:
    """A `prefect.concurrency-limit.<phase>` event shaped as Prefect's concurrency() sends it."""
    related = []
    if flow_run:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": "run",
            }
        )
    if task_run:
        related.append(
            {
                "prefect.resource.id": f"prefect.task-run.{task_run}",
                "prefect.resource.role": "task-run",
                "prefect.resource.name": "task",
            }
        )
    return EventInfo.parse(
        {
            "id": str(uuid.uuid4()),
            "event": f"prefect.concurrency-limit.{phase}",
            "occurred": (START + timedelta(minutes=minute)).isoformat(),
            "resource": {
                "prefect.resource.id": f"prefect.concurrency-limit.{LIMIT}",
                "prefect.resource.name": "resource:db",
                "slots-acquired": str(slots),
                "limit": "3",
            },
            "related": related,
            "payload": {},
            "follows": str(follows) if follows else None,
        }
    )


def closed(event: EventInfo) -> bool:
    return LockEvent.objects.get(event_id=event.id).closed_at is not None


def test_a_release_without_follows_ends_the_oldest_open_acquire_of_its_run_once():
    """A task that takes the lock again and again, each hold longer than five minutes: every
    release ends one acquire, and a release read again never ends a second one."""
    flow_run, task_run = uuid.uuid4(), uuid.uuid4()
    first = lock_event("acquired", 0, flow_run=flow_run, task_run=task_run)
    first_release = lock_event("released", 6, flow_run=flow_run, task_run=task_run)
    second = lock_event("acquired", 7, flow_run=flow_run, task_run=task_run)
    record_events([first])
    record_events([first_release, second])
    assert closed(first) and not closed(second)
    release_row = LockEvent.objects.get(event_id=first_release.id)
    assert release_row.follows == first.id and release_row.closed_reason == ""
    record_events([first, first_release, second])  # the next pass reads them again
    assert not closed(second)
    second_release = lock_event("released", 20, flow_run=flow_run, task_run=task_run)
    record_events([second_release])
    assert closed(second)


def test_a_release_pairs_only_within_its_limit_and_run_and_prefers_its_own_slots():
    flow_run, other_run = uuid.uuid4(), uuid.uuid4()
    two = lock_event("acquired", 0, flow_run=flow_run, slots=2)
    one = lock_event("acquired", 1, flow_run=flow_run, slots=1)
    stranger = lock_event("acquired", 0, flow_run=other_run)
    record_events([two, one, stranger])
    record_events([lock_event("released", 10, flow_run=flow_run, slots=1)])
    assert [closed(e) for e in (two, one, stranger)] == [False, True, False]
    # A release made before any open acquire of its run, or outside any run, pairs with none.
    record_events([lock_event("released", -5, flow_run=other_run)])
    record_events([lock_event("released", 10, flow_run=None)])
    assert not closed(stranger) and not closed(two)
    # Prefect's own follows still ends exactly the acquire it names.
    record_events([lock_event("released", 11, flow_run=flow_run, slots=2, follows=two.id)])
    assert closed(two)


def stopping_event(lease_id: uuid.UUID, occurred: datetime, received: datetime) -> EventInfo:
    return EventInfo.parse(
        {
            "id": str(uuid.uuid4()),
            "event": "reslock.lock.stopping",
            "occurred": occurred.isoformat(),
            "received": received.isoformat(),
            "resource": {"prefect.resource.id": f"prefect.concurrency-limit.{LIMIT}"},
            "payload": {"lease_id": str(lease_id)},
        }
    )


@pytest.mark.parametrize("skew", [timedelta(minutes=-10), timedelta(minutes=10)])
def test_a_helper_announcing_stopping_is_alive_by_prefects_clock_whatever_its_own(skew):
    """The helper announces `stopping` every 5 s while its block is inside after its lease was
    lost: heard lately (by when Prefect received it), it is alive, however wrong its clock."""
    now = datetime.now(UTC)
    heard, silent = uuid.uuid4(), uuid.uuid4()
    record_events(
        [
            stopping_event(heard, now + skew, now - timedelta(seconds=5)),
            stopping_event(silent, now + skew, now - timedelta(minutes=5)),
        ]
    )
    life = life_reader(now)
    assert life(Claim("a", "helper", False, lease_id=heard)).state == ALIVE
    assert life(Claim("b", "helper", False, lease_id=silent)) == Life()
    assert life(Claim("c", "helper", False, lease_id=uuid.uuid4())) == Life()
