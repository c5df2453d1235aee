"""The one module that speaks HTTP to Prefect.

It returns typed results, uses explicit timeouts and raises one error type, `PrefectError`,
whose `retryable` says whether trying again later can help. Plain httpx rather than Prefect's
client: that client retries five times with back-off on its own (over a minute for a server
that hangs) and reads process-wide settings; here the caller decides when to retry.

Every request first takes its turn from the shared request budget (`budget`), when
one is given. A 429 (Prefect Cloud's rate limit) was not carried out: it stops every reslock
process until its `Retry-After` has passed, and the request is sent again, up to `patience`
seconds of such waits in all; only then does the caller see the error.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import quote
from uuid import UUID

import httpx
from django.conf import settings
from django.utils.http import parse_http_date_safe

from reslock_web.prefect_io.budget import Budget, Throttled
from reslock_web.prefect_io.budget import for_settings as budget_for_settings
from reslock_web.prefect_io.records import (
    EventInfo,
    LimitInfo,
    LimitListing,
    RunInfo,
    as_list,
    parse_uuid,
    short_text,
)
from reslock_web.security import redact

log = logging.getLogger(__name__)

PAGE = 200  # the server's maximum page size for limits and runs
EVENTS_PAGE = 50  # the server's maximum for events
# Prefect pages events by offset, and counts a query's events with its first page: the query
# behind each next_page skips every event of the pages before it, so following next_page
# through a long window costs time in the square of its events (a first sync over a million:
# hours). After this many pages a read asks anew, over a short window from the last event's
# time (`events`): no query goes deeper than this, nor counts much more than it reads.
EVENTS_PAGES_PER_QUERY = 20
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
THROTTLED = 429
DEFAULT_RETRY_AFTER = 5.0  # seconds, for a 429 that does not say


class PrefectError(Exception):
    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after  # seconds before Prefect takes requests again (429)

    @classmethod
    def rate_limited(cls, message: str, retry_after: float) -> PrefectError:
        return cls(message, retryable=True, status=THROTTLED, retry_after=retry_after)

    @property
    def throttled(self) -> bool:
        """Prefect is rate-limiting reslock, or reslock's own budget had no turn in time. Either
        way the request was not carried out: Prefect refuses a 429 before doing anything, and
        a request the budget holds back is never sent."""
        return self.status == THROTTLED


class PrefectAPI:
    """A session with one Prefect API. Thread-safe: several requests may be in flight."""

    def __init__(
        self,
        api_url: str,
        api_key: str = "",
        timeout: float = 10.0,
        *,
        budget: Budget | None = None,
        patience: float = 60.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._api_key = api_key
        self.budget = budget
        self.patience = patience  # seconds a request may wait for its turn and for 429s
        self.api_url = api_url.rstrip("/")
        # Requests sent, by method and the path's first two segments ("POST events/filter"):
        # what a pass cost, for the listener's log and the benchmarks.
        self.sent: Counter[str] = Counter()
        self._http = httpx.Client(
            base_url=self.api_url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        )

    @classmethod
    def from_settings(cls) -> PrefectAPI:
        return cls.for_url(settings.PREFECT_API_URL)

    @classmethod
    def for_url(cls, api_url: str) -> PrefectAPI:
        """A session with the settings' key, timeout and the shared request budget."""
        return cls(
            api_url,
            settings.PREFECT_API_KEY,
            settings.PREFECT_TIMEOUT_SECONDS,
            budget=budget_for_settings(api_url),
        )

    def __enter__(self) -> PrefectAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- transport -------------------------------------------------------------------
    def request(self, method: str, path: str, json: Any = None) -> Any:
        try:
            return self._request(method, path, json)
        except PrefectError as error:
            # An answer may echo the request back (a proxy's error page, a debugging server):
            # the key sent, and a user name and password in the API's URL, must not reach a
            # message that is logged, stored or shown.
            message = redact(str(error), [self._api_key] if self._api_key else [])
            if message == str(error):
                raise
            raise PrefectError(
                message,
                retryable=error.retryable,
                status=error.status,
                retry_after=error.retry_after,
            ) from None

    def _request(self, method: str, path: str, json: Any) -> Any:
        # A read that meets Prefect's "database is busy" (503, SQLite under concurrent writes)
        # is sent again after a short pause; a write never is: the caller decides.
        reads = method == "GET" or path.rstrip("/").endswith("filter")
        busy_pauses = [0.2, 0.5] if reads else []
        waited = 0.0
        while True:
            response = self._send(method, path, json, self.patience - waited)
            if response.status_code == THROTTLED:
                pause = retry_after(response)
                if self.budget is not None:
                    self.budget.hold_off(pause)
                if waited + pause > self.patience:
                    break
                log.info("Prefect throttles reslock (429): waiting %.1f s", pause)
                time.sleep(pause)
                waited += pause
                continue
            if response.status_code != 503 or not busy_pauses:
                break
            time.sleep(busy_pauses.pop(0))
        return self._answer(method, path, response)

    def _send(self, method: str, path: str, json: Any, patience: float) -> httpx.Response:
        if self.budget is not None:
            try:
                self.budget.take(max_wait=max(0.0, patience))
            except Throttled as error:
                raise PrefectError(
                    f"reslock's Prefect request budget ({self.budget.per_minute} a minute, "
                    f"RESLOCK_PREFECT_MAX_REQUESTS_PER_MINUTE) has no room for "
                    f"{method} /{path.lstrip('/')} within {patience:.0f} s (its next turn is "
                    f"{error.wait:.0f} s away)",
                    retryable=True,
                    status=THROTTLED,
                    retry_after=error.wait,
                ) from None
        self.sent[f"{method} {'/'.join(path.lstrip('/').split('/')[:2])}"] += 1
        try:
            return self._http.request(method, path.lstrip("/"), json=json)
        except httpx.TimeoutException:
            raise PrefectError(
                f"Prefect did not answer {method} /{path.lstrip('/')} in time", retryable=True
            ) from None
        except httpx.TransportError as error:
            raise PrefectError(
                f"cannot reach Prefect at {self.api_url}: {type(error).__name__}", retryable=True
            ) from None

    def _answer(self, method: str, path: str, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            detail = _detail(response)
            raise PrefectError(
                f"Prefect answered {response.status_code} to {method} /{path.lstrip('/')}: {detail}",
                retryable=response.status_code in RETRYABLE_STATUS,
                status=response.status_code,
                retry_after=retry_after(response) if response.status_code == THROTTLED else None,
            )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise PrefectError(
                f"Prefect sent something that is not JSON for /{path}", retryable=True
            ) from None

    def _list(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        data = self.request("POST", path, json=body)
        if not isinstance(data, list):
            raise PrefectError(f"Prefect sent an unexpected answer for /{path}", retryable=True)
        return [item for item in data if isinstance(item, dict)]

    # --- limits ----------------------------------------------------------------------
    def health(self) -> bool:
        return self.request("GET", "health") is True

    def list_limits(self) -> LimitListing:
        """Every limit, all pages. Raises rather than return a partial list."""
        listing = LimitListing()
        # By id: offset paging lists a limit twice when one is created meanwhile, and one
        # row per limit is all the database takes.
        found: dict[UUID, LimitInfo] = {}
        offset = 0
        while True:
            page = self._list("v2/concurrency_limits/filter", {"limit": PAGE, "offset": offset})
            for data in page:
                parsed = LimitInfo.parse(data)
                if parsed is None:
                    listing.skipped += 1
                else:
                    found[parsed.id] = parsed
            if len(page) < PAGE:
                listing.limits = list(found.values())
                return listing
            offset += PAGE

    def read_limit(self, id_or_name: str) -> LimitInfo | None:
        try:
            data = self.request("GET", f"v2/concurrency_limits/{quote(id_or_name, safe='')}")
        except PrefectError as error:
            if error.status == 404:
                return None
            raise
        return LimitInfo.parse(data) if isinstance(data, dict) else None

    def tag_holders(self, tag: str) -> list[UUID] | None:
        """Task-run ids holding a lease on the tag limit; None if the limit vanished meanwhile."""
        try:
            data = self.request("GET", f"concurrency_limits/tag/{quote(tag, safe='')}")
        except PrefectError as error:
            if error.status == 404:
                return None
            raise
        slots = data.get("active_slots") if isinstance(data, dict) else None
        return [run_id for value in as_list(slots) if (run_id := parse_uuid(value)) is not None]

    def tag_holders_many(
        self, tags: Iterable[str], workers: int = 6
    ) -> dict[str, list[UUID] | None]:
        """One request per tag, several in flight (the API has no batch call for this)."""
        tags = list(tags)
        if not tags:
            return {}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return dict(zip(tags, pool.map(self.tag_holders, tags), strict=True))

    # --- runs ------------------------------------------------------------------------
    def _runs_by_id(self, kind: str, ids: Iterable[UUID]) -> dict[UUID, RunInfo]:
        found: dict[UUID, RunInfo] = {}
        unique = sorted({str(run_id) for run_id in ids})
        for chunk in _chunks(unique, PAGE):
            body = {f"{kind}s": {"id": {"any_": chunk}}, "limit": PAGE}
            for data in self._list(f"{kind}s/filter", body):
                if (run := RunInfo.parse(data)) is not None:
                    found[run.id] = run
        return found

    def task_runs(self, ids: Iterable[UUID]) -> dict[UUID, RunInfo]:
        return self._runs_by_id("task_run", ids)

    def flow_runs(self, ids: Iterable[UUID]) -> dict[UUID, RunInfo]:
        return self._runs_by_id("flow_run", ids)

    def _by_id(self, kind: str, ids: Iterable[UUID]) -> dict[UUID, dict[str, Any]]:
        found: dict[UUID, dict[str, Any]] = {}
        for chunk in _chunks(sorted({str(i) for i in ids}), PAGE):
            body = {f"{kind}s": {"id": {"any_": chunk}}, "limit": PAGE}
            for data in self._list(f"{kind}s/filter", body):
                if (item_id := parse_uuid(data.get("id"))) is not None:
                    found[item_id] = data
        return found

    def flow_names(self, ids: Iterable[UUID]) -> dict[UUID, str]:
        return {i: short_text(data.get("name")) for i, data in self._by_id("flow", ids).items()}

    def deployments(self, ids: Iterable[UUID]) -> dict[UUID, tuple[str, UUID | None]]:
        """Deployment id -> (deployment name, flow id)."""
        return {
            i: (short_text(data.get("name")), parse_uuid(data.get("flow_id")))
            for i, data in self._by_id("deployment", ids).items()
        }

    def tagged_task_runs(self, state: str, tag: str | None = None) -> list[RunInfo]:
        """Task runs in this state that carry a tag: any tag, or this one."""
        tags = {"all_": [tag]} if tag is not None else {"is_null_": False}
        criteria = {"tags": tags, "state": {"type": {"any_": [state]}}}
        return self._paged_runs("task_run", criteria)

    def deployment_runs(self, deployment_ids: Iterable[UUID]) -> list[RunInfo]:
        """Pending, Running, Cancelling and Scheduled (AwaitingConcurrencySlot, AwaitingRetry)
        flow runs of these deployments."""
        runs: list[RunInfo] = []
        for chunk in _chunks(sorted({str(i) for i in deployment_ids}), PAGE):
            criteria = {
                "deployment_id": {"any_": chunk},
                "state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING", "SCHEDULED"]}},
            }
            runs += self._paged_runs("flow_run", criteria)
        return runs

    def _paged_runs(self, kind: str, criteria: dict[str, Any]) -> list[RunInfo]:
        """Every run matching, oldest expected start first, page after page."""
        runs: list[RunInfo] = []
        offset = 0
        while True:
            body = {
                f"{kind}s": criteria,
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": PAGE,
                "offset": offset,
            }
            page = self._list(f"{kind}s/filter", body)
            runs.extend(run for data in page if (run := RunInfo.parse(data)))
            if len(page) < PAGE:
                return runs
            offset += PAGE

    # --- writes (only operations call these, inside a Celery job) ----------------------
    def crash_run(self, kind: str, run_id: UUID, message: str) -> str:
        """Force a task run or flow run to CRASHED; returns the state Prefect accepted."""
        body = {"state": {"type": "CRASHED", "message": message[:1000]}, "force": True}
        data = self.request("POST", f"{kind}s/{run_id}/set_state", json=body)
        status = data.get("status") if isinstance(data, dict) else None
        if status not in ("ACCEPT", None):
            raise PrefectError(
                f"Prefect did not accept the crash of {kind} {run_id}: {status}", retryable=False
            )
        return str(status)

    def update_limit(self, prefect_id: UUID, changes: dict[str, Any]) -> None:
        self.request("PATCH", f"v2/concurrency_limits/{prefect_id}", json=changes)

    def decrement(self, name: str, slots: int) -> None:
        self.request(
            "POST",
            "v2/concurrency_limits/decrement",
            json={"names": [name], "slots": slots, "mode": "concurrency"},
        )

    def revoke_lease(self, lease_id: UUID) -> None:
        self.request(
            "POST", "v2/concurrency_limits/decrement-with-lease", json={"lease_id": str(lease_id)}
        )

    # --- events ----------------------------------------------------------------------
    def events(
        self,
        since: datetime,
        until: datetime,
        prefixes: list[str],
        exclude: list[str] | None = None,
        resources: list[str] | None = None,
    ) -> Iterator[EventInfo]:
        """Events in [since, until], oldest first, each once; `resources` keeps only the
        events about those resource ids.

        Read in queries of up to EVENTS_PAGES_PER_QUERY pages: the next query starts at the
        last event's time (`since` is inclusive: the events already read at that very time are
        skipped by id) and ends about twice as far on as those pages went, or twice as far as
        a window read whole was long. So no query of Prefect's goes deep in its offsets, and
        none but the first counts much more than it returns (Prefect counts each query's
        events with its first page). A query that has not moved past its start by then, its
        events all of one instant, goes on with its own pages: every new query starts later."""
        start: datetime = since
        read_at_start: set[UUID] = set()
        end = until  # the first query counts the whole window, once
        while True:
            body = _events_body(start, end, prefixes, exclude, resources)
            data = self.request("POST", "events/filter", json=body)
            latest, read_at_latest = start, set(read_at_start)
            pages = 1
            while True:
                for event in _events_of(data):
                    if event.occurred == start and event.id in read_at_start:
                        continue
                    yield event
                    if event.occurred > latest:
                        latest, read_at_latest = event.occurred, set()
                    if event.occurred == latest:
                        read_at_latest.add(event.id)
                next_page = data.get("next_page")
                whole = not next_page or not isinstance(next_page, str)
                if whole or (pages >= EVENTS_PAGES_PER_QUERY and latest > start):
                    break
                data = self._next_events_page(next_page)
                pages += 1
            if whole:  # every event of [start, end] is read
                if end >= until:
                    return
                span = 2 * (end - start)
                start, read_at_start = end, read_at_latest if latest == end else set()
            else:
                span = 2 * (latest - start)
                start, read_at_start = latest, read_at_latest
            end = min(until, start + span)

    def resources_with_events(
        self, since: datetime, until: datetime, prefixes: list[str], resources: Iterable[str]
    ) -> set[str]:
        """Which of these resources have at least one event in [since, until].

        Asks again without the resources already found rather than following next_page: that
        link carries the whole filter, and hundreds of resource ids make it longer than a URL
        may be."""
        todo = list(dict.fromkeys(resources))
        found: set[str] = set()
        while todo:
            body = _events_body(since, until, prefixes, None, todo)
            data = self.request("POST", "events/filter", json=body)
            seen = {event.resource.get("prefect.resource.id", "") for event in _events_of(data)}
            new = seen.intersection(todo) - found
            found |= new
            if not data.get("next_page") or not new:
                return found
            todo = [resource for resource in todo if resource not in found]
        return found

    def _next_events_page(self, url: str) -> Any:
        # next_page is a full URL that Prefect builds from the address it was asked on: behind
        # a proxy or a gateway (Prefect Cloud's workspace paths) that is not ours. The page
        # token in its query is all it carries.
        return self.request("GET", f"events/filter/next?{httpx.URL(url).query.decode()}")


