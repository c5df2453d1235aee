"""A cross-lock deadlock drawn: the geometry, and the drawing on the resource and run pages."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from reslock_web.board.drawing import NAME_CHARS, draw
from reslock_web.models import Limit, Waiter
from reslock_web.sync.deadlocks import mark_cycles
from tests.support.board_data import XSS, make_holder, make_limit, make_waiter, settle

A, B, C = (str(uuid.UUID(int=n)) for n in (1, 2, 3))


def step(waiter: str, limit: str, holder: str, names=None) -> dict:
    names = names or {A: "a", B: "b", C: "c"}
    return {"waiter": [waiter, names[waiter]], "limit": limit, "holder": [holder, names[holder]]}


def test_two_runs_waiting_for_each_other_are_two_boxes_and_two_bows_that_do_not_overlap():
    [drawing] = draw([[step(A, "y", B), step(B, "x", A)]])
    assert [(n.run_id, n.name) for n in drawing.nodes] == [(A, "a"), (B, "b")]
    top, bottom = drawing.nodes
    assert top.y < bottom.y and top.x == bottom.x  # the first run at the top of the ring
    there, back = drawing.arrows
    assert (there.label, back.label) == ("y", "x")
    # Each bow bends to its own left: the two arrows between the same runs lie apart, and
    # their labels read away from each other.
    assert there.label_x != back.label_x
    assert {there.anchor, back.anchor} == {"start", "end"}
    left, right = sorted([there, back], key=lambda arrow: arrow.label_x)
    assert (left.anchor, right.anchor) == ("end", "start")
    assert there.path.startswith("M ") and " Q " in there.path
    for node in drawing.nodes:
        assert node.left >= 0 and node.left + node.box_width <= drawing.width
        assert node.top >= 0 and node.top + node.box_height <= drawing.height


def test_a_run_waiting_for_one_it_started_is_drawn_as_such_and_long_names_are_cut():
    long = "n" * 80
    names = {A: long, B: "b"}
    [drawing] = draw([[step(A, "", B, names), step(B, "deployment:d", A, names)]])
    started, waits = drawing.arrows
    assert started.started and started.label == "started it"
    assert not waits.started and waits.label == "deployment:d"
    node = drawing.nodes[0]
    assert len(node.name) == NAME_CHARS and node.name.endswith("…") and node.full_name == long


def test_three_runs_sit_apart_on_the_ring():
    [drawing] = draw([[step(A, "x", B), step(B, "y", C), step(C, "z", A)]])
    points = {(n.x, n.y) for n in drawing.nodes}
    assert len(points) == 3 and len(drawing.arrows) == 3


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "a string",
        [["not a step"]],
        [[{"waiter": ["not-a-uuid", "a"], "limit": "x", "holder": [B, "b"]}]],
        [[{"waiter": [A, "a"], "limit": 3, "holder": [B, "b"]}]],
    ],
)
def test_a_malformed_stored_cycle_is_left_undrawn(stored):
    assert draw(stored) == []


# --- on the pages -----------------------------------------------------------------------
@pytest.fixture
def crossed(db):
    """Run XSS holds x and waits for y; run "b" holds y and waits for x."""
    a, b = uuid.uuid4(), uuid.uuid4()
    for name, holder, waiter in (("x", (a, XSS), (b, "b")), ("y", (b, "b"), (a, XSS))):
        limit = make_limit(name)
        make_holder(limit, source="helper", flow_run_id=holder[0], flow_run_name=holder[1])
        make_waiter(limit, key=f"w-{name}", flow_run_id=waiter[0], flow_run_name=waiter[1])
        settle(limit)
    mark_cycles(timezone.now())
    return a, b


def test_the_resource_page_draws_the_cycle_with_each_run_linked_and_names_escaped(
    viewer_client, crossed
):
    a, b = crossed
    html = viewer_client.get("/resources/x").content.decode()
    assert '<svg viewBox="0 0 640 360" role="img"' in html
    assert f'<a href="/runs/{a}" class="cycle-run">' in html
    assert f'<a href="/runs/{b}" class="cycle-run">' in html
    assert XSS not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert viewer_client.get("/resources/y").content.decode().count("<svg") == 1


def test_the_run_page_draws_each_cycle_of_the_run_once(viewer_client, crossed):
    a, _ = crossed
    html = viewer_client.get(f"/runs/{a}").content.decode()
    assert "Deadlocked across resources" in html
    assert html.count('<figure class="cycle">') == 1  # on x and on y: the same circle
    assert Limit.objects.filter(deadlock_cycle="").count() == 0


def test_a_page_without_a_cycle_draws_nothing(viewer_client, crossed):
    Waiter.objects.filter(key="w-y").delete()
    mark_cycles(timezone.now())
    assert "<svg" not in viewer_client.get("/resources/x").content.decode()
