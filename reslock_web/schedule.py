"""The periodic jobs, built from settings so that an operator changes one variable, not code."""

from __future__ import annotations

from typing import Any


def _every(seconds: int, task: str) -> dict[str, Any]:
    # `expires` just under the period: if the queue backs up, a late copy is dropped instead
    # of piling up behind the next one.
    return {"task": task, "schedule": float(seconds), "options": {"expires": seconds * 0.9}}


def beat_schedule(settings: Any) -> dict[str, dict[str, Any]]:
    return {
        "reslock-heartbeat": _every(settings.HEARTBEAT_SECONDS, "reslock.heartbeat"),
        "reslock-sync": _every(settings.SYNC_SECONDS, "reslock.sync"),
    }
