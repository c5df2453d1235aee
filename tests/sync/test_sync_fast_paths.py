"""The sync's cheaper ways of reading and writing give what the plain ways gave."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from reslock_web.models import Limit, search_text
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync import fast_paths
from tests.support.net import wait_for
from tests.support.patient import patient_client


def filled(row: Limit, i: int, now) -> Limit:
    """Every kind of column with a value, and with none where the column allows it."""
    row.name, row.kind, row.resource = f"tag:é{i} <b>", "tag", f"é{i}"
    row.search_text = search_text(row.name, row.resource)
    row.deployment_id = uuid.uuid4() if i % 2 else None
    row.limit, row.active, row.active_slots = i, bool(i % 3), i % 4
    row.slot_decay_per_second = 0.5 * i
    row.prefect_created = now - timedelta(seconds=i)
    row.prefect_updated = None if i % 2 else now
    row.held_since = now if i % 2 else None
    row.evidence = [{"flag": "drift", "text": f"t{i} ü \x01"}] if i % 2 else []
    row.status, row.is_held, row.holder_count = "held", bool(i % 2), i
    return row


@pytest.mark.django_db
def test_limits_inserted_in_bulk_are_stored_as_django_would_store_them():
    now = timezone.now()
    fast = [filled(fast_paths.NewLimits()(uuid.uuid4(), now), i, now) for i in range(6)]
    plain = [
        filled(Limit(prefect_id=uuid.uuid4(), first_seen=now, changed_at=now), i, now)
        for i in range(6)
    ]
    with transaction.atomic():
        Limit.objects.create(prefect_id=uuid.uuid4(), name="older", kind="global", limit=1)
        fast_paths.insert_limits(fast)
        Limit.objects.bulk_create(plain)
    columns = [f.attname for f in Limit._meta.concrete_fields if f.attname != "id"]
    for mine, django in zip(fast, plain, strict=True):
        assert mine.pk is not None and not mine._state.adding
        stored = Limit.objects.filter(pk=mine.pk).values(*columns).get()
        expected = Limit.objects.filter(pk=django.pk).values(*columns).get()
        assert stored.pop("prefect_id") == mine.prefect_id
        assert expected.pop("prefect_id") == django.prefect_id
        assert stored.pop("deployment_id") == mine.deployment_id
        assert expected.pop("deployment_id") == django.deployment_id
        assert stored == expected


@pytest.mark.django_db(transaction=True)
def test_which_of_a_thousand_stored_runs_changed_is_answered_in_full(prefect_server):
    """More changed runs than one page of events holds, among many that did nothing."""
    from reslock_web.sync.prefect_runs import RUN_EVENT_PREFIXES

    started = timezone.now()
    with patient_client(prefect_server.api_url) as http:
        flow = http.post("/flows/", json={"name": f"changed-{uuid.uuid4().hex[:8]}"})
        runs = [
            http.post(
                "/flow_runs/",
                json={
                    "flow_id": flow.raise_for_status().json()["id"],
                    "state": {"type": "PENDING"},
                },
            )
            .raise_for_status()
            .json()["id"]
            for _ in range(60)  # more than one page of events (50)
        ]
    wanted = {f"prefect.flow-run.{run}" for run in runs}
    resources = [f"prefect.flow-run.{uuid.uuid4()}" for _ in range(940)] + sorted(wanted)
    random.Random(2).shuffle(resources)

    def all_found():
        with PrefectAPI(prefect_server.api_url) as api:
            found = api.resources_with_events(
                started, timezone.now(), RUN_EVENT_PREFIXES, resources
            )
        assert found <= wanted  # never one without an event
        return found if found == wanted else None

    wait_for(all_found, 30, interval=1, what="an event for each of the 60 runs")
