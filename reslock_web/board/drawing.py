"""A cross-lock deadlock drawn: the runs of a cycle on a ring, an arrow from each run to the one
it waits for, labelled with the resource (or "started it", for a run waiting for one it started).

Pure geometry over `Limit.deadlock_steps` (written by sync/deadlocks.py); the template
`_cycle.html` turns it into an inline SVG. Names are Prefect's, user-controlled: they reach the
page only through the template's escaping, cut short here so that a long one cannot cover the
others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from uuid import UUID

WIDTH, HEIGHT = 640, 360
RING_X, RING_Y = 190, 120  # the ring's radii: wider than tall, as the boxes are
BOW = 0.22  # how far an arrow bends off the straight line, as a share of its length
NODE_WIDTH, NODE_HEIGHT = 150, 34
NAME_CHARS, LIMIT_CHARS = 22, 24
LABEL_GAP = 6


@dataclass(frozen=True)
class Node:
    run_id: str
    name: str  # cut short
    full_name: str
    x: float
    y: float
    box_width: int = NODE_WIDTH
    box_height: int = NODE_HEIGHT

    @property
    def left(self) -> float:
        return round(self.x - self.box_width / 2, 1)

    @property
    def top(self) -> float:
        return round(self.y - self.box_height / 2, 1)


@dataclass(frozen=True)
class Arrow:
    path: str  # an SVG path from the waiter's box to the holder's
    label: str  # cut short
    full_label: str
    label_x: float
    label_y: float
    started: bool  # the waiter started the holder, no resource between them
    anchor: str = "middle"  # the label reads away from the ring's centre: "start" or "end"


@dataclass(frozen=True)
class Drawing:
    nodes: list[Node]
    arrows: list[Arrow]
    width: int = WIDTH
    height: int = HEIGHT


def draw(cycles: Any) -> list[Drawing]:
    """One drawing per stored cycle; anything malformed is left out, never guessed at."""
    drawings = []
    for cycle in cycles if isinstance(cycles, list) else []:
        steps = [s for s in cycle if _valid(s)] if isinstance(cycle, list) else []
        if steps and len(steps) == len(cycle):
            drawings.append(_draw(steps))
    return drawings


def _valid(step: Any) -> bool:
    if not isinstance(step, dict) or not isinstance(step.get("limit"), str):
        return False
    for end in ("waiter", "holder"):
        pair = step.get(end)
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)
        ):
            return False
        try:
            UUID(pair[0])
        except ValueError:
            return False
    return True


def _draw(steps: list[dict[str, Any]]) -> Drawing:
    # The runs in the cycle's order: each step's waiter, the last one's holder being the first.
    order = [step["waiter"] for step in steps]
    count = len(order)
    center_x, center_y = WIDTH / 2, HEIGHT / 2
    nodes: dict[str, Node] = {}
    for index, (run_id, name) in enumerate(order):
        angle = -math.pi / 2 + 2 * math.pi * index / count  # the first run at the top
        nodes[run_id] = Node(
            run_id=run_id,
            name=_cut(name or run_id, NAME_CHARS),
            full_name=name or run_id,
            x=round(center_x + RING_X * math.cos(angle), 1),
            y=round(center_y + RING_Y * math.sin(angle), 1),
        )
    arrows = []
    for step in steps:
        start, end = nodes[step["waiter"][0]], nodes.get(step["holder"][0])
        if end is None:  # a cycle always closes on its own runs
            continue
        arrows.append(_arrow(start, end, step["limit"]))
    return Drawing(nodes=list(nodes.values()), arrows=arrows)


def _arrow(start: Node, end: Node, limit: str) -> Arrow:
    """A bow from box to box, bent to the left of its direction, so that the two arrows
    between the same two runs (a cycle of two) do not lie on each other."""
    dx, dy = end.x - start.x, end.y - start.y
    length = math.hypot(dx, dy) or 1.0
    bend_x, bend_y = dy / length, -dx / length  # the left-hand normal
    control_x = (start.x + end.x) / 2 + bend_x * BOW * length
    control_y = (start.y + end.y) / 2 + bend_y * BOW * length
    from_x, from_y = _edge_of_box(start, control_x, control_y)
    to_x, to_y = _edge_of_box(end, control_x, control_y)
    label = limit or "started it"
    # The curve's own midpoint (a quadratic's: a quarter each end, half the control point);
    # the label starts there and reads outward, so that the labels of two bows side by side
    # do not overlap.
    mid_x = (from_x + to_x) / 4 + control_x / 2
    mid_y = (from_y + to_y) / 4 + control_y / 2
    outward = mid_x - WIDTH / 2
    anchor = "middle" if abs(outward) < 1 else ("start" if outward > 0 else "end")
    shift = {"middle": 0, "start": LABEL_GAP, "end": -LABEL_GAP}[anchor]
    if anchor == "middle":  # above or below the curve, away from the centre, not across it
        mid_y += 2.5 * LABEL_GAP if mid_y > HEIGHT / 2 else -LABEL_GAP
    return Arrow(
        path=f"M {from_x:.1f} {from_y:.1f} Q {control_x:.1f} {control_y:.1f} {to_x:.1f} {to_y:.1f}",
        label=_cut(label, LIMIT_CHARS),
        full_label=label,
        label_x=round(mid_x + shift, 1),
        label_y=round(mid_y, 1),
        started=not limit,
        anchor=anchor,
    )


def _edge_of_box(node: Node, toward_x: float, toward_y: float) -> tuple[float, float]:
    """Where the line from a box's centre toward a point leaves the box."""
    dx, dy = toward_x - node.x, toward_y - node.y
    if dx == 0 and dy == 0:
        return node.x, node.y
    scale = min(
        (NODE_WIDTH / 2) / abs(dx) if dx else math.inf,
        (NODE_HEIGHT / 2) / abs(dy) if dy else math.inf,
    )
    return node.x + dx * scale, node.y + dy * scale


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"
