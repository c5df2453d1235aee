"""The periodic jobs, built from settings so that an operator changes one variable, not code."""

from __future__ import annotations

from typing import Any

SWEEP_SECONDS = 30
PRUNE_SECONDS = 3600
NOTIFY_SECONDS = 10  # how soon a status change reaches the webhook
AUTO_RELEASE_SECONDS = 60  # how often the auto-release policy looks (it does nothing while off)


def _every(seconds: int, task: str, **kwargs: Any) -> dict[str, Any]:
    # `expires` just under the period: if the queue backs up, a late copy is dropped instead
    # of piling up behind the next one.
    entry = {"task": task, "schedule": float(seconds), "options": {"expires": seconds * 0.9}}
    if kwargs:
        entry["kwargs"] = kwargs
    return entry


def beat_schedule(settings: Any) -> dict[str, dict[str, Any]]:
    return {
        "reslock-heartbeat": _every(settings.HEARTBEAT_SECONDS, "reslock.heartbeat"),
        # periodic=True: these copies back off while Prefect keeps failing (see sync/health.py).
        "reslock-sync": _every(settings.SYNC_SECONDS, "reslock.sync", periodic=True),
        # Re-sends operations whose message was lost and ends those whose worker died.
        "reslock-sweep": _every(SWEEP_SECONDS, "reslock.sweep"),
        # Lock events and applied-event ids past RESLOCK_EVENTS_RETENTION_DAYS (retention.py).
        "reslock-prune": _every(PRUNE_SECONDS, "reslock.prune"),
        # Resources that entered or left a bad status, to RESLOCK_WEBHOOK_URL (alerts/webhook.py).
        "reslock-notify": _every(NOTIFY_SECONDS, "reslock.notify"),
        # Safe self-healing, off unless RESLOCK_AUTO_RELEASE=stale (operations/policy.py).
        "reslock-auto-release": _every(AUTO_RELEASE_SECONDS, "reslock.auto_release"),
    }
