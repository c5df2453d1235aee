from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from reslock_web import timeline
from reslock_web.board import SORTS, BoardQuery, facets
from reslock_web.explain import explain
from reslock_web.health import freshness
from reslock_web.models import Condition, Holder, Kind, Limit, Waiter


@require_GET
@login_required
@vary_on_headers("HX-Request", "HX-Target")
def board(request: HttpRequest) -> HttpResponse:
    query = BoardQuery.from_params(request.GET)
    context = {
        "query": query,
        "facets": facets(query, query.facet_counts()),
        "page": query.page_of_rows(),
        "sorts": [(key, label) for key, (label, _) in SORTS.items()],
        "kinds": Kind.choices,
        "health": freshness(),
    }
    template = "board.html"
    if request.htmx and request.htmx.target in ("rows", "results"):
        template = f"board.html#{request.htmx.target}"
    return render(request, template, context)


@require_GET
@login_required
@vary_on_headers("HX-Request", "HX-Target")
def resource(request: HttpRequest, name: str) -> HttpResponse:
    limit = Limit.objects.prefetch_related(
        Prefetch(
            "holders",
            queryset=Holder.objects.exclude(condition=Condition.LEAVING).order_by(
                "acquired_at", "id"
            ),
        ),
        Prefetch("waiters", queryset=Waiter.objects.order_by("position", "id")),
    ).named(name)
    if limit is None:
        raise Http404(f"No resource named {name!r} has been synced from Prefect.")
    holders, waiters = list(limit.holders.all()), list(limit.waiters.all())
    context = {
        "limit": limit,
        "holders": holders,
        "waiters": waiters,
        "explanation": explain(limit, holders, waiters),
        "timeline": timeline.holds(limit, timezone.now()),
        "health": freshness(),
        "can_operate": request.user.has_perm("reslock.operate"),
        "operations": limit.operations.order_by("-created_at", "-id")[:20],
    }
    template = "resource.html"
    if request.htmx and request.htmx.target == "live":
        template = "resource.html#live"
    return render(request, template, context)


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
