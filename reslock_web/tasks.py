"""Celery tasks: thin wrappers that take ids and primitives; the work lives elsewhere."""

from __future__ import annotations

from reslock_web.celery import app
from reslock_web.models import Heartbeat


@app.task(name="reslock.heartbeat", ignore_result=True)
def heartbeat() -> None:
    Heartbeat.objects.beat("worker")
