"""Celery tasks: thin wrappers that take ids and primitives; the work lives elsewhere."""

from __future__ import annotations

from reslock_web.celery import app
from reslock_web.models import Heartbeat
from reslock_web.sync import sync_with_settings


@app.task(name="reslock.heartbeat", ignore_result=True)
def heartbeat() -> None:
    Heartbeat.objects.beat("worker")


@app.task(name="reslock.sync", ignore_result=True)
def sync() -> None:
    # The lock inside sync_all makes a second copy (another worker, a late beat) return at once.
    sync_with_settings()
