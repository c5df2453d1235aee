"""A flow run's own page and its JSON: what it holds and waits for, who is ahead of it and
why; every mention of a run leads there; the board's search finds resources by their runs."""

from __future__ import annotations

import html as htmllib
import re
import uuid
from datetime import UTC, timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from hypothesis import example, given
from hypothesis import strategies as st

from reslock_web.models import (
    ApiToken,
    Condition,
    Holder,
    Limit,
    Operation,
    OperationKind,
    OperationStatus,
    SyncRun,
    Waiter,
)
from reslock_web.sync import store
from tests.support.board_data import XSS, make_holder, make_limit, make_waiter, settle
from tests.support.hostile import hypothesis_settings, path_segment
from tests.support.markup import injected

pytestmark = pytest.mark.django_db

UI = "https://prefect.example.test"
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ESCAPED_XSS = "&lt;img src=x onerror=alert(1)&gt;"


def text(html: str) -> str:
    """What a reader sees of a piece of HTML: tags dropped, entities read, spaces folded."""
    return re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", "", html))).strip()


def article(html: str, element_id: str) -> str:
    found = re.search(rf'<article class="run-lock" id="{element_id}".*?</article>', html, re.S)
    assert found, html
    return found.group(0)


def sentence(html: str) -> str:
    found = re.search(r'<p class="why">(.*?)</p>', html, re.S)
    assert found, html
    return found.group(1)


def hhmm(when) -> str:
    """A moment as the run page writes it: "02:10 UTC", with the date when not today."""
    when, today = when.astimezone(UTC), timezone.now().astimezone(UTC).date()
    return f"{when:%H:%M} UTC" if when.date() == today else f"{when:%Y-%m-%d %H:%M} UTC"


@pytest.fixture
def ui_url(settings):
    settings.PREFECT_UI_URL = UI + "/"
    return UI


