"""The board's parts one by one: facets, kinds, sorts, pages, row contents, the resource page
and the timeline of holds closed by real events."""

from __future__ import annotations

import html as htmllib
import re
import uuid
from datetime import timedelta
from urllib.parse import parse_qs

import pytest
from django.utils import timezone

from reslock_web.board.query import PAGE_SIZE
from reslock_web.models import (
    FACETS,
    Condition,
    Limit,
    Operation,
    OperationKind,
    OperationStatus,
    Waiter,
)
from reslock_web.prefect_io.records import EventInfo
from reslock_web.sync import listener
from tests.support.board_data import (
    XSS,
    make_held,
    make_holder,
    make_limit,
    make_waiter,
    sample_rows,
    settle,
)
from tests.support.readouts import row_names

pytestmark = pytest.mark.django_db

UI = "https://prefect.example.test"
ESCAPED_XSS = "&lt;img src=x onerror=alert(1)&gt;"


def facet_counts(html: str) -> dict[str, int]:
    found = re.findall(r'facet-(\w+)"[^>]*>[^<]*<span class="count">(\d+)</span>', html)
    return {name: int(count) for name, count in found}


def pager_link(html: str, rel: str) -> dict[str, list[str]] | None:
    """The query of the pager's "prev" or "next" link, as parse_qs reads it."""
    found = re.search(r'<a href="\?([^"]*)"[^>]*rel="' + rel + '"', html)
    return parse_qs(htmllib.unescape(found.group(1))) if found else None


def row_html(html: str, limit: Limit) -> str:
    found = re.search(rf'<tr id="limit-{limit.pk}".*?</tr>', html, re.S)
    assert found, html
    return found.group(0)


@pytest.fixture
def ui_url(settings):
    """Run links point into this Prefect UI."""
    settings.PREFECT_UI_URL = UI + "/"  # a trailing slash must not double up in the links
    return UI


# --- 1. facets --------------------------------------------------------------------------
@pytest.fixture
def facet_rows(db):
    """The sample board, plus a zombie, a second stale resource and one gone from Prefect."""
    sample_rows()
    make_limit("resource:ghost-town", has_zombie=True)
    make_limit("resource:old-lease", is_held=True, is_stale=True, active_slots=1)
    # Gone from Prefect with the flags of its last sync: no facet but "gone" may count it.
    make_limit(
        "resource:deleted", gone_at=timezone.now(), is_stale=True, has_zombie=True, is_held=True
    )


def test_the_zombie_facet_shows_only_zombie_resources(viewer_client, facet_rows):
    html = viewer_client.get("/?status=zombie").content.decode()
    assert row_names(html) == ["resource:ghost-town"]
    assert facet_counts(html)["zombie"] == 1


def test_the_stale_facet_counts_each_stale_resource(viewer_client, facet_rows):
    html = viewer_client.get("/?status=stale").content.decode()
    assert row_names(html) == ["reports", "resource:old-lease"]
    assert facet_counts(html)["stale"] == 2


def test_all_counts_every_present_resource_but_not_the_gone_one(viewer_client, facet_rows):
    html = viewer_client.get("/").content.decode()
    present = Limit.objects.filter(gone_at__isnull=True).count()
    assert facet_counts(html)["all"] == present == 6
    assert "resource:deleted" not in row_names(html)


def test_every_facet_count_is_the_number_of_rows_that_facet_shows(viewer_client, facet_rows):
    # The counts come from one aggregate, the rows from the page query: they must agree.
    counts = facet_counts(viewer_client.get("/").content.decode())
    assert set(counts) == set(FACETS)
    for facet in FACETS:
        shown = row_names(viewer_client.get(f"/?status={facet}").content.decode())
        assert counts[facet] == len(shown), facet


# --- 2. kind filter ---------------------------------------------------------------------
@pytest.fixture
def kinds(db):
    make_limit("tag:etl")
    make_limit("resource:warehouse")
    make_limit("resource:api-quota")
    make_limit(f"deployment:{uuid.uuid4()}", kind="deployment", resource="nightly-export/prod")


def test_the_global_kind_shows_only_global_limits(viewer_client, kinds):
    html = viewer_client.get("/?kind=global").content.decode()
    assert row_names(html) == ["resource:api-quota", "resource:warehouse"]
    assert facet_counts(html)["all"] == 2


def test_the_deployment_kind_shows_only_deployment_limits(viewer_client, kinds):
    html = viewer_client.get("/?kind=deployment").content.decode()
    assert row_names(html) == ["nightly-export/prod"]
    assert facet_counts(html)["all"] == 1


