"""The diagnosis rules on their own (pure logic: built from plain values, no Prefect needed)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from reslock_web.models import Condition, Kind, Status
from reslock_web.prefect_io.records import LimitInfo, RunInfo
from reslock_web.status.diagnosis import (
    ALIVE,
    GONE,
    Claim,
    Context,
    Life,
    Previous,
    Queued,
    classify_holders,
    judge,
    kind_of,
    order_waiters,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def info(active_slots: int, limit: int = 1, active: bool = True) -> LimitInfo:
    return LimitInfo(uuid.uuid4(), "resource:x", limit, active, active_slots, 0.0, None, None)


def run(state: str = "RUNNING", name: str = "r", **fields) -> RunInfo:
    return RunInfo(
        id=fields.pop("id", uuid.uuid4()),
        name=name,
        state_type=state,
        state_name=state.title(),
        state_at=fields.pop("state_at", NOW - timedelta(minutes=1)),
        start_time=None,
        created=None,
        expected_start_time=None,
        **fields,
    )


def context(*runs: RunInfo, grace: int = 20) -> Context:
    return Context(NOW, timedelta(seconds=grace), timedelta(hours=1), {}, {r.id: r for r in runs})


def claim(flow_run: RunInfo, minutes_ago: int) -> Claim:
    return Claim(
        key=str(uuid.uuid4()),
        source="event",
        certain=False,
        flow_run_id=flow_run.id,
        acquired_at=NOW - timedelta(minutes=minutes_ago),
    )


def test_names_give_the_kind_and_the_resource():
    deployment = uuid.uuid4()
    assert kind_of("tag:reports") == (Kind.TAG, "reports", None)
    assert kind_of(f"deployment:{deployment}") == (
        Kind.DEPLOYMENT,
        f"deployment:{deployment}",
        deployment,
    )
    assert kind_of("deployment:not-a-uuid") == (Kind.GLOBAL, "deployment:not-a-uuid", None)
    assert kind_of("resource:db") == (Kind.GLOBAL, "resource:db", None)


def lost_since(seconds: int, *claims: Claim) -> dict[str, Previous]:
    """What the last sync stored for claims the count stopped covering `seconds` ago."""
    return {
        c.key: Previous(
            Condition.LEAVING,
            NOW - timedelta(seconds=seconds),
            c.acquired_at,
            c.flow_run_id,
            None,
            c.source,
            process=c.process,
            lease_id=c.lease_id,
        )
        for c in claims
    }


def judged(claims: list[Claim], count: int, limit: int, lives: dict[str, Life], previous=None):
    """(condition by claim key, the limit's verdict), every run Running."""
    runs = [run(id=c.flow_run_id) for c in claims]
    ctx = context(*runs)
    ctx.life = lambda c: lives.get(c.key, Life())
    verdicts, closed = classify_holders(
        Kind.GLOBAL, info(count, limit), claims, previous or {}, ctx
    )
    verdict = judge(Kind.GLOBAL, info(count, limit), verdicts, [], closed, None, None, ctx)
    return {v.claim.key: v for v in verdicts}, verdict


GONE_LIFE = Life(GONE, "its process (pid 7 on this machine) has ended")
ALIVE_LIFE = Life(ALIVE, "its process (pid 8 on this machine) still runs")


def test_the_dead_newer_holder_is_the_zombie_and_the_live_older_one_holds():
    """Limit 2, count fallen to 1: the newer holder's process is gone, the older one's runs.
    Before, the newest claim filled the count and the live older one was called a zombie."""
    older, newer = claim(run(), 10), claim(run(), 2)
    lives = {older.key: ALIVE_LIFE, newer.key: GONE_LIFE}
    by_key, _ = judged([older, newer], 1, 2, lives)
    assert by_key[older.key].condition == Condition.HOLDING
    assert by_key[newer.key].condition == Condition.LEAVING  # within the grace: not yet judged
    by_key, verdict = judged([older, newer], 1, 2, lives, lost_since(30, newer))
    assert by_key[older.key].condition == Condition.HOLDING and not by_key[older.key].uncounted
    assert by_key[newer.key].condition == Condition.ZOMBIE
    assert "pid 7 on this machine) has ended" in by_key[newer.key].evidence
    assert verdict.status == Status.ZOMBIE and not verdict.flags["is_over_limit"]


@pytest.mark.parametrize("skew", [timedelta(hours=-3), timedelta(hours=3)])
def test_client_clocks_decide_nothing(skew):
    """The live holder's clock runs hours behind or ahead: its acquire time, older or newer
    than the dead holder's, changes no verdict."""
    live, dead = claim(run(), 5), claim(run(), 5)
    live.acquired_at += skew
    lives = {live.key: ALIVE_LIFE, dead.key: GONE_LIFE}
    by_key, verdict = judged([live, dead], 1, 2, lives, lost_since(30, live, dead))
    assert by_key[live.key].condition == Condition.HOLDING
    assert by_key[dead.key].condition == Condition.ZOMBIE
    assert verdict.status == Status.ZOMBIE


def test_when_nothing_shows_which_claim_lost_its_slot_none_is_a_zombie():
    first, second = claim(run(), 10), claim(run(), 2)
    by_key, verdict = judged([first, second], 1, 2, {}, lost_since(30, first))
    assert {v.condition for v in by_key.values()} == {Condition.UNCOUNTED}
    assert verdict.status == Status.UNCOUNTED
    assert not verdict.flags["has_zombie"] and not verdict.flags["has_drift"]
    assert [e["flag"] for e in verdict.evidence] == ["uncounted", "uncounted"]


def test_a_live_run_the_count_misses_is_over_the_limit_not_a_zombie():
    """The count was lowered (a PATCH, Prefect's Reset) under a live holder."""
    alive = claim(run(), 3)
    by_key, verdict = judged([alive], 0, 1, {alive.key: ALIVE_LIFE}, lost_since(30, alive))
    [holder] = by_key.values()
    assert holder.condition == Condition.HOLDING and holder.uncounted
    assert verdict.status == Status.OVER_LIMIT and verdict.flags["is_over_limit"]
    assert not verdict.flags["has_zombie"]
    assert "A live run is inside without a counted slot" in verdict.evidence[0]["text"]
    # Prefect counts none of its slot: that is no slot without a holder (drift).
    assert verdict.holder_slots == 0 and not verdict.flags["has_drift"]


def test_a_live_run_the_count_has_room_for_holds_beside_an_uncounted_one():
    alive, unknown = claim(run(), 10), claim(run(), 2)
    by_key, verdict = judged(
        [alive, unknown], 1, 2, {alive.key: ALIVE_LIFE}, lost_since(30, unknown)
    )
    assert by_key[alive.key].condition == Condition.HOLDING and not by_key[alive.key].uncounted
    assert by_key[unknown.key].condition == Condition.UNCOUNTED
    assert verdict.status == Status.UNCOUNTED


def test_a_later_admission_to_a_limit_of_one_shows_the_earlier_claim_lost_its_slot():
    """Prefect admitted the second claim while the first was open: the first was no longer
    counted. Prefect's receive times order them, not the clients' clocks (here the first
    client's clock runs an hour ahead)."""
    first, second = claim(run(), 5), claim(run(), 2)
    first.acquired_at += timedelta(hours=1)
    first.received, second.received = NOW - timedelta(minutes=5), NOW - timedelta(minutes=2)
    by_key, verdict = judged([first, second], 1, 1, {}, lost_since(30, first))
    assert by_key[second.key].condition == Condition.HOLDING
    assert by_key[first.key].condition == Condition.UNCOUNTED  # nothing shows it dead
    assert verdict.status == Status.UNCOUNTED
    lives = {first.key: ALIVE_LIFE}
    by_key, verdict = judged([first, second], 1, 1, lives, lost_since(30, first))
    assert by_key[first.key].uncounted and verdict.status == Status.OVER_LIMIT
    lives = {first.key: GONE_LIFE}
    by_key, verdict = judged([first, second], 1, 1, lives, lost_since(30, first))
    assert by_key[first.key].condition == Condition.ZOMBIE
    assert by_key[second.key].condition == Condition.HOLDING


def test_a_dead_holder_whose_slot_is_still_counted_is_not_the_one_that_lost_it():
    """Limit 1: the second claim got in, so the first (alive) lost its slot; the second's
    process has ended but its lease still counts. A live run is inside uncounted."""
    first, second = claim(run(), 5), claim(run(), 2)
    lives = {first.key: ALIVE_LIFE, second.key: GONE_LIFE}
    by_key, verdict = judged([first, second], 1, 1, lives, lost_since(30, first))
    assert by_key[second.key].condition == Condition.HOLDING
    assert by_key[first.key].condition == Condition.HOLDING and by_key[first.key].uncounted
    assert verdict.status == Status.OVER_LIMIT and not verdict.flags["has_zombie"]


def test_a_heartbeat_after_the_slot_was_lost_shows_the_run_alive_and_silence_shows_nothing():
    lost = claim(run(), 3)
    after = {lost.key: Life(beat=NOW - timedelta(seconds=10))}  # lost 30 s ago
    by_key, verdict = judged([lost], 0, 1, after, lost_since(30, lost))
    [holder] = by_key.values()
    assert holder.condition == Condition.HOLDING and holder.uncounted
    assert "heartbeat" in holder.evidence and verdict.status == Status.OVER_LIMIT
    before = {lost.key: Life(beat=NOW - timedelta(seconds=50))}
    by_key, verdict = judged([lost], 0, 1, before, lost_since(30, lost))
    assert [v.condition for v in by_key.values()] == [Condition.UNCOUNTED]
    assert verdict.status == Status.UNCOUNTED


def test_a_single_claim_the_count_lost_is_a_zombie_only_once_its_process_is_shown_ended():
    lost = claim(run(), 3)
    by_key, verdict = judged([lost], 0, 1, {}, lost_since(30, lost))
    [holder] = by_key.values()
    assert holder.condition == Condition.UNCOUNTED
    assert "cannot tell whether it still runs inside" in holder.evidence
    assert "another run can get in" in holder.evidence and "Prefect UI" in holder.evidence
    assert verdict.status == Status.UNCOUNTED and not verdict.flags["has_zombie"]
    by_key, verdict = judged([lost], 0, 1, {lost.key: GONE_LIFE}, lost_since(30, lost))
    assert [v.condition for v in by_key.values()] == [Condition.ZOMBIE]
    assert verdict.status == Status.ZOMBIE


def test_a_claim_whose_run_ended_fills_a_still_counted_slot_as_stale():
    done = run("COMPLETED", name="done")
    stale = claim(done, 5)
    stale.lease_seconds = 60
    verdicts, closed = classify_holders(Kind.GLOBAL, info(1), [stale], {}, context(done))
    [verdict] = verdicts
    assert verdict.condition == Condition.STALE
    assert "is Completed" in verdict.evidence and "60 s lease frees the slot" in verdict.evidence
    # Once the slot is no longer counted, the claim is over for good.
    verdicts, closed = classify_holders(Kind.GLOBAL, info(0), [stale], {}, context(done))
    assert verdicts == [] and closed == [stale.key]


def test_a_claim_whose_run_vanished_is_not_a_holder_once_its_slot_is_free():
    vanished = Claim(
        key="k", source="event", certain=False, flow_run_id=uuid.uuid4(), acquired_at=NOW
    )
    ctx = context()
    ctx.missing_since = {vanished.flow_run_id: NOW - timedelta(seconds=21)}  # past the grace
    verdicts, closed = classify_holders(Kind.GLOBAL, info(0), [vanished], {}, ctx)
    assert verdicts == [] and closed == ["k"]


def test_a_run_prefect_has_not_recorded_yet_holds_and_is_never_closed_nor_called_stale():
    """Prefect records task runs some seconds after they start: a claim naming a task run it
    does not return yet is a holder, whatever the time, and never a stale or zombie one."""
    unseen = Claim(
        key="k",
        source="event",
        certain=False,
        flow_run_id=uuid.uuid4(),
        task_run_id=uuid.uuid4(),
        acquired_at=NOW - timedelta(hours=1),
    )
    ctx = context()
    [verdict], closed = classify_holders(Kind.GLOBAL, info(1), [unseen], {}, ctx)
    assert verdict.condition == Condition.HOLDING and closed == []
    assert "task run is not yet in Prefect" in verdict.evidence
    assert judge(Kind.GLOBAL, info(1), [verdict], [], [], None, None, ctx).status == Status.HELD
    # Its slot no longer counted, long ago: nothing says the run is alive (no zombie), nothing
    # says it is over (not closed): it is left out of the board until Prefect shows its run.
    lost = {
        "k": Previous(
            Condition.LEAVING,
            NOW - timedelta(minutes=30),
            unseen.acquired_at,
            unseen.flow_run_id,
            unseen.task_run_id,
            "event",
        )
    }
    [verdict], closed = classify_holders(Kind.GLOBAL, info(0), [unseen], lost, ctx)
    assert verdict.condition == Condition.LEAVING and closed == []
    [verdict], closed = classify_holders(Kind.GLOBAL, info(0), [], lost, ctx)
    assert verdict.condition == Condition.LEAVING and closed == []
    # A tag lease on such a task run holds as well.
    lease = Claim(key="t", source="tag_lease", certain=True, task_run_id=uuid.uuid4())
    [verdict], _ = classify_holders(Kind.TAG, info(1), [lease], {}, ctx)
    assert verdict.condition == Condition.HOLDING


def test_a_run_that_went_missing_holds_for_the_grace_then_counts_as_over():
    task_id = uuid.uuid4()
    lease = Claim(key=str(task_id), source="tag_lease", certain=True, task_run_id=task_id)
    acquire = Claim(key="e", source="event", certain=False, task_run_id=task_id, acquired_at=NOW)
    for kind, claim in ((Kind.TAG, lease), (Kind.GLOBAL, acquire)):
        ctx = context(grace=20)
        ctx.missing_since = {task_id: NOW - timedelta(seconds=19)}
        [verdict], _ = classify_holders(kind, info(1), [claim], {}, ctx)
        assert verdict.condition == Condition.HOLDING, kind
        assert "missing from Prefect since 2026-11-29 11:59:41 UTC" in verdict.evidence
        ctx.missing_since = {task_id: NOW - timedelta(seconds=21)}
        [verdict], _ = classify_holders(kind, info(1), [claim], {}, ctx)
        assert verdict.condition == Condition.STALE, kind
        assert "missing from Prefect since" in verdict.evidence


def test_claims_are_matched_to_the_count_by_the_slots_they_take():
    """`concurrency(name, occupy=2)` takes two slots with one acquire."""
    big_run, small_run = run(name="big"), run(name="small")
    big, small = claim(big_run, 1), claim(small_run, 2)
    big.slots = 2
    ctx = context(big_run, small_run)
    verdicts, closed = classify_holders(Kind.GLOBAL, info(3, limit=3), [big, small], {}, ctx)
    assert [v.condition for v in verdicts] == [Condition.HOLDING, Condition.HOLDING]
    verdict = judge(
        Kind.GLOBAL, info(3, limit=3), verdicts, [], [], NOW - timedelta(hours=1), None, ctx
    )
    assert verdict.status == Status.HELD and not verdict.flags["has_drift"]
    assert verdict.holder_slots == 3
    # Two slots counted: the newer claim takes both, the older one lost its slot.
    verdicts, _ = classify_holders(Kind.GLOBAL, info(2, limit=3), [big, small], {}, ctx)
    conditions = {v.claim.key: v.condition for v in verdicts}
    assert conditions == {big.key: Condition.HOLDING, small.key: Condition.LEAVING}
    # Three slots counted and only the two-slot holder known: one slot has no holder.
    verdicts, _ = classify_holders(Kind.GLOBAL, info(3, limit=3), [big], {}, ctx)
    verdict = judge(
        Kind.GLOBAL, info(3, limit=3), verdicts, [], [], NOW - timedelta(hours=1), None, ctx
    )
    assert verdict.flags["has_drift"] and verdict.holder_slots == 2
    assert "1 slot(s) have no holder" in verdict.evidence[0]["text"]


def test_a_run_waiting_to_retry_holds_only_a_slot_the_count_has_room_for():
    """A deployment run in AwaitingRetry names its lease; it keeps its slot only while it
    retries in its process, so it never pushes a running holder out, and is no zombie."""
    running, retrying = run(name="running"), run("SCHEDULED", name="retrying")
    holder = Claim(
        key="r",
        source="deployment",
        certain=False,
        flow_run_id=running.id,
        acquired_at=NOW - timedelta(minutes=5),
    )
    waiting = Claim(
        key="w",
        source="deployment",
        certain=False,
        flow_run_id=retrying.id,
        acquired_at=NOW,
        tentative=True,
    )
    ctx = context(running, retrying)
    verdicts, closed = classify_holders(Kind.DEPLOYMENT, info(1), [holder, waiting], {}, ctx)
    assert [(v.claim.key, v.condition) for v in verdicts] == [("r", Condition.HOLDING)]
    assert closed == ["w"]
    verdicts, closed = classify_holders(Kind.DEPLOYMENT, info(2, 2), [holder, waiting], {}, ctx)
    assert {v.claim.key: v.condition for v in verdicts} == {
        "r": Condition.HOLDING,
        "w": Condition.HOLDING,
    }


def test_more_live_holders_than_the_limit_is_the_worst_status():
    """A limit lowered under its holders, or a counter lowered under a live lease, lets more
    runs in than the limit allows: shown first, naming the runs."""
    first, second = run(name="first"), run(name="second")
    tasks = {first.id: first, second.id: second}
    ctx = Context(NOW, timedelta(seconds=20), timedelta(hours=1), tasks, {})
    leases = [
        Claim(key=str(r.id), source="tag_lease", certain=True, task_run_id=r.id)
        for r in (first, second)
    ]
    waiter = Queued("w", "tag_lease", None, uuid.uuid4(), NOW, parent_ids=(first.id,))
    holders, _ = classify_holders(Kind.TAG, info(2, limit=1), leases, {}, ctx)
    waiters = order_waiters([waiter], holders, {}, ctx)  # deadlocked, yet over the limit first
    verdict = judge(Kind.TAG, info(2, limit=1), holders, waiters, [], None, 2, ctx)
    assert verdict.status == Status.OVER_LIMIT and verdict.flags["is_over_limit"]
    assert verdict.evidence[0]["flag"] == "over_limit"
    assert "'first'" in verdict.evidence[0]["text"] and "'second'" in verdict.evidence[0]["text"]
    # A global limit lowered to 1 under two running holders (two slots still counted).
    runs = context(first, second)
    claims = [claim(first, 2), claim(second, 1)]
    holders, _ = classify_holders(Kind.GLOBAL, info(2, limit=1), claims, {}, runs)
    verdict = judge(Kind.GLOBAL, info(2, limit=1), holders, [], [], None, None, runs)
    assert verdict.status == Status.OVER_LIMIT
    # Not when the limit has room, nor for runs Prefect does not show yet, nor when inactive.
    assert judge(Kind.GLOBAL, info(2, limit=2), holders, [], [], None, None, runs).status == (
        Status.HELD
    )
    unseen = [
        Claim(key=str(i), source="event", certain=False, task_run_id=uuid.uuid4(), acquired_at=NOW)
        for i in range(2)
    ]
    holders, _ = classify_holders(Kind.GLOBAL, info(2, limit=1), unseen, {}, context())
    assert judge(Kind.GLOBAL, info(2, limit=1), holders, [], [], None, None, context()).status == (
        Status.HELD
    )
    inactive = info(2, limit=1, active=False)
    holders, _ = classify_holders(Kind.GLOBAL, inactive, claims, {}, runs)
    assert judge(Kind.GLOBAL, inactive, holders, [], [], None, None, runs).status == (
        Status.INACTIVE
    )


def test_an_inactive_limit_never_makes_zombies():
    live = run()
    verdicts, _ = classify_holders(
        Kind.GLOBAL, info(0, active=False), [claim(live, 1)], {}, context(live)
    )
    assert [v.condition for v in verdicts] == [Condition.HOLDING]


def test_a_tag_holder_whose_lease_outlived_its_run_will_not_free_itself():
    task = run("COMPLETED", state_at=NOW - timedelta(minutes=10))
    ctx = Context(NOW, timedelta(seconds=20), timedelta(hours=1), {task.id: task}, {})
    holder = Claim(key=str(task.id), source="tag_lease", certain=True, task_run_id=task.id)
    [verdict], _ = classify_holders(Kind.TAG, info(1), [holder], {}, ctx)
    assert verdict.condition == Condition.STALE
    assert "will not free itself" in verdict.evidence


def test_drift_is_flagged_only_after_the_grace_period():
    ctx = context(grace=20)
    verdict = judge(Kind.GLOBAL, info(1), [], [], [], None, None, ctx)
    assert verdict.drift_since == NOW and not verdict.flags["has_drift"]
    assert verdict.status == Status.HELD  # a used slot is held by someone, named or not
    verdict = judge(Kind.GLOBAL, info(1), [], [], [], NOW - timedelta(seconds=21), None, ctx)
    assert verdict.flags["has_drift"] and verdict.status == Status.DRIFT
    assert "1 slot(s) have no holder" in verdict.evidence[0]["text"]
    # The count matches again: the drift is over.
    assert judge(Kind.GLOBAL, info(0), [], [], [], NOW, None, ctx).drift_since is None


def test_a_long_hold_is_a_warning_not_a_status():
    holder_run = run()
    ancient = claim(holder_run, 120)
    verdicts, _ = classify_holders(Kind.GLOBAL, info(1), [ancient], {}, context(holder_run))
    verdict = judge(Kind.GLOBAL, info(1), verdicts, [], [], None, None, context(holder_run))
    assert verdict.flags["has_long_hold"] and verdict.status == Status.HELD
    assert verdict.evidence[0]["flag"] == "long_hold"


def test_a_waiter_nested_in_the_holder_is_deadlocked_and_others_queue_in_order():
    outer = run(name="outer")
    tasks = {outer.id: outer}
    ctx = Context(NOW, timedelta(seconds=20), timedelta(hours=1), tasks, {})
    holder = Claim(key=str(outer.id), source="tag_lease", certain=True, task_run_id=outer.id)
    [holding], _ = classify_holders(Kind.TAG, info(1), [holder], {}, ctx)
    middle, inner, stranger = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    queued = [
        Queued(str(stranger), "tag_lease", None, stranger, NOW - timedelta(minutes=5)),
        Queued(
            str(inner), "tag_lease", None, inner, NOW - timedelta(minutes=1), parent_ids=(middle,)
        ),
    ]
    waiters = order_waiters(queued, [holding], {middle: (outer.id,)}, ctx)
    assert [w.queued.key for w in waiters] == [str(stranger), str(inner)]
    assert [w.position for w in waiters] == [1, 2]
    assert waiters[0].deadlocked_by is None
    assert waiters[1].deadlocked_by == str(outer.id) and "'outer'" in waiters[1].evidence
    verdict = judge(Kind.TAG, info(1), [holding], waiters, [], None, 1, ctx)
    assert verdict.status == Status.DEADLOCKED


def test_a_holder_listed_as_waiting_is_not_queued_behind_itself():
    task = run("PENDING")
    ctx = Context(NOW, timedelta(seconds=20), timedelta(hours=1), {task.id: task}, {})
    holder = Claim(key=str(task.id), source="tag_lease", certain=True, task_run_id=task.id)
    [holding], _ = classify_holders(Kind.TAG, info(1), [holder], {}, ctx)
    queued = [Queued(str(task.id), "tag_lease", None, task.id, NOW)]
    assert order_waiters(queued, [holding], {}, ctx) == []


def test_ancestor_cycles_do_not_hang():
    a, b = uuid.uuid4(), uuid.uuid4()
    queued = [Queued("w", "tag_lease", None, uuid.uuid4(), NOW, parent_ids=(a,))]
    assert order_waiters(queued, [], {a: (b,), b: (a,)}, context())[0].deadlocked_by is None


def test_a_released_holder_whose_run_goes_on_is_gone_not_a_zombie():
    """A flow that takes the lock again and again: its earlier, released holds are over, even
    though the run is still Running and the slot count no longer backs them."""
    flow_run = run(name="loops")
    earlier = Previous(
        condition=Condition.HOLDING,
        slot_lost_at=NOW - timedelta(minutes=5),
        acquired_at=NOW - timedelta(minutes=6),
        flow_run_id=flow_run.id,
        task_run_id=None,
        source="helper",
        names={},
    )
    key = str(uuid.uuid4())
    ctx = context(flow_run)
    verdicts, closed = classify_holders(Kind.GLOBAL, info(0), [], {key: earlier}, ctx)
    # No release seen: lost, and nothing shows whether it still runs.
    assert [v.condition for v in verdicts] == [Condition.UNCOUNTED]
    released = Context(ctx.now, ctx.grace, ctx.long_hold, {}, ctx.flow_runs, frozenset({key}))
    verdicts, closed = classify_holders(Kind.GLOBAL, info(0), [], {key: earlier}, released)
    assert verdicts == [] and closed == [key]
