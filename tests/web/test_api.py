"""The read-only JSON API: filters, any resource name, session or token auth, clear errors."""

from __future__ import annotations

import hashlib
import io
from urllib.parse import quote

import pytest
from django.core.management import call_command
from django.utils import timezone

from reslock_web.models import ApiToken, Condition, Limit
from tests.support.board_data import make_holder, make_limit, make_waiter, settle

pytestmark = pytest.mark.django_db

NAMES = ["resource:db/primary", "tag:reports: nightly", "ресурс данных ✓", "deployment:x y"]


@pytest.fixture
def board():
    held = make_limit("resource:db/primary")
    make_holder(
        held,
        key="h1",
        source="event",
        flow_run_name="<b>run</b>",
        flow_name="loader",
        task_run_name="load-1",
        state_type="RUNNING",
        state_name="Running",
        acquired_at=timezone.now(),
        condition=Condition.HOLDING,
    )
    make_holder(held, key="h2", source="event", condition=Condition.LEAVING, flow_run_id=None)
    make_waiter(held, key="w1", source="tag_lease", flow_run_id=None, flow_run_name="next")
    settle(held)
    make_limit("tag:reports: nightly", kind="tag", is_held=True, is_stale=True)
    make_limit("ресурс данных ✓")
    make_limit("resource:old", gone_at=timezone.now())
    make_limit("resource:off", active=False)
    return held


def results(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["name"] for item in response.json()["results"]]


def test_anonymous_callers_get_401_in_json(client, board):
    response = client.get("/api/v1/resources")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "authentication required" in response.json()["error"]


def test_a_logged_in_viewer_lists_present_resources(viewer_client, board):
    response = viewer_client.get("/api/v1/resources")
    # Sorted by resource name (a tag limit's resource is its tag).
    assert results(response) == [
        "tag:reports: nightly",
        "resource:db/primary",
        "resource:off",
        "ресурс данных ✓",
    ]
    data = response.json()
    assert data["count"] == 4 and data["page"] == 1 and data["pages"] == 1
    assert "sync" in data


def test_holders_and_waiters_come_with_ids_names_and_state(viewer_client, board):
    [item] = viewer_client.get("/api/v1/resources?search=primary").json()["results"]
    assert item["status"] == "contended" and item["flags"]["held"] and item["flags"]["waiters"]
    [holder] = item["holders"]  # the LEAVING claim is not shown
    assert holder["flow_run"]["name"] == "<b>run</b>"
    assert holder["flow_run"]["url"].endswith(f"/runs/flow-run/{holder['flow_run']['id']}")
    assert holder["flow"]["name"] == "loader" and holder["state"]["type"] == "RUNNING"
    assert holder["stale"] is False and holder["since"]
    [waiter] = item["waiters"]
    assert waiter["position"] == 1 and waiter["flow_run"]["name"] == "next"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=stale", ["tag:reports: nightly"]),
        ("status=held", ["tag:reports: nightly", "resource:db/primary"]),
        ("status=contended", ["resource:db/primary"]),
        ("status=free", ["ресурс данных ✓"]),
        ("status=inactive", ["resource:off"]),
        ("status=gone", ["resource:old"]),
        ("kind=tag", ["tag:reports: nightly"]),
        ("search=ДАННЫХ", ["ресурс данных ✓"]),
        ("search=%25", []),
        ("search=_", []),
        ("search=DB%2FPRI", ["resource:db/primary"]),
    ],
)
def test_filters_narrow_the_list(viewer_client, board, query, expected):
    assert results(viewer_client.get(f"/api/v1/resources?{query}")) == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=everything", "status must be one of"),
        ("kind=queue", "kind must be one of"),
        ("page=0", "page must be a whole number from 1 to 1"),
        ("page=2", "page must be a whole number from 1 to 1"),
        ("page=abc", "page must be a whole number"),
        ("search=" + "x" * 201, "search must be at most 200 characters"),
        ("search=a%00b", "without NUL"),
    ],
)
def test_bad_parameters_get_a_clear_400(viewer_client, board, query, message):
    response = viewer_client.get(f"/api/v1/resources?{query}")
    assert response.status_code == 400
    assert message in response.json()["error"]


@pytest.mark.parametrize("name", NAMES)
def test_any_resource_name_can_be_fetched_url_encoded(viewer_client, board, name):
    if not Limit.objects.filter(name=name).exists():
        make_limit(name)
    response = viewer_client.get("/api/v1/resources/" + quote(name, safe=""))
    assert response.status_code == 200
    assert response.json()["name"] == name


def test_an_unknown_resource_is_a_404_in_json(viewer_client, board):
    response = viewer_client.get("/api/v1/resources/nope%3Anothing")
    assert response.status_code == 404
    assert response.json() == {"error": "no resource named 'nope:nothing'"}


def test_a_bearer_token_works_and_a_wrong_one_does_not(client, viewer, board):
    out = io.StringIO()
    call_command("reslock_token", viewer.username, "--name", "monitor", stdout=out)
    secret = out.getvalue().strip()
    assert secret.startswith("rl_")
    response = client.get("/api/v1/resources", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200 and response.json()["count"] == 4
    token = ApiToken.objects.get(name="monitor")
    assert token.last_used_at is not None and secret not in token.digest
    # Only the SHA-256 of the secret is kept, nothing that gives the secret back.
    assert token.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in {token.name, token.prefix, str(token.pk)}
    wrong = client.get("/api/v1/resources", HTTP_AUTHORIZATION="Bearer rl_wrong")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid or revoked API token"


def test_a_token_of_a_deactivated_user_is_refused(client, viewer, board):
    _, secret = ApiToken.objects.issue(viewer, "old")
    viewer.is_active = False
    viewer.save()
    assert client.get("/api/v1/resources", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401


def test_the_api_only_answers_get(viewer_client, board):
    assert viewer_client.post("/api/v1/resources").status_code == 405


def test_the_token_command_refuses_an_unknown_user():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no user named 'ghost'"):
        call_command("reslock_token", "ghost")