# --- 3. sorts ---------------------------------------------------------------------------
def test_held_longest_puts_the_oldest_hold_first_and_free_ones_last(viewer_client):
    now = timezone.now()
    # Names in the opposite order of their holds, so that a name sort would fail.
    for name, hours in [("a-newest", 1), ("b-middle", 5), ("c-oldest", 30)]:
        make_held(name, since=now - timedelta(hours=hours))
    make_limit("0-free")
    html = viewer_client.get("/?sort=held").content.decode()
    assert row_names(html) == ["c-oldest", "b-middle", "a-newest", "0-free"]


def test_the_board_opens_worst_first_then_longest_held_and_name_order_is_one_choice_away(
    viewer_client,
):
    now = timezone.now()
    # Names against the order expected, so that a name sort fails; flags as the store sets them.
    make_limit("a-free")
    make_held("b-held-new", since=now - timedelta(hours=1))
    make_held("c-held-old", since=now - timedelta(hours=9))
    make_held("d-stale", since=now, condition=Condition.STALE)
    make_limit("e-zombie", has_zombie=True)
    make_limit("f-deadlocked", is_deadlocked=True, has_waiters=True)
    make_limit("g-over", is_over_limit=True, is_held=True)
    make_limit("h-gone", gone_at=now)  # not on the board at all
    worst_first = ["g-over", "f-deadlocked", "e-zombie", "d-stale", "c-held-old", "b-held-new"]
    html = viewer_client.get("/").content.decode()
    assert row_names(html) == [*worst_first, "a-free"]
    assert '<option value="attention" selected>attention first</option>' in html
    by_name = viewer_client.get("/?sort=name").content.decode()
    assert row_names(by_name) == sorted([*worst_first, "a-free"])


def test_the_banner_counts_what_needs_attention_on_the_whole_board_with_links(viewer_client):
    make_limit("quiet", is_held=True)
    html = viewer_client.get("/").content.decode()
    assert "Needs attention" not in html  # all is well: nothing to say
    make_limit("stale-1", is_held=True, is_stale=True)
    make_limit("stale-2", is_stale=True, has_zombie=True)
    make_limit("dead", is_deadlocked=True)
    make_held("unsure", condition=Condition.UNCOUNTED)
    make_limit("gone-stale", is_stale=True, gone_at=timezone.now())
    # The search narrows the rows, not the banner: it speaks of the whole board.
    html = viewer_client.get("/?q=quiet").content.decode()
    [banner] = re.findall(r'<p class="banner attention" role="status">(.*?)</p>', html, re.S)
    text = htmllib.unescape(re.sub(r"<[^>]+>", "", banner))
    assert text == "Needs attention: 1 deadlocked, 1 uncounted, 1 zombie, 2 stale."
    links = re.findall(r'<a href="([^"]+)">([^<]+)</a>', banner)
    assert links == [
        ("/?status=deadlocked", "1 deadlocked"),
        ("/?status=zombie", "1 zombie"),
        ("/?status=stale", "2 stale"),
    ]  # uncounted has no filter of its own: counted, not linked


def test_recently_changed_puts_the_latest_change_first(viewer_client):
    now = timezone.now()
    for name, minutes in [("a-old", 90), ("b-latest", 1), ("c-recent", 10)]:
        make_limit(name, changed_at=now - timedelta(minutes=minutes))
    html = viewer_client.get("/?sort=changed").content.decode()
    assert row_names(html) == ["b-latest", "c-recent", "a-old"]


# --- 4. pagination ----------------------------------------------------------------------
@pytest.fixture
def many(db):
    """Two and a half pages of free global limits named pg-000…, and some that the filters
    below leave out (another kind, a held one, another name)."""
    for index in range(PAGE_SIZE * 2 + 20):
        make_limit(f"pg-{index:03d}")
    make_limit("tag:pg-tagged")
    make_limit("pg-held", is_held=True, active_slots=1)
    make_limit("other-000")
    return [f"pg-{index:03d}" for index in range(PAGE_SIZE * 2 + 20)]


FILTERS = "q=pg&status=free&kind=global&sort=held"


def test_pages_one_and_two_show_consecutive_rows(viewer_client, many):
    first = viewer_client.get(f"/?{FILTERS}").content.decode()
    second = viewer_client.get(f"/?{FILTERS}&page=2").content.decode()
    assert row_names(first) == many[:PAGE_SIZE]
    assert row_names(second) == many[PAGE_SIZE : 2 * PAGE_SIZE]
    assert "Page 1 of 3 · 120 resources" in first and "Page 2 of 3" in second


