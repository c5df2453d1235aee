"""The one private Prefect module the helper uses: how a sync body is stopped, and shielded.

`WatcherThreadCancelScope` is how Prefect itself stops sync code in a thread: its task
timeouts (`cancel_sync_after`, off the main thread) and the lease keeping of its own
`concurrency()` (prefect/concurrency/_leases.py) inject Prefect's `CancelledError` into the
thread at its next Python instruction. `shield` is how a thread defers such an injection
until a call has returned. The helper stops a body whose lease is lost with the same scope,
and shields its calls to Prefect with the same shield, so that its stop and Prefect's own
timeouts share one mechanism: neither interrupts a request half sent, and the body sees the
exception Prefect's engine already knows (a cancellation, not a failure of the body).

Private means it may change in any release: checked against Prefect 3.9 (pyproject pins
prefect>=3.9,<3.10), and tests/helper/test_cancellation.py fails with a message saying what
changed if these names disappear, change their signature or stop behaving as used here.
"""

from __future__ import annotations

try:
    from prefect._internal.concurrency.cancellation import WatcherThreadCancelScope, shield
except ImportError as exc:  # a Prefect outside the pinned range
    import prefect

    raise ImportError(
        f"reslock needs prefect>=3.9,<3.10, whose private module "
        f"prefect._internal.concurrency.cancellation has WatcherThreadCancelScope and shield; "
        f"the installed Prefect {prefect.__version__} does not ({exc})"
    ) from exc

__all__ = ["WatcherThreadCancelScope", "shield"]
