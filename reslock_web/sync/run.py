"""The sync's entry points: a complete pass (`sync_all`), a re-sync of a few limits
(`sync_limit`, `sync_limits`, `sync_limit_or_raise`), and beat's periodic sync
(`sync_with_settings`).

A pass gathers everything first (`gather`: only reads, so a Prefect that fails half-way changes
nothing), then writes in one transaction (`store.write`). A limit disappears from our board
only after a complete listing without it. Only one sync runs at a time, across every worker and
machine, through a compare-and-set lock row in the database (`lock`).

Beside the passes, the live listener writes what its lock events say at once
(`provisional.show`), without waiting for Prefect: between passes, or during a pass over a few
limits of this process, which compares with our rows as they are when it writes
(`write_between_passes`, `WRITE`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from reslock_web.models import SyncRun, SyncState
from reslock_web.prefect_io.api import PrefectAPI, PrefectError
from reslock_web.sync import plan as sync_plan
from reslock_web.sync import store
from reslock_web.sync.backfill import Progress, backfill
from reslock_web.sync.fast_paths import read_stored
from reslock_web.sync.gather import gather
from reslock_web.sync.health import sync_backoff
from reslock_web.sync.lock import try_lock, unlock, wait_for_lock

log = logging.getLogger(__name__)

# Held by a pass while it writes and frees the sync lock, and by a write between passes: in
# one process, the two never interleave.
WRITE = threading.Lock()
# The sync-lock tokens of this process's passes over a few limits (under WRITE): they read our
# rows again when they write, so a write between passes may go on beside them.
_few_passes: set[str] = set()


@contextlib.contextmanager
def write_between_passes() -> Iterator[bool]:
    """Whether our tables may be written now outside a pass (yielded; the caller writes in
    the block). Yes when the sync lock is free (it is taken for the block) or held by this
    process's pass over a few limits; no while any other pass may have read our rows and not
    yet written them: its write would compare with rows that changed under it."""
    with WRITE:
        token = try_lock(timezone.now())
        try:
            yield token is not None or (
                bool(_few_passes)
                and SyncState.objects.filter(
                    name=SyncState.SYNC, locked_by__in=list(_few_passes)
                ).exists()
            )
        finally:
            if token is not None:
                unlock(token)


def sync_all(api: PrefectAPI, progress: Progress | None = None) -> SyncRun | None:
    """One full sync. Returns the recorded run, or None when another sync holds the lock."""
    token = try_lock(timezone.now())
    if token is None:
        log.info("another sync is running; this one stops here")
        return None
    return _run(api, token, only=None, progress=progress)


def sync_limit(api: PrefectAPI, name: str, wait: float = 30.0) -> SyncRun | None:
    """Sync one limit now (after an operation), waiting for a running sync to finish first:
    that sync may have read Prefect before the change."""
    token = wait_for_lock(wait)
    return _run(api, token, only=name) if token is not None else None


def sync_limits(
    api: PrefectAPI,
    names: Collection[str],
    wait: float = 30.0,
    after_write: Callable[[], object] | None = None,
) -> SyncRun | None:
    """Sync these limits in one pass (the listener's events of one flush): one turn of the
    sync lock, one read of their events and of their runs, one write. Limits synced one after
    another each wait for the lock and read on their own, which under churn costs more than
    the events come in. `after_write` runs in the write's transaction, after it (the
    listener shows again what its events said while Prefect was read)."""
    names = sorted(set(names))
    token = wait_for_lock(wait)
    if token is None:
        return None
    return _run(api, token, only=names[0] if len(names) == 1 else names, after_write=after_write)


def sync_limit_or_raise(api: PrefectAPI, name: str) -> SyncRun:
    """Sync one limit before a decision that depends on it: a decision on the last good state
    instead of Prefect's present one could free a slot somebody took meanwhile."""
    run = sync_limit(api, name)
    if run is None:
        raise PrefectError(
            "another sync kept our tables busy, so the limit could not be read again before "
            "deciding; nothing was changed",
            retryable=True,
        )
    message = (
        f"the limit could not be read again before deciding ({run.error}); nothing was changed"
    )
    if run.throttled:  # still throttled for the operation, which waits and tries again
        wait = (run.throttled_until - timezone.now()).total_seconds()
        raise PrefectError.rate_limited(message, retry_after=max(0.0, wait))
    if not run.ok:
        raise PrefectError(message, retryable=True)
    return run


def _run(
    api: PrefectAPI,
    token: str,
    only: str | list[str] | None,
    progress: Progress | None = None,
    after_write: Callable[[], object] | None = None,
) -> SyncRun:
    scope = "all" if only is None else only if isinstance(only, str) else ", ".join(only)
    run = SyncRun.objects.create(scope=scope[:500])
    started = time.monotonic()
    if only is not None:
        with WRITE:
            _few_passes.add(token)
    try:
        if only is None:
            backfill(api, token, timezone.now(), progress)
        snapshot = gather(api, only=only)
        with WRITE, transaction.atomic():
            if only is not None and snapshot.stored is not None:
                # Rows written between passes while Prefect was read: compare with them as
                # they are now (a few limits' rows: cheap, unlike a complete pass's).
                pks = [row[0] for row in snapshot.stored.compact.values()]
                snapshot.stored = read_stored(pks)
            counts = store.write(
                snapshot,
                grace=timedelta(seconds=settings.GRACE_SECONDS),
                long_hold=timedelta(seconds=settings.LONG_HOLD_SECONDS),
            )
            if after_write is not None:
                after_write()
        run.ok = True
        for name, value in counts.items():
            setattr(run, name, value)
    except PrefectError as error:
        run.ok = False
        run.error = str(error)
        if error.throttled:  # not a failure: the next pass tries again (`health`)
            wait = timedelta(seconds=error.retry_after or 0)
            run.throttled_until = timezone.now() + wait
            log.info("sync stopped: Prefect is rate-limiting reslock (%s)", error)
        else:
            log.warning("sync failed: %s", error)
    except Exception as error:
        run.ok = False
        # Every viewer sees this text; the exception's own (a database error names the host
        # and the user) goes to the log only.
        run.error = (
            f"internal error ({type(error).__name__}); the details are in the log of the "
            "process that ran the sync"
        )
        log.exception("sync failed")
    finally:
        run.finished_at = timezone.now()
        run.duration_ms = int((time.monotonic() - started) * 1000)
        run.save()
        with WRITE:
            unlock(token)
            _few_passes.discard(token)
    return run


def sync_with_settings(periodic: bool = False, progress: Progress | None = None) -> SyncRun | None:
    """A full sync with the configured Prefect; one asked for always runs. A periodic one
    (beat's) is skipped while Prefect keeps failing and the back-off has not run out, and
    while the live listener carries the board it is as sync_plan.py says."""
    if periodic:
        backoff = sync_backoff()
        if backoff.skip(timezone.now()):
            log.info(
                "%s syncs failed in a row; the next periodic sync waits until %s",
                backoff.failures,
                backoff.retry_at,
            )
            return None
        todo = sync_plan.plan(timezone.now())
        if todo.kind == sync_plan.NOTHING:
            return None
        if todo.kind == sync_plan.SOME:
            with PrefectAPI.from_settings() as api:
                last = None
                for name in todo.names:
                    last = sync_limit(api, name, wait=5) or last
                return last
    with PrefectAPI.from_settings() as api:
        return sync_all(api, progress)
