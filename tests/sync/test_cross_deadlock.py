"""Cross-lock deadlocks on the board: two runs that each hold what the other waits for.

First on rows written into the tables (the marking and its end, a self-deadlock kept), then
with real flows taking real locks through reslock's helper on a real Prefect server, synced,
and the cycle shown on the board and the resource page in a real browser.
"""

from __future__ import annotations

import re
import uuid

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from reslock_web.models import Condition, Holder, Limit, Status, Waiter
from reslock_web.sync.deadlocks import mark_cycles
from tests.support.board_data import make_holder, make_limit, make_waiter, settle
from tests.support.operating import sync_until, unique

pytestmark = pytest.mark.django_db(transaction=True)


def crossed_rows() -> tuple[Limit, Limit, Waiter]:
    """Run "a" holds x and waits for y; run "b" holds y and waits for x."""
    a, b = uuid.uuid4(), uuid.uuid4()
    rows = []
    for name, holder, waiter in (("x", (a, "a"), (b, "b")), ("y", (b, "b"), (a, "a"))):
        limit = make_limit(name)
        make_holder(
            limit,
            key=f"h-{name}",
            source="helper",
            flow_run_id=holder[0],
            flow_run_name=holder[1],
            state_type="RUNNING",
        )
        waiting = make_waiter(
            limit, key=f"w-{name}", source="helper", flow_run_id=waiter[0], flow_run_name=waiter[1]
        )
        rows.append((settle(limit), waiting))
    return rows[0][0], rows[1][0], rows[1][1]


def test_a_cycle_marks_both_resources_deadlocked_and_its_end_gives_their_status_back():
    x, y, a_waits_for_y = crossed_rows()
    assert mark_cycles(timezone.now()) == 2
    for limit in (x, y):
        limit.refresh_from_db()
        assert limit.status == Status.DEADLOCKED and limit.is_deadlocked
        assert limit.deadlock_cycle == (
            "run 'a' waits for y, held by run 'b'; run 'b' waits for x, held by run 'a'"
        ) or limit.deadlock_cycle == (
            "run 'b' waits for x, held by run 'a'; run 'a' waits for y, held by run 'b'"
        )
        assert any("Deadlocked across resources" in e["text"] for e in limit.evidence)
    assert mark_cycles(timezone.now()) == 0  # nothing new: nothing written, no redraw
    # "a" gave up waiting (a timeout): the circle is broken, and the write that says so
    # leaves y without waiters.
    a_waits_for_y.delete()
    settle(y)
    assert mark_cycles(timezone.now()) == 2
    for limit in (x, y):
        limit.refresh_from_db()
        assert limit.deadlock_cycle == "" and not limit.is_deadlocked
        assert not any(e.get("cycle") for e in limit.evidence)
    assert x.status == Status.CONTENDED and y.status == Status.HELD


def test_a_limit_with_a_free_slot_or_a_self_deadlock_is_judged_on_its_own():
    x, y, _ = crossed_rows()
    Limit.objects.filter(pk=y.pk).update(limit=2)  # "a" is about to get into y
    assert mark_cycles(timezone.now()) == 0
    Limit.objects.filter(pk=y.pk).update(limit=1)
    mark_cycles(timezone.now())
    # y's own waiter is also nested in its holder: ending the circle leaves it deadlocked.
    nested = Waiter.objects.get(limit=y)
    Waiter.objects.filter(pk=nested.pk).update(deadlocked_by=Holder.objects.get(limit=y))
    Limit.objects.filter(pk=y.pk).update(limit=2)
    mark_cycles(timezone.now())
    y.refresh_from_db()
    assert y.is_deadlocked and y.deadlock_cycle == "" and y.status == Status.DEADLOCKED


