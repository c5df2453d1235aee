"""Security headers, HTTPS-only cookies, log-in throttling and a Prefect API key kept secret."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings as django_settings
from django.contrib import admin as django_admin
from django.test import Client
from django.urls import include, path, reverse
from playwright.sync_api import Page, expect

from reslock_web.models import Operation, SyncRun
from reslock_web.prefect_io.api import PrefectAPI, PrefectError
from reslock_web.sync.run import sync_all
from tests.support.board_data import make_limit
from tests.support.entry_points import run_entry_point
from tests.support.net import wait_for
from tests.support.patient import patient_client
from tests.support.personas import PASSWORD

# Made at run time: a literal would show up in tracebacks that quote this file's source.
SECRET = "pnu_secret_" + uuid.uuid4().hex


def _boom(request):
    raise RuntimeError("something broke while the key is configured")


# Serves as ROOT_URLCONF for the error-page test: the real URLs plus one view that fails.
urlpatterns = [path("boom", _boom), path("", include("reslock_web.urls"))]


# --- Content-Security-Policy and other headers -------------------------------------------
def readme_policy() -> str:
    """The policy as the README's Security section promises it, word for word."""
    readme = (django_settings.BASE_DIR / "README.md").read_text()
    quoted = re.search(r"`Content-Security-Policy: ([^`]+)`", readme)
    assert quoted, "the README no longer states the policy"
    return " ".join(quoted.group(1).split())


def test_the_readme_policy_is_the_strict_one():
    directives = dict(d.strip().split(" ", 1) for d in readme_policy().split(";"))
    assert directives == {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "object-src": "'none'",
        "base-uri": "'self'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }


@pytest.mark.django_db
def test_every_kind_of_response_carries_the_security_headers(client, viewer):
    anonymous = [client.get("/login/"), client.get("/healthz"), client.get("/api/v1/resources")]
    client.force_login(viewer)
    pages = [client.get("/"), client.get("/resources/nothing-here"), client.get("/admin/")]
    for response in anonymous + pages:
        assert response["Content-Security-Policy"] == readme_policy()
        assert "script-src 'self';" in response["Content-Security-Policy"]
        assert "'unsafe-inline'" not in response["Content-Security-Policy"]
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
    assert [r.status_code for r in anonymous + pages] == [200, 200, 401, 200, 404, 302]


@pytest.mark.django_db
def test_with_debug_on_djangos_own_error_pages_are_readable(client, viewer, settings):
    """Django's DEBUG pages are styled inline: the policy would leave them unreadable."""
    client.force_login(viewer)
    settings.DEBUG = True
    missing = client.get("/resources/nothing-here")
    assert missing.status_code == 404 and "Content-Security-Policy" not in missing
    assert client.get("/")["Content-Security-Policy"] == django_settings.CONTENT_SECURITY_POLICY
    settings.DEBUG = False
    missing = client.get("/resources/nothing-here")
    assert missing["Content-Security-Policy"] == django_settings.CONTENT_SECURITY_POLICY


@pytest.mark.django_db
def test_no_template_relies_on_inline_scripts_or_styles(admin_client):
    html = admin_client.get("/").content.decode() + admin_client.get("/login/").content.decode()
    assert "<script src=" in html
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", html), "inline style or handler"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_htmx_search_works_under_the_policy_without_a_single_violation(
    page: Page, live_server, viewer
):
    p = f"csp{uuid.uuid4().hex[:6]}"
    for suffix in ("alpha", "beta", "gamma"):
        make_limit(f"resource:{p}-{suffix}")
    client = Client()
    client.force_login(viewer)
    page.context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
    )
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    # Runs before any page script, outside the page's policy: records every violation.
    page.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation', e =>"
        " window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    response = page.goto(f"{live_server.url}/?q={p}")
    assert response.headers["content-security-policy"] == django_settings.CONTENT_SECURITY_POLICY
    rows = page.locator("#rows tr[id^=limit-]")
    expect(rows).to_have_count(3)
    page.evaluate("window.__marker = 'same page'")
    page.get_by_label("Search resources").fill(f"{p}-BE")
    expect(rows).to_have_count(1)  # htmx fetched and swapped the rows
    expect(rows.first).to_contain_text(f"resource:{p}-beta")
    assert page.evaluate("window.__marker") == "same page"  # a swap, not a page load
    page.wait_for_timeout(300)  # violations are reported asynchronously
    assert page.evaluate("window.__violations") == []
    assert not [text for text in console if "Content Security Policy" in text], console
    # The same listener does see a violation, and the browser enforces the policy.
    page.evaluate(
        "document.body.insertAdjacentHTML('beforeend', '<p id=probe style=\"color: red\">x</p>')"
    )
    wait_for(lambda: page.evaluate("window.__violations.length"), 5, what="a violation")
    assert page.locator("#probe").evaluate("e => getComputedStyle(e).color") != "rgb(255, 0, 0)"


