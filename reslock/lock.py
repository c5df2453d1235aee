"""Guard a resource from Prefect flows: one holder at a time, visible on the reslock board.

    from reslock import guarded, resource_lock

    @task
    @guarded("db-{db_id}")              # the whole task, the name built from its parameters
    def migrate(db_id: int) -> None: ...

    with resource_lock("db-42"):        # a block (also `async with`)
        ...

A resource name is the name of a Prefect global concurrency limit: `resource_lock("db-42")`
guards the limit named exactly `db-42`, created with a limit of 1 on first use (`limit=` for
another size). An existing limit must be active, not a rate limit, and of that size, or the
block raises `ResourceLockMisconfigured` before taking anything. The slot is taken with a lease whose
holder is the current task run (or flow run outside a task; none outside a run), renewed every
0.75 x `lease_duration` and released on exit. A lease revoked from the board (or lost because
Prefect could not be reached before it expired) stops the body: sync code gets Prefect's
`CancelledError` at its next Python instruction, async code a cancellation at its next await,
and the block then raises `ResourceLockLost`.

Blocks inside a hold, in the same process: Prefect copies the context into the task runs a
block starts (called directly or submitted), so they see its hold; so do coroutines gathered
and tasks created inside an `async with`.

- The thread (or asyncio task) that entered the hold re-enters it freely: a nested `with`,
  or a task called directly, takes nothing and waits for nothing.
- A block in another thread or asyncio task (a task submitted with `.submit()` or `.map()`, a
  gathered coroutine) borrows the hold for the names the hold has, instead of waiting for its
  own ancestor: it runs under the hold's lease (`Hold.borrowed`, `Hold.lease_id`), takes no
  slot and emits no event. Borrowers of a name take turns: one inside at a time (`timeout=`
  bounds the wait for a turn too). A borrower lends to its own children in the same way.
- The hold's exit waits until no borrower is inside, renewing the lease meanwhile, and only
  then releases it. A child that enters once the hold has begun to exit (one that outlives
  its parent, or one still waiting for its turn then) acquires for itself like any caller.
- A lost lease stops every borrower inside the way it stops the hold's own body (each raises
  `ResourceLockLost`); `stopping` is announced until all of them have left, `released`
  (lease_lost) only then.

The holding block's own body is not a borrower: while the children it submitted are inside,
the resource is theirs. Code of the holding block that uses the resource itself while they
run, instead of waiting for their results, is not kept apart from them: that is the
caller's responsibility. A borrower waiting for its turn keeps its worker thread, so
borrowers that wait for tasks they submit themselves can use up a small thread pool. Nothing
here reaches other processes (Dask, Ray, process pools), nor threads started without the
context (`threading.Thread`): they wait for the slot.

This package imports nothing from Django: flows only need Prefect (and `PREFECT_API_URL`).
Every call goes to Prefect; the board does not have to run. What the helper tells the board,
event by event, is in reslock/protocol.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import socket
import string
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import httpx
from prefect import Flow, Task
from prefect._internal.concurrency.cancellation import WatcherThreadCancelScope, shield
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import Event, emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_KEY,
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    temporary_settings,
)

from reslock.process import process_identity
from reslock.protocol import (
    DEFAULT_LEASE_SECONDS,
    EVENT_ACQUIRED,
    EVENT_RELEASED,
    EVENT_STOPPING,
    EVENT_TIMED_OUT,
    EVENT_WAITING,
    MAX_LEASE_SECONDS,
    MIN_LEASE_SECONDS,
    PROTOCOL,
    RENEWAL_FRACTION,
    STOPPING_PERIOD_SECONDS,
)

__all__ = [
    "EVENT_ACQUIRED",
    "EVENT_RELEASED",
    "EVENT_STOPPING",
    "EVENT_TIMED_OUT",
    "EVENT_WAITING",
    "PROTOCOL",
    "STOPPING_PERIOD_SECONDS",
    "Hold",
    "ResourceLock",
    "ResourceLockLost",
    "ResourceLockMisconfigured",
    "ResourceLockTimeout",
    "guarded",
    "held_names",
    "resource_lock",
    "validate_name",
]

logger = logging.getLogger(__name__)

PREFECT_ACQUIRED = "prefect.concurrency-limit.acquired"
PREFECT_RELEASED = "prefect.concurrency-limit.released"

LOST_MARGIN = 5.0  # stop the body this long before a lease we could not renew expires
RENEW_RETRY = 2.0  # seconds between renewal attempts after a transient failure
REQUEST_TIMEOUT = 10.0  # seconds, for renewals and the holder lookup
ACQUIRE_TIMEOUT = 30.0  # seconds, for one increment-with-lease
ACQUIRE_LEASE_SECONDS = MIN_LEASE_SECONDS  # the lease asked for; renewed at once to the full one
ACQUIRE_RETRY_FIRST = 0.25  # seconds before retrying an unanswered acquire; doubles, up to 10
ACQUIRE_GIVE_UP = (
    60.0  # seconds of unanswered acquires in a row before raising (as Prefect's client)
)
# Not handled: 408, 429, and 503 (Prefect's own "database is busy" rolls the acquire back).
UNSENT_STATUSES = frozenset({408, 429, 503})
UNKNOWN_STATUSES = frozenset({502, 504})  # a gateway may have passed it on
MIN_RETRY_WAIT = 0.1
MAX_RETRY_WAIT = 10.0  # Prefect's Retry-After may say up to 30 s; hand-offs come sooner
BANNED_CHARACTERS = "/%&<>"  # Prefect: names must match ^[^/%&><]+$
RESERVED_PREFIXES = ("tag:", "deployment:")  # Prefect's own tag and deployment limits

F = TypeVar("F", bound=Callable[..., Any])


# --- errors ----------------------------------------------------------------------------------
class ResourceLockTimeout(TimeoutError):
    """`timeout=` expired before every resource was free. No slot is held."""

    def __init__(self, names: tuple[str, ...], timeout: float, holders: dict[str, str]) -> None:
        self.names = names
        self.timeout = timeout
        self.holders = holders  # name -> description of its last known holder
        which = ", ".join(
            f"{name!r} (held by {holders[name]})" if name in holders else repr(name)
            for name in names
        )
        noun = "resource" if len(names) == 1 else "resources"
        super().__init__(f"Timed out after {timeout:g} s waiting for {noun} {which}")

    def __reduce__(self) -> tuple:  # pickled with Prefect's results: rebuild from the fields
        return (type(self), (self.names, self.timeout, self.holders))


class ResourceLockLost(RuntimeError):
    """The lease ended while the body ran (revoked from the board, or not renewable)."""

    def __init__(self, names: tuple[str, ...], lease_id: uuid.UUID | None, reason: str) -> None:
        self.names = names
        self.lease_id = lease_id
        self.reason = reason
        listed = ", ".join(repr(name) for name in names)
        super().__init__(
            f"Lost the lock on {listed} (lease {lease_id}): {reason}; the guarded block was stopped"
        )

    def __reduce__(self) -> tuple:
        return (type(self), (self.names, self.lease_id, self.reason))


class ResourceLockMisconfigured(ValueError):
    """The limit under a resource name exists but would not make the lock exclusive as asked:
    another size than `limit=`, inactive, or a rate limit (its slots decay). No slot is held."""

    def __init__(self, name: str, expected: int, problems: tuple[str, ...]) -> None:
        self.name = name
        self.expected = expected
        self.problems = problems
        super().__init__(f"limit {name!r} " + "; it ".join(problems))

    def __reduce__(self) -> tuple:
        return (type(self), (self.name, self.expected, self.problems))


def _misconfiguration(name: str, expected: int, found: dict[str, Any]) -> tuple[str, ...]:
    """What is wrong with the limit `found` (Prefect's JSON) for `resource_lock(name,
    limit=expected)`; empty when it is right."""
    call = f"resource_lock({name!r}" + (f", limit={expected})" if expected != 1 else ")")
    problems = []
    size = found.get("limit")
    if size != expected:
        problems.append(
            f"allows {size} holders at once; {call} expects {expected}: pass limit={size} if "
            f"that is meant, or set the limit to {expected} (prefect gcl update {name} "
            f"--limit {expected})"
        )
    if found.get("active", True) is not True:
        problems.append(
            f"is inactive, so Prefect lets every caller in at once: enable it "
            f"(prefect gcl enable {name}) or use another name"
        )
    decay = found.get("slot_decay_per_second") or 0
    if decay != 0:
        problems.append(
            f"is a rate limit (slot_decay_per_second={decay:g}): its slots free themselves "
            f"while still held: set it to 0 (prefect gcl update {name} "
            f"--slot-decay-per-second 0) or use another name"
        )
    return tuple(problems)


# --- names -----------------------------------------------------------------------------------
def validate_name(name: object) -> str:
    """Return `name` if Prefect accepts it as a global concurrency limit name, else ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"resource name must be a string, got {type(name).__name__}: {name!r}")
    if not name.strip():
        raise ValueError("resource name must not be empty")
    if name != name.strip():
        raise ValueError(f"resource name {name!r} must not start or end with whitespace")
    banned = sorted({char for char in name if char in BANNED_CHARACTERS})
    if banned:
        raise ValueError(
            f"resource name {name!r} contains {' '.join(banned)}: Prefect refuses "
            f"limit names with any of / % & < >"
        )
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise ValueError(f"resource name {name!r} contains control characters")
    try:
        uuid.UUID(name)
    except ValueError:
        pass
    else:  # Prefect's /v2/concurrency_limits/{id_or_name} would read it as an id
        raise ValueError(f"resource name {name!r} looks like an id; pick another name")
    if name.startswith(RESERVED_PREFIXES):
        raise ValueError(
            f"resource name {name!r} starts with {name.split(':')[0]}:, which Prefect keeps "
            f"for its tag and deployment limits; pick another name"
        )
    return name


def _normalize(names: Iterable[object]) -> tuple[str, ...]:
    flat: list[object] = []
    for item in names:
        if isinstance(item, list | tuple | set | frozenset):
            flat.extend(item)
        else:
            flat.append(item)
    if not flat:
        raise ValueError("resource_lock() needs at least one resource name")
    return tuple(sorted({validate_name(name) for name in flat}))


# --- the current run -------------------------------------------------------------------------
def _current_holder() -> dict[str, str] | None:
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        return {"type": "task_run", "id": str(task_ctx.task_run.id)}
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return {"type": "flow_run", "id": str(flow_ctx.flow_run.id)}
    return None


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logger


# --- what this context holds (re-entrancy and borrowing) -------------------------------------
def _whoami() -> tuple[str, int]:
    """Who runs this code: its asyncio task in async code, else its thread. The one who
    entered a hold re-enters it freely; anyone else in its context tree borrows it."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        task = None
    return ("task", id(task)) if task is not None else ("thread", threading.get_ident())


@dataclass(eq=False)
class _Borrow:
    """One child block's use of some names of an enclosing hold (see `_Lending`)."""

    lending: _Lending
    names: tuple[str, ...]
    stop: Callable[[str], None] | None = None  # stops the child's body; set once it is inside


class _Lending:
    """The children a hold lends its names to, and their turns.

    Prefect copies the context into nested task runs, so a task submitted inside a hold (or a
    coroutine gathered in it) sees the hold and must not wait for its own ancestor: it
    borrows the hold's lease instead. Borrowers of one name take turns (one inside at a time,
    all its names at once), the hold's exit waits until none is inside, and a lost lease
    stops each of them. A closed (exiting) or lost hold lends nothing: the child then acquires
    for itself, like any other caller.

    Used from any thread; async waiters wait on an asyncio.Event that any thread can wake, so
    their event loop never blocks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wakers: set[Callable[[], object]] = set()  # async waiters of this lending
        self._users: dict[str, _Borrow] = {}  # name -> the borrower inside with it
        self._inside: set[_Borrow] = set()
        self.closed = False
        self.lost: str | None = None

    def _take(self, borrow: _Borrow) -> bool | None:
        """Under the lock. True: its turn; False: nothing to borrow; None: not yet."""
        if self.closed or self.lost:
            return False
        if any(name in self._users for name in borrow.names):
            return None
        self._users.update(dict.fromkeys(borrow.names, borrow))
        self._inside.add(borrow)
        return True

    def _changed_now(self) -> None:
        """Under the lock: wake every waiter to look again."""
        self._changed.notify_all()
        for wake in self._wakers:
            with contextlib.suppress(RuntimeError):  # its event loop has closed
                wake()

    def turn(self, borrow: _Borrow, deadline: float | None) -> bool:
        """Wait for `borrow`'s turn (True) or for the hold to lend nothing (False)."""
        with self._changed:
            while (taken := self._take(borrow)) is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise _TurnTimeout
                # Short waits: a cancellation injected into this thread is seen at once.
                self._changed.wait(0.5 if left is None else min(left, 0.5))
            return taken

    async def turn_async(self, borrow: _Borrow, deadline: float | None) -> bool:
        loop = asyncio.get_running_loop()
        while True:
            woken = asyncio.Event()
            wake = functools.partial(loop.call_soon_threadsafe, woken.set)
            with self._lock:
                taken = self._take(borrow)
                if taken is not None:
                    return taken
                self._wakers.add(wake)
            try:
                left = None if deadline is None else deadline - time.monotonic()
                with anyio.move_on_after(left):
                    await woken.wait()
            finally:
                with self._lock:
                    self._wakers.discard(wake)
            if deadline is not None and time.monotonic() >= deadline and not woken.is_set():
                raise _TurnTimeout

    def attach(self, borrow: _Borrow, stop: Callable[[str], None]) -> str | None:
        """The borrower's body can now be stopped; returns why it must stop at once, if so."""
        with self._lock:
            borrow.stop = stop
            return self.lost

    def leave(self, borrow: _Borrow) -> None:
        with self._lock:
            if borrow in self._inside:
                self._inside.discard(borrow)
                for name in borrow.names:
                    del self._users[name]
                self._changed_now()

    def revoke(self, reason: str) -> None:
        """The hold's lease is lost: stop every borrower inside (and theirs, through them)."""
        with self._lock:
            if self.lost:
                return
            self.lost = reason
            stops = [borrow.stop for borrow in self._inside if borrow.stop is not None]
            self._changed_now()  # waiters stop waiting: they acquire for themselves
        for stop in stops:  # outside the lock: stopping a thread may wait for its shield
            try:
                stop(reason)
            except Exception:  # e.g. the event loop of an `async with` has closed
                logger.warning("Could not stop a block borrowing a lost lease", exc_info=True)

    def close(self) -> None:
        """The hold is leaving: no new turns (latecomers acquire for themselves)."""
        with self._lock:
            self.closed = True
            self._changed_now()

    def wait_empty(self) -> None:
        with self._changed:
            while self._inside:
                self._changed.wait(0.5)

    async def wait_empty_async(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            woken = asyncio.Event()
            wake = functools.partial(loop.call_soon_threadsafe, woken.set)
            with self._lock:
                if not self._inside:
                    return
                self._wakers.add(wake)
            try:
                await woken.wait()
            finally:
                with self._lock:
                    self._wakers.discard(wake)


class _TurnTimeout(Exception):
    """`timeout=` expired while a sibling borrower was inside."""


@dataclass(eq=False)
class Hold:
    """What a `with resource_lock(...)` block holds (returned by `__enter__`)."""

    names: tuple[str, ...]  # every name the block guards
    acquired: tuple[str, ...] = ()  # names this block took a slot for (others: enclosing block)
    lease_id: uuid.UUID | None = None  # its own lease, else the lease of the hold it borrows
    limit_ids: dict[str, uuid.UUID] = field(default_factory=dict)
    lease_duration: float = DEFAULT_LEASE_SECONDS
    holder: dict[str, str] | None = None
    wait_id: uuid.UUID = field(default_factory=uuid.uuid4)
    waited_seconds: float = 0.0
    active: bool = True
    lost: str | None = None  # why the lease ended early, if it did
    borrowed: tuple[str, ...] = ()  # names used under an enclosing hold of another thread/task
    owner: tuple[str, int] = field(default_factory=_whoami)
    lending: _Lending = field(default_factory=_Lending, repr=False)


# Prefect copies the context into nested task runs (direct calls and .submit() on the thread
# pool), so a task started inside a hold sees it: it re-enters it, or borrows it (`_Lending`).
_HELD: contextvars.ContextVar[tuple[Hold, ...]] = contextvars.ContextVar("reslock_held", default=())


def held_names() -> frozenset[str]:
    """Names held by an enclosing `resource_lock` in this context (this run or an ancestor)."""
    return frozenset(
        name for hold in _HELD.get() if hold.active and not hold.lost for name in hold.names
    )


def _plan(names: tuple[str, ...], me: tuple[str, int]) -> tuple[tuple[str, ...], list]:
    """(names to acquire, [(enclosing hold, names to borrow from it)], outermost first); the
    names an enclosing block of this thread/task holds are re-entered and in neither."""
    needed: list[str] = []
    lenders: dict[Hold, list[str]] = {}
    stack = _HELD.get()
    for name in names:
        holds = [hold for hold in stack if hold.active and not hold.lost and name in hold.names]
        if not holds:
            needed.append(name)
        elif holds[-1].owner != me:  # the nearest one: a borrower lends to its own children
            lenders.setdefault(holds[-1], []).append(name)
    ordered = sorted(lenders.items(), key=lambda item: stack.index(item[0]))
    return tuple(needed), [(hold, tuple(borrowed)) for hold, borrowed in ordered]


def _turn_timeout(hold: Hold, borrowed: tuple[str, ...], timeout: float) -> ResourceLockTimeout:
    holders = dict.fromkeys(borrowed, f"another block borrowing lease {hold.lease_id}")
    return ResourceLockTimeout(borrowed, timeout, holders)


def _take_turns(spec: ResourceLock, lenders: list) -> tuple[list[_Borrow], tuple[str, ...]]:
    """Borrow from each lender in turn: (the borrows, the names no one lends any more)."""
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    borrows: list[_Borrow] = []
    unlent: list[str] = []
    try:
        for lender, names in lenders:
            borrow = _Borrow(lender.lending, names)
            try:
                taken = lender.lending.turn(borrow, deadline)
            except _TurnTimeout:
                raise _turn_timeout(lender, names, float(spec.timeout or 0)) from None
            if taken:
                borrows.append(borrow)
            else:
                unlent.extend(names)
    except BaseException:
        _leave_all(borrows)
        raise
    return borrows, tuple(unlent)


async def _take_turns_async(
    spec: ResourceLock, lenders: list
) -> tuple[list[_Borrow], tuple[str, ...]]:
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    borrows: list[_Borrow] = []
    unlent: list[str] = []
    try:
        for lender, names in lenders:
            borrow = _Borrow(lender.lending, names)
            try:
                taken = await lender.lending.turn_async(borrow, deadline)
            except _TurnTimeout:
                raise _turn_timeout(lender, names, float(spec.timeout or 0)) from None
            if taken:
                borrows.append(borrow)
            else:
                unlent.extend(names)
    except BaseException:
        _leave_all(borrows)
        raise
    return borrows, tuple(unlent)


def _leave_all(borrows: list[_Borrow]) -> None:
    for borrow in borrows:
        borrow.lending.leave(borrow)


def _lent_lease(hold: Hold, lenders: list, borrows: list[_Borrow]) -> None:
    """A block that only borrows runs under (and reports) the lease it borrows."""
    for lender, _ in lenders:
        if any(borrow.lending is lender.lending for borrow in borrows):
            hold.lease_id = hold.lease_id or lender.lease_id
            hold.limit_ids = {**lender.limit_ids, **hold.limit_ids}


def _stopper(hold: Hold, cancel: Callable[[], object]) -> Callable[[str], None]:
    """Stops a block's body, and everyone borrowing from it, once its lease is lost."""

    def stop(reason: str) -> None:
        hold.lost = hold.lost or reason
        hold.lending.revoke(hold.lost)  # first: cancelling this body may wait for its shield
        cancel()  # a no-op once the body has left its scope

    return stop


def _wait_for_borrowers(hold: Hold) -> BaseException | None:
    """Close the hold to newcomers and wait until no borrower is inside: they use the resource
    under this lease, so releasing it first would let another run in. Renewals go on.
    An exception meanwhile (SIGTERM in the main thread, a timeout Prefect injects into this
    thread) stops them, and is returned to be raised once they have left."""
    hold.lending.close()
    interrupted: BaseException | None = None
    while True:
        try:
            hold.lending.wait_empty()
            return interrupted
        except BaseException as exc:
            interrupted = interrupted or exc
            hold.lending.revoke("the block holding it was interrupted")


async def _wait_for_borrowers_async(hold: Hold) -> None:
    hold.lending.close()
    with anyio.CancelScope(shield=True):
        await hold.lending.wait_empty_async()


# --- Prefect client --------------------------------------------------------------------------
_clients: dict[tuple[Any, ...], SyncPrefectClient] = {}
_clients_lock = threading.Lock()
# (api url, name) -> (limit id, the `limit=` it was checked against): each limit is read and
# checked once per process; a limit recreated under its name (another id) is checked again.
_limit_ids: dict[tuple[str, str], tuple[uuid.UUID, int]] = {}


def _api_settings() -> tuple[Any, ...]:
    return (PREFECT_API_URL.value() or "", PREFECT_API_KEY.value(), PREFECT_API_AUTH_STRING.value())


def _client() -> SyncPrefectClient:
    """One long-lived, thread-safe sync client per API (not a run's: it closes with its run)."""

    key = _api_settings()
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            url, api_key, auth_string = key
            if url:
                client = SyncPrefectClient(url, api_key=api_key, auth_string=auth_string)
            else:  # no PREFECT_API_URL: let Prefect decide (ephemeral server or a clear error)
                client = get_client(sync_client=True)
            client.__enter__()
            _clients[key] = client
        return client


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _limit_ids_for(
    client: SyncPrefectClient, url: str, names: tuple[str, ...], limit: int
) -> dict[str, uuid.UUID]:
    """Ids of the limits, created (limit `limit`) when missing. Safe when many processes race:
    a 409 "already exists" means another process created it first. An existing limit must be
    what the caller asked for (`ResourceLockMisconfigured` otherwise), or the lock would not
    be exclusive."""
    found: dict[str, uuid.UUID] = {}
    for name in names:
        known = _limit_ids.get((url, name))
        if known is None or known[1] != limit:
            known = (_create_or_read(client, name, limit), limit)
            _limit_ids[(url, name)] = known
        found[name] = known[0]
    return found


def _create_or_read(client: SyncPrefectClient, name: str, limit: int) -> uuid.UUID:
    for _ in range(3):
        try:
            response = client.request(
                "POST", "/v2/concurrency_limits/", json={"name": name, "limit": limit}
            )
            return _checked(name, limit, response.json())
        except Exception as exc:
            if _status(exc) != 409:
                raise
        try:
            response = client.request("GET", f"/v2/concurrency_limits/{quote(name, safe='')}")
            return _checked(name, limit, response.json())
        except Exception as exc:
            if _status(exc) != 404:  # deleted between the two calls: create it again
                raise
    raise RuntimeError(f"could not create or read the concurrency limit {name!r}")


def _checked(name: str, limit: int, found: dict[str, Any]) -> uuid.UUID:
    problems = _misconfiguration(name, limit, found)
    if problems:
        raise ResourceLockMisconfigured(name, limit, problems)
    return uuid.UUID(found["id"])


def _forget(url: str, names: Iterable[str]) -> None:
    for name in names:
        _limit_ids.pop((url, name), None)


def _renew(client: SyncPrefectClient, lease_id: uuid.UUID, lease_duration: float) -> None:
    client.request(
        "POST",
        f"/v2/concurrency_limits/leases/{lease_id}/renew",
        json={"lease_duration": lease_duration},
        timeout=REQUEST_TIMEOUT,
    )


def _release(client: SyncPrefectClient, lease_id: uuid.UUID) -> None:
    client.request(
        "POST", "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": str(lease_id)}
    )


def _release_quietly(client: SyncPrefectClient, lease_id: uuid.UUID, names: tuple) -> None:
    try:
        _release(client, lease_id)
    except Exception:
        logger.warning(
            "Could not release lease %s on %s; the slot frees itself when the lease expires",
            lease_id,
            ", ".join(names),
            exc_info=True,
        )


# --- acquiring (one generator, driven by a sync or an async loop) ----------------------------
@dataclass
class _Call:
    fn: Callable[[], Any]


@dataclass
class _Sleep:
    seconds: float


@dataclass
class _Grant:
    lease_id: uuid.UUID
    limit_ids: dict[str, uuid.UUID]
    requested_at: float  # monotonic, before the request: the lease may start any time after
    lease_seconds: float  # what the lease was granted for


@dataclass
class _Unanswered:
    """The acquire got no usable answer; `maybe_granted`: Prefect may have applied it."""

    error: Exception
    maybe_granted: bool


def _attempt(
    client: SyncPrefectClient,
    url: str,
    names: tuple[str, ...],
    limit: int,
    holder: dict[str, str] | None,
    grants: list[_Grant],
) -> _Grant | float | None | _Unanswered:
    """One increment-with-lease on every name at once (all or nothing).

    Returns the grant, the server's Retry-After when a limit is full, None when a limit has
    vanished or changed since we checked it (the caller reads it again), or `_Unanswered`.

    The request is sent once, never retried by Prefect's client: Prefect creates the lease
    when the request arrives, so a request whose answer was lost may have left a lease we
    never got the id of, and a blind retry would then queue behind it (or take a second
    one). Prefect 3.9 gives no way to find such a lease again (leases of a global limit are
    listed nowhere; only `tag:` limits list their holders) and a decrement by name would be
    applied twice (once more when that lease expires), so the orphan is bounded instead: the
    lease is asked for with Prefect's shortest duration (60 s) and the renewer extends it to
    the caller's `lease_duration` right after. An orphan is never renewed, so it holds a
    slot for at most 60 s (+ up to 15 s until Prefect's repossessor frees it), whatever
    `lease_duration` was asked; the caller retries, and waits behind it at most that long.
    """
    body: dict[str, Any] = {
        "names": list(names),
        "slots": 1,
        "mode": "concurrency",
        "lease_duration": ACQUIRE_LEASE_SECONDS,
    }
    if holder is not None:
        body["holder"] = holder
    requested_at = time.monotonic()
    try:
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):
            response = client.request(
                "POST",
                "/v2/concurrency_limits/increment-with-lease",
                json=body,
                timeout=ACQUIRE_TIMEOUT,
            )
    except Exception as exc:
        status = _status(exc)
        if status == 423:
            try:
                return float(exc.response.headers.get("Retry-After", 1.0))  # type: ignore[attr-defined]
            except ValueError:
                return 1.0
        if status in UNSENT_STATUSES or isinstance(
            exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
        ):
            return _Unanswered(exc, maybe_granted=False)
        if status in UNKNOWN_STATUSES or (status is None and isinstance(exc, httpx.TransportError)):
            return _Unanswered(exc, maybe_granted=True)
        raise
    data = response.json()
    grant = _Grant(
        lease_id=uuid.UUID(data["lease_id"]),
        limit_ids={item["name"]: uuid.UUID(item["id"]) for item in data.get("limits", [])},
        requested_at=requested_at,
        lease_seconds=ACQUIRE_LEASE_SECONDS,
    )
    grants.append(grant)  # from here on, a failure or cancellation releases it
    # A limit deleted since we read it (missing), or deleted and created again under its name
    # (another id, not checked yet): give the slot back, read the limit again, try again.
    changed = [
        name
        for name in names
        if name not in grant.limit_ids
        or _limit_ids.get((url, name), (None, 0))[0] != grant.limit_ids[name]
    ]
    if changed:
        grants.remove(grant)
        _release(client, grant.lease_id)
        _forget(url, changed)
        return None
    for item in data.get("limits", []):  # resized since we checked it: the grant is released
        if "limit" in item and item["limit"] != limit:
            _forget(url, [item["name"]])
            problems = _misconfiguration(item["name"], limit, {"limit": item["limit"]})
            raise ResourceLockMisconfigured(item["name"], limit, problems)
    return grant


def _resource(name: str, limit_id: uuid.UUID) -> dict[str, str]:
    return {
        "prefect.resource.id": f"prefect.concurrency-limit.{limit_id}",
        "prefect.resource.name": name,
    }


def _emit_all(
    event: str,
    limit_ids: dict[str, uuid.UUID],
    payload: dict[str, Any],
    follows: dict[str, Event | None] | None = None,
) -> dict[str, Event | None]:
    """One event per limit, each naming the others as related "concurrency-limit" resources."""

    emitted: dict[str, Event | None] = {}
    for name, limit_id in limit_ids.items():
        related = [
            {
                "prefect.resource.id": f"prefect.concurrency-limit.{other_id}",
                "prefect.resource.role": "concurrency-limit",
                "prefect.resource.name": other,
            }
            for other, other_id in limit_ids.items()
            if other != name
        ]
        try:
            emitted[name] = emit_event(
                event,
                resource=_resource(name, limit_id),
                related=related,
                payload=payload,
                follows=(follows or {}).get(name),
            )
        except Exception:  # an event is never worth failing the flow for
            logger.warning("Could not emit %s for %r", event, name, exc_info=True)
            emitted[name] = None
    return emitted


def _acquire_steps(
    spec: ResourceLock,
    names: tuple[str, ...],
    hold: Hold,
    grants: list[_Grant],
) -> Generator[_Call | _Sleep, Any, dict[str, Event | None]]:
    client, url = _client(), _api_settings()[0]
    started = time.monotonic()
    deadline = None if spec.timeout is None else started + spec.timeout
    limit_ids: dict[str, uuid.UUID] = yield _Call(
        lambda: _limit_ids_for(client, url, names, spec.limit)
    )
    waiting: dict[str, Event | None] | None = None
    recreated = unanswered = 0
    unanswered_since: float | None = None
    while True:
        outcome = yield _Call(lambda: _attempt(client, url, names, spec.limit, hold.holder, grants))
        if outcome is None:  # a limit was deleted under us: create it again, retry at once
            recreated += 1
            if recreated > 3:
                raise RuntimeError(f"Prefect keeps losing the concurrency limits {names}")
            limit_ids = yield _Call(lambda: _limit_ids_for(client, url, names, spec.limit))
            continue
        if isinstance(outcome, _Grant):
            hold.lease_id = outcome.lease_id
            hold.limit_ids = outcome.limit_ids
            hold.waited_seconds = time.monotonic() - started
            payload = {
                "lease_id": str(outcome.lease_id),
                "lease_duration": spec.lease_duration,
                "wait_id": str(hold.wait_id),
                "holder": hold.holder,
                "names": list(names),
                "waited_seconds": round(hold.waited_seconds, 3),
                "protocol": PROTOCOL,
            }
            identity = process_identity()
            if identity is not None:  # lets the board prove, on this machine, that we died
                payload["process"] = identity
            return _emit_all(EVENT_ACQUIRED, outcome.limit_ids, payload, waiting)
        now = time.monotonic()
        if isinstance(outcome, _Unanswered):
            # Retried soon (Prefect's "database is busy" passes quickly), then less often.
            unanswered_since = now if unanswered_since is None else unanswered_since
            if now - unanswered_since >= ACQUIRE_GIVE_UP:
                raise outcome.error
            pause = min(ACQUIRE_RETRY_FIRST * 2**unanswered, MAX_RETRY_WAIT)
            unanswered += 1
            _warn_unanswered(names, outcome, pause)
        else:
            unanswered, unanswered_since = 0, None
            pause = min(max(outcome, MIN_RETRY_WAIT), MAX_RETRY_WAIT)
        if waiting is None and not isinstance(outcome, _Unanswered):
            _run_logger().info("Waiting for resource lock on %s", ", ".join(names))
            payload = {
                "lease_duration": spec.lease_duration,
                "wait_id": str(hold.wait_id),
                "holder": hold.holder,
                "names": list(names),
                "timeout": spec.timeout,
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
            waiting = _emit_all(EVENT_WAITING, limit_ids, payload)
        if deadline is not None and now >= deadline:
            _emit_all(
                EVENT_TIMED_OUT,
                limit_ids,
                {
                    "wait_id": str(hold.wait_id),
                    "timeout": spec.timeout,
                    "names": list(names),
                    "waited_seconds": round(now - started, 3),
                },
                waiting,
            )
            holders = yield _Call(functools.partial(_describe_holders, client, limit_ids))
            raise ResourceLockTimeout(names, float(spec.timeout or 0), holders)
        if deadline is not None:
            pause = min(pause, deadline - now)
        yield _Sleep(max(pause, 0.0))


def _warn_unanswered(names: tuple[str, ...], outcome: _Unanswered, pause: float) -> None:
    if outcome.maybe_granted:
        _run_logger().warning(
            "Prefect did not answer the request for %s (%r). It may have granted a lease "
            "whose id never reached us: such a lease is not renewed and holds its slot for at "
            "most %g s (+ up to 15 s until Prefect frees it); if the limit is full, that is how "
            "long this call waits behind it. Trying again in %.1f s.",
            ", ".join(names),
            outcome.error,
            ACQUIRE_LEASE_SECONDS,
            pause,
        )
    else:  # nothing was granted: as quiet as Prefect's own client retries
        logger.debug(
            "Prefect did not take the request for %s (%r); trying again in %.1f s.",
            ", ".join(names),
            outcome.error,
            pause,
        )


def _drive_sync(steps: Generator[_Call | _Sleep, Any, Any]) -> Any:
    value: Any = None
    while True:
        try:
            step = steps.send(value)
        except StopIteration as done:
            return done.value
        if isinstance(step, _Sleep):
            time.sleep(step.seconds)
            value = None
        else:
            with shield():  # an injected cancellation waits until the call has returned
                value = step.fn()


async def _drive_async(steps: Generator[_Call | _Sleep, Any, Any]) -> Any:
    value: Any = None
    while True:
        try:
            step = steps.send(value)
        except StopIteration as done:
            return done.value
        if isinstance(step, _Sleep):
            await anyio.sleep(step.seconds)
            value = None
        else:
            value = await anyio.to_thread.run_sync(step.fn)


# --- who holds it (for the timeout message) --------------------------------------------------
def _describe_holders(client: SyncPrefectClient, limit_ids: dict[str, uuid.UUID]) -> dict:
    """The newest acquire without a release per limit, from reslock's and Prefect's events.

    Best effort: events reach the API a few seconds late and Prefect keeps them 7 days.
    """

    by_resource = {f"prefect.concurrency-limit.{lid}": name for name, lid in limit_ids.items()}
    now = datetime.now(UTC)
    body = {
        "filter": {
            "occurred": {
                "since": (now - timedelta(days=7)).isoformat(),
                "until": (now + timedelta(minutes=1)).isoformat(),
            },
            "event": {"name": [EVENT_ACQUIRED, EVENT_RELEASED, PREFECT_ACQUIRED, PREFECT_RELEASED]},
            "resource": {"id": list(by_resource)},
            "order": "DESC",
        },
        "limit": 50,
    }
    try:
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):
            events = client.request(
                "POST", "/events/filter", json=body, timeout=REQUEST_TIMEOUT
            ).json()["events"]
    except Exception:
        logger.debug("Could not read the events of %s", list(limit_ids), exc_info=True)
        return {}
    closed: set[str] = set()
    holders: dict[str, str] = {}
    for event in events:  # newest first
        name = by_resource.get(event["resource"].get("prefect.resource.id", ""))
        if name is None or name in holders:
            continue
        payload = event.get("payload") or {}
        if event["event"] == EVENT_RELEASED:
            closed.add(f"lease:{payload.get('lease_id')}")
        elif event["event"] == PREFECT_RELEASED and event.get("follows"):
            closed.add(f"event:{event['follows']}")
        else:  # an acquire: the holder unless a newer release closed it
            key = (
                f"lease:{payload.get('lease_id')}"
                if event["event"] == EVENT_ACQUIRED
                else f"event:{event['id']}"
            )
            if key not in closed:
                holders[name] = _describe_event_holder(event)
    return holders


def _describe_event_holder(event: dict[str, Any]) -> str:
    runs = {}
    for related in event.get("related", []):
        role = related.get("prefect.resource.role")
        if role in ("flow-run", "task-run"):
            run_id = related["prefect.resource.id"].rsplit(".", 1)[-1]
            label = related.get("prefect.resource.name")
            runs[role] = f"{role.replace('-', ' ')} {label!r} ({run_id})" if label else run_id
    since = str(event.get("occurred", ""))[:19].replace("T", " ")
    where = " in ".join(runs[role] for role in ("task-run", "flow-run") if role in runs)
    return f"{where or 'a process outside any flow run'}, since {since} UTC"


# --- keeping the lease -----------------------------------------------------------------------
@dataclass
class _Renewal:
    """One renewal request, sent from a thread of its own so that the deadline never waits."""

    started: float
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class _Renewer:
    """Keeps a lease in a daemon thread and stops the body when the lease is lost.

    Renews every 0.75 x lease_duration (at once when the lease was granted shorter than asked:
    see `_attempt`). The lease is lost when Prefect answers 410 (revoked, e.g. from the board)
    or when it has not been renewed by `expires - LOST_MARGIN`. That deadline is kept by the
    clock, not between attempts: the body is stopped on time even while a renewal request is
    still in flight, and a renewal answered after that does not revive the hold. Once the
    lease is lost, EVENT_STOPPING is announced until the block and its borrowers have exited
    (`stop()`).
    """

    def __init__(
        self,
        client: SyncPrefectClient,
        hold: Hold,
        acquired_at: float,
        lease_seconds: float,
        on_lost: Callable[[], None],
    ) -> None:
        self.client = client
        self.hold = hold
        self.expires = acquired_at + lease_seconds
        self.next_renewal = acquired_at + (
            lease_seconds * RENEWAL_FRACTION if lease_seconds >= hold.lease_duration else 0.0
        )
        self.on_lost = on_lost
        self.lost_at: float | None = None
        self._stopped = False  # the block and its borrowers have exited
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        context = contextvars.copy_context()  # the run's logger and settings
        self._thread = threading.Thread(
            target=context.run,
            args=(self._run,),
            name=f"reslock-lease-{self.hold.lease_id}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """The block has exited: no loss and no announcement from now on."""
        with self._lock:
            self._stopped = True
        self._wake.set()

    def _run(self) -> None:
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):  # we retry, within the lease
            if self._keep():
                self._announce()

    def _keep(self) -> bool:
        """Renew until the block exits (False) or the lease is lost (True, body stopped)."""
        hold = self.hold
        request: _Renewal | None = None
        last_error: Exception | None = None
        while True:
            with self._lock:
                if self._stopped:
                    return False
            now = time.monotonic()
            if request is not None and request.done.is_set():
                if request.error is None:
                    self.expires = request.started + hold.lease_duration
                    self.next_renewal = now + hold.lease_duration * RENEWAL_FRACTION
                elif _status(request.error) == 410:
                    return self._lose("the lease was revoked (released from the board?)")
                else:
                    last_error = request.error
                    logger.warning(
                        "Renewing lease %s failed (%r); retrying", hold.lease_id, last_error
                    )
                    self.next_renewal = now + RENEW_RETRY
                request = None
                continue
            deadline = self.expires - LOST_MARGIN
            if now >= deadline:
                if request is not None:
                    why = f"a renewal still unanswered after {now - request.started:.1f} s"
                else:
                    why = repr(last_error)
                return self._lose(f"could not renew the lease before it expired ({why})")
            if request is None and now >= self.next_renewal:
                request = self._send()
                continue
            wake_at = deadline if request is not None else min(deadline, self.next_renewal)
            self._wake.wait(max(wake_at - now, 0.0))
            self._wake.clear()  # whatever woke us is checked at the top of the loop

    def _send(self) -> _Renewal:
        request = _Renewal(started=time.monotonic())
        hold = self.hold
        assert hold.lease_id is not None

        def send() -> None:
            try:
                _renew(self.client, hold.lease_id, hold.lease_duration)  # type: ignore[arg-type]
            except Exception as exc:
                request.error = exc
            finally:
                request.done.set()
                self._wake.set()

        context = contextvars.copy_context()  # no retries by Prefect's client: see _run
        threading.Thread(
            target=context.run, args=(send,), name=f"reslock-renew-{hold.lease_id}", daemon=True
        ).start()
        return request

    def _lose(self, reason: str) -> bool:
        with self._lock:
            if self._stopped:
                return False  # the block already ended; its release is a no-op
            self.hold.lost = reason
            self.lost_at = time.monotonic()
        _run_logger().error(
            "Resource lock on %s lost: %s. Stopping the guarded block.",
            ", ".join(self.hold.names),
            reason,
        )
        try:
            self.on_lost()
        except Exception:  # e.g. the event loop of an `async with` has closed
            logger.warning(
                "Could not stop the block of lease %s", self.hold.lease_id, exc_info=True
            )
        return True

    def _announce(self) -> None:
        """EVENT_STOPPING now and every STOPPING_PERIOD_SECONDS until the block has exited
        (after its borrowers).

        A body blocked in time.sleep() or a C call only stops when that call returns; until
        then these say "still inside", and their end without a release says "died inside"."""
        hold = self.hold
        assert self.lost_at is not None
        while True:
            with self._lock:  # stop() waits for an announcement under way: none comes after it
                if self._stopped:
                    return
                payload = {
                    "lease_id": str(hold.lease_id),
                    "wait_id": str(hold.wait_id),
                    "names": list(hold.acquired),
                    "reason": hold.lost,
                    "lost_seconds": round(time.monotonic() - self.lost_at, 1),
                }
                _emit_all(EVENT_STOPPING, hold.limit_ids, payload)
            # On the beat counted from the loss; a beat missed (a stalled process) is skipped.
            beats = (time.monotonic() - self.lost_at) // STOPPING_PERIOD_SECONDS + 1
            next_at = self.lost_at + beats * STOPPING_PERIOD_SECONDS
            self._wake.wait(max(next_at - time.monotonic(), 0.0))
            self._wake.clear()


# --- the context managers --------------------------------------------------------------------
def _released_payload(hold: Hold, reason: str, acquired_at: float) -> dict[str, Any]:
    return {
        "lease_id": str(hold.lease_id),
        "wait_id": str(hold.wait_id),
        "names": list(hold.acquired),
        "reason": reason,
        "held_seconds": round(time.monotonic() - acquired_at, 3),
    }


def _exit_reason(hold: Hold, exc: BaseException | None) -> str:
    if hold.lost:
        return "lease_lost"
    if exc is None:
        return "exit"
    # CancelledError, KeyboardInterrupt, Prefect's TerminationSignal...: not the body's failure
    return "error" if isinstance(exc, Exception) else "cancelled"


def _attach(hold: Hold, borrows: list[_Borrow], stop: Callable[[str], None]) -> None:
    """Let each lender stop this body; a lender that lost its lease meanwhile stops it now."""
    for borrow in borrows:
        reason = borrow.lending.attach(borrow, stop)
        if reason is not None:
            hold.lost = hold.lost or reason
            raise ResourceLockLost(borrow.names, hold.lease_id, reason)


@contextmanager
def _hold_sync(spec: ResourceLock) -> Iterator[Hold]:
    hold = Hold(spec.names, lease_duration=spec.lease_duration, holder=_current_holder())
    needed, lenders = _plan(spec.names, hold.owner)
    if not needed and not lenders:  # every name is held by an enclosing block of this thread
        yield hold
        return
    borrows, unlent = _take_turns(spec, lenders)
    try:
        hold.acquired = tuple(sorted({*needed, *unlent}))
        hold.borrowed = tuple(sorted(name for borrow in borrows for name in borrow.names))
        if not hold.acquired:
            _lent_lease(hold, lenders, borrows)
        with _guard_sync(spec, hold, borrows):
            yield hold
    finally:
        _leave_all(borrows)  # after its own borrowers have left (the guard waits for them)


@contextmanager
def _guard_sync(spec: ResourceLock, hold: Hold, borrows: list[_Borrow]) -> Iterator[Hold]:
    """Take the slots of `hold.acquired` (if any) and run the body where a lost lease (its own
    or a lender's) stops it; on the way out wait for its borrowers, then release."""
    needed = hold.acquired
    guarded = tuple(sorted({*needed, *hold.borrowed}))
    client = _client() if needed else None  # a block that only borrows calls nobody
    grant: _Grant | None = None
    acquired: dict[str, Event | None] = {}
    if client is not None:
        grants: list[_Grant] = []
        try:
            acquired = _drive_sync(_acquire_steps(spec, needed, hold, grants))
        except BaseException:
            with shield():
                for taken in grants:
                    _release_quietly(client, taken.lease_id, needed)
            raise
        grant = grants[-1]
    # The lease may have started as soon as it was asked for.
    acquired_at = grant.requested_at if grant is not None else time.monotonic()
    token = _HELD.set((*_HELD.get(), hold))
    renewer: _Renewer | None = None
    error: BaseException | None = None
    try:
        with WatcherThreadCancelScope(name=f"reslock {', '.join(guarded)}") as scope:
            stop = _stopper(hold, scope.cancel)
            if grant is not None:
                renewer = _Renewer(
                    client, hold, acquired_at, grant.lease_seconds, lambda: stop(hold.lost or "")
                )
                renewer.start()
            _attach(hold, borrows, stop)
            yield hold
    except BaseException as exc:
        error = exc
        # The body was stopped (CancelledError) or failed after losing the lease
        if hold.lost and not isinstance(exc, ResourceLockLost):
            raise ResourceLockLost(guarded, hold.lease_id, hold.lost) from exc
        raise
    finally:
        hold.active = False
        _HELD.reset(token)
        interrupted = _wait_for_borrowers(hold)
        if renewer is not None:
            renewer.stop()
        if grant is not None:
            with shield():
                _release_quietly(client, hold.lease_id, needed)  # type: ignore[arg-type]
                _emit_all(
                    EVENT_RELEASED,
                    hold.limit_ids,
                    _released_payload(hold, _exit_reason(hold, error), acquired_at),
                    acquired,
                )
        if interrupted is not None:
            raise interrupted
    if hold.lost:
        raise ResourceLockLost(guarded, hold.lease_id, hold.lost)


@asynccontextmanager
async def _hold_async(spec: ResourceLock) -> AsyncIterator[Hold]:
    hold = Hold(spec.names, lease_duration=spec.lease_duration, holder=_current_holder())
    needed, lenders = _plan(spec.names, hold.owner)
    if not needed and not lenders:  # every name is held by an enclosing block of this task
        yield hold
        return
    borrows, unlent = await _take_turns_async(spec, lenders)
    try:
        hold.acquired = tuple(sorted({*needed, *unlent}))
        hold.borrowed = tuple(sorted(name for borrow in borrows for name in borrow.names))
        if not hold.acquired:
            _lent_lease(hold, lenders, borrows)
        async with _guard_async(spec, hold, borrows):
            yield hold
    finally:
        _leave_all(borrows)


@asynccontextmanager
async def _guard_async(
    spec: ResourceLock, hold: Hold, borrows: list[_Borrow]
) -> AsyncIterator[Hold]:
    needed = hold.acquired
    guarded = tuple(sorted({*needed, *hold.borrowed}))
    client = _client() if needed else None
    grant: _Grant | None = None
    acquired: dict[str, Event | None] = {}
    if client is not None:
        grants: list[_Grant] = []
        try:
            acquired = await _drive_async(_acquire_steps(spec, needed, hold, grants))
        except BaseException:
            with anyio.CancelScope(shield=True):
                for taken in grants:
                    await anyio.to_thread.run_sync(_release_quietly, client, taken.lease_id, needed)
            raise
        grant = grants[-1]
    acquired_at = grant.requested_at if grant is not None else time.monotonic()
    token = _HELD.set((*_HELD.get(), hold))
    loop = asyncio.get_running_loop()
    renewer: _Renewer | None = None
    error: BaseException | None = None
    try:
        with anyio.CancelScope() as scope:  # cancelled when the lease is lost
            stop = _stopper(hold, lambda: loop.call_soon_threadsafe(scope.cancel))
            if grant is not None:
                renewer = _Renewer(
                    client, hold, acquired_at, grant.lease_seconds, lambda: stop(hold.lost or "")
                )
                renewer.start()
            _attach(hold, borrows, stop)
            yield hold
    except BaseException as exc:
        error = exc
        if hold.lost and not isinstance(exc, ResourceLockLost):
            raise ResourceLockLost(guarded, hold.lease_id, hold.lost) from exc
        raise
    finally:
        hold.active = False
        _HELD.reset(token)
        await _wait_for_borrowers_async(hold)
        if renewer is not None:
            renewer.stop()
        if grant is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_release_quietly, client, hold.lease_id, needed)
            _emit_all(
                EVENT_RELEASED,
                hold.limit_ids,
                _released_payload(hold, _exit_reason(hold, error), acquired_at),
                acquired,
            )
    if hold.lost:
        raise ResourceLockLost(guarded, hold.lease_id, hold.lost)


def _refuse_inside_event_loop(spec: ResourceLock) -> None:
    """A sync block in a thread that runs an event loop would block that loop while it waits,
    and stopping its body on a lost lease would throw into the loop itself."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"`with {spec!r}` inside a running event loop (an async function, or a sync task "
        f"called from one): use `async with {spec!r}` there, or run the sync code in a worker "
        f"thread (e.g. `await anyio.to_thread.run_sync(...)`)"
    )


class ResourceLock:
    """`with` / `async with` guard on one or more resources; see `resource_lock()`."""

    def __init__(
        self,
        names: Iterable[object],
        *,
        limit: int = 1,
        lease_duration: float = DEFAULT_LEASE_SECONDS,
        timeout: float | None = None,
    ) -> None:
        self.names = _normalize(names)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number >= 1, got {limit!r}")
        if not MIN_LEASE_SECONDS <= float(lease_duration) <= MAX_LEASE_SECONDS:
            raise ValueError(
                f"lease_duration must be between {MIN_LEASE_SECONDS:g} and "
                f"{MAX_LEASE_SECONDS:g} seconds (Prefect's bounds), got {lease_duration!r}"
            )
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")
        self.limit = limit
        self.lease_duration = float(lease_duration)
        self.timeout = None if timeout is None else float(timeout)
        self._sync: Any = None
        self._async: Any = None

    def __repr__(self) -> str:
        return f"resource_lock({', '.join(map(repr, self.names))})"

    def __enter__(self) -> Hold:
        if self._sync is not None:
            raise RuntimeError(f"{self!r} is already entered; create another resource_lock()")
        _refuse_inside_event_loop(self)
        self._sync = _hold_sync(self)
        try:
            return self._sync.__enter__()
        except BaseException:
            self._sync = None
            raise

    def __exit__(self, *exc_info: Any) -> bool | None:
        manager, self._sync = self._sync, None
        return manager.__exit__(*exc_info)

    async def __aenter__(self) -> Hold:
        if self._async is not None:
            raise RuntimeError(f"{self!r} is already entered; create another resource_lock()")
        self._async = _hold_async(self)
        try:
            return await self._async.__aenter__()
        except BaseException:
            self._async = None
            raise

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        manager, self._async = self._async, None
        return await manager.__aexit__(*exc_info)


def resource_lock(
    *names: str | Iterable[str],
    limit: int = 1,
    lease_duration: float = DEFAULT_LEASE_SECONDS,
    timeout: float | None = None,
) -> ResourceLock:
    """Hold every named resource (all or none) for the duration of a `with` block.

    `limit`: the limit's size: created with it, or an existing limit must have it.
    `lease_duration`: seconds (60 to 86400) a crashed holder keeps the slot.
    `timeout`: seconds to wait before raising `ResourceLockTimeout` (None: forever).
    """
    return ResourceLock(names, limit=limit, lease_duration=lease_duration, timeout=timeout)


# --- the decorator ---------------------------------------------------------------------------
def _check_templates(templates: tuple[str, ...], fn: Callable[..., Any]) -> None:
    signature = inspect.signature(fn)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for template in templates:
        if not isinstance(template, str):
            raise TypeError(f"guarded() takes name templates (str), got {template!r}")
        for _, field_name, _, _ in string.Formatter().parse(template):
            if field_name is None:
                continue
            root = field_name.split(".", 1)[0].split("[", 1)[0]
            if not root or root.isdigit():
                raise ValueError(
                    f"name template {template!r}: use parameter names, e.g. {{db_id}}, not {{}}"
                )
            if root not in signature.parameters and not takes_any:
                raise ValueError(
                    f"name template {template!r} uses {{{root}}}, which is not a parameter "
                    f"of {fn.__qualname__}{signature}"
                )
        if not any(field_name for _, field_name, _, _ in string.Formatter().parse(template)):
            validate_name(template)


def guarded(
    *templates: str,
    limit: int = 1,
    lease_duration: float = DEFAULT_LEASE_SECONDS,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """Run the whole function under `resource_lock`, names formatted from its arguments.

        @task
        @guarded("db-{db_id}")
        def migrate(db_id: int): ...

    Put it below `@task` (or `@flow`) so the lock is taken inside the run (the holder).
    """
    if not templates:
        raise ValueError("guarded() needs at least one resource name template")
    options = {"limit": limit, "lease_duration": lease_duration, "timeout": timeout}
    ResourceLock(["x"], **options)  # check the options now, not at the first call

    def decorate(fn: F) -> F:
        if isinstance(fn, Task | Flow):
            raise TypeError(
                "put @guarded(...) below @task / @flow, so that the lock is taken by the run:"
                "\n    @task\n    @guarded(...)\n    def ..."
            )
        _check_templates(templates, fn)
        signature = inspect.signature(fn)

        def lock_for(args: tuple, kwargs: dict) -> ResourceLock:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            for param in signature.parameters.values():
                if param.kind is param.VAR_KEYWORD:
                    values.update(values.get(param.name) or {})
            try:
                names = [template.format(**values) for template in templates]
            except (KeyError, AttributeError, IndexError) as exc:
                raise ValueError(f"cannot build resource name from {templates!r}: {exc}") from exc
            return ResourceLock(names, **options)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with lock_for(args, kwargs):
                    return await fn(*args, **kwargs)

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                with lock_for(args, kwargs):
                    return fn(*args, **kwargs)

            wrapper = sync_wrapper
        # Prefect derives the task key from the source of the function it wraps.
        wrapper.__prefect_task_source__ = fn
        return wrapper

    return decorate