@pytest.mark.browser
def test_two_real_runs_crossing_their_locks_show_the_cycle_until_one_gives_up(
    prefect_server, flows, tmp_path, board, live_server, artifacts
):
    first, second = unique("db-cross-1"), unique("db-cross-2")
    go = tmp_path / "go"
    # One run gives up waiting after a while (its lock's timeout); the other would wait on.
    a = flows.start("helper_crossed", first=first, second=second, go_file=str(go), timeout=90)
    b = flows.start("helper_crossed", first=second, second=first, go_file=str(go), timeout=600)
    a_run = a.wait_event("acquired")["flow_run_id"]
    b_run = b.wait_event("acquired")["flow_run_id"]
    go.touch()
    a.wait_event("want")
    b.wait_event("want")
    for name in (first, second):
        sync_until(prefect_server, name, lambda limit: bool(limit.deadlock_cycle), timeout=60)
    x = Limit.objects.named(first)
    assert x.status == Status.DEADLOCKED
    holder_runs = {
        str(h.flow_run_id) for h in Holder.objects.filter(limit__name__in=[first, second])
    }
    assert holder_runs == {a_run, b_run}
    assert first in x.deadlock_cycle and second in x.deadlock_cycle
    assert x.deadlock_cycle == Limit.objects.named(second).deadlock_cycle

    board.goto(f"{live_server.url}/?q=db-cross")
    rows = board.locator("#rows tr")
    expect(rows).to_have_count(2, timeout=15_000)
    expect(board.locator("#rows .badge-deadlocked")).to_have_count(2)
    expect(board.locator("p.banner.attention")).to_contain_text("2 deadlocked")
    board.get_by_role("link", name=first, exact=True).click()
    diagnosis = board.locator("section.diagnosis")
    expect(diagnosis).to_contain_text("Deadlocked across resources")
    expect(diagnosis).to_contain_text(f"waits for {second}")
    expect(diagnosis).to_contain_text("Stop one run of the circle in Prefect")
    # The circle drawn: both runs, each linked to its page, the resources on the arrows.
    drawn = diagnosis.get_by_role("img", name=re.compile(r"^Deadlock: "))
    expect(drawn).to_be_visible()
    expect(drawn).to_contain_text(first)
    expect(drawn).to_contain_text(second)
    expect(drawn.locator(f'a[href="/runs/{a_run}"]')).to_have_count(1)
    board.screenshot(path=artifacts / "cross-deadlock.png", full_page=True)
    drawn.locator(f'a[href="/runs/{b_run}"]').click()
    expect(board).to_have_url(re.compile(f"/runs/{b_run}$"))
    on_run_page = board.locator("section.diagnosis").filter(has_text="Deadlocked across resources")
    expect(on_run_page.get_by_role("img", name=re.compile(r"^Deadlock: "))).to_be_visible()

    # "a" gives up: it leaves both its wait and its hold, "b" gets in and finishes.
    assert a.wait(timeout=150) == 0 and a.find_events("timed_out")
    assert b.wait(timeout=90) == 0
    for name in (first, second):
        sync_until(prefect_server, name, lambda limit: not limit.deadlock_cycle, timeout=60)
    assert not Limit.objects.named(first).is_deadlocked
    assert Holder.objects.filter(limit__name=first, condition=Condition.HOLDING).count() == 0


def test_a_deployment_run_that_calls_its_own_full_deployment_shows_the_cycle_until_it_stops(
    prefect_server, flows
):
    """The run holds its deployment's only slot and waits, in `run_deployment`, for a run of
    that same deployment, which waits for the slot: Prefect shows one run Running and one
    AwaitingConcurrencySlot, and neither says why."""
    runner = flows.start(
        "deployment_limit", runs=1, call_itself=60, flow_run_name=unique("dep-self")
    )
    name = f"deployment:{runner.wait_event('deployed')['deployment_id']}"
    caller = runner.wait_event("acquired")
    runner.wait_event("calling_itself")
    limit = sync_until(prefect_server, name, lambda limit: bool(limit.deadlock_cycle), timeout=60)
    child = limit.waiters.get()
    assert str(child.parent_flow_run_id) == caller["flow_run_id"]
    assert limit.status == Status.DEADLOCKED
    # The words start from the smaller run id: either of the two steps may come first.
    assert set(limit.deadlock_cycle.split("; ")) == {
        f"run {caller['flow_run_name']!r} started run {child.flow_run_name!r} and waits for it "
        "to end (as a subflow does, and run_deployment unless given timeout=0)",
        f"run {child.flow_run_name!r} waits for {name}, held by run {caller['flow_run_name']!r}",
    }
    # Given up (run_deployment's timeout), the caller ends and its child gets the slot: the
    # cycle is gone from the board.
    runner.release()
    assert (
        runner.wait_event("called_itself", timeout=90)["child_state"] == "AwaitingConcurrencySlot"
    )
    sync_until(
        prefect_server,
        name,
        lambda limit: not limit.deadlock_cycle and limit.status != Status.DEADLOCKED,
        timeout=90,
    )
