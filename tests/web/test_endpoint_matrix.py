"""Every endpoint × (anonymous, viewer, operator) × (GET, POST with CSRF, POST without CSRF).

The list of endpoints comes from the URL resolver: a new URL without a row here fails
`test_every_endpoint_has_a_row_in_the_matrix`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from reslock_web.models import Holder, Limit, Operation
from reslock_web.web.operate import ACTIONS
from tests.support.board_data import make_holder, make_limit, settle

pytestmark = pytest.mark.django_db
CSRF = "A" * 32  # a valid unmasked CSRF secret, sent as cookie and header like htmx does
PERSONAS = ("anonymous", "viewer", "operator")


@dataclass
class Data:
    """The rows every cell can point at."""

    tag: Limit
    off: Limit
    stale: Holder
    operation: Operation
    batch: uuid.UUID


@dataclass(frozen=True)
class Row:
    url: Callable[[Data], str]
    get: tuple[int, int, int]  # anonymous, viewer, operator
    post: tuple[int, int, int]  # with a valid CSRF token
    form: Callable[[Data], dict[str, str]] = field(default=lambda d: {})
    creates_operations: bool = False  # an operator's POST with CSRF records an Operation
    # Without a CSRF token, a POST is refused with 403 everywhere a session counts.
    post_without_csrf: tuple[int, int, int] = (403, 403, 403)


def operate_form(action: str) -> Callable[[Data], dict[str, str]]:
    def build(d: Data) -> dict[str, str]:
        limit = d.off if action == "activate" else d.tag
        form = {"token": str(uuid.uuid4()), "limit_id": str(limit.prefect_id)}
        form |= {"expected": str(limit.limit), "reason": "matrix test"}
        if action == "release":
            form["holder"] = str(d.stale.pk)
        if action == "set-limit":
            form["value"] = "3"
        return form

    return build


def operate_url(action: str) -> Callable[[Data], str]:
    def build(d: Data) -> str:
        name = d.off.name if action == "activate" else d.tag.name
        holder = f"?holder={d.stale.pk}" if action == "release" else ""
        return f"/operate/{action}/{name}{holder}"

    return build


PAGE, OPERATE, NOT_POST = (302, 200, 200), (302, 403, 200), (405, 405, 405)
MATRIX: dict[str, Row] = {
    "board": Row(lambda d: "/", PAGE, NOT_POST),
    "board-changes": Row(lambda d: "/board/changes", PAGE, NOT_POST),
    "resource": Row(lambda d: f"/resources/{d.tag.name}", PAGE, NOT_POST),
    "run": Row(lambda d: f"/runs/{d.stale.flow_run_id}", PAGE, NOT_POST),
    # Not an id: a clear 404 for those who may look, the login page for those who may not.
    "run-not-an-id": Row(lambda d: "/runs/not-an-id", (302, 404, 404), NOT_POST),
    "bulk-release": Row(
        lambda d: "/operate/bulk-release?status=stale",
        OPERATE,
        (302, 403, 302),
        form=lambda d: {
            "status": "stale",
            "reason": "matrix test",
            "token": str(uuid.uuid4()),
            "holder": f"{d.tag.pk}:{d.stale.key}",  # as the preview listed it
        },
        creates_operations=True,
    ),
    **{
        f"operate:{action}": Row(
            operate_url(action),
            OPERATE,
            (302, 403, 302),
            form=operate_form(action),
            creates_operations=True,
        )
        for action in ACTIONS
    },
    "operation": Row(lambda d: f"/operations/{d.operation.pk}", PAGE, NOT_POST),
    "bulk": Row(lambda d: f"/operations/bulk/{d.batch}", PAGE, NOT_POST),
    "audit": Row(lambda d: "/audit", PAGE, NOT_POST),
    "audit:csv": Row(lambda d: "/audit?format=csv", PAGE, NOT_POST),
    "healthz": Row(lambda d: "/healthz", (200, 200, 200), NOT_POST),
    "api-resources": Row(lambda d: "/api/v1/resources", (401, 200, 200), NOT_POST),
    "api-resource": Row(lambda d: f"/api/v1/resources/{d.tag.name}", (401, 200, 200), NOT_POST),
    # Only a bearer token may ask for operations (see test_api_operations): no session counts,
    # with or without a CSRF token, so no persona here gets further than 401.
    "api-operations": Row(
        lambda d: "/api/v1/operations",
        NOT_POST,
        (401, 401, 401),
        form=lambda d: {"kind": "activate", "resource": d.off.name},
        post_without_csrf=(401, 401, 401),
    ),
    "api-operation": Row(
        lambda d: f"/api/v1/operations/{d.operation.pk}", (401, 200, 200), NOT_POST
    ),
    "api-run": Row(lambda d: f"/api/v1/runs/{d.stale.flow_run_id}", (401, 200, 200), NOT_POST),
    "api-run-not-an-id": Row(lambda d: "/api/v1/runs/not-an-id", (401, 404, 404), NOT_POST),
    # Sessions do not count: only the metrics token opens it (see test_metrics).
    "metrics": Row(lambda d: "/metrics", (401, 401, 401), NOT_POST),
    "login": Row(
        lambda d: "/login/",
        (200, 302, 302),  # a logged-in user is sent on to the board
        (200, 200, 200),  # a wrong password, the form again: logged in or not, it is checked
        form=lambda d: {"username": "nobody", "password": "wrong"},
    ),
    "logout": Row(lambda d: "/logout/", NOT_POST, (302, 302, 302)),
    "admin-login": Row(lambda d: "/admin/login/", (302, 403, 403), (302, 403, 403)),
    "admin": Row(lambda d: "/admin/", (302, 302, 302), (302, 302, 302)),
    "admin:changelist": Row(lambda d: "/admin/reslock/limit/", (302, 302, 302), (302, 302, 302)),
}


def endpoint_names() -> set[str]:
    names = set()
    for entry in get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            names.add(entry.namespace or str(entry.pattern))
        elif isinstance(entry, URLPattern):
            assert entry.name, f"unnamed URL {entry.pattern}: name it and add it to the matrix"
            names.add(entry.name)
    return names


def test_every_endpoint_has_a_row_in_the_matrix():
    covered = {key.split(":")[0] for key in MATRIX}
    assert endpoint_names() == covered
    assert {key.split(":")[1] for key in MATRIX if key.startswith("operate:")} == set(ACTIONS)


@pytest.fixture
def data(operator, settings) -> Data:
    settings.METRICS_TOKEN = "matrix-" + uuid.uuid4().hex  # on, so that it asks for the token
    now = timezone.now()
    # A stale holder, and one more slot counted that no holder takes (drift).
    tag = make_limit("tag:matrix", active_slots=2, drift_since=now - timedelta(hours=1))
    off = make_limit("matrix-off", active=False)
    stale = make_holder(
        tag,
        key="task-run",
        source="tag_lease",
        condition="stale",
        acquired_at=now,
        task_run_id=uuid.uuid4(),
        state_type="COMPLETED",
    )
    settle(tag, marks={"has_drift"})
    batch = uuid.uuid4()
    operation = Operation.objects.create(
        kind="activate",
        limit=off,
        limit_name=off.name,
        requested_by=operator,
        requested_by_name=operator.username,
        token=uuid.uuid4(),
        bulk=batch,
    )
    return Data(tag, off, stale, operation, batch)


def client_as(request, persona: str, csrf: bool) -> tuple[Client, dict[str, str]]:
    client = Client(enforce_csrf_checks=True)
    if persona != "anonymous":
        client.force_login(request.getfixturevalue(persona))
    if not csrf:
        return client, {}
    client.cookies["csrftoken"] = CSRF
    return client, {"X-CSRFToken": CSRF}


CELLS = [
    pytest.param(key, persona, mode, id=f"{key}-{persona}-{mode}")
    for key in MATRIX
    for persona in PERSONAS
    for mode in ("get", "post", "post-without-csrf")
]


@pytest.mark.parametrize(("key", "persona", "mode"), CELLS)
def test_each_endpoint_answers_each_persona_as_expected(request, data, key, persona, mode):
    row = MATRIX[key]
    client, headers = client_as(request, persona, csrf=mode == "post")
    url = row.url(data)
    before = Operation.objects.count()
    if mode == "get":
        response = client.get(url)
        expected = row.get[PERSONAS.index(persona)]
    else:
        response = client.post(url, row.form(data), headers=headers)
        expected = (row.post_without_csrf if mode == "post-without-csrf" else row.post)[
            PERSONAS.index(persona)
        ]
    assert response.status_code == expected, response.content[:300]
    if response.status_code == 302 and persona == "anonymous":
        assert response["Location"].startswith(("/login/", "/admin/login/"))
    created = Operation.objects.count() - before
    if row.creates_operations and persona == "operator" and mode == "post":
        assert created == 1
        assert response["Location"].startswith("/operations/")
    else:
        assert created == 0
    if response.status_code == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")
