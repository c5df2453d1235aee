"""Safe self-healing, off by default: stale holders released by a policy, not a person.

With `RESLOCK_AUTO_RELEASE=stale`, beat's `reslock.auto-release` asks for the release of every
stale holder whose release the board would let an operator confirm (`plans.plan_release`
allows it: a tag holder whose task run is final, or a holder whose run is over and whose lease
is known), once its run has been over for `RESLOCK_AUTO_RELEASE_GRACE_MINUTES`. It asks through
the same path as the page (`requests.request_operation`), so the worker checks everything again
against Prefect before it acts, and the audit trail names the policy as the one who asked.

Nothing that needs an operator's judgement is ever automatic: a zombie, an uncounted run, a
live holder, a deployment run, a slot whose lease is unknown are never touched, and a flow run
is never marked crashed. `candidates()` is also the dry run the audit page shows while the
policy is off: what it would release, and when.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from reslock_web.models import (
    FINAL_OPERATION_STATUSES,
    Condition,
    Holder,
    Limit,
    Operation,
    OperationKind,
)
from reslock_web.operations.plans import plan_release
from reslock_web.operations.requests import request_operation

BY = "auto-release policy"
# One release a holder's claim: a tick that comes again finds its operation asked already.
TOKENS = uuid.UUID("0f5c1f0e-6a43-4c1d-9b6e-7b9d3f2a8c51")


@dataclass(frozen=True)
class Candidate:
    limit: Limit
    holder: Holder
    summary: str  # what the release does, as the confirmation page says it
    due_at: datetime  # its run's end + the grace

    def due(self, now: datetime) -> bool:
        return self.due_at <= now


def is_on() -> bool:
    return settings.AUTO_RELEASE == "stale"


def grace() -> timedelta:
    return timedelta(minutes=settings.AUTO_RELEASE_GRACE_MINUTES)


def candidates() -> list[Candidate]:
    """Every stale holder the policy may release, soonest first. A run whose end is not known
    (no state time) is left to an operator."""
    holders = (
        Holder.objects.filter(
            condition=Condition.STALE, limit__gone_at__isnull=True, state_at__isnull=False
        )
        .select_related("limit")
        .order_by("state_at", "id")
    )
    found = []
    for holder in holders:
        plan = plan_release(holder.limit, holder)
        if plan.allowed:
            found.append(Candidate(holder.limit, holder, plan.summary, holder.state_at + grace()))
    return found


def run(now: datetime | None = None) -> int:
    """Ask for the release of every candidate that is due; how many were asked for now."""
    if not is_on():
        return 0
    now = now or timezone.now()
    asked = 0
    for candidate in candidates():
        if candidate.due(now) and not _busy(candidate.limit):
            asked += _ask(candidate, now)
    return asked


def _busy(limit: Limit) -> bool:
    # An operation on this limit not yet ended (by anyone): the policy waits its turn.
    return (
        Operation.objects.filter(limit=limit).exclude(status__in=FINAL_OPERATION_STATUSES).exists()
    )


def _ask(candidate: Candidate, now: datetime) -> int:
    holder = candidate.holder
    token = uuid.uuid5(TOKENS, f"{candidate.limit.prefect_id}:{holder.key}:{holder.acquired_at}")
    minutes = settings.AUTO_RELEASE_GRACE_MINUTES
    reason = (
        f"Auto-release policy (RESLOCK_AUTO_RELEASE=stale): the run was "
        f"{holder.state_name or 'over'} at {holder.state_at:%Y-%m-%d %H:%M:%S} UTC, more than "
        f"{minutes} min before {now:%H:%M:%S} UTC, and its slot was still counted."
    )
    try:
        with transaction.atomic():
            request_operation(
                kind=OperationKind.RELEASE_HOLDER,
                limit=candidate.limit,
                holder=holder,
                user=None,
                by=BY,
                reason=reason,
                params={"requested_via": "policy"},
                token=token,
            )
    except IntegrityError:
        return 0  # asked before (and skipped or failed since): not again for this claim
    return 1
