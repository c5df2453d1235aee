"""Taking the slots: one increment-with-lease on every name at once, retried until granted
or `timeout=` expires, with the waiting / acquired / timed_out events on the way.

The steps are one generator (`_acquire_steps`) that yields each call to Prefect and each
pause, driven by a sync loop (`_drive_sync`) or an async one (`_drive_async`), so that `with`
and `async with` wait and retry in the same way.
"""

from __future__ import annotations

import functools
import os
import socket
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.events import Event
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from reslock.borrowing import Hold, _Spec
from reslock.cancellation import shield
from reslock.errors import ResourceLockMisconfigured, ResourceLockTimeout, _misconfiguration
from reslock.prefect_calls import (
    _api_settings,
    _client,
    _describe_holders,
    _emit_all,
    _forget,
    _limit_ids,
    _limit_ids_for,
    _release,
    _status,
)
from reslock.process import process_identity
from reslock.protocol import (
    EVENT_ACQUIRED,
    EVENT_TIMED_OUT,
    EVENT_WAITING,
    MIN_LEASE_SECONDS,
    PROTOCOL,
)
from reslock.run_context import _run_logger, logger

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


def _acquire_steps(
    spec: _Spec,
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
