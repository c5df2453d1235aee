"""Pages that change Prefect: confirm an operation, follow it, read the audit trail.

Views never call Prefect: they record an `Operation` and a Celery worker carries it out after
the transaction commits.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import HttpResponseClientRedirect, HttpResponseStopPolling

from reslock_web.board.query import BoardQuery
from reslock_web.models import (
    Condition,
    Holder,
    Limit,
    Operation,
    OperationKind,
    OperationStatus,
)
from reslock_web.operations import plans, policy
from reslock_web.operations.requests import request_operation
from reslock_web.web.forms import OperateForm

ACTIONS = {
    "release": OperationKind.RELEASE_HOLDER,
    "repair": OperationKind.REPAIR_DRIFT,
    "set-limit": OperationKind.SET_LIMIT,
    "activate": OperationKind.ACTIVATE,
    "deactivate": OperationKind.DEACTIVATE,
}
AUDIT_PAGE = 50


def operator_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Logged in (else to the login page) and allowed to operate (else 403)."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.has_perm("reslock.operate"):
            raise PermissionDenied(
                "Operating locks needs the reslock.operate permission (the Lock operators group)."
            )
        return view(request, *args, **kwargs)

    return wrapper


@dataclass
class Submission:
    """What became of one request for an operation: the checked form, the plan, and the
    operation when both allowed it (None otherwise: nothing was recorded)."""

    form: OperateForm
    plan: plans.Plan
    operation: Operation | None = None


def submit(
    user: Any,
    kind: str,
    limit: Limit,
    holder: Holder | None,
    data: Mapping[str, Any] | None,
    via: str = "",
) -> Submission:
    """The one path from a request to an operation, for the page, the JSON API and the
    command: the same checks (`OperateForm`), the same plan and refusals, the same record.
    With no data, only the plan and an empty form (the confirmation page's first view)."""
    initial = {
        "token": uuid.uuid4(),
        "limit_id": limit.prefect_id,
        "holder": holder.pk if holder else None,
        "expected": limit.limit,
    }
    form = OperateForm(data, kind=kind, limit=limit, holder=holder, initial=initial)
    plan = _plan(kind, limit, holder, form)
    submission = Submission(form, plan)
    if data is not None and form.is_valid() and plan.allowed:
        submission.operation = _record(user, kind, limit, holder, form, via)
    return submission


def _plan(kind: str, limit: Limit, holder: Holder | None, form: OperateForm) -> plans.Plan:
    if kind == OperationKind.RELEASE_HOLDER:
        return plans.plan_release(limit, holder)
    if kind == OperationKind.REPAIR_DRIFT:
        return plans.plan_repair(limit, timezone.now())
    if kind == OperationKind.SET_LIMIT:
        value = form.cleaned_data.get("value") if form.is_bound and form.is_valid() else None
        if value is None:
            return plans.Plan(True, f"Set the limit of {limit.name} (now {limit.limit}).")
        return plans.plan_set_limit(limit, value)
    return plans.plan_toggle(limit, kind == OperationKind.ACTIVATE)


def _holder_for(limit: Limit, raw: str | None) -> Holder:
    if not raw or not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise Http404("Choose a holder to release from the resource page.")
    holder = limit.holders.shown().filter(pk=int(raw)).first()
    if holder is None:
        raise Http404(
            "That holder no longer holds this resource: the board has been updated meanwhile."
        )
    return holder


@require_http_methods(["GET", "POST"])
@operator_required
def operate(request: HttpRequest, action: str, name: str) -> HttpResponse:
    kind = ACTIONS.get(action)
    if kind is None:
        raise Http404(f"Unknown operation {action!r}.")
    limit = Limit.objects.present().prefetch_related("holders").filter(name=name).first()
    if limit is None:
        raise Http404(f"No resource named {name!r} is on the board.")
    holder = (
        _holder_for(limit, request.POST.get("holder") or request.GET.get("holder"))
        if kind == OperationKind.RELEASE_HOLDER
        else None
    )
    data = request.POST if request.method == "POST" else None
    submission = submit(request.user, kind, limit, holder, data)
    if submission.operation is not None:
        url = reverse("operation", args=[submission.operation.pk])
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    status = 400 if request.method == "POST" else 200
    context = {
        "kind": kind,
        "action": action,
        "limit": limit,
        "holder": holder,
        "form": submission.form,
        "plan": submission.plan,
    }
    return render(request, "operate.html", context, status=status)


def _record(
    user: Any, kind: str, limit: Limit, holder: Holder | None, form: OperateForm, via: str
) -> Operation:
    params: dict[str, Any] = {"requested_via": via} if via else {}
    if kind == OperationKind.SET_LIMIT:
        expected = form.cleaned_data.get("expected")
        params["value"] = form.cleaned_data["value"]
        params["expected"] = limit.limit if expected is None else expected
    if form.cleaned_data.get("crash_flow_run"):
        params["crash_flow_run"] = True
    if kind == OperationKind.REPAIR_DRIFT:
        # What the operator was shown: the worker never lowers by more.
        params["shown_extra"] = max(0, limit.active_slots - plans.known_slots(limit))
        if form.cleaned_data.get("accept_risk"):
            params["risk_accepted"] = str(form.fields["accept_risk"].label)
    try:
        with transaction.atomic():
            return request_operation(
                kind=kind,
                limit=limit,
                holder=holder,
                user=user,
                reason=form.cleaned_data.get("reason", ""),
                params=params,
                token=form.cleaned_data["token"],
            )
    except IntegrityError:
        # The same form posted twice (a double click): one operation, shown again.
        return Operation.objects.get(token=form.cleaned_data["token"])


@require_GET
@login_required
def operation(request: HttpRequest, pk: int) -> HttpResponse:
    op = get_object_or_404(Operation.objects.select_related("limit"), pk=pk)
    if request.htmx and request.htmx.target == "op-status":
        response = render(request, "operation.html#status", {"op": op})
        return HttpResponseStopPolling(response.content) if op.finished else response
    return render(request, "operation.html", {"op": op})


def _filtered_operations(request: HttpRequest):
    queryset = Operation.objects.select_related("limit")
    filters = {
        "resource": request.GET.get("resource", "").strip()[:200],
        "operator": request.GET.get("operator", "").strip()[:150],
        "kind": request.GET.get("kind", ""),
        "outcome": request.GET.get("outcome", ""),
    }
    if filters["resource"]:
        queryset = queryset.filter(limit_name__icontains=filters["resource"])
    if filters["operator"]:
        queryset = queryset.filter(requested_by_name__iexact=filters["operator"])
    if filters["kind"] in OperationKind.values:
        queryset = queryset.filter(kind=filters["kind"])
    else:
        filters["kind"] = ""
    if filters["outcome"] in OperationStatus.values:
        queryset = queryset.filter(status=filters["outcome"])
    else:
        filters["outcome"] = ""
    return queryset.order_by("-created_at", "-id"), filters


@require_GET
@login_required
def audit(request: HttpRequest) -> HttpResponse:
    queryset, filters = _filtered_operations(request)
    if request.GET.get("format") == "csv":
        return _csv(queryset)
    paginator = Paginator(queryset, AUDIT_PAGE)
    number = request.GET.get("page", "1")
    page = paginator.get_page(number if number.isdigit() else 1)
    context = {
        "page": page,
        "filters": filters,
        "kinds": OperationKind.choices,
        "outcomes": OperationStatus.choices,
        "csv_query": request.GET.urlencode(),
        "policy": {
            "on": policy.is_on(),
            "grace": settings.AUTO_RELEASE_GRACE_MINUTES,
            "candidates": policy.candidates()[:100],
            "now": timezone.now(),
        },
    }
    return render(request, "audit.html", context)


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_safe(value: object) -> str:
    # Spreadsheets run cells starting with these as formulas; names come from anyone.
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv(queryset) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    header = [
        "id",
        "created_at",
        "finished_at",
        "operator",
        "kind",
        "resource",
        "holder",
        "reason",
        "status",
        "message",
        "before",
        "after",
    ]

    def rows():
        yield writer.writerow(header)
        for op in queryset.iterator(chunk_size=500):
            holder = op.holder.get("flow_run_name") or op.holder.get("task_run_name") or ""
            values = [
                op.pk,
                op.created_at.isoformat(),
                op.finished_at.isoformat() if op.finished_at else "",
                op.requested_by_name,
                op.kind,
                op.limit_name,
                holder,
                op.reason,
                op.status,
                op.message,
                op.before,
                op.after,
            ]
            yield writer.writerow([_csv_safe(value) for value in values])

    response = StreamingHttpResponse(rows(), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="reslock-audit.csv"'
    return response


@require_http_methods(["GET", "POST"])
@operator_required
def bulk_release(request: HttpRequest) -> HttpResponse:
    """Release every stale or zombie holder of the filtered board, after a dry-run preview.

    The confirmation releases exactly the holders its preview listed (their keys ride in the
    form) that are still safe to release now: one that appeared since is never released, and
    one that changed is left alone, with a note saying so.
    """
    params = request.POST if request.method == "POST" else request.GET
    query = BoardQuery.from_params(params)
    limits = query.base().filter(gone_at__isnull=True).prefetch_related("holders")
    items = []
    for limit in limits.filter(
        holders__condition__in=[Condition.STALE, Condition.ZOMBIE]
    ).distinct()[:500]:
        for holder in limit.holders.all():
            if holder.condition in (Condition.STALE, Condition.ZOMBIE):
                items.append((limit, holder, plans.plan_release(limit, holder)))
    allowed = [(limit, holder) for limit, holder, plan in items if plan.allowed]
    # The reason comes from the operator's own form only: a link must not pre-fill the audit
    # trail. Without NUL, which no database takes: a reason of NULs is no reason.
    reason = request.POST.get("reason", "").replace("\x00", "").strip()[:1000]
    error = ""
    if request.method == "POST":
        previewed = set(request.POST.getlist("holder"))
        chosen = [
            (limit, holder) for limit, holder in allowed if _bulk_key(limit, holder) in previewed
        ]
        if not chosen:
            error = "Nothing to release: the board changed meanwhile."
        elif not reason:
            error = "Say why: the reason goes into the audit trail."
        else:
            batch = _bulk_token(params.get("token"))
            if Operation.objects.filter(bulk=batch).exists():
                return redirect("bulk", batch=batch)
            with transaction.atomic():
                for limit, holder in chosen:
                    request_operation(
                        kind=OperationKind.RELEASE_HOLDER,
                        limit=limit,
                        holder=holder,
                        user=request.user,
                        reason=reason,
                        bulk=batch,
                    )
            if len(previewed) > len(chosen):
                messages.warning(
                    request,
                    f"{len(previewed) - len(chosen)} holder(s) of the preview changed meanwhile "
                    "and were left alone.",
                )
            url = reverse("bulk", args=[batch])
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    context = {
        "query": query,
        "items": [(limit, holder, plan, _bulk_key(limit, holder)) for limit, holder, plan in items],
        "allowed": len(allowed),
        "token": uuid.uuid4(),
        "error": error,
        "reason": reason,
    }
    return render(request, "bulk.html", context, status=400 if error else 200)


def _bulk_key(limit: Limit, holder: Holder) -> str:
    return f"{limit.pk}:{holder.key}"


def _bulk_token(raw: str | None) -> uuid.UUID:
    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise Http404("This bulk form is damaged: open it again from the board.") from None


@require_GET
@login_required
def bulk(request: HttpRequest, batch: uuid.UUID) -> HttpResponse:
    ops = list(Operation.objects.filter(bulk=batch).order_by("id"))
    if not ops:
        raise Http404("No such bulk operation.")
    done = sum(op.finished for op in ops)
    context = {"ops": ops, "done": done, "total": len(ops), "batch": batch}
    if request.htmx and request.htmx.target == "bulk-status":
        response = render(request, "bulk_status.html", context)
        return HttpResponseStopPolling(response.content) if done == len(ops) else response
    return render(
        request,
        "bulk_status.html" if request.GET.get("fragment") else "bulk_progress.html",
        context,
    )