def test_pager_links_keep_the_search_status_kind_and_sort(viewer_client, many):
    second = viewer_client.get(f"/?{FILTERS}&page=2").content.decode()
    kept = {"q": ["pg"], "status": ["free"], "kind": ["global"], "sort": ["held"]}
    # Page 1 is the default and is left out of the link.
    assert pager_link(second, "prev") == kept
    assert pager_link(second, "next") == {**kept, "page": ["3"]}


def test_the_last_page_has_the_remainder_and_no_next_link(viewer_client, many):
    last = viewer_client.get(f"/?{FILTERS}&page=3").content.decode()
    assert row_names(last) == many[2 * PAGE_SIZE :]
    assert "Page 3 of 3" in last
    assert pager_link(last, "next") is None and pager_link(last, "prev")["page"] == ["2"]


def test_a_page_past_the_end_shows_the_last_page_of_many(viewer_client, many):
    html = viewer_client.get(f"/?{FILTERS}&page=40").content.decode()
    assert row_names(html) == many[2 * PAGE_SIZE :]
    assert "Page 3 of 3" in html


# --- 5. row contents --------------------------------------------------------------------
@pytest.fixture
def busy(db):
    """A full limit with a marked-up holder, two waiters and evidence for its badge."""
    now = timezone.now()
    limit = make_limit(
        "resource:printer",
        evidence=[
            {"flag": "contended", "text": "2 runs wait for <b>1</b> slot."},
            {"flag": "long_hold", "text": "held for 7 min"},
        ],
    )
    holder = make_holder(
        limit,
        key="h",
        source="event",
        flow_run_name=XSS,
        flow_name="printing",
        task_run_id=uuid.uuid4(),
        task_run_name="<i>print-page</i>",
        state_type="RUNNING",
        state_name="Running",
        acquired_at=now - timedelta(minutes=7),
    )
    # Made out of order: the first in line is the lowest position, not the first row made.
    make_waiter(
        limit,
        key="w2",
        source="tag_lease",
        position=2,
        flow_run_id=None,
        flow_run_name="second-run",
        waiting_since=now - timedelta(minutes=3),
    )
    make_waiter(
        limit,
        key="w1",
        source="tag_lease",
        position=1,
        flow_run_id=None,
        flow_run_name="<u>first-run</u>",
        waiting_since=now - timedelta(minutes=5),
    )
    settle(limit)
    limit.holder = holder
    return limit


def test_a_row_shows_used_over_limit_as_a_bar_and_as_text(viewer_client, busy):
    row = row_html(viewer_client.get("/").content.decode(), busy)
    assert '<meter min="0" max="1" value="1" aria-label="1 of 1 slots used"></meter>' in row
    assert "<span>1/1</span>" in row


def test_a_partly_used_limit_shows_its_slots_used_against_its_size(viewer_client):
    pool = make_limit("resource:pool", limit=4, active_slots=3, is_held=True)
    row = row_html(viewer_client.get("/").content.decode(), pool)
    assert '<meter min="0" max="4" value="3" aria-label="3 of 4 slots used"></meter>' in row
    assert "<span>3/4</span>" in row


def test_a_row_links_the_holders_flow_run_to_its_page(viewer_client, busy, ui_url):
    row = row_html(viewer_client.get("/").content.decode(), busy)
    # The run's page says what it holds and waits for, and links on to the Prefect UI.
    link = f'<a href="/runs/{busy.holder.flow_run_id}">'
    assert link + ESCAPED_XSS + "</a>" in row
    assert XSS not in row
    assert '<span class="flow">printing</span>' in row


def test_a_row_names_the_holders_task_run_as_text(viewer_client, busy):
    row = row_html(viewer_client.get("/").content.decode(), busy)
    assert '<span class="sub">task &lt;i&gt;print-page&lt;/i&gt;</span>' in row


def test_a_row_counts_the_waiters_and_names_the_first_in_line(viewer_client, busy):
    row = row_html(viewer_client.get("/").content.decode(), busy)
    waiters = re.search(r'<td class="col-waiters">(.*?)</td>', row, re.S).group(1).strip()
    assert waiters == '2<span class="sub">next: &lt;u&gt;first-run&lt;/u&gt;</span>'


def test_the_status_badge_tooltip_carries_the_evidence(viewer_client, busy):
    row = row_html(viewer_client.get("/").content.decode(), busy)
    badge = re.search(r'<span class="badge badge-contended"([^>]*)>([^<]*)</span>', row)
    assert badge.group(2) == "contended"
    assert badge.group(1) == (' title="2 runs wait for &lt;b&gt;1&lt;/b&gt; slot. held for 7 min"')


