"""Operations for scripts: `POST /api/v1/operations` and `GET /api/v1/operations/<id>`.

A script asks for exactly what the confirmation page asks for, through the same path
(`operate.submit`): the same checks, the same plan and refusals, the same operation row in the
audit trail, carried out by the same Celery worker. Only a bearer token is accepted here, never
a session cookie, so that no page of another site can make a logged-in browser ask for one (the
CSRF check is off for this view for that reason alone).

A request is idempotent by its `Idempotency-Key` header: the same key from the same user gives
the same operation back, so a script that retries after a timeout never asks twice.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from reslock_web.models import ApiToken, Holder, Limit, Operation, OperationKind
from reslock_web.web.auth import api_user_required
from reslock_web.web.operate import ACTIONS, submit

MAX_KEY = 200
# Where the operation-specific fields of a request go in the confirmation form.
FORM_FIELDS = ("reason", "value", "expected", "confirm_zero", "crash_flow_run", "accept_risk")
KEY_NAMESPACE = uuid.UUID("5b0d7a52-8f3e-4c59-9d0e-1f6a3c2b7e41")


def _error(status: int, message: str, **more: Any) -> JsonResponse:
    return JsonResponse({"error": message, **more}, status=status)


def operation_json(operation: Operation) -> dict[str, Any]:
    return {
        "id": operation.pk,
        "kind": operation.kind,
        "resource": operation.limit_name,
        "holder": operation.holder or None,
        "params": operation.params,
        "reason": operation.reason,
        "requested_by": operation.requested_by_name,
        "status": operation.status,
        "finished": operation.finished,
        "message": operation.message,
        "before": operation.before,
        "after": operation.after,
        "created_at": operation.created_at.isoformat(),
        "finished_at": operation.finished_at.isoformat() if operation.finished_at else None,
        "url": reverse("operation", args=[operation.pk]),
        "api_url": reverse("api-operation", args=[operation.pk]),
    }


def token_for(user: Any, key: str) -> uuid.UUID:
    """The operation token of a client's key: one per user and key."""
    return uuid.uuid5(KEY_NAMESPACE, f"{user.pk}:{key}")


def find_holder(limit: Limit, ref: str) -> Holder | None:
    """A shown holder of the limit by its flow run, task run or lease id, or by its flow run's
    or task run's name when only one holder goes by it."""
    holders = list(limit.holders.shown())
    try:
        wanted = uuid.UUID(ref)
    except ValueError:
        named = [h for h in holders if ref in (h.flow_run_name, h.task_run_name)]
        return named[0] if len(named) == 1 else None
    found = [h for h in holders if wanted in (h.flow_run_id, h.task_run_id, h.lease_id)]
    return found[0] if len(found) == 1 else None


@csrf_exempt
@require_POST
def operations(request: HttpRequest) -> JsonResponse:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        response = _error(401, "send Authorization: Bearer <token> (a session is not accepted)")
        response["WWW-Authenticate"] = 'Bearer realm="reslock"'
        return response
    user = ApiToken.objects.user_for(header.removeprefix("Bearer ").strip())
    if user is None:
        return _error(401, "invalid or revoked API token")
    if not user.has_perm("reslock.operate"):
        return _error(403, "operating locks needs the reslock.operate permission")
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key or len(key) > MAX_KEY or not key.isprintable():
        return _error(
            400,
            f"send an Idempotency-Key header (1 to {MAX_KEY} printable characters): the same "
            "key gives the same operation back, so a retry never asks twice",
        )
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return _error(400, "the body must be a JSON object")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    action, name = body.get("kind"), body.get("resource")
    if action not in ACTIONS:
        return _error(400, f"kind must be one of: {', '.join(ACTIONS)}")
    if not isinstance(name, str) or not name or "\x00" in name:
        return _error(400, "resource must be the name of a resource on the board")
    kind = ACTIONS[action]
    token = token_for(user, key)
    earlier = Operation.objects.filter(token=token).first()
    if earlier is not None:
        if (earlier.kind, earlier.limit_name) != (kind, name):
            return _error(409, "this Idempotency-Key was used for another operation")
        return JsonResponse(operation_json(earlier), status=200)
    limit = Limit.objects.present().prefetch_related("holders").filter(name=name).first()
    if limit is None:
        return _error(404, f"no resource named {name!r} is on the board")
    holder = None
    if kind == OperationKind.RELEASE_HOLDER:
        ref = body.get("holder")
        holder = find_holder(limit, ref) if isinstance(ref, str) and ref else None
        if holder is None:
            return _error(
                400,
                "holder must name one holder of this resource: its flow run, task run or lease "
                "id, or a flow run or task run name only one holder goes by",
                holders=[h.flow_run_name or h.task_run_name for h in limit.holders.shown()],
            )
    data = {
        "token": str(token),
        "limit_id": str(limit.prefect_id),
        "holder": str(holder.pk) if holder else "",
        **{field: _form_value(body.get(field)) for field in FORM_FIELDS if field in body},
    }
    submission = submit(user, kind, limit, holder, data, via="api")
    if not submission.form.is_valid():
        errors = {field: [str(e) for e in errs] for field, errs in submission.form.errors.items()}
        return _error(
            400, "the request does not pass the confirmation form's checks", fields=errors
        )
    if not submission.plan.allowed:
        plan = submission.plan
        return _error(409, "refused", summary=plan.summary, safety=plan.safety, steps=plan.steps)
    response = JsonResponse(operation_json(submission.operation), status=202)
    response["Location"] = reverse("api-operation", args=[submission.operation.pk])
    return response


def _form_value(value: Any) -> str:
    """A JSON value as the confirmation form receives it: checkboxes are on only when true."""
    if isinstance(value, bool):
        return "on" if value else ""
    return "" if value is None else str(value)


@require_GET
@api_user_required
def operation(request: HttpRequest, pk: int) -> JsonResponse:
    found = Operation.objects.filter(pk=pk).first()
    if found is None:
        return _error(404, f"no operation {pk}")
    return JsonResponse(operation_json(found))
