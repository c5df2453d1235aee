"""Keeping the lease: renewed from a daemon thread, and the body stopped when it is lost."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from reslock.borrowing import Hold
from reslock.prefect_calls import _emit_all, _renew, _status
from reslock.protocol import EVENT_STOPPING, RENEWAL_FRACTION, STOPPING_PERIOD_SECONDS
from reslock.run_context import _run_logger, logger

LOST_MARGIN = 5.0  # stop the body this long before a lease we could not renew expires
RENEW_RETRY = 2.0  # seconds between renewal attempts after a transient failure


@dataclass
class _Renewal:
    """One renewal request, sent from a thread of its own so that the deadline never waits."""

    started: float
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class _Renewer:
    """Keeps a lease in a daemon thread and stops the body when the lease is lost.

    Renews every 0.75 x lease_duration (at once when the lease was granted shorter than asked:
    see `_attempt` in reslock/acquiring.py). The lease is lost when Prefect answers 410
    (revoked, e.g. from the board) or when it has not been renewed by `expires - LOST_MARGIN`.
    That deadline is kept by the clock, not between attempts: the body is stopped on time even
    while a renewal request is still in flight, and a renewal answered after that does not
    revive the hold. Once the lease is lost, EVENT_STOPPING is announced until the block and
    its borrowers have exited (`stop()`).
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