def test_a_row_without_evidence_has_no_tooltip(viewer_client):
    free = make_limit("resource:idle")
    row = row_html(viewer_client.get("/").content.decode(), free)
    assert '<span class="badge badge-free">free</span>' in row


# --- 6. resource page -------------------------------------------------------------------
@pytest.fixture
def shared(db):
    """A limit of 3 with two holders (one stale, taking 2 slots, one a zombie, whose slot is
    free) and two waiters."""
    now = timezone.now()
    limit = make_limit(
        "resource:gpu",
        limit=3,
        evidence=[{"flag": "stale", "text": "run 'done' is Completed but still counted"}],
    )
    stale = make_holder(
        limit,
        key="s",
        source="helper",
        slots=2,
        flow_run_name="<b>done</b>",
        state_type="COMPLETED",
        state_name="Completed",
        condition=Condition.STALE,
        acquired_at=now - timedelta(hours=2),
        lease_seconds=30,
        evidence="the run ended 2 h ago but its lease is still counted",
    )
    zombie = make_holder(
        limit,
        key="z",
        source="event",
        flow_run_name="ghost",
        task_run_id=uuid.uuid4(),
        task_run_name="train",
        state_type="RUNNING",
        state_name="Running",
        condition=Condition.ZOMBIE,
        acquired_at=now - timedelta(hours=1),
    )
    for name, waited in [("first-waiter", 12), ("second-waiter", 3)]:
        make_waiter(
            limit,
            key=name,
            source="tag_lease",
            flow_run_name=name,
            waiting_since=now - timedelta(minutes=waited, seconds=30),
        )
    settle(limit)
    limit.stale, limit.zombie = stale, zombie
    return limit


def resource_page(client, name: str = "resource:gpu") -> str:
    response = client.get(f"/resources/{name}")
    assert response.status_code == 200
    return response.content.decode()


def test_the_resource_page_shows_the_limit_settings(viewer_client, shared):
    html = resource_page(viewer_client)
    assert '<meter min="0" max="3" value="2" aria-label="2 of 3 slots used"></meter> 2 of 3' in html
    assert "<dt>Enforced</dt><dd>yes</dd>" in html


def test_the_resource_page_of_an_inactive_limit_says_it_is_not_enforced(viewer_client):
    make_limit("resource:paused", active=False)
    html = resource_page(viewer_client, "resource:paused")
    assert "<dt>Enforced</dt><dd>no (inactive)</dd>" in html
    assert "Activate the limit to enforce it again." in html


def test_the_resource_page_lists_holders_with_run_links_and_state(viewer_client, shared, ui_url):
    html = resource_page(viewer_client)
    stale = re.search(rf'<tr id="holder-{shared.stale.pk}".*?</tr>', html, re.S).group(0)
    assert f'<a href="{ui_url}/runs/flow-run/{shared.stale.flow_run_id}"' in stale
    assert ">&lt;b&gt;done&lt;/b&gt;</a>" in stale and "<b>done</b>" not in stale
    assert "<td>Completed</td>" in stale and "30 s" in stale
    assert "the run ended 2 h ago but its lease is still counted" in stale
    zombie = re.search(rf'<tr id="holder-{shared.zombie.pk}".*?</tr>', html, re.S).group(0)
    assert f'<a href="{ui_url}/runs/task-run/{shared.zombie.task_run_id}"' in zombie
    assert "<td>Running</td>" in zombie and "badge-zombie" in zombie


def test_the_resource_page_says_how_long_each_waiter_has_waited_in_order(viewer_client, shared):
    html = resource_page(viewer_client)
    waited = re.findall(
        r'<li id="waiter-\d+">\s*<a [^>]*>([^<]*)</a>.*?<span class="waited">waiting '
        r'<time datetime="[^"]+" data-age="\d+">([^<]*)</time></span>',
        html,
        re.S,
    )
    assert waited == [("first-waiter", "12 min"), ("second-waiter", "3 min")]


def test_a_waiter_with_no_start_time_waits_for_an_unknown_time(viewer_client, shared):
    Waiter.objects.create(limit=shared, key="x", source="tag_lease", position=3)
    assert "waiting for an unknown time" in resource_page(viewer_client)


