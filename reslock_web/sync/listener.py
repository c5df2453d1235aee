"""The live listener: Prefect's event stream applied to our tables as it happens.

Prefect pushes events over its websocket about 0.1 s after they occur, while its REST API shows
them only seconds later and the periodic sync runs every `RESLOCK_SYNC_SECONDS`. For each event
that concerns a lock (a concurrency-limit event, one of the flow helper's `reslock.lock.*`
events, or a state change of a run that holds or waits), the listener records it, writes at
once what a lock event says on a limit that needs no verdict (`provisional.show`), and
re-syncs that limit from Prefect. The events of one flush (DEBOUNCE) are applied together;
their limits are re-synced in one pass over those limits only, in a thread of its own, while
the next flushes go on applying events. Applying an event is idempotent by its id
(`AppliedEvent`), so several listeners can run at once, and a listener that restarts catches
up from the last event it applied (within Prefect's backfill window; the periodic sync covers
anything older).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from prefect.events.clients import PrefectCloudEventSubscriber, PrefectEventSubscriber
from prefect.events.filters import EventFilter, EventNameFilter

from reslock.protocol import EVENT_PREFIX
from reslock_web.models import AppliedEvent, Heartbeat, Holder, Limit, Waiter
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.prefect_io.records import EventInfo
from reslock_web.sync import provisional
from reslock_web.sync.events import record_events
from reslock_web.sync.run import sync_all, sync_limits, write_between_passes

log = logging.getLogger(__name__)

LOCK_PREFIXES = ("prefect.concurrency-limit.", EVENT_PREFIX)
PREFIXES = [*LOCK_PREFIXES, "prefect.flow-run.", "prefect.task-run."]
DEBOUNCE = 0.15  # seconds: events of one hand-off (release, acquire) share one re-sync
CATCH_UP = timedelta(minutes=15)  # Prefect's websocket backfill is capped at 15 minutes
# Prefect stores events in batches every few seconds (its event persister's flush interval,
# 5 s by default), so REST shows an event some seconds after the stream.
SETTLE_SECONDS = 15.0
SETTLE_WINDOW = timedelta(seconds=60)
HEARTBEAT = 5.0
RESYNC_WAIT = 10  # seconds a re-sync waits for another sync to end before it is retried
RETRY_AFTER = 2.0  # seconds before limits whose re-sync failed are tried again
# More limits than this, and than half the board, to re-sync at once: one full pass instead
# (a catch-up after a long gap, thousands of limits made at once). A pass over some limits
# costs at most the listing plus their events and runs (sync/gather.py reads the listing when
# that is cheaper than one request a limit), a full one the listing plus every limit's events
# and runs since the last: under churn (bench/churn_bench.py, 20 events a second over 200 of
# 2,200 limits), a bound of 100 alone made each slow flush a full pass, and each full pass a
# slower flush.
FULL_RESYNC_OVER = 100
SLOW_PASS = 2.0  # seconds: a re-sync this slow is logged with what it sent to Prefect
# Limits whose events the board shows already are re-synced (confirmed) in passes at least this
# far apart: under churn one pass per flush sent Prefect a few requests every 0.2 s, and the
# load it added on a 2-core machine slowed what the board shows (bench/churn_bench.py).
CONFIRM_AFTER = 1.0


def limits_touched(events: Iterable[EventInfo]) -> dict[UUID, set[str]]:
    """The limit names each event may change (run events that change none are left out): a
    lock event its limit's; a run's state change the limits the run holds or waits on (a few
    queries for the whole batch), and a new Pending task's its tags' limits (it may be a
    waiter). The stream carries every run's changes; only those of runs that hold or wait
    are followed."""
    touched: dict[UUID, set[str]] = {}
    runs: dict[str, dict[UUID, list[UUID]]] = {"flow_run_id": {}, "task_run_id": {}}
    tags: dict[str, list[UUID]] = {}
    for event in events:
        if event.event.startswith(LOCK_PREFIXES):  # recorded even when it names no limit
            name = event.resource.get("prefect.resource.name", "")
            touched[event.id] = {name} if name else set()
            continue
        kind, _, raw_id = event.resource.get("prefect.resource.id", "").rpartition(".")
        field = {"prefect.flow-run": "flow_run_id", "prefect.task-run": "task_run_id"}.get(kind)
        try:
            run_id = UUID(raw_id)
        except ValueError:
            continue
        if field is None:
            continue
        runs[field].setdefault(run_id, []).append(event.id)
        if kind == "prefect.task-run" and event.event.endswith(".Pending"):
            for related in event.related:
                if related.get("prefect.resource.role") == "tag":
                    tag = related.get("prefect.resource.id", "").removeprefix("prefect.tag.")
                    tags.setdefault(f"tag:{tag}", []).append(event.id)
    for field, by_run in runs.items():
        ids = list(by_run)
        for chunk in (ids[i : i + 400] for i in range(0, len(ids), 400)):
            for model in (Holder, Waiter):
                rows = model.objects.filter(**{f"{field}__in": chunk})
                for run_id, name in rows.values_list(field, "limit__name"):
                    for event_id in by_run[run_id]:
                        touched.setdefault(event_id, set()).add(name)
    if tags:
        present = Limit.objects.present().filter(name__in=list(tags))
        for name in present.values_list("name", flat=True):
            for event_id in tags[name]:
                touched.setdefault(event_id, set()).add(name)
    return touched


def apply(event: EventInfo) -> set[str]:
    """Record one event once (whoever applies it first); returns the limits to re-sync."""
    return apply_all([event]).get(event.id, set())


def apply_all(events: list[EventInfo]) -> dict[UUID, set[str]]:
    """Record a batch of events, each once (whoever applies it first, several listeners
    alike), in a few statements; returns the limits to re-sync for each event applied here."""
    events = list({event.id: event for event in events}.values())
    touched = limits_touched(events)
    if not touched:
        return {}
    try:
        with transaction.atomic():
            done = set(
                AppliedEvent.objects.filter(event_id__in=list(touched)).values_list(
                    "event_id", flat=True
                )
            )
            mine = [event_id for event_id in touched if event_id not in done]
            AppliedEvent.objects.bulk_create([AppliedEvent(event_id=i) for i in mine])
    except IntegrityError:
        # Another listener applied one of them meanwhile: claim them one at a time.
        mine = [event_id for event_id in touched if _claim(event_id)]
    claimed = set(mine)
    record_events([e for e in events if e.id in claimed and e.event.startswith(LOCK_PREFIXES)])
    return {event_id: touched[event_id] for event_id in mine}


def _claim(event_id: UUID) -> bool:
    try:
        with transaction.atomic():
            AppliedEvent.objects.create(event_id=event_id)
    except IntegrityError:
        return False  # another listener (or an earlier life of this one) applied it
    return True


def resync(
    api: PrefectAPI, names: Iterable[str], after_write: Callable[[], object] | None = None
) -> set[str]:
    """Re-syncs these limits; returns those that could not be (to be tried again: their events
    are applied already, so nothing else would bring their change to the board soon).
    `after_write` runs in a pass's write transaction, after it (`sync_limits`)."""
    names = set(names)
    # The count only when it can matter: a flush of a few limits is the common case.
    if len(names) > FULL_RESYNC_OVER and len(names) > Limit.objects.present().count() // 2:
        # A catch-up after a long gap, or thousands of limits created at once: one pass costs
        # about a listing, where one re-sync per limit would cost thousands of requests.
        run = sync_all(api)
        if run is None:
            log.warning("%d limits to re-sync wait: another sync holds the lock", len(names))
            return names
        if not run.ok:
            words = "waits: Prefect is rate-limiting reslock" if run.throttled else "failed"
            log.warning("re-sync of %d limits after events %s: %s", len(names), words, run.error)
            return names
        return set()
    if not names:
        return set()
    # One pass over the limits of this flush: it reads only their data.
    before, started = api.sent.copy(), time.monotonic()
    run = sync_limits(api, names, wait=RESYNC_WAIT, after_write=after_write)
    if run is not None:  # what a pass cost: where the time of a board behind goes
        sent, took = api.sent - before, time.monotonic() - started
        log.log(
            logging.INFO if took >= SLOW_PASS else logging.DEBUG,
            "re-synced %d limit(s) in %.2f s, %d request(s) to Prefect: %s",
            len(names),
            took,
            sum(sent.values()),
            ", ".join(f"{count} {what}" for what, count in sent.most_common()),
        )
    if run is None:
        log.warning(
            "re-sync of %s waits: another sync has held the lock for over %d s",
            ", ".join(sorted(names)),
            RESYNC_WAIT,
        )
        return names
    if run.throttled:  # tried again once Prefect takes requests (the budget waits)
        log.info("re-sync of %s waits: Prefect is rate-limiting reslock", ", ".join(sorted(names)))
        return names
    if not run.ok:
        log.warning("re-sync of %s after events failed: %s", ", ".join(sorted(names)), run.error)
        return names
    return set()


