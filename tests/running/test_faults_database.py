"""reslock's own database locked or unreachable: pages answer 503 with a plain message (JSON
under /api/), never a stack trace, and work again as soon as the database does."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from django.db import OperationalError, connection
from django.test import RequestFactory

from reslock_web.models import ApiToken
from reslock_web.web.dberrors import MESSAGE, server_error

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def short_database_timeout(seconds: float = 0.5):
    """The web process waits this long for a lock instead of 20 s (a new connection each request)."""
    options = connection.settings_dict["OPTIONS"]
    saved = options.get("timeout")
    options["timeout"] = seconds
    connection.close()
    try:
        yield
    finally:
        options["timeout"] = saved
        connection.close()


@contextmanager
def database_locked():
    """Another process holds SQLite's exclusive lock: no one else can read or write.

    The web process is pointed at a copy of the test database for the while: in WAL mode an
    exclusive lock needs every other connection to the file closed, and one left open by a
    finished thread of an earlier test in this process would make the lock itself fail."""
    settings_dict = connection.settings_dict
    original = settings_dict["NAME"]
    copy = Path(tempfile.mkdtemp(prefix="reslock-locked-")) / "locked.sqlite3"
    connection.close()
    with closing(sqlite3.connect(original)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
    locker = sqlite3.connect(copy, timeout=1, isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute("UPDATE reslock_syncstate SET name = name")  # writing takes the lock
    settings_dict["NAME"] = str(copy)
    try:
        yield
    finally:
        connection.close()
        settings_dict["NAME"] = original
        locker.execute("ROLLBACK")
        locker.close()
        shutil.rmtree(copy.parent, ignore_errors=True)


@pytest.fixture
def api_token(viewer):
    _, secret = ApiToken.objects.issue(viewer, "monitor")
    return secret


def test_a_locked_database_answers_503_with_a_plain_page_then_recovers(viewer_client, api_token):
    assert viewer_client.get("/").status_code == 200
    with short_database_timeout(), database_locked():
        page = viewer_client.get("/")
        api = viewer_client.get(
            "/api/v1/resources", headers={"authorization": f"Bearer {api_token}"}
        )
        audit = viewer_client.get("/audit")
    assert page.status_code == 503 and page["Retry-After"] == "5"
    html = page.content.decode()
    assert "reslock&#x27;s database is not answering; retry in a moment." in html
    assert "Traceback" not in html and "OperationalError" not in html
    assert audit.status_code == 503
    assert api.status_code == 503 and api["Content-Type"] == "application/json"
    assert api.json() == {"error": MESSAGE}
    # Nothing to restart: the next request works.
    assert viewer_client.get("/").status_code == 200
    assert (
        viewer_client.get(
            "/api/v1/resources", headers={"authorization": f"Bearer {api_token}"}
        ).status_code
        == 200
    )


def test_an_unreachable_database_answers_503_not_500(viewer_client):
    options = connection.settings_dict
    saved = options["NAME"]
    options["NAME"] = "/nonexistent-folder/reslock.sqlite3"  # cannot be opened at all
    connection.close()
    try:
        response = viewer_client.get("/")
    finally:
        options["NAME"] = saved
        connection.close()
    assert response.status_code == 503
    assert "database is not answering" in response.content.decode()


def test_a_database_error_outside_a_view_gets_the_same_503():
    """Django's handler500 sees errors raised around the view (a session saved afterwards)."""
    request = RequestFactory().get("/api/v1/resources")
    try:
        raise OperationalError("database is locked")
    except OperationalError:
        response = server_error(request)
    assert response.status_code == 503 and b"not answering" in response.content
    try:
        raise ValueError("not a database error")
    except ValueError:
        response = server_error(RequestFactory().get("/"))
    assert response.status_code == 500
