"""What a context holds: the block that entered a hold re-enters it, the children it starts
borrow it (taking turns), and a lost lease stops them all. reslock/lock.py's docstring says
what this means for a flow; `Hold` is what a block gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from reslock.errors import ResourceLockTimeout
from reslock.protocol import DEFAULT_LEASE_SECONDS
from reslock.run_context import logger


class _Spec(Protocol):
    """What a block asked for: a `ResourceLock` (reslock/holding.py), read here and by the
    acquire (reslock/acquiring.py), which sit below the module that builds it."""

    names: tuple[str, ...]
    limit: int
    lease_duration: float
    timeout: float | None


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


def _take_turns(spec: _Spec, lenders: list) -> tuple[list[_Borrow], tuple[str, ...]]:
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


async def _take_turns_async(spec: _Spec, lenders: list) -> tuple[list[_Borrow], tuple[str, ...]]:
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
