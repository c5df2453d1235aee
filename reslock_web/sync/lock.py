"""The sync lock: one sync at a time, across every worker and machine.

A compare-and-set on one row (SyncState "sync"): a sync takes it when it is free, expired or
left by a process that died on this machine, extends it while a long pass goes on, and frees it
at the end.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from reslock_web.models import SyncState
from reslock_web.prefect_io.api import PrefectError

LOCK_SECONDS = 300  # a crashed sync's lock frees itself after this long


def where_pids_mean_something() -> str:
    """This host and PID namespace: two containers may share a host name (host networking)
    while a pid of one means nothing in the other. Empty without /proc."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{socket.gethostname()}/{namespace}"


def _me() -> str:
    return (
        f"{where_pids_mean_something() or socket.gethostname()}:{os.getpid()}:{time.monotonic_ns()}"
    )


def try_lock(now: datetime) -> str | None:
    """Take the sync lock if it is free, expired or left by a process that died on this
    machine; returns our token, or None."""
    state, _ = SyncState.objects.get_or_create(name=SyncState.SYNC)
    token = _me()
    free = Q(locked_until__isnull=True) | Q(locked_until__lt=now)
    if state.locked_by and _holder_died(state.locked_by):
        # Compare-and-set on the dead holder's token: of several takers, one wins.
        free |= Q(locked_by=state.locked_by)
    taken = SyncState.objects.filter(free, name=SyncState.SYNC).update(
        locked_by=token, locked_until=now + timedelta(seconds=LOCK_SECONDS)
    )
    return token if taken == 1 else None


def _holder_died(token: str) -> bool:
    """Whether the lock's holder was a process of this machine that no longer runs (a killed
    worker or listener): its lock would otherwise keep every sync out for LOCK_SECONDS. A pid
    taken by another process since reads as alive: the lock then expires as before."""
    where, pid_text, _ = (token.rsplit(":", 2) + ["", ""])[:3]  # _me(): where:pid:clock
    here = where_pids_mean_something()
    if not here or where != here or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


def unlock(token: str) -> None:
    SyncState.objects.filter(name=SyncState.SYNC, locked_by=token).update(
        locked_by="", locked_until=None
    )


def keep_lock(token: str) -> None:
    """Extend our sync lock during a long pass; raise if another sync has taken it over."""
    kept = SyncState.objects.filter(name=SyncState.SYNC, locked_by=token).update(
        locked_until=timezone.now() + timedelta(seconds=LOCK_SECONDS)
    )
    if kept != 1:
        raise PrefectError(
            "the sync lock passed to another sync during a long read; this one stops here "
            "(what it recorded so far is kept)",
            retryable=True,
        )


def wait_for_lock(wait: float) -> str | None:
    """Take the sync lock, waiting up to `wait` seconds for a running sync to free it; returns
    our token, or None."""
    deadline = time.monotonic() + wait
    while (token := try_lock(timezone.now())) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
    return token
