"""Prefect Cloud: its workspace URLs, its API key on the event stream, and its rate limit.

The Cloud is out of reach here; `CloudStandIn` speaks its URL shape, key and 429s in front of
the test's real Prefect server.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.urls import reverse
from django.utils import timezone
from playwright.sync_api import expect

from reslock_web.env import is_prefect_cloud, prefect_ui_url
from reslock_web.models import Condition, Holder, Limit, Operation, OperationStatus
from reslock_web.prefect_io.api import PrefectAPI, PrefectError
from reslock_web.prefect_io.budget import Budget, Rate, Throttled, reserve
from reslock_web.sync.health import BACKOFF_AFTER, freshness, sync_backoff
from reslock_web.sync.run import sync_limit, sync_with_settings
from tests.support.cloud_standin import CloudStandIn
from tests.support.listener_process import ListenerProcess
from tests.support.net import wait_for
from tests.support.operating import finished, form, sync, unique
from tests.support.patient import patient_client
from tests.support.readouts import banner, unlabelled

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


@pytest.mark.django_db(transaction=True)
def test_a_sync_prefect_keeps_throttling_is_throttled_not_failed_and_the_next_pass_tries_again(
    prefect_server, cloud, settings, viewer_client
):
    """Past its patience a sync stops, and says so: the banner, /metrics and the API call it
    throttled, not failing, no back-off starts, and the next periodic pass simply runs."""
    settings.PREFECT_API_URL, settings.PREFECT_API_KEY = cloud.api_url, KEY
    settings.PREFECT_MAX_REQUESTS_PER_MINUTE = 0  # Prefect's 429s alone, no shared hold
    settings.METRICS_TOKEN = "metrics-token"
    cloud.per_window, cloud.window = 1, 600.0  # one request, then Retry-After ~600 s
    runs = []
    for _ in range(BACKOFF_AFTER + 1):  # more than would start a back-off if these failed
        run = sync_with_settings(periodic=True)
        assert run is not None, "a throttled pass must not make the next one skip"
        runs.append(run)
    assert cloud.throttled() >= len(runs)
    for run in runs:
        assert run.outcome == "throttled" and not run.ok, (run.outcome, run.error)
        assert "429" in run.error
        # Prefect's Retry-After (about 600 s) is when the next try may send again.
        assert run.throttled_until - run.finished_at > timedelta(seconds=500)
    assert sync_backoff().failures == 0 and sync_backoff().retry_at is None
    health = freshness()
    assert health.throttled and not health.failing and health.next_try == runs[-1].throttled_until

    text = banner(viewer_client)
    assert "Prefect is rate-limiting reslock" in text and "Sync failing" not in text
    assert f"reslock sends nothing until {runs[-1].throttled_until:%H:%M:%S} UTC" in text
    assert "the next sync tries again then (in <time" in text and "data-in=" in text
    api = viewer_client.get("/api/v1/resources").json()["sync"]
    assert api["outcome"] == "throttled" and api["error"] == "" and "429" in api["throttled"]
    assert api["next_try_at"] == runs[-1].throttled_until.isoformat()
    metrics = unlabelled(viewer_client, settings.METRICS_TOKEN)
    assert metrics["reslock_sync_throttled"] == 1 and metrics["reslock_sync_throttled_runs"] == 4
    assert metrics["reslock_sync_failed_runs"] == 0
    assert metrics["reslock_sync_consecutive_failures"] == 0

    cloud.per_window = None  # Prefect takes requests again
    good = sync_with_settings(periodic=True)
    assert good is not None and good.ok, good and good.error
    text = banner(viewer_client)
    assert "rate-limiting" not in text and "Synced" in text
    assert unlabelled(viewer_client, settings.METRICS_TOKEN)["reslock_sync_throttled"] == 0
    assert viewer_client.get("/api/v1/resources").json()["sync"]["outcome"] == "ok"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_in_a_browser_the_throttled_banner_counts_down_to_the_next_try(
    board, live_server, prefect_server, cloud
):
    name = unique("resource:countdown")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    sync(prefect_server)  # a good sync first: the board has a state to show
    cloud.per_window, cloud.window = 1, 40.0  # one request, then Retry-After ~40 s
    with PrefectAPI(cloud.api_url, KEY, patience=1) as api:
        run = sync_limit(api, name)  # a listener's re-sync, say
    assert run is not None and run.throttled, run and run.error
    board.goto(live_server.url + reverse("board"))
    banner = board.locator("#banner")
    expect(banner).to_contain_text("Prefect is rate-limiting reslock", timeout=15_000)
    expect(banner).to_contain_text("The board shows the state of")
    countdown = banner.locator("time[data-in]")

    def seconds_left() -> int:
        text = countdown.inner_text()
        assert re.fullmatch(r"\d+ s", text), text
        return int(text.split()[0])

    first = seconds_left()
    assert 0 < first <= 40
    wait_for(lambda: seconds_left() < first, 15, what="the countdown to move on")


@pytest.mark.django_db(transaction=True)
def test_behind_the_budget_a_throttled_prefect_never_fails_a_sync_nor_sees_more_than_the_budget(
    prefect_server, cloud, settings
):
    """The budget shared by every process paces what reaches Prefect, 429s and their retries
    included. The Cloud's limit here is two a second, so the budget's first burst of three
    meets a 429 that every request then waits out; unpaced, these syncs would reach the Cloud
    more than twice a second."""
    name = unique("resource:budgeted")
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    per_minute = 30  # a burst of 3, then one request every 2.1 s
    settings.PREFECT_API_URL, settings.PREFECT_API_KEY = cloud.api_url, KEY
    settings.PREFECT_MAX_REQUESTS_PER_MINUTE = per_minute
    cloud.per_window, cloud.window = 2, 1.0
    with PrefectAPI.from_settings() as api:
        assert api.budget is not None and api.budget.per_minute == per_minute
        for _ in range(6):  # two or three requests each
            run = sync_limit(api, name, wait=120)
            assert run is not None and run.ok, run and run.error
    assert cloud.throttled() > 0  # Prefect did refuse some: the syncs waited them out
    rate = Rate.per_minute(per_minute)
    burst = round(rate.tolerance / rate.interval) + 1
    for seconds in (5, 10, 30, 60):
        # A burst, then one request per interval (and one of slack for the clocks).
        allowed = min(per_minute, burst + math.ceil(seconds / rate.interval))
        reached = cloud.most_in_any(seconds, refused_too=True)
        assert reached <= allowed, (seconds, reached, allowed, cloud.requests)


def deactivation(prefect_server, operator, name: str) -> Operation:
    """A pending deactivation of a new limit of 1, created in Prefect and synced."""
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    sync(prefect_server)
    return Operation.objects.create(
        kind="deactivate",
        limit=Limit.objects.named(name),
        limit_name=name,
        requested_by=operator,
        requested_by_name=operator.username,
        token=uuid.uuid4(),
    )


@pytest.mark.django_db(transaction=True)
def test_an_operation_prefect_keeps_throttling_goes_back_to_pending_then_ends_having_changed_nothing(
    prefect_server, cloud, operator
):
    from reslock_web.operations.jobs import MAX_ATTEMPTS, TryAgain, run

    name = unique("resource:throttled-away")
    operation = deactivation(prefect_server, operator, name)
    cloud.per_window, cloud.window = 1, 600.0
    with PrefectAPI(cloud.api_url, KEY, patience=1) as api:
        for attempt in range(1, MAX_ATTEMPTS):
            cloud._recent.clear()  # each attempt reads the limit, then its change meets a 429
            with pytest.raises(TryAgain):
                run(operation.pk, api)
            operation.refresh_from_db()
            assert operation.status == OperationStatus.PENDING and operation.attempts == attempt
            assert "retrying" in operation.message and "429" in operation.message
        cloud._recent.clear()
        run(operation.pk, api)
    operation.refresh_from_db()
    assert operation.status == OperationStatus.FAILED and operation.attempts == MAX_ATTEMPTS
    assert operation.message.startswith("Not done: Prefect kept rate-limiting reslock")
    changes = [status for _, method, _, status in cloud.requests if method == "PATCH"]
    assert changes == [429] * MAX_ATTEMPTS  # each attempt's change was refused, none passed
    with patient_client(prefect_server.api_url) as http:
        assert http.get(f"/v2/concurrency_limits/{name}").json()["active"] is True


@pytest.mark.django_db(transaction=True)
def test_a_change_made_stands_when_the_read_after_it_is_throttled(prefect_server, cloud, operator):
    """The read for the record comes after the change: a 429 there must not send the
    operation back for a retry that would find nothing to do."""
    from reslock_web.operations.jobs import run

    name = unique("resource:read-after")
    operation = deactivation(prefect_server, operator, name)
    cloud.per_window, cloud.window = 2, 600.0  # the read, the change; then 429s
    with PrefectAPI(cloud.api_url, KEY, patience=1) as api:
        run(operation.pk, api)
    operation.refresh_from_db()
    assert operation.status == OperationStatus.SUCCEEDED, operation.message
    assert [r[1] for r in cloud.requests[:2]] == ["GET", "PATCH"]
    assert cloud.requests[2][3] == 429
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
