"""One board row as HTML.

The row is the board's hottest fragment: a page draws 50 of them whenever a sync changed them,
and the live refresh sends them one by one. Built here with `escape` rather than through a
template, it costs a tenth of the template's time (the template engine resolves each of the
row's ~40 variables and tags through its generic machinery). Every value from Prefect or the
database goes through `escape`; numbers are written without localisation, as everywhere on
the board.
"""

from __future__ import annotations

from functools import lru_cache
from uuid import UUID

from django.urls import get_script_prefix, reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from reslock_web.board.format import evidence_text, since
from reslock_web.models import Limit

MUTED_DASH = '<span class="muted">—</span>'


def board_row(limit: Limit, oob: bool = False) -> SafeString:
    """`limit` as a `<tr>`; `limit` comes through `board.with_people` (labels, first holder...)."""
    swap = ' hx-swap-oob="true"' if oob else ""
    name = ""
    if limit.resource != limit.name:
        name = f'\n    <span class="sub">{escape(limit.name)}</span>'
    title = ""
    if limit.evidence:
        title = f' title="{escape(evidence_text(limit.evidence))}"'
    used, size = int(limit.active_slots), int(limit.limit)
    held = since(limit.held_since) if limit.held_since else MUTED_DASH
    status = escape(limit.status)
    return mark_safe(  # noqa: S308 - every value above and below is escaped or a number
        f'<tr id="limit-{int(limit.pk)}" class="row-{status}"{swap}>\n'
        f'  <th scope="row" class="resource">\n'
        f'    <a href="{escape(reverse("resource", args=[limit.name]))}">{escape(limit.resource)}</a>'
        f"{name}\n  </th>\n"
        f'  <td class="col-kind"><span class="kind kind-{escape(limit.kind)}">'
        f"{escape(limit.kind_label)}</span></td>\n"
        f'  <td class="used">\n'
        f'    <meter min="0" max="{size or 1}" value="{used}" aria-label="{used} of {size} slots used">'
        f"</meter>\n    <span>{used}/{size}</span>\n  </td>\n"
        f'  <td class="holder">\n    {_holder(limit)}\n  </td>\n'
        f'  <td class="col-held">{held}</td>\n'
        f'  <td class="col-waiters">\n    {_waiters(limit)}\n  </td>\n'
        f'  <td><span class="badge badge-{status}"{title}>{escape(limit.status_label)}</span>'
        f"{_lease_lost(limit)}</td>\n"
        f"</tr>"
    )


def _holder(limit: Limit) -> str:
    holder = limit.first_holder
    if holder is None:
        return MUTED_DASH
    parts = []
    if holder.flow_name:
        parts.append(f'<span class="flow">{escape(holder.flow_name)}</span> / ')
    if holder.flow_run_id:
        # To the run's own page, which says what it holds and waits for and links on to
        # Prefect's UI.
        shown = holder.flow_run_name or holder.flow_run_id
        parts.append(f'<a href="{_run_url(holder.flow_run_id)}">{escape(shown)}</a>')
    else:
        parts.append(escape(holder.flow_run_name or "(no run)"))
    if holder.task_run_name:
        parts.append(f'\n    <span class="sub">task {escape(holder.task_run_name)}</span>')
    if limit.more_holders:
        parts.append(f'\n    <span class="sub">+{int(limit.more_holders)} more</span>')
    return "".join(parts)


def _lease_lost(limit: Limit) -> str:
    """A quiet chip when the limit lost a lease lately (its words in the title)."""
    mark = getattr(limit, "lease_lost", None)
    if mark is None:
        return ""
    return f' <span class="badge lease-lost-chip" title="{escape(mark.title)}">lease lost</span>'


def _waiters(limit: Limit) -> str:
    if not limit.waiter_count:
        return '<span class="muted">0</span>'
    first = limit.first_waiter
    if first is None:
        return str(int(limit.waiter_count))
    shown = escape(first.flow_run_name or first.task_run_name)
    if first.flow_run_id:
        shown = f'<a href="{_run_url(first.flow_run_id)}">{shown}</a>'
    return f'{int(limit.waiter_count)}<span class="sub">next: {shown}</span>'


def _run_url(run_id: UUID) -> str:
    head, tail = _run_address(get_script_prefix())
    return f"{head}{escape(run_id)}{tail}"


# reverse() costs several times what the rest of a row does, and a row may link two runs: a
# run's address is the same for every run but the id, so it is reversed once (per script
# prefix, which reverse() reads too) and each id put in its place.
_NO_RUN = UUID(int=0)


@lru_cache(maxsize=8)
def _run_address(prefix: str) -> tuple[str, str]:
    head, _, tail = escape(reverse("run", args=[_NO_RUN])).partition(str(_NO_RUN))
    return head, tail
