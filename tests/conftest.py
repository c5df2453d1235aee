"""Fixtures every test module can use: the real Prefect server, Celery worker, browser, personas."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.support.machine import find_chromium
from tests.support.personas import logged_in, make_admin, make_operator, make_viewer
from tests.support.postgres import NO_POSTGRES
from tests.support.prefect_server import PrefectServer

pytest_plugins = ["tests.support.flows"]  # the `flows` fixture: real flows in subprocesses

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# The browser `make test` found or installed (tests/support/machine.py); the usual path if none.
CHROMIUM = find_chromium() or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The machine has no outside network: resolve nothing but ourselves instead of waiting.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
]


def pytest_report_teststatus(report, config):
    """A PostgreSQL test that could not run is counted apart, in the summary line itself:
    they are the proof of exactly-once operations, and "3 skipped" would hide that."""
    if report.skipped and report.when == "setup" and NO_POSTGRES in str(report.longrepr):
        return "NOT RUN (no PostgreSQL)", "P", "NOT RUN (no PostgreSQL)"
    return None


@pytest.fixture
def proxy(prefect_server, settings):
    """Every reslock call to Prefect goes through a hop the test can break (FaultProxy)."""
    from tests.support.fault_proxy import FaultProxy

    proxy = FaultProxy(prefect_server.api_url)
    settings.PREFECT_API_URL = proxy.url
    yield proxy
    proxy.close()


# --- process-local state -------------------------------------------------------------
@pytest.fixture(autouse=True)
def _nothing_reused_across_tests() -> None:
    """Each test's database starts over: drop what a process keeps between requests (the
    banner's answer, drawn board pages), which an earlier test's rows would otherwise fill."""
    from django.core.cache import caches

    from reslock_web.sync import health

    health.forget()
    caches["board"].clear()


# --- Prefect --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    server = PrefectServer.create()
    server.start()
    saved = (settings.PREFECT_API_URL, settings.PREFECT_UI_URL, os.environ.get("PREFECT_API_URL"))
    settings.PREFECT_API_URL = server.api_url
    settings.PREFECT_UI_URL = server.ui_url
    os.environ["PREFECT_API_URL"] = server.api_url
    yield server
    settings.PREFECT_API_URL, settings.PREFECT_UI_URL = saved[:2]
    if saved[2] is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = saved[2]
    server.stop()
    shutil.rmtree(server.home, ignore_errors=True)  # its database and logs, a few MB


# --- Celery ---------------------------------------------------------------------------
@pytest.fixture
def celery_worker(transactional_db: None) -> Iterator[object]:
    """A real worker thread consuming from the real Redis broker (database 15)."""
    from celery.contrib.testing.worker import start_worker

    from reslock_web.celery import app

    app.control.purge()  # messages left by an earlier, interrupted run must not leak in
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as worker:
        yield worker


# --- Browser --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": CHROMIUM_ARGS,
        "headless": True,
    }


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


# --- Personas (tests/support/personas.py) ---------------------------------------------
@pytest.fixture
def admin(django_user_model):
    return make_admin(django_user_model)


@pytest.fixture
def viewer(django_user_model):
    return make_viewer(django_user_model)


@pytest.fixture
def operator(django_user_model):
    return make_operator(django_user_model)


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def viewer_client(client, viewer):
    client.force_login(viewer)
    return client


@pytest.fixture
def admin_client(client, admin):
    client.force_login(admin)
    return client


# --- Board data and a logged-in browser page -------------------------------------------
@pytest.fixture
def rows(db):
    """The sample board of tests/support/board_data.py; the contended resource."""
    from tests.support.board_data import sample_rows

    return sample_rows()


@pytest.fixture
def board(page, live_server, viewer):
    """A logged-in page: the viewer's session cookie, as after the login form."""
    logged_in(page, live_server, viewer)
    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    page.alerts = alerts
    return page
