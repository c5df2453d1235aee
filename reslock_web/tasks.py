"""Celery tasks: thin wrappers that take ids and primitives; the work lives elsewhere."""

from __future__ import annotations

from reslock_web.alerts import webhook
from reslock_web.celery import app
from reslock_web.models import Heartbeat
from reslock_web.operations import policy
from reslock_web.operations import sweep as operations_sweep
from reslock_web.operations.jobs import MAX_ATTEMPTS, TryAgain
from reslock_web.operations.jobs import run as run_operation
from reslock_web.operations.queue import OPERATE_TASK
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync import retention
from reslock_web.sync.run import sync_with_settings


@app.task(name="reslock.heartbeat", ignore_result=True)
def heartbeat() -> None:
    Heartbeat.objects.beat("worker")


@app.task(name="reslock.sync", ignore_result=True)
def sync(periodic: bool = False) -> None:
    # The lock inside sync_all makes a second copy (another worker, a late beat) return at once.
    # Beat's copies (periodic) back off while Prefect keeps failing; one asked for runs always.
    sync_with_settings(periodic=periodic)


@app.task(name="reslock.prune", ignore_result=True)
def prune() -> None:
    retention.prune()


@app.task(name="reslock.notify", ignore_result=True)
def notify() -> None:
    webhook.deliver_due()


@app.task(name="reslock.auto_release", ignore_result=True)
def auto_release() -> None:
    policy.run()


@app.task(name="reslock.sweep", ignore_result=True)
def sweep() -> None:
    operations_sweep.sweep()


@app.task(
    name=OPERATE_TASK,
    ignore_result=True,
    autoretry_for=(TryAgain,),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=MAX_ATTEMPTS,
)
def operate(operation_id: int) -> None:
    # Claiming inside run() makes a redelivered or duplicated message a no-op.
    with PrefectAPI.from_settings() as api:
        run_operation(operation_id, api)
