"""Handing operations to Celery: a broker message is only a nudge, the row is the truth.

`dispatch(operation)` sends the message after the request's transaction commits. If the broker
(Redis) does not answer, the request still succeeds: the row stays pending with a note that
says so, and the sweep (`sweep`) sends it again later. A message sent twice is harmless:
`jobs.run()` claims an operation with a compare-and-set, so the second delivery does nothing.
The task is sent by its name through the project's Celery app (imported here, not Celery's
`current_app`: a web process imports no task module, and its current app would be Celery's
unconfigured default), so that this module needs nothing of the task module above it.
"""

from __future__ import annotations

import logging

from django.db import transaction
from kombu.exceptions import OperationalError as BrokerError

from reslock_web.celery import app
from reslock_web.models import Operation, OperationStatus

log = logging.getLogger(__name__)

# tasks.operate's name: one home for it, read by the task's decorator too.
OPERATE_TASK = "reslock.operate"

QUEUED_NOTE = (
    "Queued: the job broker (Redis) is not answering, so no worker has this job yet. "
    "It starts by itself once the broker is back; nothing has been changed in Prefect."
)
# One quick retry covers a connection the broker closed (a Redis restart); a broker that is
# really down must not keep the operator's request waiting.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}


def dispatch(operation: Operation) -> None:
    """Send the operation to a worker once the current transaction has committed."""
    transaction.on_commit(lambda: send(operation.pk))


def send(operation_id: int) -> bool:
    """Publish one operation; on a broker failure, note it on the row and return False."""
    try:
        app.send_task(OPERATE_TASK, args=[operation_id], retry=True, retry_policy=PUBLISH_RETRY)
    except (BrokerError, OSError) as error:
        log.warning("operation %s not queued, the broker did not answer: %s", operation_id, error)
        Operation.objects.filter(pk=operation_id, status=OperationStatus.PENDING).update(
            message=QUEUED_NOTE
        )
        return False
    Operation.objects.filter(
        pk=operation_id, status=OperationStatus.PENDING, message=QUEUED_NOTE
    ).update(message="")
    return True
