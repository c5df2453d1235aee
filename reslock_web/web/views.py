from __future__ import annotations

import time
from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.db.models import F, Prefetch
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import reswap, retarget

from reslock_web.board import cache as board_cache
from reslock_web.board import drawing, poll
from reslock_web.board.query import SORTS, BoardQuery, facets, with_people
from reslock_web.board.runs import run_locks
from reslock_web.models import Holder, Kind, Limit, SyncRun, Waiter
from reslock_web.status import leases, timeline
from reslock_web.status.explain import explain
from reslock_web.sync.health import freshness

REDRAW_SECONDS = 30


@require_GET
@login_required
@vary_on_headers("HX-Request", "HX-Target")
def board(request: HttpRequest) -> HttpResponse:
    query = BoardQuery.from_params(request.GET)
    template = "board.html"
    if request.htmx and request.htmx.target in ("rows", "results"):
        template = f"board.html#{request.htmx.target}"
    return render(request, template, _board_context(query))


@require_GET
@login_required
@never_cache
def board_changes(request: HttpRequest) -> HttpResponse:
    """The board's live refresh: nothing, the rows that changed, or the whole result list.

    The page polls this every second with what it shows (see `board.poll`); most answers are an
    empty 204, and a change redraws only its own rows.
    """
    query = BoardQuery.from_params(request.GET)
    seen = poll.Seen.parse(request.GET.get("seen", ""))
    board, health = poll.board_version(), freshness()
    needs = board_cache.needs(board)
    lost = board_cache.lost_leases(board)  # kept for the version and the quarter minute
    if (
        seen
        and seen.version == board
        and seen.banner == poll.banner_digest(health, needs)
        and seen.marked_as(board_cache.mark_keys(lost))
    ):
        return HttpResponse(status=204)
    results = board_cache.results(query, board, lost)
    now = _seen(board, results, query, health, needs)
    changes = poll.compare(seen, now)
    # With nothing of this page changed, the answer still carries the new state (the version
    # moved): without it, every later poll would take this longer way again.
    if changes.everything:
        response = render(
            request, "board.html#results", _board_context(query, health, board, results)
        )
        return reswap(retarget(response, "#results"), "outerHTML")
    rows = with_people(list(Limit.objects.filter(pk__in=changes.rows)), lost)
    context = {
        "query": query,
        "rows": sorted(rows, key=lambda row: changes.rows.index(row.pk)),
        "changes": changes,
        "facets": facets(query, results.counts),
        "health": health,
        "attention": needs,
        "seen": now.encode(),
        "oob": True,
    }
    return render(request, "board_changes.html", context)


def _board_context(
    query: BoardQuery, health=None, board: int | None = None, results=None
) -> dict[str, object]:
    # The version is read before what it stands for: a change committed in between raises
    # it again, so the next poll looks.
    board = poll.board_version() if board is None else board
    health = freshness() if health is None else health
    results = board_cache.results(query, board) if results is None else results
    needs = board_cache.needs(board)
    return {
        "query": query,
        "facets": facets(query, results.counts),
        "results": results,
        "sorts": [(key, label) for key, (label, _) in SORTS.items()],
        "kinds": Kind.choices,
        "health": health,
        "attention": needs,
        "seen": _seen(board, results, query, health, needs).encode(),
    }


def _seen(board: int, results: board_cache.Results, query: BoardQuery, health, needs) -> poll.Seen:
    return poll.Seen.of(
        board,
        results.counts.get(query.status, 0),
        results.versions,
        poll.facets_digest(results.counts),
        poll.banner_digest(health, needs),
        results.marks,
    )