# --- HTTPS-only cookies and HSTS unless DEBUG ----------------------------------------------
SHOW_SECURITY = (
    "import django, json; django.setup(); from django.conf import settings as s; "
    "print(json.dumps([s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS,"
    " s.SECURE_PROXY_SSL_HEADER, s.X_FRAME_OPTIONS]))"
)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"DEBUG": None, "RESLOCK_SECURE_COOKIES": None},
            [True, True, 31536000, ["HTTP_X_FORWARDED_PROTO", "https"], "DENY"],
        ),
        ({"DEBUG": "true", "RESLOCK_SECURE_COOKIES": None}, [False, False, 0, None, "DENY"]),
        ({"DEBUG": "false", "RESLOCK_SECURE_COOKIES": "false"}, [False, False, 0, None, "DENY"]),
    ],
    ids=["production", "debug", "plain-http"],
)
def test_cookies_are_https_only_and_hsts_is_on_unless_debug_or_turned_off(env, expected):
    result = run_entry_point(SHOW_SECURITY, **env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def test_the_deploy_check_finds_nothing_to_say_about_cookies_or_hsts():
    result = run_entry_point(
        "import sys; sys.argv=['manage.py','check','--deploy']; import manage; manage.main()",
        DEBUG=None,
        RESLOCK_SECURE_COOKIES=None,
        DJANGO_ALLOW_ASYNC_UNSAFE=None,  # set for the test process only
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "System check identified" in output, output
    # HSTS, nosniff, session and CSRF cookies, DEBUG, X-Frame-Options, Referrer-Policy.
    for warning in ("W004", "W006", "W012", "W016", "W018", "W019", "W022"):
        assert f"security.{warning}" not in output, output


@pytest.mark.django_db
def test_behind_a_tls_proxy_the_cookies_are_secure_and_hsts_is_sent(client, viewer, settings):
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.TRUSTED_PROXIES = 1
    https = {"X-Forwarded-Proto": "https"}
    login = client.get("/login/", headers=https)
    assert login["Strict-Transport-Security"] == "max-age=31536000"
    assert login.cookies["csrftoken"]["secure"] is True
    answer = client.post(
        "/login/", {"username": viewer.username, "password": PASSWORD}, headers=https
    )
    assert answer.status_code == 302
    assert answer.cookies["sessionid"]["secure"] is True
    assert "Strict-Transport-Security" not in client.get("/login/")  # plain http: never


@pytest.mark.django_db
def test_x_forwarded_proto_counts_only_as_far_as_the_declared_proxies(client, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.TRUSTED_PROXIES = 0
    claimed = client.get("/login/", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in claimed  # any client can send the header
    settings.TRUSTED_PROXIES = 1
    proxied = client.get("/login/", headers={"X-Forwarded-Proto": "https"})
    assert proxied["Strict-Transport-Security"] == "max-age=31536000"
    # A proxy that appends what it saw: the client's own claim comes first and does not count.
    appended = client.get("/login/", headers={"X-Forwarded-Proto": "https, http"})
    assert "Strict-Transport-Security" not in appended
    settings.TRUSTED_PROXIES = 2
    two = client.get("/login/", headers={"X-Forwarded-Proto": "http, https, http"})
    assert two["Strict-Transport-Security"] == "max-age=31536000"


@pytest.mark.django_db
def test_plain_http_mode_sends_ordinary_cookies(client, viewer, settings):
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    settings.SECURE_HSTS_SECONDS = 0
    answer = client.post("/login/", {"username": viewer.username, "password": PASSWORD})
    assert answer.status_code == 302
    assert answer.cookies["sessionid"]["secure"] == ""
    assert "Strict-Transport-Security" not in answer


# --- The Prefect API key is never shown or logged ------------------------------------
class EchoHandler(BaseHTTPRequestHandler):
    """Answers 500 with the request's headers in the body, as some proxies' error pages do."""

    def _echo(self) -> None:
        body = json.dumps({"detail": f"upstream failed; request headers: {dict(self.headers)}"})
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _echo

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


@pytest.fixture
def api_key(settings, monkeypatch):
    settings.PREFECT_API_KEY = SECRET
    monkeypatch.setenv("PREFECT_API_KEY", SECRET)
    return SECRET


@pytest.mark.django_db
def test_an_answer_echoing_the_request_cannot_carry_the_key_into_messages(
    echo_server, api_key, caplog, viewer_client
):
    with PrefectAPI(echo_server, api_key, timeout=5) as api, pytest.raises(PrefectError) as error:
        api.list_limits()
    assert "Authorization" in str(error.value) and "[redacted]" in str(error.value)
    assert SECRET not in str(error.value)
    caplog.set_level(logging.DEBUG)
    with PrefectAPI(echo_server, api_key, timeout=5) as api:
        run = sync_all(api)
    assert run is not None and run.ok is False and "[redacted]" in run.error
    assert SECRET not in run.error
    assert SECRET not in caplog.text
    assert SyncRun.objects.get(pk=run.pk).error == run.error
    board = viewer_client.get("/").content.decode()
    assert "[redacted]" in board  # the banner says why the sync fails
    assert SECRET not in board


def test_the_log_format_blanks_out_the_key_in_messages_and_tracebacks(api_key):
    config = dict(django_settings.LOGGING["formatters"]["plain"])
    factory = config.pop("()")
    module, name = factory.rsplit(".", 1)
    formatter = getattr(__import__(module, fromlist=[name]), name)(config["format"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("reslock.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("sending %s", {"Authorization": f"Bearer {SECRET}"})
        try:
            raise ValueError(f"header Bearer {SECRET} rejected")
        except ValueError:
            logger.exception("it failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "Bearer [redacted]" in text and "ValueError" in text
    assert SECRET not in text


def _plain_formatter() -> logging.Formatter:
    config = dict(django_settings.LOGGING["formatters"]["plain"])
    module, name = config.pop("()").rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)(config["format"])


@pytest.mark.django_db
def test_a_request_path_with_cr_and_lf_stays_on_one_log_line(viewer_client):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_plain_formatter())
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    try:
        forged = "x%0D%0A2026-01-01 00:00:00,000 ERROR reslock_web.sync.run: forged"
        assert viewer_client.get(f"/resources/{forged}").status_code == 404
        logging.getLogger("reslock.test.lines").addHandler(handler)
        logging.getLogger("reslock.test.lines").warning("name %s", "evil\u2028name\nnext")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("with a traceback")
    finally:
        logger.removeHandler(handler)
        logging.getLogger("reslock.test.lines").removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert sum("forged" in line for line in lines) == 1
    [not_found] = [line for line in lines if "Not Found" in line]
    assert "x\\r\\n2026-01-01" in not_found and not_found.endswith("forged")
    assert any(line.endswith("name evil\\u2028name\\nnext") for line in lines)
    assert "Traceback (most recent call last):" in lines  # a traceback keeps its lines


@pytest.mark.django_db(transaction=True)
def test_no_page_and_no_log_line_of_a_sync_or_operation_shows_the_key(
    prefect_server, celery_worker, api_key, settings, caplog, admin, operator, viewer
):
    for logger in ("", "httpx", "httpcore"):  # the HTTP layer's debug lines too
        caplog.set_level(logging.DEBUG, logger=logger)
    name = f"resource:key-{uuid.uuid4().hex[:8]}"
    with patient_client(prefect_server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
    with PrefectAPI.from_settings() as api:
        assert api._http.headers["Authorization"] == f"Bearer {SECRET}"  # it is really sent
        assert sync_all(api).ok
    operating = Client()
    operating.force_login(operator)
    url = reverse("operate", args=["set-limit", name])
    fields = dict(
        re.findall(
            r'type="hidden" name="(\w+)" value="([^"]*)"', operating.get(url).content.decode()
        )
    )
    answer = operating.post(url, {**fields, "value": "2"})
    op = Operation.objects.get()
    assert answer.status_code == 302
    wait_for(lambda: Operation.objects.get(pk=op.pk).finished, 60, what="the operation")
    assert Operation.objects.get(pk=op.pk).status == "succeeded"
    bulk = uuid.uuid4()
    Operation.objects.filter(pk=op.pk).update(bulk=bulk)
    seen = _every_page(admin, viewer, name, op.pk, bulk)
    for what, text in seen.items():
        assert SECRET not in text, what
    assert len(seen) > 20
    # The capture really held the HTTP layer's lines, where a header would show (the worker
    # thread's Celery lines are not always routed here once another test set up its logging).
    assert "httpcore.http11" in {r.name for r in caplog.records}
    assert SECRET not in caplog.text


def _every_page(admin, viewer, name: str, op_pk: int, bulk: uuid.UUID) -> dict[str, str]:
    admin_client, viewer_client, anonymous = Client(), Client(), Client()
    admin_client.force_login(admin)
    viewer_client.force_login(viewer)
    htmx = {"HX-Request": "true"}
    pages = {
        "board": admin_client.get("/"),
        "board rows": admin_client.get("/", headers={**htmx, "HX-Target": "rows"}),
        "resource": admin_client.get(reverse("resource", args=[name])),
        "resource live": admin_client.get(
            reverse("resource", args=[name]), headers={**htmx, "HX-Target": "live"}
        ),
        "operate": admin_client.get(reverse("operate", args=["deactivate", name])),
        "operation": admin_client.get(reverse("operation", args=[op_pk])),
        "bulk": admin_client.get(reverse("bulk", args=[bulk])),
        "bulk release": admin_client.get(reverse("bulk-release") + "?status=stale"),
        "audit": admin_client.get("/audit"),
        "audit csv": admin_client.get("/audit?format=csv"),
        "api list": admin_client.get("/api/v1/resources"),
        "api one": admin_client.get(reverse("api-resource", args=[name])),
        "run": admin_client.get(reverse("run", args=[uuid.uuid4()])),
        "api run": admin_client.get(reverse("api-run", args=[uuid.uuid4()])),
        "healthz": anonymous.get("/healthz"),
        "login": anonymous.get("/login/"),
        "404": admin_client.get("/resources/no-such-thing"),
        "403": viewer_client.get(reverse("operate", args=["deactivate", name])),
        "401": anonymous.get("/api/v1/resources"),
        "csrf 403": Client(enforce_csrf_checks=True).post("/login/", {"username": "x"}),
        "admin index": admin_client.get("/admin/"),
    }
    for model in django_admin.site._registry:
        meta = model._meta
        changelist = f"admin:{meta.app_label}_{meta.model_name}_changelist"
        pages[f"admin {meta.model_name} list"] = admin_client.get(reverse(changelist))
        first = model._default_manager.order_by("pk").first()
        if first is not None:
            change = f"admin:{meta.app_label}_{meta.model_name}_change"
            pages[f"admin {meta.model_name}"] = admin_client.get(reverse(change, args=[first.pk]))
    assert pages["api one"].status_code == 200 and pages["403"].status_code == 403
    return {
        what: b"".join(r.streaming_content).decode() if r.streaming else r.content.decode()
        for what, r in pages.items()
    }


@pytest.mark.django_db
def test_the_debug_error_page_hides_the_key(admin_client, api_key, settings):
    settings.DEBUG = True
    settings.ROOT_URLCONF = "tests.web.test_security"
    admin_client.raise_request_exception = False
    page = admin_client.get("/boom")
    assert page.status_code == 500
    text = page.content.decode()
    assert "PREFECT_API_KEY" in text and "something broke" in text  # the settings are listed
    assert SECRET not in text


# --- The audit CSV -------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_audit_csv_defuses_every_cell_a_spreadsheet_would_run(operator_client, operator):
    limit = make_limit("resource:csv")
    starts = ["=", "+", "-", "@", "\t", "\r"]
    for start in starts:
        Operation.objects.create(
            kind="set_limit",
            limit=limit,
            limit_name=limit.name,
            requested_by=operator,
            requested_by_name=operator.username,
            token=uuid.uuid4(),
            status="succeeded",
            reason=f'{start}HYPERLINK("http://x")',
            message="plain",
        )
    answer = operator_client.get("/audit?format=csv")
    text = b"".join(answer.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    reasons = sorted(row["reason"] for row in rows)
    assert reasons == sorted(f'\'{start}HYPERLINK("http://x")' for start in starts)
    assert {row["message"] for row in rows} == {"plain"}  # an ordinary cell is left alone


# --- User names and passwords inside URLs are never shown ------------------------------
URL_PASSWORD = "hunter2-" + uuid.uuid4().hex[:8]


def test_the_default_ui_url_drops_the_api_urls_user_and_password():
    code = "import django; django.setup(); from django.conf import settings; print(settings.PREFECT_UI_URL)"
    api = f"https://bob:{URL_PASSWORD}@prefect.example.org/api"
    result = run_entry_point(code, PREFECT_API_URL=api)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "https://prefect.example.org"


@pytest.mark.django_db
def test_links_and_api_urls_never_carry_a_user_or_password(admin_client, settings):
    from tests.support.board_data import sample_rows

    settings.PREFECT_UI_URL = f"https://bob:{URL_PASSWORD}@prefect.example.org/"
    held = sample_rows()
    run = held.holders.get().flow_run_id
    pages = [
        admin_client.get("/"),
        admin_client.get(reverse("resource", args=[held.name])),
        admin_client.get(reverse("run", args=[run])),
        admin_client.get("/api/v1/resources"),
        admin_client.get(reverse("api-resource", args=[held.name])),
        admin_client.get(reverse("api-run", args=[run])),
    ]
    for page in pages:
        text = page.content.decode()
        assert 'https://prefect.example.org"' in text or "https://prefect.example.org/" in text
        assert URL_PASSWORD not in text and "bob" not in text
    holder = pages[4].json()["holders"][0]
    assert holder["flow_run"]["url"].startswith("https://prefect.example.org/runs/flow-run/")
    assert pages[5].json()["flow_run"]["url"] == f"https://prefect.example.org/runs/flow-run/{run}"


@pytest.mark.django_db
def test_a_sync_that_cannot_reach_prefect_shows_its_address_without_the_password(viewer_client):
    with PrefectAPI(f"http://bob:{URL_PASSWORD}@127.0.0.1:9/api", "", timeout=2) as api:
        run = sync_all(api)
    assert run is not None and not run.ok
    assert "http://127.0.0.1:9/api" in run.error
    assert URL_PASSWORD not in run.error and "bob" not in run.error
    assert URL_PASSWORD not in viewer_client.get("/").content.decode()


@pytest.mark.django_db
def test_an_internal_sync_error_shows_viewers_a_summary_and_logs_the_detail(
    viewer_client, monkeypatch, caplog
):
    from django.db import OperationalError

    from reslock_web.sync import run as sync

    def broken(*args, **kwargs):
        raise OperationalError('connection to server at "db.internal" failed for user "reslock"')

    monkeypatch.setattr(sync, "backfill", broken)  # a first sync starts with past events
    monkeypatch.setattr(sync, "gather", broken)
    with caplog.at_level(logging.ERROR), PrefectAPI("http://127.0.0.1:9/api", "", timeout=2) as api:
        run = sync_all(api)
    assert run is not None and not run.ok
    assert "internal error" in run.error and "OperationalError" in run.error
    assert "db.internal" not in run.error
    assert "db.internal" in caplog.text  # the detail is in the log
    board = viewer_client.get("/").content.decode()
    assert "internal error" in board and "db.internal" not in board
    api_text = json.dumps(viewer_client.get("/api/v1/resources").json())
    assert "db.internal" not in api_text


@pytest.mark.django_db
def test_the_debug_error_page_hides_passwords_inside_urls(admin_client, settings):
    settings.DEBUG = True
    settings.ROOT_URLCONF = "tests.web.test_security"
    settings.DATABASE_URL = f"postgres://reslock:{URL_PASSWORD}@db.internal:5432/reslock"
    settings.REDIS_URL = f"redis://:{URL_PASSWORD}@redis.internal:6379/0"
    settings.CELERY_BROKER_URL = f"rediss://worker:{URL_PASSWORD}@redis.internal:6380/1"
    admin_client.raise_request_exception = False
    page = admin_client.get("/boom")
    assert page.status_code == 500
    text = page.content.decode()
    assert "DATABASE_URL" in text and "redis.internal" in text  # the settings are listed
    assert URL_PASSWORD not in text


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", f"mysql://bob:{URL_PASSWORD}@db.internal/reslock"),
        ("REDIS_URL", f"http://:{URL_PASSWORD}@redis.internal:6379/0"),
        ("CELERY_BROKER_URL", f"amqp://bob:{URL_PASSWORD}@rabbit.internal//"),
    ],
    ids=["DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"],  # the same in every xdist worker
)
def test_a_start_up_error_about_a_url_does_not_print_its_password(variable, value):
    result = run_entry_point("import django; django.setup()", **{variable: value})
    output = result.stdout + result.stderr
    assert result.returncode != 0 and variable in output, output
    assert URL_PASSWORD not in output
    assert "[redacted]" in output
