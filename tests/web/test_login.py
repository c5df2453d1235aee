"""The board sits behind Django's login; the base page loads htmx locally and carries CSRF."""

from __future__ import annotations

import importlib
import re

import pytest
from django.urls import reverse

from tests.support.personas import PASSWORD

pytestmark = pytest.mark.django_db


def test_an_anonymous_visitor_is_sent_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_a_viewer_sees_the_board(viewer_client):
    response = viewer_client.get("/")
    assert response.status_code == 200
    assert b"Lock board" in response.content


def test_logging_in_with_the_right_password_opens_the_board(client, viewer):
    response = client.post(
        reverse("login"), {"username": viewer.username, "password": PASSWORD, "next": "/"}
    )
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_a_wrong_password_says_so_and_logs_nobody_in(client, viewer):
    response = client.post(reverse("login"), {"username": viewer.username, "password": "nope"})
    assert response.status_code == 200
    assert b"did not match" in response.content
    assert "_auth_user_id" not in client.session


def test_logging_out_takes_a_post(viewer_client):
    response = viewer_client.post(reverse("logout"))
    assert response.status_code == 302
    assert viewer_client.get("/").status_code == 302


def test_htmx_comes_from_our_static_files_and_csrf_rides_in_hx_headers(viewer_client):
    html = viewer_client.get("/").content.decode()
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', html)
    assert any(src.startswith("/static/django_htmx/htmx") for src in scripts), scripts
    assert all(src.startswith("/static/") for src in scripts), scripts
    token = re.search(r"hx-headers='\{\"X-CSRFToken\": \"([^\"]+)\"\}'", html)
    assert token and len(token.group(1)) >= 32
    # No inline script: a strict Content-Security-Policy must be possible.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)


def test_the_board_warns_when_no_worker_has_reported(viewer_client):
    assert b"No background worker has reported yet" in viewer_client.get("/").content


def test_the_board_stops_warning_once_the_worker_beats(viewer_client):
    from reslock_web.models import Heartbeat

    Heartbeat.objects.beat("worker")
    assert b"background worker" not in viewer_client.get("/").content


def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"ok": True}


def test_a_migration_creates_the_lock_operators_group_with_the_operate_permission(viewer):
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.db.migrations.loader import MigrationLoader

    # A transactional test run earlier in this process flushes what migrations wrote (under
    # pytest-xdist they may come first): run the migration's step again, as it was written.
    Group.objects.filter(name="Lock operators").delete()
    migration = importlib.import_module("reslock_web.migrations.0003_lock_operators_group")
    state = MigrationLoader(connection).project_state(("reslock", "0003_lock_operators_group"))
    migration.create_group(state.apps, None)

    group = Group.objects.get(name="Lock operators")
    assert [p.codename for p in group.permissions.all()] == ["operate"]
    assert not viewer.has_perm("reslock.operate")
    viewer.groups.add(group)
    viewer = type(viewer).objects.get(pk=viewer.pk)  # permissions are cached per instance
    assert viewer.has_perm("reslock.operate")