def subscriber(api_url: str, api_key: str) -> PrefectEventSubscriber:
    """Prefect's own event stream client: Prefect Cloud's, which authenticates with the API key,
    when there is a key (Prefect's `get_events_subscriber()` makes the same choice, but from
    process-wide settings and only for Cloud's own address), else the open server's."""
    event_filter = EventFilter(event=EventNameFilter(prefix=PREFIXES))
    if api_key:
        return PrefectCloudEventSubscriber(
            api_url=api_url, api_key=api_key, filter=event_filter, reconnection_attempts=3
        )
    return PrefectEventSubscriber(api_url=api_url, filter=event_filter, reconnection_attempts=3)


def beat(connected: bool, last_event_at: str | None, lag: float | None) -> None:
    Heartbeat.objects.beat(
        "listener", connected=connected, last_event_at=last_event_at, lag_seconds=lag
    )


class Listener:
    def __init__(self, api_url: str | None = None) -> None:
        self.api_url = (api_url or settings.PREFECT_API_URL).rstrip("/")
        # Limits to re-sync -> since when the board has been behind on them: the event's time
        # for one that came live, the catch-up's start for one missed while disconnected;
        # None for one whose events the board shows already (`provisional`), to be confirmed.
        self.pending: dict[str, datetime | None] = {}
        # The lock events applied while a re-sync reads Prefect: its write puts those limits
        # back as Prefect was when read, and they are shown again after it (`_show_again`).
        self.during_pass: list[EventInfo] | None = None
        # Guards `pending` and `during_pass`: events are applied in one thread while a re-sync
        # runs in another, and the heartbeat reads them on the loop.
        self._state = threading.Lock()
        self.shown_at: float | None = None  # monotonic: the oldest pending limit shown already
        # One re-sync at a time: the flusher's, or a catch-up's (`_settle` runs one beside it).
        self._resyncing = threading.Lock()
        # Events received and not yet applied, each with since when the board has been behind
        # on it when that is not the event's own time (a catch-up's start): applied together,
        # at the next flush.
        self.inbox: list[tuple[EventInfo, datetime | None]] = []
        self.retry_at = 0.0  # monotonic; limits whose re-sync failed wait until then
        self.last_event_at: str | None = None
        # The board's real delay: the longest a change applied since the last heartbeat took
        # to reach our tables (the last one's when none was), or how long the oldest one still
        # waiting has, whichever is longer. The worst, not the last: a quick change right after
        # a slow re-sync must not hide from the banner that the board was a minute behind.
        self.applied_lag: float | None = None
        self._worst_lag: float | None = None
        self._lag_lock = threading.Lock()  # flushes run in a thread, heartbeats on the loop
        self.connected = False
        self.connected_at: datetime | None = None  # when the stream last connected

    def _applied(self, lag: float) -> None:
        with self._lag_lock:
            self.applied_lag = lag
            self._worst_lag = max(lag, self._worst_lag or 0.0)

    def _take_lag(self) -> float | None:
        """The lag to report now; the next heartbeat reports from here on."""
        with self._lag_lock:
            worst, self._worst_lag = self._worst_lag, None
            applied = worst if worst is not None else self.applied_lag
        with self._state:
            pending = min((v for v in self.pending.values() if v is not None), default=None)
        if pending is None:
            return applied
        behind = (timezone.now() - pending).total_seconds()
        return max(behind, applied or 0.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set; the stream's wait for the next event is cancelled then."""
        tasks = [asyncio.create_task(self._loop(stop)), asyncio.create_task(self._beats(stop))]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.connected = False
        await sync_to_async(beat)(False, self.last_event_at, self._take_lag())

    async def _loop(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            try:
                await self._catch_up()
                await self._subscribe(stop)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Prefect down, connection dropped: try again
                self.connected = False
                log.warning("event stream lost (%s); reconnecting in %.0f s", error, backoff)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 30.0)

    async def _beats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await sync_to_async(beat)(self.connected, self.last_event_at, self._take_lag())
            await _sleep_or_stop(stop, HEARTBEAT)

    async def _catch_up(self, since: datetime | None = None) -> None:
        """Events missed while disconnected, from the REST API (idempotent)."""
        now = timezone.now()
        if since is None:
            state = await sync_to_async(
                lambda: Heartbeat.objects.filter(service="listener").first()
            )()
            since = now - CATCH_UP
            if state is not None and state.detail.get("last_event_at"):
                last = parse_datetime(state.detail["last_event_at"])
                if last is not None:
                    since = max(since, last - timedelta(seconds=5))
        with PrefectAPI.for_url(self.api_url) as api:
            events = await asyncio.to_thread(lambda: list(api.events(since, now, PREFIXES)))
            for event in events:
                self._handle(event, behind_since=now)
            await asyncio.to_thread(self._flush, api)

    async def _subscribe(self, stop: asyncio.Event) -> None:
        with PrefectAPI.for_url(self.api_url) as api:
            async with subscriber(self.api_url, settings.PREFECT_API_KEY) as events:
                self.connected = True
                self.connected_at = timezone.now()
                log.info("listening to %s", self.api_url)
                flusher = asyncio.create_task(self._flusher(api, stop))
                settle = asyncio.create_task(self._settle(self.connected_at))
                try:
                    async for raw in events:
                        if stop.is_set():
                            return
                        event = EventInfo.parse(raw.model_dump(mode="json"))
                        if event is None:
                            log.warning("skipping a malformed event")
                            continue
                        self._handle(event)
                finally:
                    flusher.cancel()
                    settle.cancel()
                    self.connected = False

    async def _settle(self, connected_at: datetime) -> None:
        """The catch-up read Prefect's REST API before the stream connected, and the stream
        sends only what is published from then on (with what was stored by then): an event
        published in between but stored after the catch-up read reaches neither. Once Prefect
        has stored it, read that window again (idempotent)."""
        await asyncio.sleep(SETTLE_SECONDS)
        try:
            await self._catch_up(since=connected_at - SETTLE_WINDOW)
        except Exception as error:  # the periodic sync still covers it
            log.warning("the catch-up after connecting failed: %s", error)

    def _handle(self, event: EventInfo, behind_since: datetime | None = None) -> None:
        if behind_since is None and self.connected_at and event.occurred < self.connected_at:
            # Prefect's stream sends the last minute again on connecting: an event that came
            # while nobody listened is late from the connection on, as a catch-up's are.
            behind_since = self.connected_at
        self.inbox.append((event, behind_since))

    async def _flusher(self, api: PrefectAPI, stop: asyncio.Event) -> None:
        """Apply the events of each flush; re-sync their limits in a thread of its own, one
        pass at a time, so that a pass that waits seconds on Prefect holds no event back."""
        resyncing: asyncio.Future | None = None
        while not stop.is_set():
            await asyncio.sleep(DEBOUNCE)
            if self.inbox:
                await asyncio.to_thread(self._apply)
            idle = resyncing is None or resyncing.done()
            if idle and self._resync_due():
                resyncing = asyncio.ensure_future(asyncio.to_thread(self._resync, api))

    def _resync_due(self) -> bool:
        """A limit the board is behind on: now; only limits it shows: every CONFIRM_AFTER."""
        now = time.monotonic()
        with self._state:
            if not self.pending or now < self.retry_at:
                return False
            if any(since is not None for since in self.pending.values()):
                return True
            return self.shown_at is not None and now - self.shown_at >= CONFIRM_AFTER

    def _flush(self, api: PrefectAPI) -> None:
        """Apply what came, then re-sync, in this thread (the catch-up)."""
        self._apply()
        self._resync(api)

    def _resync(self, api: PrefectAPI) -> None:
        with self._resyncing:
            self._resync_pending(api)

    def _resync_pending(self, api: PrefectAPI) -> None:
        close_old_connections()
        with self._state:
            if not self.pending or time.monotonic() < self.retry_at:
                return
            pending, self.pending = self.pending, {}
            self.during_pass, self.shown_at = [], None
        try:
            failed = resync(api, pending, after_write=self._show_again)
        except Exception:  # our database, most likely: the limits are tried again
            log.exception("re-sync of %d limits failed", len(pending))
            failed = set(pending)
        finally:
            with self._state:
                self.during_pass = None
        done = timezone.now()
        synced = [s for name, s in pending.items() if name not in failed and s is not None]
        if synced:
            self._applied(max(0.0, (done - min(synced)).total_seconds()))
        if failed:
            with self._state:
                for name in failed:  # kept with their first time: behind since then
                    self._behind(name, pending[name])
            self.retry_at = time.monotonic() + RETRY_AFTER

    def _behind(self, name: str, since: datetime | None) -> None:
        """Note that `name` needs a re-sync, the board behind on it since `since` (None: the
        board shows its events already). Under `_state`."""
        known = self.pending.get(name)
        if since is None and self.shown_at is None:
            self.shown_at = time.monotonic()
        if name not in self.pending or known is None:
            self.pending[name] = since
        elif since is not None:
            self.pending[name] = min(known, since)

    def _show(self, events: list[EventInfo]) -> set[str]:
        """Write what these lock events say on the limits that need no verdict, without
        waiting for Prefect (`provisional`); returns the limits whose events the board now
        shows. Nothing while another process's pass may have read our rows and not yet
        written them: that pass, or the re-sync after it, brings the change."""
        if not events:
            return set()
        try:
            with write_between_passes() as may, transaction.atomic():
                return provisional.show(events, timezone.now()) if may else set()
        except Exception:
            log.exception("could not show %d lock events before their re-sync", len(events))
            return set()

    def _show_again(self) -> None:
        """In a re-sync's write transaction, after its write: the limits it wrote are as
        Prefect was when read; show again the lock events applied since it began."""
        with self._state:
            events = list(self.during_pass or [])
        if not events:
            return
        try:
            with transaction.atomic():  # a savepoint: a failure here leaves the pass's write
                provisional.show(events, timezone.now())
        except Exception:  # shown by the next re-sync instead
            log.exception("could not show %d lock events again after a re-sync", len(events))

    def _apply(self) -> None:
        """Apply the events received since the last flush, all at once."""
        close_old_connections()
        inbox, self.inbox = self.inbox, []
        if not inbox:
            return
        events = [event for event, _ in inbox]
        try:
            touched = apply_all(events)
        except Exception:
            log.warning("could not apply %d events at once; applying them one by one", len(events))
            touched = {}
            for event in events:
                try:
                    touched.update(apply_all([event]))
                except Exception:
                    log.exception("could not apply event %s (%s); skipped", event.id, event.event)
        locks = [e for e, _ in inbox if e.id in touched and e.event.startswith(LOCK_PREFIXES)]
        with self._state:
            if self.during_pass is not None:  # before they are shown: see `_show_again`
                self.during_pass.extend(locks)
        shown = self._show(locks)
        now = timezone.now()
        with self._state:
            for event, behind_since in inbox:
                if self.last_event_at is None or event.occurred.isoformat() > self.last_event_at:
                    self.last_event_at = event.occurred.isoformat()  # a catch-up's start
                # A duplicate (replayed on connect, or applied by another listener) touches
                # nothing, so it says nothing about how far behind the board is.
                since = behind_since or event.occurred
                for name in touched.get(event.id, ()):
                    if name in shown and event.event in provisional.SHOWN:
                        self._applied(max(0.0, (now - since).total_seconds()))
                        self._behind(name, None)  # on the board now; the re-sync confirms
                    else:
                        self._behind(name, since)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