def test_the_diagnosis_says_what_happens_by_itself_and_what_to_do(viewer_client, shared):
    html = resource_page(viewer_client)
    diagnosis = re.search(r'<section class="card diagnosis".*?</section>', html, re.S).group(0)
    assert "run &#x27;done&#x27; is Completed but still counted" in diagnosis
    by_itself, to_do = diagnosis.split("<h3>What will happen by itself</h3>")[1].split(
        "<h3>What you can do</h3>"
    )
    # The stale holder's 30 s lease ends within 30 + 15 s; the zombie's slot is free already.
    assert "A 30 s lease frees the slot within 45 s of its last renewal" in by_itself
    assert "The slot is already free; the run will show Running until someone ends it." in by_itself
    assert (
        "Release the stale holder &#x27;&lt;b&gt;done&lt;/b&gt;&#x27;: reslock ends exactly its lease"
        in to_do
    )
    assert "Mark run &#x27;ghost&#x27; crashed so that Prefect stops showing it running." in to_do


def test_the_resource_page_lists_the_operations_recorded_for_it(viewer_client, shared, operator):
    operation = Operation.objects.create(
        kind=OperationKind.RELEASE_HOLDER,
        limit=shared,
        limit_name=shared.name,
        holder_key="s",
        reason="stuck <script>x</script>",
        requested_by=operator,
        requested_by_name=operator.username,
        token=uuid.uuid4(),
        status=OperationStatus.FAILED,
    )
    elsewhere = make_limit("resource:other")
    Operation.objects.create(
        kind=OperationKind.ACTIVATE,
        limit=elsewhere,
        limit_name=elsewhere.name,
        requested_by_name="someone-else",
        token=uuid.uuid4(),
    )
    html = resource_page(viewer_client)
    section = re.search(r'<section class="card" aria-labelledby="ops-h">.*?</section>', html, re.S)
    ops = section.group(0)
    assert f'<a href="/operations/{operation.pk}">' in ops
    assert "olga-operator: release holder" in ops
    assert '<span class="badge badge-op-failed">failed</span>' in ops
    # With no result message yet, the reason is shown, as text.
    assert "stuck &lt;script&gt;x&lt;/script&gt;" in ops and "<script>x" not in ops
    assert "someone-else" not in ops


# --- 7. timeline ------------------------------------------------------------------------
def lock_event(name: str, limit: Limit, when, **extra) -> EventInfo:
    """A Prefect concurrency-limit event as the events API and the websocket deliver it."""
    run_id = uuid.uuid4()
    return EventInfo.parse(
        {
            "id": str(uuid.uuid4()),
            "event": f"prefect.concurrency-limit.{name}",
            "occurred": when.isoformat(),
            "resource": {
                "prefect.resource.id": f"prefect.concurrency-limit.{limit.prefect_id}",
                "prefect.resource.name": limit.name,
            },
            "related": [
                {
                    "prefect.resource.id": f"prefect.flow-run.{run_id}",
                    "prefect.resource.role": "flow-run",
                    "prefect.resource.name": "<b>nightly</b>",
                }
            ],
            "payload": {},
            **extra,
        }
    )


def test_a_hold_closed_by_its_released_event_ends_at_the_release(viewer_client):
    limit = make_limit("resource:tape")
    now = timezone.now().replace(microsecond=0)
    acquired = lock_event("acquired", limit, now - timedelta(minutes=30))
    released = lock_event("released", limit, now - timedelta(minutes=20), follows=str(acquired.id))
    # One event at a time, as the live listener applies them.
    listener.apply(acquired)
    listener.apply(released)
    html = resource_page(viewer_client, "resource:tape")
    bars = re.findall(
        r'<g class="(open|closed)">\s*<rect x="([\d.]+)" y="\d+" width="([\d.]+)"', html
    )
    assert len(bars) == 1
    state, x, width = bars[0][0], float(bars[0][1]), float(bars[0][2])
    # The drawing spans the 30 minutes since the acquire: the hold is its first third.
    assert state == "closed" and x == 0 and width == pytest.approx(1000 / 3, abs=1)
    start, end = (now - timedelta(minutes=30)), (now - timedelta(minutes=20))
    label = f"&lt;b&gt;nightly&lt;/b&gt;: {start:%H:%M:%S} – {end:%H:%M:%S}</li>"
    assert label in html and "<b>nightly</b>" not in html


def test_a_hold_without_its_release_is_drawn_open_to_now(viewer_client):
    limit = make_limit("resource:tape")
    now = timezone.now().replace(microsecond=0)
    listener.apply(lock_event("acquired", limit, now - timedelta(minutes=30)))
    html = resource_page(viewer_client, "resource:tape")
    assert re.findall(r'<g class="(open|closed)">', html) == ["open"]
    assert f"{now - timedelta(minutes=30):%H:%M:%S} – now</li>" in html
