"""Prefect Cloud: its workspace URLs, its API key on the event stream, and its rate limit.

The Cloud is out of reach here; `CloudStandIn` speaks its URL shape, key and 429s in front of
the test's real Prefect server.
"""

from __future__ import annotations

import math
import threading
import time
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone

from reslock_web.env import is_prefect_cloud, prefect_ui_url
from reslock_web.models import Condition, Holder, Limit, Operation, OperationStatus
from reslock_web.prefect_api import PrefectAPI, PrefectError
from reslock_web.prefect_budget import Budget, Rate, Throttled, reserve
from reslock_web.sync import sync_limit
from tests.support.cloud_standin import CloudStandIn
from tests.support.listener_process import ListenerProcess
from tests.support.net import wait_for
from tests.support.operating import finished, form, sync, unique
from tests.support.patient import patient_client

KEY = "pnu_standin0123456789abcdefghijklmnopqrstu"


@pytest.fixture
def cloud(prefect_server):
    standin = CloudStandIn(prefect_server.api_url, KEY)
    yield standin
    standin.close()


# --- addresses ------------------------------------------------------------------------
def test_a_cloud_workspace_gets_cloud_links_and_a_budget_by_default():
    api = "https://api.prefect.cloud/api/accounts/a1b2/workspaces/c3d4"
    assert is_prefect_cloud(api)
    assert prefect_ui_url(api) == "https://app.prefect.cloud/account/a1b2/workspace/c3d4"
    assert not is_prefect_cloud("http://prefect.internal:4200/api")
    assert prefect_ui_url("http://bob:pw@prefect.internal:4200/api") == (
        "http://prefect.internal:4200"
    )


def test_the_budget_never_lets_more_than_its_rate_through_in_any_minute():
    for per_minute in (1, 2, 20, 100, 250, 1000):
        rate = Rate.per_minute(per_minute)
        tat, now, sent = 0.0, 0.0, []
        while now < 600:  # ten minutes of callers that ask as often as they can
            new = reserve(tat, 0.0, now, rate, max_wait=0.0)
            if new is None:
                now += 0.01
                continue
            tat = new
            sent.append(now)
        start = 0
        for end, at in enumerate(sent):
            while at - sent[start] >= 60:
                start += 1
            assert end - start + 1 <= per_minute, (per_minute, at)
        assert len(sent) >= 9 * per_minute * 0.8, (per_minute, len(sent))  # and uses it


def test_a_429_seen_by_one_process_holds_every_process_sharing_the_budget(settings):
    """Two budgets on one Redis key are two reslock processes."""
    scope = unique("scope")
    first = Budget(6000, settings.CELERY_BROKER_URL, scope=scope)
    second = Budget(6000, settings.CELERY_BROKER_URL, scope=scope)
    first.hold_off(2.0)
    started = time.monotonic()
    second.take(max_wait=10)
    assert time.monotonic() - started >= 1.5
    first.hold_off(30.0)
    with pytest.raises(Throttled):  # and a caller that may not wait that long is told so
        second.take(max_wait=1)


