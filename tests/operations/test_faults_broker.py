"""Redis down when an operator clicks: the operation is recorded and queued, the page says so,
nothing runs; the periodic sweep sends it again once Redis is back, and it runs exactly once
even when its message arrives twice. The broker is a redis-server of the test's own, stopped
and started again; Prefect is the real test server behind a counting HTTP hop."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
import redis
from django.urls import reverse
from django.utils import timezone

from reslock_web.models import Limit, Operation, OperationStatus
from reslock_web.operations.queue import QUEUED_NOTE
from reslock_web.operations.sweep import sweep
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.run import sync_all
from tests.support.net import wait_for
from tests.support.operating import form, unique
from tests.support.patient import patient_client
from tests.support.redis_process import RedisProcess

pytestmark = pytest.mark.django_db(transaction=True)


def point_celery_at(url: str) -> None:
    """Make the app publish to (and test workers consume from) another broker."""
    from kombu import pools

    from reslock_web.celery import app

    if app._pool is not None:
        app.pool.force_close_all()
    # kombu keeps one pool per broker for the whole process: drop them all, or switching
    # back would hand out the pool closed just above ("Acquire on closed pool").
    pools.reset()
    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def own_redis():
    from reslock_web.celery import app

    server = RedisProcess()
    server.start()
    saved = app.conf.broker_url
    point_celery_at(server.url(12))
    yield server
    point_celery_at(saved)
    server.close()


def queued_messages(server: RedisProcess) -> int:
    with redis.Redis.from_url(server.url(12)) as client:
        return client.llen("celery")


def test_an_operation_asked_for_while_redis_is_down_runs_exactly_once_when_it_is_back(
    prefect_server, proxy, own_redis, operator_client
):
    from celery.contrib.testing.worker import start_worker

    from reslock_web.celery import app

    name = unique("resource:broker")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    with PrefectAPI(prefect_server.api_url) as api:
        assert sync_all(api).ok
    own_redis.stop()

    url = reverse("operate", args=["set-limit", name])
    started = time.monotonic()
    response = operator_client.post(url, {**form(operator_client, url), "value": "2"})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert time.monotonic() - started < 10  # the operator is not kept waiting on the broker
    operation = Operation.objects.get(limit_name=name)
    assert operation.status == OperationStatus.PENDING and operation.message == QUEUED_NOTE
    page = operator_client.get(response["Location"])
    assert page.status_code == 200
    text = page.content.decode()
    assert "no worker has this job yet" in text and "once the broker is back" in text
    assert "nothing has been changed in Prefect" in text

    # Nothing ran, and a sweep while Redis is still down fails quietly.
    Operation.objects.filter(pk=operation.pk).update(
        created_at=timezone.now() - timedelta(minutes=2)
    )
    assert sweep() == {"requeued": 0, "ended": 0, "fenced": 0}
    assert proxy.forwarded["PATCH"] == 0
    assert Operation.objects.get(pk=operation.pk).status == OperationStatus.PENDING

    own_redis.start()
    # Two sweeps before any worker is up: the same operation is queued twice.
    assert sweep()["requeued"] == 1
    assert sweep()["requeued"] == 1
    assert queued_messages(own_redis) == 2
    assert Operation.objects.get(pk=operation.pk).message == ""  # queued for real now
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        done = wait_for(
            lambda: (op := Operation.objects.get(pk=operation.pk)).finished and op,
            60,
            what="the operation to finish",
        )
        wait_for(lambda: queued_messages(own_redis) == 0, 30, what="both copies consumed")
        time.sleep(1)  # the second copy's claim has been tried (it finds nothing to do)
    done.refresh_from_db()
    assert done.status == OperationStatus.SUCCEEDED, done.message
    assert done.attempts == 1  # claimed once
    assert proxy.forwarded["PATCH"] == 1  # Prefect changed once
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["limit"] == 2
    assert Limit.objects.named(name).limit == 2


def test_every_operation_of_a_batch_is_kept_and_noted_when_redis_is_down(own_redis):
    """A bulk release dispatches many operations in one transaction: each is noted, none lost."""
    from django.db import transaction

    from reslock_web.models import Kind
    from reslock_web.operations.queue import dispatch

    own_redis.stop()
    limit = Limit.objects.create(
        prefect_id=uuid.uuid4(), name=unique("resource:bulk"), kind=Kind.GLOBAL, limit=1
    )
    with transaction.atomic():
        ops = [
            Operation.objects.create(
                kind="activate",
                limit=limit,
                limit_name=limit.name,
                requested_by_name="olga-operator",
                token=uuid.uuid4(),
            )
            for _ in range(3)
        ]
        for op in ops:
            dispatch(op)
    assert [op.message for op in Operation.objects.filter(limit=limit)] == [QUEUED_NOTE] * 3
