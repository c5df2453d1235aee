"""The webhook: a resource entering or leaving a bad status, posted as Slack-compatible JSON.

`record` runs inside the sync's write, next to the change it announces: the row is an outbox,
so a change is announced however the process that found it ends (the listener, a worker) and
never for a write that was rolled back. Beat's `reslock.notify` (every 10 s) posts
what is due (`deliver_due`): each change is claimed first (two workers never post one twice),
marked sent only after a 2xx, and on any other answer, or none, tried again with back-off,
`MAX_ATTEMPTS` times in all, then given up with an error in the log.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from urllib.parse import quote

import httpx
from django.conf import settings
from django.utils import timezone

from reslock_web.models import Limit, Status, StatusChange

log = logging.getLogger(__name__)

# What needs an operator (the board's "Needs attention"): entering or leaving one is news.
BAD = frozenset(
    {
        Status.OVER_LIMIT,
        Status.DEADLOCKED,
        Status.UNCOUNTED,
        Status.ZOMBIE,
        Status.STALE,
        Status.DRIFT,
    }
)
MAX_ATTEMPTS = 6
TIMEOUT_SECONDS = 10
FIRST_RETRY_SECONDS = 5  # then 10, 20, 40, 80: about 2.5 minutes before giving up
BATCH = 50


def newsworthy(previous: str, status: str) -> bool:
    """A bad status came, went, or turned into another bad status."""
    return previous != status and (previous in BAD or status in BAD)


def record(row: Limit, previous: str) -> None:
    """Note that `row` changed from `previous` (empty for a new limit) to its status now, if
    that is news and a webhook is set; inside the caller's transaction."""
    if settings.WEBHOOK_URL and newsworthy(previous, row.status):
        StatusChange.objects.create(
            limit=row,
            limit_name=row.name,
            previous=previous,
            status=row.status,
            evidence=row.evidence or [],
        )


def message(change: StatusChange) -> dict[str, object]:
    """Slack's incoming-webhook shape (`text`), with the facts as fields for other receivers."""
    url = f"{settings.BOARD_URL}/resources/{quote(change.limit_name, safe='')}"
    label = Status(change.status).label
    was = Status(change.previous).label if change.previous else ""
    why = next((item.get("text", "") for item in change.evidence if item.get("text")), "")
    if change.status in BAD:
        text = f"{change.limit_name} is {label}" + (f" (was {was})" if was else "")
        text += f": {why}" if why else "."
    else:
        text = f"{change.limit_name} is no longer {was}: now {label}."
    link = f" <{url}|Open it on the board>" if settings.BOARD_URL else ""
    return {
        "text": f"reslock: {text}{link}",
        "resource": change.limit_name,
        "status": change.status,
        "previous": change.previous or None,
        "bad": change.status in BAD,
        "evidence": change.evidence,
        "at": change.happened_at.isoformat(),
        "url": url if settings.BOARD_URL else None,
        "id": change.pk,
    }


def deliver_due(now: datetime | None = None) -> int:
    """Post every change whose time has come, oldest first; how many the webhook accepted."""
    if not settings.WEBHOOK_URL:
        return 0
    now = now or timezone.now()
    ids = list(StatusChange.objects.due(now).values_list("pk", flat=True)[:BATCH])
    return sum(deliver(change_id, now) for change_id in ids)


def deliver(change_id: int, now: datetime) -> bool:
    if not StatusChange.objects.claim(change_id, now, seconds=TIMEOUT_SECONDS + 20):
        return False  # another worker has it, or it was sent meanwhile
    change = StatusChange.objects.get(pk=change_id)
    try:
        response = httpx.post(settings.WEBHOOK_URL, json=message(change), timeout=TIMEOUT_SECONDS)
        error = "" if 200 <= response.status_code < 300 else f"answered {response.status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    attempts = change.attempts + 1
    if not error:
        StatusChange.objects.filter(pk=change_id).update(
            sent_at=timezone.now(), attempts=attempts, last_error="", claimed_until=None
        )
        return True
    given_up = attempts >= MAX_ATTEMPTS
    StatusChange.objects.filter(pk=change_id).update(
        attempts=attempts,
        last_error=error[:1000],
        given_up=given_up,
        claimed_until=None,
        next_try_at=now + timedelta(seconds=FIRST_RETRY_SECONDS * 2 ** (attempts - 1)),
    )
    if given_up:
        log.error("webhook gave up on %s after %s attempts: %s", change, attempts, error)
    else:
        log.warning("webhook did not take %s (%s): tried again later", change, error)
    return False