def test_processes_sharing_the_budget_stay_within_it_together(settings):
    scope = unique("scope")
    budgets = [Budget(120, settings.CELERY_BROKER_URL, scope=scope) for _ in range(3)]
    sent: list[float] = []
    lock = threading.Lock()

    def caller(budget: Budget) -> None:
        until = time.monotonic() + 8
        while time.monotonic() < until:
            budget.take(max_wait=10)
            with lock:
                sent.append(time.monotonic())

    threads = [threading.Thread(target=caller, args=(b,)) for b in budgets for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = Rate.per_minute(120)
    # A burst, then one request per interval: what any 8 s may hold (with one of slack for the
    # callers' clocks against Redis's).
    burst = round(rate.tolerance / rate.interval) + 1
    allowed = burst + math.ceil(8 / rate.interval) - 1 + 1
    sent.sort()
    start = 0
    for end, at in enumerate(sent):
        while at - sent[start] >= 8:
            start += 1
        assert end - start + 1 <= allowed, (end - start + 1, allowed)
    assert len(sent) >= 8 / rate.interval * 0.7, len(sent)  # the budget is shared, not starved


# --- the key and the stream -----------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_listener_follows_a_cloud_workspace_with_its_api_key(prefect_server, cloud, flows):
    name = unique("db-cloud")
    listener = ListenerProcess(SimpleNamespace(api_url=cloud.api_url), PREFECT_API_KEY=KEY)
    try:
        assert cloud.stream_auth and all(cloud.stream_auth), cloud.stream_auth
        holder = flows.start("helper_holder", name=name, flow_run_name="cloud-holder")
        holder.wait_event("acquired")
        wait_for(
            lambda: Holder.objects.filter(
                limit__name=name, condition=Condition.HOLDING, flow_run_name="cloud-holder"
            ).exists(),
            60,
            what="the holder to reach the board through the Cloud stream",
        )
        holder.release()
        holder.wait_event("released")
    finally:
        assert listener.stop() == 0
    # Every REST call carried the key: nothing was refused for it.
    assert not [r for r in cloud.requests if r[3] == 401], cloud.requests[:5]


# --- the rate limit -------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_throttled_prefect_slows_a_sync_down_but_never_fails_it(prefect_server, cloud):
    name = unique("resource:throttled")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    cloud.per_window, cloud.window = 2, 3.0  # two requests every 3 s: every sync meets 429s
    with PrefectAPI(cloud.api_url, KEY, patience=120) as api:
        for _ in range(3):
            run = sync_limit(api, name, wait=120)
            assert run is not None and run.ok, run and run.error
    assert cloud.throttled() > 0
    assert Limit.objects.named(name) is not None


def test_a_429_that_outlasts_the_patience_is_an_error_that_says_so(prefect_server, cloud):
    cloud.per_window, cloud.window = 1, 600.0
    with PrefectAPI(cloud.api_url, KEY, patience=2) as api:
        assert api.health()
        with pytest.raises(PrefectError) as error:
            api.health()
    assert error.value.status == 429 and error.value.retryable
    assert "429" in str(error.value)


def test_a_budget_under_the_cloud_limit_spares_reslock_the_429s(prefect_server, cloud, settings):
    cloud.per_window, cloud.window = 60, 60.0
    budget = Budget(50, settings.CELERY_BROKER_URL, scope=unique("scope"))
    with PrefectAPI(cloud.api_url, KEY, budget=budget, patience=60) as api:
        until = time.monotonic() + 8
        calls = 0
        while time.monotonic() < until:
            assert api.health()
            calls += 1
    # Unbudgeted, these calls would pass 60 within a second or two.
    assert cloud.throttled() == 0
    assert 8 <= calls <= 50 and cloud.most_in_any(60) <= 50


@pytest.mark.django_db(transaction=True)
def test_an_operation_against_a_throttled_prefect_still_succeeds(
    prefect_server, cloud, settings, celery_worker, operator_client
):
    name = unique("resource:throttled-op")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    sync(prefect_server)
    settings.PREFECT_API_URL, settings.PREFECT_API_KEY = cloud.api_url, KEY
    cloud.per_window, cloud.window = 2, 3.0
    url = reverse("operate", args=["deactivate", name])
    assert operator_client.post(url, form(operator_client, url)).status_code == 302
    operation = finished(Operation.objects.get(limit__name=name).pk, timeout=180)
    assert operation.status == OperationStatus.SUCCEEDED, operation.message
    assert cloud.throttled() > 0
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active"] is False


def test_events_page_through_a_workspace_address(prefect_server, cloud):
    """Prefect builds each events page's `next_page` from the address it was asked on, which
    behind a gateway is not the workspace address reslock uses."""
    prefix = unique("paged")
    since = timezone.now()
    with patient_client(prefect_server.api_url) as http:
        for i in range(60):  # more than one page of 50
            body = {"name": f"{prefix}-{i}", "limit": 1}
            http.post("/v2/concurrency_limits/", json=body).raise_for_status()

    def created() -> int:
        with PrefectAPI(cloud.api_url, KEY) as api:
            return sum(
                event.resource.get("prefect.resource.name", "").startswith(prefix)
                for event in api.events(
                    since, timezone.now(), ["prefect.concurrency-limit.created"]
                )
            )

    wait_for(lambda: created() == 60, 60, what="all 60 creations, over two pages")
