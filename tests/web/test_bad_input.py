"""Bad input from the browser never breaks a page, never injects markup, never changes a row.

Hypothesis throws generated query strings, URL paths and form posts at every page and the JSON
API (markup, SQL wildcards, backslashes, NUL, surrogates and invalid UTF-8 as raw bytes, RTL,
emoji, 10 kB strings, odd page numbers) and checks: no 5xx, every value shown escaped, every
table as it was, and for a refused form a message that says why.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import quote_from_bytes, urlsplit

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone
from hypothesis import example, given
from hypothesis import strategies as st

from reslock_web.models import (
    FACETS,
    ApiToken,
    Condition,
    Heartbeat,
    Holder,
    Limit,
    LockEvent,
    Operation,
    SyncRun,
    SyncState,
    Waiter,
)
from reslock_web.web.operate import ACTIONS
from tests.support.board_data import make_holder, make_limit, make_waiter, settle
from tests.support.hostile import hypothesis_settings, path_segment, raw
from tests.support.markup import escape, injected
from tests.support.operating import form as hidden_fields  # `form` names the posted fields here
from tests.support.personas import PASSWORD

pytestmark = pytest.mark.django_db

# --- generated input -------------------------------------------------------------------
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
PAYLOADS = [
    SCRIPT,
    IMG,
    "' onfocus='alert(1)' x='",
    '" onmouseover="alert(1)',
    '<x-evil data-evil="1">',
    "</textarea><x-evil>",
    "javascript:alert(1)",
    "%",
    "_",
    "%_%",
    "\\",
    "\\%\\_",
    "'",
    '"',
    "'; DROP TABLE reslock_web_limit; --",
    "\x00",
    "db\x00main",
    "\u202egnp.exe\u202c",  # right-to-left override
    "שלום עולם",
    "مرحبا",
    "😀🔒👩‍👩‍👧",
    "İSTANBUL",
    "straße",
    "\ufeff",
    "\r\n\t",
    " ",
    "",
    "x" * 10_000,
    "<" * 3_000,
    "%2F..%2F..",
]
# Characters a query string can only carry as percent-escaped bytes: lone surrogates
# (CESU-style, invalid UTF-8) and arbitrary bytes; Django decodes them with replacement.
surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=4)
any_text = st.text(st.characters(codec=None), max_size=40)
long_text = st.builds(lambda s, n: (s or "ä") * n, st.text(max_size=4), st.integers(2_000, 3_000))
values = st.one_of(
    st.sampled_from(PAYLOADS),
    any_text,
    surrogates,
    st.binary(max_size=40),
    long_text,
    st.builds(lambda a, b, c: a + b + c, any_text, st.sampled_from(PAYLOADS), any_text),
)
pages = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(
        ["", "0", "-1", "1.5", "1e9", "²", "١٢", "𝟙", " 2", "0x1f", "NaN", "inf", "9" * 5_000]
    ),
    values,
)


def choices(known: list[str] | tuple[str, ...]) -> st.SearchStrategy:
    """A known value, a near miss of one, or anything."""
    near = st.sampled_from(list(known)).flatmap(
        lambda k: st.sampled_from([k.upper(), f" {k}", f"{k}\x00", k[:-1] or "?", f"{k}s"])
    )
    return st.one_of(st.sampled_from(list(known)), near, values)


def shown(value: str | bytes) -> str:
    """What Django makes of a generated value: bytes decoded as UTF-8 with replacement."""
    return raw(value).decode("utf-8", "replace")


def query_string(params: dict[str, str | bytes]) -> str:
    """Percent-escaped bytes, exactly as a browser or a script could send them."""
    return "&".join(
        f"{quote_from_bytes(raw(k), safe='')}={quote_from_bytes(raw(v), safe='')}"
        for k, v in params.items()
    )


# --- what every answer must satisfy ----------------------------------------------------
def check_html(response, statuses=(200,)) -> str:
    assert response.status_code in statuses, (response.status_code, response.content[:300])
    if response.status_code == 204:
        return ""
    html = response.content.decode()
    assert injected(html) == [], injected(html)
    return html


def check_json(response, statuses=(200, 400), html_404=False) -> dict:
    assert response.status_code in statuses, (response.status_code, response.content[:300])
    if html_404:
        assert response.status_code == 404 and "<h1>Not found</h1>" in response.content.decode()
        return {}
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    if response.status_code >= 400:
        assert isinstance(body.get("error"), str) and body["error"]
    return body


MODELS = [Limit, Holder, Waiter, Operation, LockEvent, SyncRun, SyncState, Heartbeat, ApiToken]


def tables() -> dict[str, list[dict]]:
    """Every row our pages could change, in a comparable form."""
    rows = {model.__name__: list(model.objects.order_by("pk").values()) for model in MODELS}
    rows["User"] = list(User.objects.order_by("pk").values())
    rows["Group"] = list(Group.objects.order_by("pk").values("pk", "name", "permissions"))
    return rows


# --- the world the pages show ----------------------------------------------------------
MARKUP_NAME = "<script>alert('name')</script>"
QUOTED_NAME = '" onmouseover="alert(1)'


class World:
    """The rows the pages show (a plain class: failing examples print its short repr)."""

    names: list[str]  # present limits
    gone: str
    held: Limit  # a global limit with a live holder and waiters
    stale: Limit  # a tag limit with a releasable stale holder
    stale_holder: Holder
    drift: Limit  # a tag limit with a repairable leak
    operation: Operation
    before: dict[str, list[dict]]

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return f"World({len(self.names)} limits)"


@pytest.fixture
def world(operator) -> World:
    now = timezone.now()
    held = make_limit("resource:db-main")
    make_holder(
        held,
        key="live",
        source="event",
        flow_run_name=IMG,
        flow_name=SCRIPT,
        task_run_name=QUOTED_NAME,
        state_type="RUNNING",
        state_name="Running",
        acquired_at=now - timedelta(hours=1),
        lease_seconds=60,
    )
    make_waiter(held, key="w", source="event", flow_run_id=None, flow_run_name=SCRIPT)
    settle(held)
    stale = make_limit(
        f"tag:{MARKUP_NAME}", evidence=[{"flag": "stale", "text": f"run {IMG} is over"}]
    )
    stale_holder = make_holder(
        stale,
        key="t1",
        source="tag_lease",
        condition=Condition.STALE,
        task_run_id=uuid.uuid4(),
        task_run_name=IMG,
        flow_run_id=uuid.uuid4(),
        state_type="COMPLETED",
        state_name="Completed",
        acquired_at=now - timedelta(hours=2),
    )
    settle(stale)
    # Prefect counts 3 used slots that no holder takes, past the grace: drift.
    drift = settle(
        make_limit("tag:leaky", active_slots=3, limit=5, drift_since=now - timedelta(hours=1)),
        marks={"has_drift"},
    )
    names = [held.name, stale.name, drift.name]
    for name in [
        QUOTED_NAME,
        "ünïcödé 🔒 שלום",
        "x/../y",
        "a%2Fb",
        "a b:c?d#e",
        "..",
        "line\nbreak",
        "z" * 500,
    ]:
        names.append(make_limit(name).name)
    gone = make_limit("resource:gone", gone_at=now).name
    operation = Operation.objects.create(
        kind="set_limit",
        limit=held,
        limit_name=MARKUP_NAME,
        reason=IMG,
        message=SCRIPT,
        requested_by=operator,
        requested_by_name=QUOTED_NAME,
        token=uuid.uuid4(),
        status="succeeded",
        params={"value": 2},
        before={"limit": 1},
        after={"limit": IMG},
        holder={"flow_run_name": "=cmd|' /C calc'!A0"},
        finished_at=now,
    )
    SyncRun.objects.create(ok=False, finished_at=now, error=f"Prefect said {SCRIPT}")
    return World(
        names=names,
        gone=gone,
        held=held,
        stale=stale,
        stale_holder=stale_holder,
        drift=drift,
        operation=operation,
        before=tables(),
    )


def unchanged(world: World) -> None:
    assert tables() == world.before


# --- 1. query parameters ---------------------------------------------------------------
BOARD_TARGETS = [None, "rows", "results"]


def htmx(target: str | None) -> dict[str, str]:
    return {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": target} if target else {}


board_params = st.fixed_dictionaries(
    {},
    optional={
        "q": values,
        "status": choices(FACETS),
        "kind": choices(["global", "tag", "deployment"]),
        "sort": choices(["name", "held", "waiters", "changed"]),
        "page": pages,
    },
)


@hypothesis_settings
@given(params=board_params, target=st.sampled_from(BOARD_TARGETS), extra=values)
@example(params={"q": SCRIPT}, target=None, extra="")
@example(params={"q": IMG}, target="results", extra="")
@example(params={"page": "²"}, target=None, extra="")
@example(params={"page": "9" * 5_000}, target="rows", extra="")
@example(params={"q": "%", "status": "<b>", "kind": IMG, "sort": SCRIPT}, target=None, extra="")
def test_board_survives_any_query_string(operator_client, world, params, target, extra):
    url = "/?" + query_string({**params, "unknown": extra})
    html = check_html(operator_client.get(url, **htmx(target)))
    if target is None:
        assert "<h1>Lock board</h1>" in html
    assert 'id="rows"' in html
    search = params.get("q")
    if search in (SCRIPT, IMG):
        assert search not in html
        if target != "rows":  # the rows alone carry the search only URL-encoded
            assert search.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;") in html
    bad_status = (shown(params.get("status", "")) or "all") not in FACETS
    if target != "rows" and (params.get("page") == "²" or bad_status):
        assert "showing" in html  # the board says what it did instead
    unchanged(world)


@hypothesis_settings
@given(params=board_params, seen=st.one_of(values, st.just("1.a.b.1:zz,2:yy")))
@example(params={}, seen="1.a.b." + "9" * 5_000 + ":z")
@example(params={"page": "²"}, seen="")
def test_board_live_refresh_survives_any_query_string(operator_client, world, params, seen):
    url = "/board/changes?" + query_string({**params, "seen": seen})
    check_html(operator_client.get(url, HTTP_HX_REQUEST="true"), statuses=(200, 204))
    unchanged(world)


@hypothesis_settings
@given(
    params=st.fixed_dictionaries(
        {},
        optional={
            "search": values,
            "status": choices(FACETS),
            "kind": choices(["global", "tag", "deployment"]),
            "page": pages,
            "sort": values,
        },
    )
)
@example(params={"page": "²"})
@example(params={"page": "9" * 5_000})
@example(params={"search": "\x00"})
@example(params={"search": "%"})
def test_the_json_api_answers_bad_parameters_with_400_and_a_message(viewer_client, world, params):
    response = viewer_client.get("/api/v1/resources?" + query_string(params))
    body = check_json(response)
    if response.status_code == 200:
        assert {"count", "page", "pages", "results"} <= set(body)
        assert all(row["name"] in [*world.names, world.gone] for row in body["results"])
    search, page = shown(params.get("search", "")), shown(params.get("page", "1"))
    others_valid = (
        len(search) <= 200
        and "\x00" not in search
        and (shown(params.get("status", "")) or "all") in FACETS
        and shown(params.get("kind", "")) in ("", "global", "tag", "deployment")
    )
    if others_valid and (
        not (page.isascii() and page.isdigit()) or len(page) > 9 or int(page) != 1
    ):
        assert response.status_code == 400 and "page" in body["error"]
    if params == {"search": "%"}:
        assert body["count"] == 1 and body["results"][0]["name"] == "a%2Fb"  # no wildcard
    unchanged(world)


audit_params = st.fixed_dictionaries(
    {},
    optional={
        "resource": values,
        "operator": values,
        "kind": choices(["release_holder", "repair_drift", "set_limit", "activate"]),
        "outcome": choices(["pending", "running", "succeeded", "failed", "skipped"]),
        "page": pages,
    },
)


@hypothesis_settings
@given(params=audit_params, csv=st.booleans())
@example(params={"resource": "%"}, csv=False)
@example(params={"resource": "_"}, csv=True)
@example(params={"resource": SCRIPT}, csv=False)
def test_the_audit_page_and_its_csv_survive_any_filter(operator_client, world, params, csv):
    query = {**params, "format": "csv"} if csv else params
    response = operator_client.get("/audit?" + query_string(query))
    assert response.status_code == 200
    if csv:
        assert response["Content-Type"] == "text/csv"
        text = b"".join(response.streaming_content).decode()
        assert text.startswith("id,created_at,")
        assert "=cmd" not in text.replace("'=cmd", "")  # a formula is never a bare cell
    else:
        html = check_html(response)
        assert "<h1>Audit trail</h1>" in html
        if params.get("resource") == SCRIPT:
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        if params.get("resource") in ("%", "_"):
            assert "No operation matches." in html  # a wildcard is a plain character
    unchanged(world)


@hypothesis_settings
@given(
    params=st.fixed_dictionaries(
        {}, optional={"q": values, "status": choices(FACETS), "kind": values, "reason": values}
    )
)
def test_the_bulk_release_preview_survives_any_filter(operator_client, world, params):
    html = check_html(operator_client.get("/operate/bulk-release?" + query_string(params)))
    assert "Dry run: nothing has changed yet." in html
    unchanged(world)


@hypothesis_settings
@given(
    holder=st.one_of(pages, st.just("")),
    seen=values,
    fragment=values,
    target=st.sampled_from([None, "live", "op-status", "bulk-status", "rows"]),
)
@example(holder="²", seen="", fragment="", target=None)
@example(holder="9" * 5_000, seen="", fragment="", target=None)
@example(holder="99999999999999999999", seen="", fragment="", target=None)
@example(holder="", seen="x~" + "9" * 5_000, fragment="", target="live")
def test_resource_operate_and_operation_pages_survive_any_parameter(
    operator_client, world, holder, seen, fragment, target
):
    headers = htmx(target)
    name = path_segment(world.stale.name)
    check_html(
        operator_client.get(f"/resources/{name}?" + query_string({"seen": seen}), **headers),
        statuses=(200, 204),
    )
    response = operator_client.get(
        f"/operate/release/{name}?" + query_string({"holder": holder}), **headers
    )
    text = shown(holder)
    if text.isascii() and text.isdigit() and len(text) < 20 and int(text) == world.stale_holder.pk:
        check_html(response)
    else:
        html = check_html(response, statuses=(404,))
        assert "Choose a holder" in html or "no longer holds" in html
    response = operator_client.get(f"/operations/{world.operation.pk}", **headers)
    check_html(response, statuses=(200, 286))  # 286: htmx, stop polling (it has finished)
    url = f"/operations/bulk/{uuid.uuid4()}?" + query_string({"fragment": fragment})
    check_html(operator_client.get(url, **headers), statuses=(404,))
    unchanged(world)


@hypothesis_settings
@given(
    next_url=st.one_of(
        values,
        st.sampled_from(
            ["//evil.example", "https://evil.example/x", "javascript:alert(1)", "/\\evil.example"]
        ),
    )
)
def test_the_login_page_never_sends_anyone_off_site(client, world, operator, next_url):
    client.logout()
    check_html(client.get("/login/?" + query_string({"next": next_url})))
    form = {"username": operator.username, "password": PASSWORD, "next": shown(next_url)}
    response = client.post("/login/", form)
    assert response.status_code == 302 and local(response["Location"]), response["Location"]
    # Already logged in, the page sends straight on: also only to our own pages.
    response = client.get("/login/?" + query_string({"next": next_url}))
    assert response.status_code == 302 and local(response["Location"]), response["Location"]
    unchanged_but_last_login(world)


def local(location: str) -> bool:
    """A redirect a browser keeps on this site (it reads "\\" as "/" and drops tabs and
    newlines and leading spaces)."""
    url = re.sub(r"[\t\n\r]", "", location.replace("\\", "/")).lstrip("".join(map(chr, range(33))))
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and not url.startswith("//")


def unchanged_but_last_login(world: World) -> None:
    def without_last_login(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
        users = [{k: v for k, v in user.items() if k != "last_login"} for user in rows["User"]]
        return {**rows, "User": users}

    assert without_last_login(tables()) == without_last_login(world.before)


# --- 2. URL paths ----------------------------------------------------------------------
names = st.one_of(
    st.sampled_from(
        [
            "tag:leaky",
            "resource:db-main",
            QUOTED_NAME,
            "ünïcödé 🔒 שלום",
            "x/../y",
            "a%2Fb",
            "a b:c?d#e",
            "..",
            "z" * 500,
            "resource:gone",
        ]
    ),
    values,
    st.builds(lambda a, b: f"{a}/{b}", any_text, any_text),
    st.builds(lambda a: f"tag:{a}", any_text),
)


@hypothesis_settings
@given(name=names)
@example(name=MARKUP_NAME)
@example(name=f"tag:{MARKUP_NAME}")
@example(name="a\nb")
@example(name="x" * 10_000)
@example(name=b"\xed\xa0\x80\xff")
def test_resource_pages_answer_200_or_a_clear_404_for_any_name(viewer_client, world, name):
    text = name if isinstance(name, str) else ""
    exists = text in world.names or text == world.gone
    response = viewer_client.get("/resources/" + path_segment(name))
    html = check_html(response, statuses=(200,) if exists else (404,))
    if response.status_code == 404:
        assert "<h1>Not found</h1>" in html
    else:
        assert f"<code>{escape(text)}</code>" in html
    body = check_json(
        viewer_client.get("/api/v1/resources/" + path_segment(name)),
        statuses=(200,) if exists else (404,),
        html_404=not raw(name),  # an empty name is no API address at all: Django's own 404 page
    )
    if exists:
        assert body["name"] == text
    unchanged(world)


@hypothesis_settings
@given(action=choices(list(ACTIONS)), name=names)
@example(action="explode", name="resource:db-main")
@example(action="set-limit", name=MARKUP_NAME)
@example(action="set-limit", name="resource:gone")
@example(action="set-limit", name="a%2Fb")
def test_operate_pages_answer_200_or_a_clear_404_for_any_action_and_name(
    operator_client, world, action, name
):
    response = operator_client.get(f"/operate/{path_segment(action)}/{path_segment(name)}")
    text = name if isinstance(name, str) else ""
    action = shown(action)
    known = action in ACTIONS and text in world.names
    if known and action != "release":
        html = check_html(response)
        assert "<h1>" in html and escape(text) in html
    else:
        html = check_html(response, statuses=(404,))
        assert "<h1>Not found</h1>" in html
        if action not in ACTIONS and "/" not in action and action and text in world.names:
            assert "Unknown operation" in html
        if action in ACTIONS and action != "release" and text == world.gone:
            assert "is on the board" in html
    unchanged(world)


# --- 3. form fields --------------------------------------------------------------------
bad_limits = st.one_of(
    st.integers(max_value=-1).map(str),
    st.integers(min_value=10_001).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [
            "",
            " ",
            "1e3",
            "0x10",
            "1_000",
            "+5",
            "٣",
            "²",
            "𝟙",
            "１２",
            "10,000",
            "5 slots",
            "None",
            "\x00",
            "3\x00",
            "9" * 21,
            "9" * 5_000,
        ]
    ),
    values.filter(lambda v: not (shown(v).strip().isascii() and shown(v).strip().isdigit())),
)


@hypothesis_settings
@given(value=bad_limits, confirm=st.one_of(st.none(), values))
@example(value="²", confirm=None)
@example(value="١٢", confirm=None)
@example(value="-1", confirm=None)
@example(value="10001", confirm=None)
@example(value="0", confirm=None)
@example(value="0", confirm="false")
def test_a_bad_limit_value_is_explained_and_creates_nothing(operator_client, world, value, confirm):
    url = f"/operate/set-limit/{path_segment(world.held.name)}"
    fields = hidden_fields(operator_client, url)
    form = {**fields, "value": shown(value)}
    if confirm is not None:
        form["confirm_zero"] = shown(confirm)
    response = operator_client.post(url, form)
    html = check_html(response, statuses=(400,))
    assert 'class="error"' in html
    assert (
        "whole number from 0 to 10,000" in html
        or "is more than 10,000" in html
        or "at most 20 characters" in html
        or "Null characters are not allowed" in html
        or "needs this extra confirmation" in html
    ), html
    unchanged(world)


@hypothesis_settings
@given(value=st.integers(0, 10_000))
def test_every_limit_from_0_to_10000_is_accepted(operator_client, world, value):
    url = f"/operate/set-limit/{path_segment(world.held.name)}"
    form = {**hidden_fields(operator_client, url), "value": str(value), "confirm_zero": "on"}
    response = operator_client.post(url, form)
    assert response.status_code == 302
    operation = Operation.objects.get(token=form["token"])
    assert operation.params == {"value": value, "expected": 1}


def _is_uuid(value: str | bytes) -> bool:
    try:
        uuid.UUID(shown(value))
    except ValueError:
        return False
    return True


def _is_integer(value: str | bytes) -> bool:
    """What the optional hidden field accepts: an integer, or nothing (blank: the page's)."""
    from django import forms

    try:
        forms.IntegerField(required=False).clean(shown(value))
    except forms.ValidationError:
        return False
    return True


def _spoilt(valid: Callable[[str | bytes], bool]) -> Callable[[str | bytes], str | bytes]:
    """A value the field would accept, made one the form must refuse; the rest as they are.
    Mapping instead of filtering: Hypothesis refuses a strategy that throws most draws away."""
    return lambda value: shown(value) + "x" if valid(value) else value


# One hidden field changed to something the form must refuse.
tampering = st.one_of(
    st.tuples(st.just("token"), values.map(_spoilt(_is_uuid))),
    st.tuples(st.just("limit_id"), st.one_of(values, st.uuids().map(str))),
    st.tuples(st.just("holder"), pages),
    st.tuples(st.just("expected"), values.map(_spoilt(_is_integer))),
)


@hypothesis_settings
@given(action=st.sampled_from(["release", "repair", "set-limit", "deactivate"]), change=tampering)
@example(action="release", change=("holder", "²"))
@example(action="release", change=("holder", "9" * 5_000))
@example(action="release", change=("holder", "１"))
@example(action="set-limit", change=("expected", "²"))
@example(action="set-limit", change=("limit_id", str(uuid.uuid4())))
def test_tampered_hidden_fields_are_refused_and_create_nothing(
    operator_client, world, action, change
):
    field, value = change
    if field == "holder" and action != "release" or field == "expected" and action != "set-limit":
        action = "release" if field == "holder" else "set-limit"  # the field only matters there
    limit = {"release": world.stale, "repair": world.drift}.get(action, world.held)
    url = f"/operate/{action}/{path_segment(limit.name)}"
    fields = hidden_fields(operator_client, url + f"?holder={world.stale_holder.pk}")
    assert {"token", "limit_id"} <= set(fields), "the confirmation page offers a form"
    tampered = shown(value)
    right_holder = str(world.stale_holder.pk)
    if field == "holder" and tampered.isascii() and tampered.lstrip("0") == right_holder:
        tampered = str(world.stale_holder.pk + 1000)  # the right holder is no tampering
    form = {**fields, "value": "2", "reason": "why", field: tampered}
    response = operator_client.post(url, form)
    html = check_html(response, statuses=(400, 404))
    assert 'role="alert"' in html or "<h1>Not found</h1>" in html
    unchanged(world)


@hypothesis_settings
@given(
    action=st.sampled_from(["release", "repair"]),
    reason=st.one_of(
        st.sampled_from(["", " ", "\n\t ", "\x00", "why\x00", "x" * 1001]),
        st.text(" \t\r\n", max_size=5),
    ),
)
def test_releases_and_repairs_need_a_reason_and_create_nothing_without_one(
    operator_client, world, action, reason
):
    limit = world.stale if action == "release" else world.drift
    url = f"/operate/{action}/{path_segment(limit.name)}"
    if action == "release":
        url += f"?holder={world.stale_holder.pk}"
    form = {**hidden_fields(operator_client, url), "reason": reason}
    html = check_html(operator_client.post(url, form), statuses=(400,))
    assert (
        "Say why: the reason goes into the audit trail." in html
        or "Null characters are not allowed" in html
        or "at most 1000 characters" in html
    )
    unchanged(world)


no_reason = st.one_of(st.text(" \t\r\n", max_size=5), st.sampled_from(["\x00", " \x00\n"]))


@hypothesis_settings
@given(
    reason=no_reason, token=st.one_of(values, st.uuids().map(str)), q=st.one_of(st.just(""), values)
)
@example(reason="", token=str(uuid.uuid4()), q="")
@example(reason="\x00", token=str(uuid.uuid4()), q="")
def test_the_bulk_release_form_needs_a_reason_and_creates_nothing_without_one(
    operator_client, world, reason, token, q
):
    form = {"reason": reason, "token": shown(token), "q": shown(q), "status": "stale"}
    html = check_html(operator_client.post("/operate/bulk-release", form), statuses=(400,))
    assert (
        "Say why: the reason goes into the audit trail." in html
        or "Nothing to release: the board changed meanwhile." in html  # q matched no holder
    )
    unchanged(world)


@hypothesis_settings
@given(token=values.filter(lambda v: not _is_uuid(v)), q=st.one_of(st.just(""), values))
@example(token="not-a-uuid", q="")
def test_a_damaged_bulk_release_form_is_refused_and_creates_nothing(
    operator_client, world, token, q
):
    form = {"reason": "cleanup", "token": shown(token), "q": shown(q), "status": "stale"}
    response = operator_client.post("/operate/bulk-release", form)
    html = check_html(response, statuses=(400, 404))
    assert "Nothing to release" in html or "This bulk form is damaged" in html
    unchanged(world)


@hypothesis_settings
@given(username=values, password=values)
@example(username=SCRIPT, password="")
@example(username="alice\x00", password="x")
@example(username="x" * 10_000, password="x" * 10_000)
def test_the_login_form_refuses_bad_credentials_with_a_message(client, world, username, password):
    form = {"username": shown(username), "password": shown(password)}
    html = check_html(client.post("/login/", form), statuses=(200, 429))
    assert 'role="alert"' in html
    assert "_auth_user_id" not in client.session
    unchanged(world)
