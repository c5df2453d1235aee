"""Times, durations and evidence as the board writes them, in rows drawn in Python
(`rows`) and in templates (the `reslock` template tags register these same functions)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from django.utils import timezone
from django.utils.html import format_html


def humane(seconds: float) -> str:
    """A duration the way an operator says it: "45 s", "3 min", "3 h 12 min", "2 d 4 h"."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def age(when: datetime | None) -> str:
    """How long ago `when` was, in humane words ("3 h 12 min"); empty when unknown."""
    if when is None:
        return ""
    return humane((timezone.now() - when).total_seconds())


def clock(when: datetime) -> str:
    """A moment as the board writes it, in UTC: the time of day, with the date unless today."""
    when, today = when.astimezone(UTC), timezone.now().astimezone(UTC).date()
    return f"{when:%H:%M} UTC" if when.date() == today else f"{when:%Y-%m-%d %H:%M} UTC"


def since(when: datetime | None, blank: str = "") -> str:
    """How long ago `when` was, as a `<time>` the browser keeps counting up between redraws.

    `data-age` is the age in seconds when drawn, so the browser's own clock, right or wrong,
    only measures the seconds since.
    """
    if when is None:
        return blank
    seconds = max(0, (timezone.now() - when).total_seconds())
    return format_html(
        '<time datetime="{}" data-age="{}">{}</time>',
        when.isoformat(),
        int(seconds),
        humane(seconds),
    )


def until(when: datetime | None, blank: str = "") -> str:
    """How long until `when`, as a `<time>` the browser keeps counting down between redraws
    (`data-in`: the seconds left when drawn)."""
    if when is None:
        return blank
    seconds = max(0, (when - timezone.now()).total_seconds())
    return format_html(
        '<time datetime="{}" data-in="{}">{}</time>',
        when.isoformat(),
        int(seconds),
        humane(seconds),
    )


# What `since` writes, and nothing a name can produce: names are escaped, so a "<" in one
# arrives as "&lt;".
SINCE = re.compile(r'<time datetime="([^"<>]+)" data-age="\d+">[^<]*</time>')


def redraw_ages(html: str) -> str:
    """HTML drawn earlier by `since`, its ages made true again as of now."""
    now = timezone.now()

    def redraw(match: re.Match[str]) -> str:
        try:
            when = datetime.fromisoformat(match[1])
        except ValueError:
            return match[0]
        seconds = max(0, (now - when).total_seconds())
        return f'<time datetime="{match[1]}" data-age="{int(seconds)}">{humane(seconds)}</time>'

    return SINCE.sub(redraw, html)


def after(when: datetime | None, seconds: int | None) -> datetime | None:
    if when is None or seconds is None:
        return None
    return when + timedelta(seconds=seconds)


def evidence_text(evidence: list[dict[str, str]] | None) -> str:
    return " ".join(item.get("text", "") for item in evidence or [])
