"""`resource_lock()`: a `with` or `async with` block that holds its resources.

Entering plans what the block needs (names held by an enclosing block of the same thread or
task are re-entered, names of an enclosing hold elsewhere are borrowed: reslock/borrowing.py),
takes the slots it still needs (reslock/acquiring.py), and runs the body in a scope that a lost
lease cancels (reslock/renewing.py). Leaving waits for the block's borrowers, then releases.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
from prefect.events import Event

from reslock.acquiring import _acquire_steps, _drive_async, _drive_sync, _Grant
from reslock.borrowing import (
    _HELD,
    Hold,
    _Borrow,
    _leave_all,
    _lent_lease,
    _plan,
    _stopper,
    _take_turns,
    _take_turns_async,
    _wait_for_borrowers,
    _wait_for_borrowers_async,
)
from reslock.cancellation import WatcherThreadCancelScope, shield
from reslock.errors import ResourceLockLost
from reslock.names import _normalize
from reslock.prefect_calls import _client, _emit_all, _release_quietly
from reslock.protocol import (
    DEFAULT_LEASE_SECONDS,
    EVENT_RELEASED,
    MAX_LEASE_SECONDS,
    MIN_LEASE_SECONDS,
)
from reslock.renewing import _Renewer
from reslock.run_context import _current_holder


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
