"""The wait-for graph across limits: which runs wait for each other in a circle."""

from __future__ import annotations

import uuid

from reslock_web.status.wait_for import Lock, Started, find_cycles, in_words

A, B, C, D = (uuid.UUID(int=n) for n in (1, 2, 3, 4))
NAMES = {A: "a", B: "b", C: "c", D: "d"}


def lock(run: uuid.UUID, limit: str) -> Lock:
    return Lock(run, NAMES[run], limit)


def test_two_runs_each_holding_what_the_other_waits_for_are_a_cycle_in_words():
    holds = [lock(A, "x"), lock(B, "y")]
    waits = [lock(A, "y"), lock(B, "x")]
    [cycle] = find_cycles(holds, waits, full={"x", "y"})
    assert in_words(cycle) == (
        "run 'a' waits for y, held by run 'b'; run 'b' waits for x, held by run 'a'"
    )
    assert {step.limit for step in cycle} == {"x", "y"}


def test_a_chain_that_ends_is_no_cycle_and_a_free_slot_breaks_one():
    holds = [lock(A, "x"), lock(B, "y"), lock(C, "z")]
    # a waits for b, b for c, and c waits for nothing: c finishes, then b, then a.
    assert find_cycles(holds, [lock(A, "y"), lock(B, "z")], full={"x", "y", "z"}) == []
    # A circle through a limit that still has a free slot: its waiter gets in.
    waits = [lock(A, "y"), lock(B, "x")]
    assert find_cycles(holds, waits, full={"y"}) == []


def test_a_run_waiting_in_its_own_limit_is_left_to_the_self_deadlock_rule():
    assert find_cycles([lock(A, "x")], [lock(A, "x")], full={"x"}) == []


def test_three_runs_in_a_circle_with_a_bystander_waiting_on_it():
    holds = [lock(A, "x"), lock(B, "y"), lock(C, "z")]
    waits = [lock(A, "y"), lock(B, "z"), lock(C, "x"), lock(D, "x")]
    [cycle] = find_cycles(holds, waits, full={"x", "y", "z"})
    assert [step.waiter.run for step in cycle] == [A, B, C]
    assert [step.holder.run for step in cycle] == [B, C, A]
    # d waits on the circle but is not part of it: it is blocked, not deadlocked itself.
    assert D not in {step.waiter.run for step in cycle}


def test_the_words_are_the_same_whatever_order_the_rows_come_in():
    holds = [lock(A, "x"), lock(B, "y"), lock(C, "z")]
    waits = [lock(A, "y"), lock(B, "z"), lock(C, "x")]
    first = in_words(find_cycles(holds, waits, full={"x", "y", "z"})[0])
    again = in_words(find_cycles(holds[::-1], waits[::-1], full={"x", "y", "z"})[0])
    assert first == again


def test_two_separate_circles_are_two_cycles():
    holds = [lock(A, "x"), lock(B, "y"), lock(C, "p"), lock(D, "q")]
    waits = [lock(A, "y"), lock(B, "x"), lock(C, "q"), lock(D, "p")]
    cycles = find_cycles(holds, waits, full={"x", "y", "p", "q"})
    assert [{s.limit for s in cycle} for cycle in cycles] == [{"x", "y"}, {"p", "q"}]


def test_a_long_chain_of_waits_does_not_exhaust_the_stack():
    runs = [uuid.UUID(int=n) for n in range(1, 5001)]
    holds = [Lock(run, str(run), f"r{i}") for i, run in enumerate(runs)]
    waits = [Lock(run, str(run), f"r{i + 1}") for i, run in enumerate(runs[:-1])]
    assert find_cycles(holds, waits, full={f"r{i}" for i in range(5000)}) == []
    waits.append(Lock(runs[-1], str(runs[-1]), "r0"))  # closes the circle
    [cycle] = find_cycles(holds, waits, full={f"r{i}" for i in range(5000)})
    assert len(cycle) == 5000


def test_a_deployment_run_that_started_a_run_of_its_own_full_deployment_waits_for_itself():
    # a holds its deployment's only slot and started b, which waits for that slot.
    holds = [lock(A, "deployment:d")]
    waits = [lock(B, "deployment:d")]
    started = [Started(A, "a", lock(B, "deployment:d"))]
    assert find_cycles(holds, waits, full={"deployment:d"}) == []
    [cycle] = find_cycles(holds, waits, full={"deployment:d"}, started=started)
    assert in_words(cycle) == (
        "run 'a' started run 'b' and waits for it to end (as a subflow does, and run_deployment "
        "unless given timeout=0); run 'b' waits for deployment:d, held by run 'a'"
    )
    # A slot free for b: b gets in, ends, and a goes on.
    assert find_cycles(holds, waits, full=set(), started=started) == []


def test_a_started_run_closes_a_cycle_across_limits_only_through_its_own_waits():
    # a holds x and started b; b waits for y, held by c, which waits for x: a circle of three.
    holds = [lock(A, "x"), lock(C, "y")]
    waits = [lock(B, "y"), lock(C, "x")]
    started = [Started(A, "a", lock(B, "y"))]
    [cycle] = find_cycles(holds, waits, full={"x", "y"}, started=started)
    assert [(s.waiter.run, s.limit, s.holder.run) for s in cycle] == [
        (A, "", B),
        (B, "y", C),
        (C, "x", A),
    ]
    # Without c's wait for x, b's wait ends when c finishes: no cycle.
    assert find_cycles(holds, waits[:1], full={"x", "y"}, started=started) == []
