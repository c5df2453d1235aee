"""The board's result lists, counted and drawn once per board version and query.

Counting the facets and drawing fifty rows cost more than everything else a board request
does, and every open page asks again after each sync. Rows change only together with the
board's version (every writer raises it in the same transaction), so what was drawn for a
(version, query) stays true until the version moves: it is kept in a process-local cache and
shared by every viewer asking the same. Entries written before a change are never read after
it, since the key carries the version; a reader that reads the version and then rows committed
after it stores data newer than its key, which the next poll notices and redraws.

Ages ("held for 3 min") are redrawn from their timestamps each time a cached list is served
(`redraw_ages`). The "lease lost" chips move with the clock too (a loss leaves the 24-hour
window): which limits carry one is read once per board version and quarter minute
(`lost_leases`, one query for every page), and a row and a page are kept by their marks as well.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from django.core.cache import caches
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from reslock_web.board.format import redraw_ages
from reslock_web.board.poll import stamp
from reslock_web.board.query import ROW_LIMIT_FIELDS, BoardQuery, attention, with_people
from reslock_web.board.rows import board_row
from reslock_web.models import Limit
from reslock_web.status.leases import LostMark, lost_by_limit

CACHE = "board"
LOST_EVERY = 15  # seconds a process reuses its read of the lost leases at one board version
T = TypeVar("T")


@dataclass(frozen=True)
class Results:
    """One page of the board, drawn: what the results list shows and what a refresh compares."""

    counts: dict[str, int]  # facet counts for the query's search and kind
    total: int  # rows matching the whole query, on every page
    number: int  # the page shown (the last one when a higher one was asked for)
    num_pages: int
    rows_html: str  # the table body's rows
    versions: list[tuple[int, datetime]]  # (pk, changed_at) of each row, in order
    marks: dict[int, str]  # the key of each row's "lease lost" mark, by pk (rows with one)

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.num_pages

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1

    def rows(self) -> SafeString:
        """The rows, their ages as of now. The HTML was escaped when drawn."""
        return mark_safe(redraw_ages(self.rows_html))  # noqa: S308


def results(
    query: BoardQuery, board_version: int, lost: dict[int, LostMark] | None = None
) -> Results:
    """The page `query` asks for at `board_version`, from the cache when it was drawn before
    with the same lease marks (`lost`: `lost_leases`, read here when not given)."""
    lost = lost_leases(board_version) if lost is None else lost
    return kept(
        "results",
        board_version,
        f"{query.params()}#{sorted(mark_keys(lost).items())}",
        lambda: _draw(query, counts(query, board_version), board_version > 0, lost),
    )


def lost_leases(board_version: int) -> dict[int, LostMark]:
    """The limits whose row carries a "lease lost" chip, by pk: one query for the whole board,
    made once per board version and quarter minute in each process, for every page and poll."""
    now = timezone.now()
    return kept(
        "lost-leases",
        board_version,
        str(int(now.timestamp()) // LOST_EVERY),
        lambda: lost_by_limit(now),
    )


def mark_keys(lost: dict[int, LostMark]) -> dict[int, str]:
    return {pk: mark.key for pk, mark in lost.items()}


def counts(query: BoardQuery, board_version: int) -> dict[str, int]:
    """Facet counts depend on the search and kind only: one count serves every facet. Counted
    for the whole board, they bring what needs attention with them (`needs`)."""

    def read() -> dict[str, int]:
        found, needs = query.counts()
        if needs is not None:
            keep("attention", board_version, "", attention(needs))
        return found

    return kept("counts", board_version, query.params(status="all", sort="name", page=1), read)


def needs(board_version: int) -> list[tuple[str, str, int]]:
    """What needs attention on the whole board (the banner), once per board version: every
    poll reads it. A page of the whole board counted it already (`counts`)."""
    return kept("attention", board_version, "", attention)


def kept(kind: str, board_version: int, params: str, compute: Callable[[], T]) -> T:
    """What `compute` gives for these params at this board version, computed once per process.

    Version 0 means no writer has raised it yet (rows put in place by hand): nothing is kept.
    """
    if board_version <= 0:
        return compute()
    cache = caches[CACHE]
    key = _key(kind, board_version, params)
    found = cache.get(key)
    if found is None:
        found = compute()
        cache.set(key, found)
    return found


def keep(kind: str, board_version: int, params: str, value: object) -> None:
    """Keep what `kept` would compute for these params, found on the way to something else."""
    if board_version > 0:
        caches[CACHE].set(_key(kind, board_version, params), value)


def _key(kind: str, board_version: int, params: str) -> str:
    # Hashed: params hold searches of any length and alphabet.
    return f"{kind}:{board_version}:{hashlib.blake2s(params.encode()).hexdigest()}"


def _draw(
    query: BoardQuery, counts: dict[str, int], keep: bool, lost: dict[int, LostMark]
) -> Results:
    # The page's rows come with what a row shows: drawing them (a cold cache) needs no
    # second read, and a row already drawn costs only a few columns more.
    page = query.paged(("changed_at", *ROW_LIMIT_FIELDS), count=counts.get(query.status, 0))
    rows = {row.pk: row for row in page.object_list}
    versions = [(pk, row.changed_at) for pk, row in rows.items()]
    return Results(
        counts=counts,
        total=page.paginator.count,
        number=page.number,
        num_pages=page.paginator.num_pages,
        rows_html=render_to_string(
            "board_rows.html", {"rows": drawn_rows(versions, keep, rows, lost), "query": query}
        ),
        versions=versions,
        marks={pk: lost[pk].key for pk in rows if pk in lost},
    )


def drawn_rows(
    versions: list[tuple[int, datetime]],
    keep: bool = True,
    loaded: dict[int, Limit] | None = None,
    lost: dict[int, LostMark] | None = None,
) -> list[SafeString]:
    """Each row's HTML, drawn once per (row, changed_at) and shared by every page showing it.

    A row's `changed_at` moves with everything the row shows (the store stamps it when the
    limit's visible columns, its holders or its waiters change: the live refresh relies on the
    same), so a row drawn at one stamp is true until the stamp moves. `loaded` holds rows read
    already (with at least `ROW_LIMIT_FIELDS`), at the versions given; `lost`, the lease marks
    (`lost_leases`), which a row is kept by too.
    """
    cache = caches[CACHE]
    lost = lost or {}
    keys = {
        pk: f"row:{pk}:{stamp(changed, lost[pk].key if pk in lost else '')}"
        for pk, changed in versions
    }
    found = cache.get_many(keys.values()) if keep else {}
    missing = [pk for pk, key in keys.items() if key not in found]
    if missing:
        if loaded is not None:
            rows = [loaded[pk] for pk in missing]
        else:
            rows = list(Limit.objects.filter(pk__in=missing).only(*ROW_LIMIT_FIELDS))
        drawn = {keys[row.pk]: board_row(row) for row in with_people(rows, lost) if row.pk in keys}
        if keep:
            cache.set_many(drawn)
        found.update(drawn)
    # A row deleted since its version was read is left out (the next poll redraws the page).
    return [mark_safe(found[keys[pk]]) for pk, _ in versions if keys[pk] in found]  # noqa: S308