class Board:
    """The rows of the run page tests, kept by name (a plain class: short repr)."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return "Board()"


@pytest.fixture
def board(db) -> Board:
    """Run "waiting-run" (flow nightly-load, deployment prod) waits 2nd in line for db-42,
    held by a zombie (nightly-etl/abc) with one run ahead of it; it waits 1st for
    "reports", held by a stale tag holder; and it holds "scratch" itself, with two runs
    waiting behind it. Its name is markup, as anyone may name a run."""
    now = timezone.now()
    run = uuid.uuid4()
    mine = {
        "flow_run_id": run,
        "flow_run_name": XSS,
        "flow_name": "nightly-load",
        "deployment_id": uuid.uuid4(),
        "deployment_name": "prod",
    }
    db42 = make_limit("resource:db-42")
    zombie_since = now - timedelta(hours=2, minutes=5)
    zombie = make_holder(
        db42,
        key="z",
        source="helper",
        flow_run_name="abc",
        flow_name="nightly-etl",
        state_type="RUNNING",
        state_name="Running",
        condition=Condition.ZOMBIE,
        acquired_at=zombie_since,
        evidence="its process was shown ended on this machine",
    )
    first = make_waiter(
        db42,
        key="first",
        source="helper",
        flow_run_name="early-bird",
        flow_name="other-flow",
        waiting_since=now - timedelta(minutes=30),
    )
    waiting = make_waiter(
        db42,
        key="mine",
        source="helper",
        waiting_since=now - timedelta(minutes=14, seconds=10),
        task_run_id=uuid.uuid4(),
        task_run_name="load-db",
        **mine,
    )
    settle(db42)
    reports = make_limit("tag:reports")
    stale = make_holder(
        reports,
        key="t",
        source="tag_lease",
        flow_run_name="finished-run",
        flow_name="reporting",
        task_run_id=uuid.uuid4(),
        task_run_name="render",
        state_type="COMPLETED",
        state_name="Completed",
        condition=Condition.STALE,
        acquired_at=now - timedelta(minutes=50),
        evidence="Still counted as holder, but its task run is Completed.",
    )
    make_waiter(
        reports,
        key="mine",
        source="tag_lease",
        waiting_since=now - timedelta(minutes=3),
        task_run_id=uuid.uuid4(),
        task_run_name="report-task",
        **mine,
    )
    settle(reports)
    scratch = make_limit("resource:scratch")
    own = make_holder(
        scratch,
        key="own",
        source="event",
        task_run_id=uuid.uuid4(),
        task_run_name="scratch-task",
        acquired_at=now - timedelta(minutes=20),
        state_type="RUNNING",
        state_name="Running",
        lease_seconds=60,
        **mine,
    )
    behind = [
        make_waiter(
            scratch,
            key=name,
            source="event",
            flow_run_name=name,
            flow_name="batch",
            waiting_since=now - timedelta(minutes=minutes),
        )
        for name, minutes in [("queued-one", 4), ("queued-two", 3)]
    ]
    settle(scratch)
    make_limit("resource:unrelated")
    synced = SyncRun.objects.create(ok=True, finished_at=now, limits=4, duration_ms=9)
    return Board(
        run=run,
        db42=db42,
        zombie=zombie,
        first=first,
        waiting=waiting,
        reports=reports,
        stale=stale,
        scratch=scratch,
        own=own,
        behind=behind,
        synced=synced,
    )


def run_page(client, run_id) -> str:
    response = client.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def release_url(limit: Limit, holder: Holder) -> str:
    return reverse("operate", args=["release", limit.name]) + f"?holder={holder.pk}"


# --- 1. the run's page ------------------------------------------------------------------
def test_the_run_page_says_why_it_waits_its_place_and_who_holds_the_resource(viewer_client, board):
    html = run_page(viewer_client, board.run)
    wait = article(html, f"wait-{board.waiting.pk}")
    said = text(sentence(wait))
    assert said == (
        f"waiting 14 min for resource:db-42 (2nd in line, 1 ahead of it), held by "
        f"nightly-etl/abc since {hhmm(board.zombie.acquired_at)} (2 h 5 min), which is a zombie "
        "(its process has ended, Prefect still shows it running): an operator can release it."
    )
    # The resource and the holder ahead link to their pages on the board.
    assert '<a href="/resources/resource:db-42">resource:db-42</a>' in wait
    assert f'<a href="/runs/{board.zombie.flow_run_id}">nightly-etl/abc</a>' in wait
    # Who is ahead in the queue, the holder's evidence, and the resource's diagnosis.
    ahead = re.search(r"<h4>Ahead of it in the queue</h4>\s*<ol.*?</ol>", wait, re.S).group(0)
    assert f'<a href="/runs/{board.first.flow_run_id}">early-bird</a>' in ahead
    assert "its process was shown ended on this machine" in wait
    assert "<h4>Diagnosis of resource:db-42</h4>" in wait
    assert "Mark run &#x27;abc&#x27; crashed so that Prefect stops showing it running." in wait
    assert "task load-db" in wait


def test_the_run_page_lists_what_it_holds_and_who_waits_behind_it(viewer_client, board):
    html = run_page(viewer_client, board.run)
    hold = article(html, f"hold-{board.own.pk}")
    assert text(sentence(hold)) == (
        f"holding resource:scratch since {hhmm(board.own.acquired_at)} (20 min); "
        "2 run(s) wait behind it, next batch/queued-one."
    )
    names = re.findall(r'<li><a href="/runs/([^"]+)">([^<]+)</a>', hold)
    assert names == [(str(w.flow_run_id), w.flow_run_name) for w in board.behind]
    # A live holder of 60 s leases: the diagnosis says what happens if it dies.
    assert "renews a 60 s lease while it runs" in hold


def test_the_run_page_names_the_run_its_flow_deployment_and_links_to_prefect(
    viewer_client, board, ui_url
):
    html = run_page(viewer_client, board.run)
    assert f"<h1>{ESCAPED_XSS}</h1>" in html
    assert "<dt>Flow</dt><dd>nightly-load</dd>" in html
    assert ">prod</a>" in html
    # Only task runs' states are on the board here: it says so rather than guess.
    assert "the board keeps its task runs' states" in html
    assert f'href="{UI}/runs/flow-run/{board.run}"' in html
    assert f'href="{UI}/deployments/deployment/' in html


def test_the_flow_runs_own_state_shows_when_the_board_has_it(viewer_client, board):
    # A flow-level hold (no task run) carries the flow run's own state.
    Holder.objects.filter(pk=board.own.pk).update(task_run_id=None, task_run_name="")
    html = run_page(viewer_client, board.run)
    assert re.search(r"<dt>State</dt><dd>Running", html)


def test_an_operator_gets_release_it_here_for_a_zombie_or_stale_holder_ahead(
    operator_client, viewer, board
):
    html = run_page(operator_client, board.run)
    zombie = sentence(article(html, f"wait-{board.waiting.pk}"))
    assert f'<a href="{release_url(board.db42, board.zombie)}">release it here</a>' in zombie
    mine = Waiter.objects.get(limit=board.reports)
    reports = sentence(article(html, f"wait-{mine.pk}"))
    assert text(reports).endswith(
        "which is stale (its run is over, its slot is still counted): release it here."
    )
    assert f'<a href="{release_url(board.reports, board.stale)}">release it here</a>' in reports
    # The link leads to the existing confirmation page, which the operator can open.
    confirm = operator_client.get(release_url(board.reports, board.stale))
    assert confirm.status_code == 200
    assert b"Release the slot held by the finished task run" in confirm.content
    # A viewer reads the same facts, without a link to an operation.
    viewer_client = Client()
    viewer_client.force_login(viewer)
    seen = run_page(viewer_client, board.run)
    assert "release it here" not in seen and "/operate/" not in seen
    assert seen.count("an operator can release it") == 2


def test_a_live_holder_ahead_gets_no_release_link(operator_client, board):
    Holder.objects.filter(pk=board.zombie.pk).update(condition=Condition.HOLDING, evidence="")
    html = run_page(operator_client, board.run)
    wait = sentence(article(html, f"wait-{board.waiting.pk}"))
    assert text(wait).endswith(
        f"held by nightly-etl/abc since {hhmm(board.zombie.acquired_at)} (2 h 5 min)."
    )
    assert "/operate/" not in wait


def test_a_deadlocked_wait_says_so_with_the_evidence(viewer_client, board):
    Waiter.objects.filter(pk=board.waiting.pk).update(
        deadlocked_by=board.zombie,
        evidence="Self-deadlock: task run 'load-db' waits for this limit inside task run 'x'.",
    )
    wait = article(run_page(viewer_client, board.run), f"wait-{board.waiting.pk}")
    assert "inside which it waits: a self-deadlock, which never ends by itself" in text(
        sentence(wait)
    )
    assert "Self-deadlock: task run &#x27;load-db&#x27; waits for this limit" in wait


def test_a_wait_with_no_known_holder_says_so(viewer_client, board):
    Holder.objects.filter(limit=board.db42).delete()
    Limit.objects.filter(pk=board.db42.pk).update(has_drift=True, active_slots=1)
    said = text(sentence(article(run_page(viewer_client, board.run), f"wait-{board.waiting.pk}")))
    assert said.endswith(
        "and no run the board knows of holds it: Prefect counts 1 used slot(s) of 1 that no "
        "known holder takes (drift)."
    )


def test_a_leaving_holder_is_not_shown_as_a_hold(viewer_client, board):
    Holder.objects.filter(pk=board.own.pk).update(condition=Condition.LEAVING)
    html = run_page(viewer_client, board.run)
    assert f"hold-{board.own.pk}" not in html
    assert "It holds nothing on the board." in html


def test_a_run_the_board_does_not_know_holds_and_waits_for_nothing(viewer_client, board, ui_url):
    stranger = uuid.uuid4()
    html = run_page(viewer_client, stranger)
    finished = board.synced.finished_at
    assert (
        "This run holds and waits for nothing on the board as of the last sync "
        f"({finished:%Y-%m-%d %H:%M:%S} UTC" in html
    )
    assert f'<a href="{UI}/runs/flow-run/{stranger}" rel="noopener" target="_blank">' in html
    assert f"<h1>Flow run {stranger}</h1>" in html


def test_before_any_sync_the_unknown_run_page_says_nothing_has_been_synced(viewer_client):
    html = run_page(viewer_client, uuid.uuid4())
    assert "as of the last sync (nothing has been synced yet)" in html


@pytest.mark.parametrize(
    "path",
    [
        "not-a-uuid",
        "1234",
        "0B5F7A4E-6C1D-4F3E-9A8B-2D7C4E1F0A93",  # an id, but not as the board writes one
        "0b5f7a4e6c1d4f3e9a8b2d7c4e1f0a93",
        "0b5f7a4e-6c1d-4f3e-9a8b-2d7c4e1f0a93/extra",
        "%3Cscript%3Ealert(1)%3C/script%3E",
    ],
)
def test_a_malformed_run_id_is_a_clear_404(viewer_client, path):
    response = viewer_client.get(f"/runs/{path}")
    assert response.status_code == 404
    html = response.content.decode()
    assert "<h1>Not found</h1>" in html and "is not a flow run id" in html
    assert injected(html) == []
    api = viewer_client.get(f"/api/v1/runs/{path}")
    assert api.status_code == 404
    assert api.json() == {"error": "not a flow run id: expected a UUID"}


@hypothesis_settings
@given(segment=st.one_of(st.text(max_size=60), st.binary(max_size=40), st.uuids().map(str)))
@example(segment=XSS)
@example(segment="..")
def test_any_run_address_answers_200_or_a_clear_404(viewer_client, segment):
    response = viewer_client.get("/runs/" + path_segment(segment))
    html = response.content.decode()
    assert injected(html) == []
    if isinstance(segment, str) and UUID_TEXT.fullmatch(segment):
        assert response.status_code == 200
        assert "holds and waits for nothing on the board" in html
        return
    assert response.status_code == 404, response.content[:300]
    assert "<h1>Not found</h1>" in html
    # Anything a path can carry after /runs/ (a newline ends a URL path for Django).
    given = segment.encode("utf-8", "surrogatepass") if isinstance(segment, str) else segment
    if given and b"\n" not in given:
        assert "is not a flow run id" in html


def test_markup_in_every_name_is_escaped_on_the_run_page(operator_client, board):
    for model in (Holder, Waiter):
        model.objects.update(flow_run_name=XSS, flow_name=XSS, task_run_name=XSS)
    Holder.objects.update(evidence=XSS)
    html = run_page(operator_client, board.run)
    assert XSS not in html and ESCAPED_XSS in html
    assert injected(html) == []


def test_the_run_page_is_for_logged_in_users_only(client, board):
    response = client.get(f"/runs/{board.run}")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_the_live_section_is_redrawn_only_when_the_board_changed(viewer_client, board):
    store.raise_board_version()
    html = run_page(viewer_client, board.run)
    seen = htmllib.unescape(re.search(r'hx-get="/runs/[^?]+\?seen=([^"]+)"', html).group(1))
    htmx = {"HX-Request": "true", "HX-Target": "live"}
    url = f"/runs/{board.run}?seen={seen.replace('~', '%7E')}"
    assert viewer_client.get(url, headers=htmx).status_code == 204
    store.raise_board_version()  # a sync wrote something
    again = viewer_client.get(url, headers=htmx)
    assert again.status_code == 200
    assert again.content.decode().strip().startswith('<div id="live"')


# --- 2. the API -------------------------------------------------------------------------
def test_the_api_answers_the_same_facts(viewer_client, board):
    data = viewer_client.get(f"/api/v1/runs/{board.run}").json()
    assert data["flow_run"]["id"] == str(board.run) and data["flow_run"]["name"] == XSS
    assert data["flow"]["name"] == "nightly-load" and data["deployment"]["name"] == "prod"
    assert data["state"] is None and "sync" in data
    waits = {wait["resource"]["name"]: wait for wait in data["waits"]}
    assert set(waits) == {"resource:db-42", "tag:reports"}
    db42 = waits["resource:db-42"]
    assert db42["position"] == 2 and db42["ahead"] == 1
    assert db42["resource"]["page"] == "/resources/resource:db-42"
    assert db42["task_run"]["name"] == "load-db"
    [blocker] = db42["blocked_by"]
    assert blocker["flow_run"]["id"] == str(board.zombie.flow_run_id)
    assert blocker["condition"] == "zombie" and blocker["zombie"] is True
    assert blocker["release"] == release_url(board.db42, board.zombie)
    # The sentence is the page's, word for word.
    page = run_page(viewer_client, board.run)
    shown = text(sentence(article(page, f"wait-{board.waiting.pk}")))
    assert shown == f"{db42['summary']}."
    assert (
        "Mark run 'abc' crashed so that Prefect stops showing it running."
        in (db42["diagnosis"]["to_do"])
    )
    [hold] = data["holds"]
    assert hold["resource"]["name"] == "resource:scratch" and hold["waiters_behind"] == 2
    assert hold["condition"] == "holding" and hold["release"] is None
    assert hold["summary"].startswith("holding resource:scratch since ")


def test_the_api_answers_empty_lists_for_a_run_it_does_not_know(viewer_client, board):
    stranger = uuid.uuid4()
    response = viewer_client.get(f"/api/v1/runs/{stranger}")
    assert response.status_code == 200
    data = response.json()
    assert data["holds"] == [] and data["waits"] == []
    assert data["flow_run"] == {"id": str(stranger), "name": "", "url": data["flow_run"]["url"]}
    assert data["flow_run"]["url"].endswith(f"/runs/flow-run/{stranger}")
    assert data["sync"]["last_ok_at"] == board.synced.finished_at.isoformat()


def test_the_api_takes_a_token_and_refuses_anonymous_callers(client, viewer, board):
    anonymous = client.get(f"/api/v1/runs/{board.run}")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    _, secret = ApiToken.objects.issue(viewer, "monitor")
    response = client.get(f"/api/v1/runs/{board.run}", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200 and len(response.json()["waits"]) == 2
    assert client.post(f"/api/v1/runs/{board.run}").status_code == 405


# --- 3. every mention of a run links to its page -----------------------------------------
def row_html(html: str, limit: Limit) -> str:
    found = re.search(rf'<tr id="limit-{limit.pk}".*?</tr>', html, re.S)
    assert found, html
    return found.group(0)


def test_a_board_row_links_its_holder_and_its_next_waiter_to_their_run_pages(viewer_client, board):
    html = viewer_client.get("/").content.decode()
    row = row_html(html, board.db42)
    assert f'<a href="/runs/{board.zombie.flow_run_id}">abc</a>' in row
    assert f'next: <a href="/runs/{board.first.flow_run_id}">early-bird</a>' in row
    own = row_html(html, board.scratch)
    assert f'<a href="/runs/{board.run}">{ESCAPED_XSS}</a>' in own
    assert XSS not in html


def test_drawing_board_rows_reads_no_more_than_before(
    viewer_client, board, django_assert_num_queries
):
    # The holders of a page in one query, the first waiters in one more: the run links
    # come from columns those already read.
    from reslock_web.board.cache import drawn_rows

    versions = list(Limit.objects.values_list("pk", "changed_at"))
    with django_assert_num_queries(3):  # the rows, their holders, their first waiters
        drawn = drawn_rows(versions, keep=False)
    assert any(f"/runs/{board.run}" in row for row in drawn)


def test_the_resource_page_links_runs_to_their_pages_with_a_small_prefect_link(
    viewer_client, board, ui_url
):
    html = viewer_client.get("/resources/resource:db-42").content.decode()
    holder = re.search(rf'<tr id="holder-{board.zombie.pk}".*?</tr>', html, re.S).group(0)
    assert (
        f'<a href="/runs/{board.zombie.flow_run_id}">abc</a> '
        f'<a href="{UI}/runs/flow-run/{board.zombie.flow_run_id}" class="ext" rel="noopener" '
        'target="_blank" title="This flow run in the Prefect UI">Prefect</a>'
    ) in holder
    waiter = re.search(rf'<li id="waiter-{board.waiting.pk}">.*?</li>', html, re.S).group(0)
    assert (
        f'<a href="/runs/{board.run}">{ESCAPED_XSS}</a> '
        f'<a href="{UI}/runs/flow-run/{board.run}" class="ext"'
    ) in waiter


def test_the_operation_page_and_the_audit_link_the_released_run(operator_client, operator, board):
    from reslock_web.operations.requests import holder_snapshot

    operation = Operation.objects.create(
        kind=OperationKind.RELEASE_HOLDER,
        limit=board.reports,
        limit_name=board.reports.name,
        holder_key=board.stale.key,
        holder=holder_snapshot(board.stale),
        requested_by=operator,
        requested_by_name=operator.username,
        token=uuid.uuid4(),
        status=OperationStatus.SUCCEEDED,
    )
    link = f'<a href="/runs/{board.stale.flow_run_id}">finished-run</a>'
    assert link in operator_client.get(f"/operations/{operation.pk}").content.decode()
    assert link in operator_client.get("/audit").content.decode()
    # The confirmation page names the holder the same way.
    confirm = operator_client.get(release_url(board.reports, board.stale)).content.decode()
    assert link in confirm
    # An operation whose snapshot names no run (an old or a damaged row) shows the name only.
    Operation.objects.filter(pk=operation.pk).update(holder={"flow_run_name": "no-id"})
    assert "no-id</dd>" in operator_client.get(f"/operations/{operation.pk}").content.decode()


# --- 4. the board's search finds resources by their runs ----------------------------------
def row_names(html: str) -> list[str]:
    return re.findall(r'<th scope="row" class="resource">\s*<a href="[^"]*">([^<]*)</a>', html)


def facet_counts(html: str) -> dict[str, int]:
    found = re.findall(r'facet-(\w+)"[^>]*>[^<]*<span class="count">(\d+)</span>', html)
    return {name: int(count) for name, count in found}


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("ABC", ["resource:db-42"]),  # a holder's flow run name, any case
        ("nightly-ETL", ["resource:db-42"]),  # a holder's flow name
        ("early-bird", ["resource:db-42"]),  # a waiter's flow run name
        ("queued", ["resource:scratch"]),
        ("batch", ["resource:scratch"]),  # a waiter's flow name
        ("PROD", ["resource:db-42", "reports", "resource:scratch"]),  # the run's deployment
        ("nightly-load", ["resource:db-42", "reports", "resource:scratch"]),  # its flow
    ],
)
def test_the_board_search_finds_resources_by_their_runs(viewer_client, board, search, expected):
    html = viewer_client.get("/", {"q": search, "sort": "name"}).content.decode()
    assert sorted(row_names(html)) == sorted(expected)


def test_names_still_match_as_before_and_task_run_names_do_not(viewer_client, board):
    def found(search: str) -> list[str]:
        return sorted(row_names(viewer_client.get("/", {"q": search}).content.decode()))

    assert found("early") == ["resource:db-42"]  # a run's name
    assert found("UNRELATED") == ["resource:unrelated"]  # a resource's name, as before
    assert found("render") == []  # task runs are not searched: their flow runs are


def test_the_board_search_finds_a_run_by_its_id_or_a_prefix_of_it(viewer_client, board):
    run = str(board.run)
    everything = ["reports", "resource:db-42", "resource:scratch"]
    for search in (run, run.upper(), run[:8], run[:13]):
        html = viewer_client.get("/", {"q": search}).content.decode()
        assert sorted(row_names(html)) == everything, search
    zombie = str(board.zombie.flow_run_id)
    html = viewer_client.get("/", {"q": zombie[:10]}).content.decode()
    assert "resource:db-42" in row_names(html)
    # A short hex word is a word, not an id prefix: it does not bring in runs' ids (and no
    # name here holds four hex digits in a row).
    html = viewer_client.get("/", {"q": run[:4]}).content.decode()
    assert row_names(html) == []


def test_the_facet_counts_follow_a_search_by_run(viewer_client, board):
    html = viewer_client.get("/", {"q": "nightly-etl"}).content.decode()
    counts = facet_counts(html)
    assert counts["all"] == 1 and counts["zombie"] == 1 and counts["stale"] == 0
    html = viewer_client.get("/", {"q": "prod", "status": "stale"}).content.decode()
    assert row_names(html) == ["reports"]
    counts = facet_counts(html)
    assert counts["all"] == 3 and counts["stale"] == 1 and counts["zombie"] == 1


def test_a_leaving_holder_is_not_found_by_the_search(viewer_client, board):
    html = viewer_client.get("/", {"q": "nightly-etl"}).content.decode()
    assert row_names(html) == ["resource:db-42"]
    # Gone without a release, within the grace: not shown on the board, so not searched.
    Holder.objects.filter(pk=board.zombie.pk).update(condition=Condition.LEAVING)
    html = viewer_client.get("/", {"q": "nightly-etl"}).content.decode()
    assert row_names(html) == []


def test_the_api_search_finds_resources_by_their_runs_too(viewer_client, board):
    data = viewer_client.get("/api/v1/resources", {"search": "early-bird"}).json()
    assert [item["name"] for item in data["results"]] == ["resource:db-42"]
    assert data["count"] == 1
