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

The helper's parts, each in a module of this package named for what it holds: holding.py
(`resource_lock` and its `with` / `async with` blocks), decorator.py (`guarded`),
borrowing.py (what a context holds: re-entering, borrowing, `Hold`), acquiring.py (taking
the slots), renewing.py (keeping the lease, stopping the body when it is lost),
prefect_calls.py (the other calls to Prefect), errors.py, names.py, run_context.py, and
cancellation.py (the one private Prefect module used). This module is their public address:
import from here (or from `reslock`). The underscored names those modules share are not an
API, and each tuning constant is read in the module that defines it (patch it there).
"""

from __future__ import annotations

from reslock.acquiring import (
    ACQUIRE_GIVE_UP,
    ACQUIRE_LEASE_SECONDS,
    ACQUIRE_RETRY_FIRST,
    ACQUIRE_TIMEOUT,
    MAX_RETRY_WAIT,
    MIN_RETRY_WAIT,
    UNKNOWN_STATUSES,
    UNSENT_STATUSES,
)
from reslock.borrowing import Hold, held_names
from reslock.decorator import guarded
from reslock.errors import ResourceLockLost, ResourceLockMisconfigured, ResourceLockTimeout
from reslock.holding import ResourceLock, resource_lock
from reslock.names import (
    BANNED_CHARACTERS,
    RESERVED_PREFIXES,
    validate_name,
)
from reslock.prefect_calls import (
    PREFECT_ACQUIRED,
    PREFECT_RELEASED,
    REQUEST_TIMEOUT,
)
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
from reslock.renewing import LOST_MARGIN, RENEW_RETRY

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
