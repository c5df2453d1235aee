"""The real services the integration tests build on actually run."""

from __future__ import annotations

import os
import uuid

import pytest

from reslock_web.models import Heartbeat
from tests.support.net import wait_for
from tests.support.patient import patient_client


def test_the_prefect_server_fixture_is_a_real_prefect_server(prefect_server):
    name = f"resource:smoke-{uuid.uuid4().hex[:8]}"
    with patient_client(prefect_server.api_url, timeout=10) as http:
        assert http.get("/health").json() is True
        version = http.get("/admin/version").json()
        assert version.startswith("3.9")
        created = http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1})
        assert created.status_code == 201
        read = http.get(f"/v2/concurrency_limits/{name}").json()
    assert read["id"] == created.json()["id"] and read["limit"] == 1


@pytest.mark.django_db(transaction=True)
def test_the_celery_worker_fixture_consumes_from_real_redis(celery_worker):
    from reslock_web.celery import app
    from reslock_web.tasks import heartbeat

    assert app.conf.broker_url.startswith("redis://")
    heartbeat.delay()
    beat = wait_for(
        lambda: Heartbeat.objects.filter(service="worker").first(), 15, what="heartbeat"
    )
    # The worker thread runs in this process: the row proves the message went through Redis.
    assert beat.pid == os.getpid()
