"""Changing a limit's settings in the worker: set its value, activate or deactivate it, and
repair drift (lower a counter by the slots no lease backs). Each acts only if Prefect still
shows what the operator was shown."""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from reslock_web.models import (
    Kind,
    Limit,
    Operation,
    OperationKind,
    OperationStatus,
)
from reslock_web.operations.outcome import (
    Fail,
    Skip,
    current_limit,
    limit_snapshot,
    read_quietly,
    skipping,
)
from reslock_web.operations.plans import (
    TAG_OBSERVATION_GAP,
    known_slots,
    plan_repair,
    uncounted_holders,
    uncounted_words,
)
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.run import sync_limit_or_raise

log = logging.getLogger(__name__)


@skipping
def set_limit(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
    info = current_limit(operation, api)
    value, expected = operation.params["value"], operation.params["expected"]
    if info.limit == value:
        raise Skip(f"the limit is already {value}")
    if info.limit != expected:
        raise Skip(f"the limit changed meanwhile from {expected} to {info.limit}; nothing was done")
    api.update_limit(info.id, {"limit": value})
    return (
        OperationStatus.SUCCEEDED,
        f"Limit set from {expected} to {value}.",
        limit_snapshot(read_quietly(api, operation)),
    )


@skipping
def toggle(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
    info = current_limit(operation, api)
    active = operation.kind == OperationKind.ACTIVATE
    if info.active == active:
        raise Skip(f"the limit is already {'active' if active else 'inactive'}")
    if active:
        sync_limit_or_raise(api, operation.limit.name)
        inside = uncounted_holders(Limit.objects.get(pk=operation.limit_id))
        if inside:
            raise Skip(uncounted_words(inside))
    api.update_limit(info.id, {"active": active})
    after = limit_snapshot(read_quietly(api, operation))
    return OperationStatus.SUCCEEDED, f"Limit {'activated' if active else 'deactivated'}.", after


@skipping
def repair(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
    sync_limit_or_raise(api, operation.limit.name)  # fresh holders before deciding
    limit = Limit.objects.get(pk=operation.limit_id)
    info = current_limit(operation, api)
    shown = operation.params.get("shown_extra")
    if limit.kind == Kind.TAG:
        extra = _unleased_tag_slots(api, limit)
    else:
        if not operation.params.get("risk_accepted"):
            raise Fail("lowering a global or deployment counter needs the operator's acceptance")
        plan = plan_repair(limit, timezone.now())
        if not plan.allowed:
            raise Skip(plan.safety)
        extra = info.active_slots - known_slots(limit)
    if isinstance(shown, int):
        extra = min(extra, shown)
    if extra <= 0:
        raise Skip("Prefect's counter already matches the holders")
    api.decrement(info.name, extra)
    after = limit_snapshot(read_quietly(api, operation))
    return (
        OperationStatus.SUCCEEDED,
        f"Lowered used slots by {extra} (slots without a lease).",
        after,
    )


def _unleased_tag_slots(api: PrefectAPI, limit: Limit) -> int:
    """Slots of a tag limit that no lease backed in two readings far enough apart."""
    import time as clock

    first = _tag_reading(api, limit)
    clock.sleep(TAG_OBSERVATION_GAP)
    return min(first, _tag_reading(api, limit))


def _tag_reading(api: PrefectAPI, limit: Limit) -> int:
    """Counted slots minus every lease seen around the count: a lease ending or beginning
    between the reads can only make this smaller, never larger."""
    before = api.tag_holders(limit.resource)
    info = api.read_limit(str(limit.prefect_id))
    after = api.tag_holders(limit.resource)
    if before is None or after is None or info is None:
        raise Skip("the limit no longer exists in Prefect")
    return info.active_slots - len(set(before) | set(after))
