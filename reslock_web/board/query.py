"""What the board shows for a query string: validated filters, facet counts, one page of rows.

Bad parameters never raise: an unknown facet, kind or sort falls back to the default and the
board says so, so that a mangled shared link still opens.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.core.paginator import Page, Paginator
from django.db.models import Case, Count, F, IntegerField, Q, QuerySet, Value, When
from django.http import QueryDict

from reslock_web.models import (
    FACETS,
    Holder,
    Kind,
    Limit,
    Status,
    Waiter,
    facet_filter,
)
from reslock_web.status.leases import LostMark

PAGE_SIZE = 50
MAX_SEARCH = 200
# What needs an operator first: more runs inside than the limit, a deadlock, a run that may be
# inside uncounted, a dead or finished holder, drift; then the busy ones, the quiet ones last.
ATTENTION = [
    Status.OVER_LIMIT,
    Status.DEADLOCKED,
    Status.UNCOUNTED,
    Status.ZOMBIE,
    Status.STALE,
    Status.DRIFT,
    Status.CONTENDED,
    Status.WAITING,
    Status.HELD,
    Status.INACTIVE,
    Status.FREE,
    Status.GONE,
]
NEEDS_ATTENTION = ATTENTION[: ATTENTION.index(Status.DRIFT) + 1]
_WORST_FIRST = Case(
    *(When(status=status, then=Value(rank)) for rank, status in enumerate(ATTENTION)),
    default=Value(len(ATTENTION)),
    output_field=IntegerField(),
)
DEFAULT_SORT = "attention"
SORTS = {
    # Worst first, then the longest held: the board opens on what to fix.
    "attention": (
        "attention first",
        [_WORST_FIRST.asc(), F("held_since").asc(nulls_last=True), "resource", "id"],
    ),
    "name": ("name", ["resource", "name", "id"]),
    "held": ("held longest", [F("held_since").asc(nulls_last=True), "resource", "id"]),
    "waiters": ("most waiters", ["-waiter_count", "resource", "id"]),
    "changed": ("recently changed", ["-changed_at", "resource", "id"]),
}
FACET_LABELS = {
    "all": "All",
    "held": "Held",
    "contended": "Contended",
    "waiting": "Waiting",
    "stale": "Stale",
    "zombie": "Zombie",
    "over_limit": "Over the limit",
    "deadlocked": "Deadlocked",
    "drift": "Drift",
    "free": "Free",
    "inactive": "Inactive",
    "gone": "Gone",
}


def attention(found: dict[str, int] | None = None) -> list[tuple[str, str, int]]:
    """What needs an operator on the whole board, whatever the search: (status filter or "",
    label, count), worst first, counted as the status filters count (a resource both stale and zombie
    is in both); nothing when all is well. A run that may be inside uncounted has no filter of
    its own: its resources are counted by their badge.

    `found`: the counts as the whole board's `BoardQuery.counts` reads them with its facets;
    read here when not given."""
    if found is None:
        found = Limit.objects.aggregate(**_attention_counts())
    return [
        (status if status in FACETS else "", Status(status).label, found[status])
        for status in NEEDS_ATTENTION
        if found[status]
    ]


def _attention_counts() -> dict[str, Count]:
    """What `attention` counts, by status: all but "uncounted" are facet counts."""
    present = facet_filter("all")
    return {
        status: Count(
            "id", filter=facet_filter(status) if status in FACETS else present & Q(status=status)
        )
        for status in NEEDS_ATTENTION
    }


@dataclass
class BoardQuery:
    search: str = ""
    status: str = "all"
    kind: str = ""
    sort: str = DEFAULT_SORT
    page: int = 1
    problems: list[str] = field(default_factory=list)

    @classmethod
    def from_params(cls, params: QueryDict) -> BoardQuery:
        query = cls()
        search = params.get("q", "")
        if "\x00" in search:
            query.problems.append("The search contained a NUL character, which was removed.")
            search = search.replace("\x00", "")
        if len(search) > MAX_SEARCH:
            query.problems.append(f"The search was cut to its first {MAX_SEARCH} characters.")
            search = search[:MAX_SEARCH]
        query.search = search.strip()
        status = params.get("status", "all") or "all"
        if status in FACETS:
            query.status = status
        else:
            query.problems.append(f"Unknown status filter {status[:40]!r}: showing all.")
        kind = params.get("kind", "")
        if kind in ("", *Kind.values):
            query.kind = kind
        else:
            query.problems.append(f"Unknown kind {kind[:40]!r}: showing every kind.")
        sort = params.get("sort", DEFAULT_SORT) or DEFAULT_SORT
        if sort in SORTS:
            query.sort = sort
        else:
            label = SORTS[DEFAULT_SORT][0]
            query.problems.append(f"Unknown sort {sort[:40]!r}: sorted by {label}.")
        page = params.get("page", "1") or "1"
        # ASCII only and short: int() refuses "²" and numbers of more than 4300 digits.
        if page.isascii() and page.isdigit() and len(page) < 20 and 0 < int(page) < 10**6:
            query.page = int(page)
        else:
            query.problems.append(f"Page {page[:20]!r} is not a page number: showing page 1.")
        return query

    def params(self, **changes: object) -> str:
        """The query string for this board with some values changed (defaults left out)."""
        values = {
            "q": self.search,
            "status": self.status,
            "kind": self.kind,
            "sort": self.sort,
            "page": self.page,
        }
        values.update(changes)
        defaults = {"q": "", "status": "all", "kind": "", "sort": DEFAULT_SORT, "page": 1}
        kept = {k: v for k, v in values.items() if v != defaults[k]}
        return "?" + urlencode(kept) if kept else "?"

    def base(self) -> QuerySet[Limit]:
        """Search and kind applied; the status facet not yet (facet counts need this)."""
        queryset = Limit.objects.search(self.search)
        if self.kind:
            queryset = queryset.filter(kind=self.kind)
        return queryset

    def counts(self) -> tuple[dict[str, int], dict[str, int] | None]:
        """The facet counts for this search and kind, and for the whole board (no search, no
        kind) what `attention` counts too, in the same scan of the limits: it adds one count
        to the facets' (on SQLite a scan of 20,000 limits costs 10-14 ms, a count more under
        1 ms). With a search the two differ, and `attention` reads its own."""
        aggregates = {name: Count("id", filter=facet_filter(name)) for name in FACETS}
        whole_board = not self.search and not self.kind
        if whole_board:
            aggregates |= _attention_counts()
        found = self.base().aggregate(**aggregates)
        return {name: found[name] for name in FACETS}, found if whole_board else None

    def paged(self, fields: tuple[str, ...] = (), count: int | None = None) -> Page:
        """The page asked for (the last one when asked for more), rows not yet fetched; only
        `fields` of them read, when given.

        `count`, when the facet counts already say how many rows match, saves counting again.
        The page's rows are chosen by id before they are read (one query): sorted with all
        that a row shows, every matching limit was read whole (on SQLite, 20,000 rows for a
        page of 50), where its id and sort keys come from the board's index (`Limit.Meta`).
        """
        order = SORTS[self.sort][1]
        matching = self.base().filter(facet_filter(self.status)).order_by(*order)
        paginator = Paginator(matching.values("pk"), PAGE_SIZE)
        if count is not None:
            paginator.count = count  # a cached_property: set, it is not asked of the database
        page = paginator.page(min(self.page, paginator.num_pages))
        rows = Limit.objects.filter(pk__in=page.object_list).order_by(*order)
        page.object_list = rows.only(*fields) if fields else rows
        return page


# What `board_row` reads of a limit, of its first holder and of its first waiter.
ROW_LIMIT_FIELDS = (
    "name",
    "resource",
    "kind",
    "status",
    "active_slots",
    "limit",
    "held_since",
    "waiter_count",
    "evidence",
)
ROW_HOLDER_FIELDS = ("limit_id", "flow_name", "flow_run_id", "flow_run_name", "task_run_name")
ROW_WAITER_FIELDS = ("limit_id", "flow_run_id", "flow_run_name", "task_run_name")


def with_people(rows: list[Limit], lost: dict[int, LostMark] | None = None) -> list[Limit]:
    """Attach what a board row shows of its holders and waiters, and its lost leases (`lost`,
    read once for the whole board: `board.cache.lost_leases`).

    One query for the holders of all rows; one for the waiters of the rows that count any (a
    row names its first waiter only then), so most pages of free resources need none.
    """
    holders: dict[int, list[Holder]] = defaultdict(list)
    if rows:
        shown = (
            Holder.objects.shown()
            .filter(limit_id__in=[row.pk for row in rows])
            .order_by("acquired_at", "id")
            .only(*ROW_HOLDER_FIELDS)  # a holder has ~30 columns, and each datetime read costs
        )
        for holder in shown:
            holders[holder.limit_id].append(holder)
    first_waiters: dict[int, Waiter] = {}
    waiting = [row.pk for row in rows if row.waiter_count]
    if waiting:
        queued = Waiter.objects.filter(limit_id__in=waiting).order_by("position", "id")
        for waiter in queued.only(*ROW_WAITER_FIELDS):
            first_waiters.setdefault(waiter.limit_id, waiter)
    kinds, statuses = dict(Kind.choices), dict(Status.choices)
    for row in rows:  # what each row shows, worked out once instead of in the template
        row.kind_label = kinds.get(row.kind, row.kind)
        row.status_label = statuses.get(row.status, row.status)
        own = holders.get(row.pk, [])
        row.first_holder = own[0] if own else None
        row.more_holders = max(0, len(own) - 1)
        row.first_waiter = first_waiters.get(row.pk)
        row.lease_lost = lost.get(row.pk) if lost else None
    return rows


def facets(query: BoardQuery, counts: dict[str, int]) -> list[dict[str, object]]:
    return [
        {
            "name": name,
            "label": FACET_LABELS[name],
            "count": counts.get(name, 0),
            "active": query.status == name,
            "params": query.params(status=name, page=1),
        }
        for name in FACETS
    ]
