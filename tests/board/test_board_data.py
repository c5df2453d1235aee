"""The board rows the tests build derive what the sync would: `settle` over holder and waiter
rows agrees with the sync's own verdict (`diagnosis.judge`, written by `apply_verdict`) on the
same people, and `make_limit` gives the status the flags call for."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from reslock_web.models import COUNTED, LIMIT_FLAGS, Condition, Limit, Source, Status
from reslock_web.prefect_io.records import LimitInfo, RunInfo
from reslock_web.status.diagnosis import (
    Claim,
    Context,
    HolderVerdict,
    Queued,
    WaiterVerdict,
    judge,
    status_of,
)
from reslock_web.sync.snapshot import Snapshot
from reslock_web.sync.verdicts import apply_verdict
from tests.support.board_data import make_holder, make_limit, make_waiter, settle

pytestmark = pytest.mark.django_db

DERIVED = (*LIMIT_FLAGS, "status", "holder_count", "holder_slots", "waiter_count", "held_since")

# Each scenario: the holders (Holder fields, `slot_lost` for a live run outside the count),
# the waiters (`nested`: inside the first holder), the limit, and Prefect's count of used
# slots (`count`) when the holders do not explain it; else `settle` must find it.
SCENARIOS = {
    "a stale holder and a waiter": {"holders": [{"condition": Condition.STALE}], "waiters": 1},
    "a live holder and two waiters": {"holders": [{"state_type": "RUNNING"}], "waiters": 2},
    "a zombie, its slot free, and a waiter": {
        "holders": [{"condition": Condition.ZOMBIE}],
        "waiters": 1,
    },
    "a run that may be inside uncounted": {"holders": [{"condition": Condition.UNCOUNTED}]},
    "a stale holder and a zombie": {
        "holders": [{"condition": Condition.STALE}, {"condition": Condition.ZOMBIE}]
    },
    "a leaving claim beside a live one": {
        "holders": [{"condition": Condition.LEAVING}, {"minutes": 5}]
    },
    "one claim of two slots": {"holders": [{"slots": 2}], "limit": 3},
    "a pool partly taken by runs not made": {"holders": [{}], "limit": 4, "count": 3},
    "a count no holder takes": {"count": 2},
    "an inactive limit with a holder": {"holders": [{}], "active": False},
    "an inactive limit that still counts a slot": {"holders": [{}], "active": False, "count": 1},
    "a waiter nested in the holder": {"holders": [{}], "waiters": 1, "nested": True},
    "two live runs inside a limit of one": {
        "holders": [{"state_type": "RUNNING"}, {"state_type": "RUNNING", "minutes": 3}]
    },
    "a live run outside the count": {"holders": [{"state_type": "RUNNING", "slot_lost": True}]},
    "a tag lease beside a stale one": {
        "holders": [{"source": Source.TAG_LEASE}, {"condition": Condition.STALE, "minutes": 9}],
        "limit": 2,
    },
    "nothing at all": {},
}


def the_sync(scenario: dict, now) -> Limit:
    """What the sync writes for the scenario: its verdict on the same people, applied."""
    holders = scenario.get("holders", [])
    active = scenario.get("active", True)
    # Prefect counts the slots of the claims it still counts (holding and stale ones, not a
    # live run outside the count), and none while the limit is inactive.
    counted = [
        h
        for h in holders
        if h.get("condition", Condition.HOLDING) in COUNTED and "slot_lost" not in h
    ]
    count = scenario.get("count", sum(h.get("slots", 1) for h in counted) if active else 0)
    info = LimitInfo(
        uuid.uuid4(),
        "resource:x",
        scenario.get("limit", 1),
        active,
        count,
        0.0,
        None,
        None,
    )
    verdicts = []
    for index, fields in enumerate(holders):
        source = fields.get("source", Source.EVENT)
        run = None
        if "state_type" in fields:
            run = RunInfo(uuid.uuid4(), "r", fields["state_type"], "", None, None, None, None)
        claim = Claim(
            key=f"h{index}",
            source=source,
            certain=source == Source.TAG_LEASE,
            flow_run_id=uuid.uuid4(),
            acquired_at=now - timedelta(minutes=fields.get("minutes", 1)),
            slots=fields.get("slots", 1),
        )
        verdicts.append(
            HolderVerdict(
                claim,
                fields.get("condition", Condition.HOLDING),
                slot_lost_at=now if "slot_lost" in fields else None,
                run=run,
                uncounted="slot_lost" in fields,
            )
        )
    waiters = [
        WaiterVerdict(
            Queued(f"w{position}", Source.EVENT, uuid.uuid4(), None, now),
            position,
            deadlocked_by="h0" if scenario.get("nested") else None,
        )
        for position in range(1, scenario.get("waiters", 0) + 1)
    ]
    # Long enough a grace and long-hold threshold that neither drift nor a long hold (marks,
    # which `settle` takes from the test) come into it.
    ctx = Context(now, timedelta(hours=1), timedelta(days=1), {}, {})
    verdict = judge("global", info, verdicts, waiters, [], None, None, ctx)
    snapshot = Snapshot(now, None, [info], {}, set(), [], now, {}, {})
    row = Limit(prefect_id=info.id)
    apply_verdict(row, info, verdict, snapshot, now)
    return row


def settled(scenario: dict, now) -> Limit:
    """The same people as rows, made by the factories and settled."""
    fields = {"limit": scenario.get("limit", 1), "active": scenario.get("active", True)}
    if "count" in scenario:
        fields["active_slots"] = scenario["count"]
    limit = make_limit("resource:x", **fields)
    holders = []
    for fields in scenario.get("holders", []):
        holders.append(
            make_holder(
                limit,
                condition=fields.get("condition", Condition.HOLDING),
                source=fields.get("source", Source.EVENT),
                state_type=fields.get("state_type", ""),
                slots=fields.get("slots", 1),
                slot_lost_at=now if "slot_lost" in fields else None,
                acquired_at=now - timedelta(minutes=fields.get("minutes", 1)),
            )
        )
    for _ in range(scenario.get("waiters", 0)):
        make_waiter(limit, deadlocked_by=holders[0] if scenario.get("nested") else None)
    return settle(limit)


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_settle_derives_what_the_sync_writes(scenario):
    now = timezone.now()
    expected, got = the_sync(scenario, now), settled(scenario, now)
    got.refresh_from_db()
    assert {field: getattr(got, field) for field in (*DERIVED, "active_slots")} == {
        field: getattr(expected, field) for field in (*DERIVED, "active_slots")
    }


def test_a_stale_holder_with_a_waiter_is_stale_not_contended():
    limit = make_limit("resource:y")
    make_holder(limit, condition=Condition.STALE, source=Source.EVENT)
    make_waiter(limit)
    settle(limit)
    assert limit.status == Status.STALE and limit.is_held and limit.has_waiters
    assert (limit.holder_count, limit.waiter_count, limit.active_slots) == (1, 1, 1)


def test_marks_and_a_cycle_weigh_in_as_status_of_weighs_them():
    limit = make_limit("resource:z")
    make_holder(limit)
    settle(limit, marks={"has_drift"})
    flags = {flag: getattr(limit, flag) for flag in LIMIT_FLAGS}
    assert flags["has_drift"] and limit.status == status_of(flags, True) == Status.DRIFT
    limit.deadlock_cycle = "run 'a' waits for z, held by run 'b'"
    settle(limit)
    assert limit.is_deadlocked and not limit.has_drift and limit.status == Status.DEADLOCKED
    assert any(item.get("cycle") for item in limit.evidence)
    with pytest.raises(ValueError, match="is_stale"):
        settle(limit, marks={"is_stale"})  # follows from the holders: never stated


def test_make_limit_gives_the_status_its_flags_call_for():
    assert make_limit("a", has_zombie=True, is_stale=True).status == Status.ZOMBIE
    assert make_limit("b", is_held=True, has_waiters=True).status == Status.CONTENDED
    assert make_limit("c", active=False).status == Status.INACTIVE
    assert make_limit("d", gone_at=timezone.now(), is_held=True).status == Status.GONE
    assert make_limit("e").status == Status.FREE
    with pytest.raises(TypeError, match="not both"):
        make_limit("f", status=Status.HELD, is_held=True)
    with pytest.raises(TypeError, match="settle"):
        make_limit("g", holder_count=1)