def _events_body(
    since: datetime,
    until: datetime,
    prefixes: list[str],
    exclude: list[str] | None,
    resources: list[str] | None,
) -> dict[str, Any]:
    event_filter: dict[str, Any] = {"prefix": prefixes}
    if exclude:
        event_filter["exclude_name"] = exclude
    body: dict[str, Any] = {
        "filter": {
            "occurred": {"since": since.isoformat(), "until": until.isoformat()},
            "event": event_filter,
            "order": "ASC",
        },
        "limit": EVENTS_PAGE,
    }
    if resources is not None:
        body["filter"]["resource"] = {"id": resources}
    return body


def _events_of(data: Any) -> Iterator[EventInfo]:
    if not isinstance(data, dict):
        raise PrefectError("Prefect sent an unexpected answer for /events/filter", retryable=True)
    for item in as_list(data.get("events")):
        if isinstance(item, dict) and (event := EventInfo.parse(item)) is not None:
            yield event


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def retry_after(response: httpx.Response) -> float:
    """Seconds a 429 asks to wait: `Retry-After` in seconds or as a date (RFC 9110)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        seconds = float(value)
    except ValueError:
        when = parse_http_date_safe(value)
        seconds = when - time.time() if when is not None else DEFAULT_RETRY_AFTER
    if not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), 3600.0)


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    detail = data.get("detail") if isinstance(data, dict) else data
    return str(detail)[:300]
