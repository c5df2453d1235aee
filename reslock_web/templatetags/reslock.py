"""The board's template tags: the formatting of `board.format`, registered, and a few more."""

from __future__ import annotations

from django import template
from django.urls import reverse

from reslock_web.board.format import after, age, evidence_text, since, until
from reslock_web.board.rows import board_row as draw_board_row

register = template.Library()
register.filter(age)
register.simple_tag(since)
register.simple_tag(until)
register.filter(after)
register.filter(evidence_text)


@register.simple_tag
def resource_url(name: str) -> str:
    return reverse("resource", args=[name])


@register.simple_tag
def board_row(limit: object, oob: bool = False) -> str:
    return draw_board_row(limit, oob)  # type: ignore[arg-type]


@register.filter
def page_params(query: object, number: int) -> str:
    return query.params(page=number)  # type: ignore[attr-defined]