@require_GET
@login_required
@vary_on_headers("HX-Request", "HX-Target")
def resource(request: HttpRequest, name: str) -> HttpResponse:
    if request.htmx and request.htmx.target == "live" and _unchanged(name, request.GET):
        return HttpResponse(status=204)
    limit = Limit.objects.prefetch_related(
        Prefetch(
            "holders",
            queryset=Holder.objects.shown().order_by("acquired_at", "id"),
        ),
        Prefetch("waiters", queryset=Waiter.objects.order_by("position", "id")),
    ).named(name)
    if limit is None:
        raise Http404(f"No resource named {name!r} has been synced from Prefect.")
    holders, waiters = list(limit.holders.all()), list(limit.waiters.all())
    now = timezone.now()
    health_of = leases.leases(limit, holders, now)
    for holder in holders:
        holder.lease = health_of.get(holder.pk)
    context = {
        "limit": limit,
        "holders": holders,
        "waiters": waiters,
        "explanation": explain(limit, holders, waiters),
        "cycles": drawing.draw(limit.deadlock_steps),
        "timeline": timeline.holds(limit, now),
        "lost_leases": leases.lost_recently(limit, now),
        "health": freshness(),
        "can_operate": request.user.has_perm("reslock.operate"),
        "operations": limit.operations.order_by("-created_at", "-id")[:20],
        "seen": f"{poll.version(limit.changed_at)}~{int(time.time())}",
    }
    template = "resource.html"
    if request.htmx and request.htmx.target == "live":
        template = "resource.html#live"
    return render(request, template, context)


def _drawn(params) -> tuple[str, bool]:
    """A live section's `seen` parameter: (its stamp, whether it was drawn less than 30 s ago).

    The redraw every 30 s keeps the diagnosis' wording ("held for 3 min") current.
    """
    stamp, _, drawn = params.get("seen", "").partition("~")
    recent = (
        drawn.isascii()
        and drawn.isdigit()
        and len(drawn) < 20  # int() refuses 4300+ digits
        and time.time() - int(drawn) <= REDRAW_SECONDS
    )
    return stamp, recent


def _unchanged(name: str, params) -> bool:
    """The resource page's poll: same version as drawn, and drawn less than 30 s ago."""
    stamp, recent = _drawn(params)
    if not recent:
        return False
    changed = (
        Limit.objects.filter(name=name)
        .order_by(F("gone_at").desc(nulls_first=True))  # the one `named` would show
        .values_list("changed_at", flat=True)
        .first()
    )
    return changed is not None and poll.version(changed) == stamp


@require_GET
@login_required
@vary_on_headers("HX-Request", "HX-Target")
def run(request: HttpRequest, run_id: UUID) -> HttpResponse:
    """One flow run: what it holds and waits for on the board, and why it waits."""
    # Any write that could change what this page says raises the board's version (a hold or
    # a wait of this run appears on any limit): the poll compares that alone.
    board = poll.board_version()
    stamp, recent = _drawn(request.GET)
    # Version 0: no writer has raised it yet (rows put in place by hand), so it says nothing.
    if request.htmx and request.htmx.target == "live" and recent and board and stamp == str(board):
        return HttpResponse(status=204)
    context = {
        "run": run_locks(run_id),
        "synced": SyncRun.objects.last_ok(),
        "can_operate": request.user.has_perm("reslock.operate"),
        "seen": f"{board}~{int(time.time())}",
    }
    template = "run.html"
    if request.htmx and request.htmx.target == "live":
        template = "run.html#live"
    return render(request, template, context)


@require_GET
@login_required
def run_not_an_id(request: HttpRequest, raw: str) -> HttpResponse:
    shown = raw if len(raw) <= 80 else raw[:80] + "…"
    raise Http404(
        f"{shown!r} is not a flow run id. A run's page is /runs/ followed by its flow run id "
        "as Prefect writes it (lower case, with its hyphens), e.g. "
        "/runs/0b5f7a4e-6c1d-4f3e-9a8b-2d7c4e1f0a93."
    )


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and `make run`: the web process answers and the DB is up."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:  # noqa: BLE001 - any DB failure means "not healthy"
        return JsonResponse({"ok": False, "database": type(error).__name__}, status=503)
    return JsonResponse({"ok": True})
