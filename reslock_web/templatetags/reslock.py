"""The board's template tags: the formatting of `board.format`, registered, and a few more."""

from __future__ import annotations

import uuid

from django import template
from django.urls import reverse
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from reslock_web.board.format import after, age, clock, evidence_text, since, until
from reslock_web.board.rows import board_row as draw_board_row
from reslock_web.board.runs import Part

register = template.Library()
register.filter(age)
register.simple_tag(since)
register.simple_tag(until)
register.filter(after)
register.filter(evidence_text)
register.filter(clock)


@register.simple_tag
def resource_url(name: str) -> str:
    return reverse("resource", args=[name])


@register.simple_tag
def run_url(run_id: object) -> str:
    """A flow run's page on the board; "" for no id (an operation's snapshot keeps ids as
    text, and may have none)."""
    try:
        value = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    except ValueError:
        return ""
    return reverse("run", args=[value])


@register.simple_tag
def words(parts: list[Part], can_operate: bool = False) -> SafeString:
    """A sentence of `board.runs`, its names linked. The release page is offered as a link to
    operators only; others read what it stands for."""
    out = []
    for part in parts:
        if part.release:
            if can_operate:
                out.append(format_html('<a href="{}">release it here</a>', part.url))
            else:
                out.append(escape(part.text))
        elif part.url and part.external:
            out.append(
                format_html(
                    '<a href="{}" rel="noopener" target="_blank">{}</a>', part.url, part.text
                )
            )
        elif part.url:
            out.append(format_html('<a href="{}">{}</a>', part.url, part.text))
        elif part.when and part.age:
            out.append(since(part.when))
        elif part.when:
            out.append(
                format_html('<time datetime="{}">{}</time>', part.when.isoformat(), part.text)
            )
        else:
            out.append(escape(part.text))
    return mark_safe("".join(out))  # noqa: S308 - every part above is escaped


@register.simple_tag
def board_row(limit: object, oob: bool = False) -> str:
    return draw_board_row(limit, oob)  # type: ignore[arg-type]


@register.filter
def page_params(query: object, number: int) -> str:
    return query.params(page=number)  # type: ignore[attr-defined]
