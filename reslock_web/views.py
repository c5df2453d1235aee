from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from reslock_web.models import Heartbeat


@login_required
def board(request: HttpRequest) -> HttpResponse:
    worker = Heartbeat.objects.filter(service="worker").first()
    context = {
        "worker": worker,
        "worker_late": worker is None or worker.is_late(settings.HEARTBEAT_SECONDS),
    }
    return render(request, "board.html", context)


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
