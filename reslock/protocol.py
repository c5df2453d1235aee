"""The contract between the flow-side helper and the board: event names, payloads, leases.

The helper (reslock/lock.py) emits these events to Prefect; the board (reslock_web) reads them
back to show who holds and who waits, and its fenced release relies on the `stopping` promise
below. Both sides import the names from here, so that they cannot drift apart.

One event per limit; a lock on several names emits one per limit, each naming the other
limits as related resources with role "concurrency-limit". The event's resource is
{"prefect.resource.id": "prefect.concurrency-limit.<limit id>", "prefect.resource.name":
<limit name>}; inside a run Prefect adds the flow-run, task-run and flow (and deployment,
work pool...) related resources.

    reslock.lock.waiting    the first try found the limit full; payload wait_id, names,
                            lease_duration, holder, timeout, host, pid
    reslock.lock.acquired   payload lease_id (what the board revokes: decrement-with-lease),
                            lease_duration, wait_id, holder, names, waited_seconds,
                            protocol (PROTOCOL), process (who holds it, see process.py;
                            absent without /proc)
    reslock.lock.stopping   the lease was lost and the block (or a borrower) is still inside:
                            at once, then every STOPPING_PERIOD_SECONDS; payload lease_id,
                            wait_id, names, reason, lost_seconds
    reslock.lock.released   payload lease_id, wait_id, names, held_seconds, reason: exit |
                            error | cancelled | lease_lost (sent once the body and its
                            borrowers have really stopped)
    reslock.lock.timed_out  `timeout=` expired; no slot is held; payload wait_id, timeout,
                            names, waited_seconds

`follows` links waiting -> acquired -> released of the same limit, but Prefect drops it when
the two are more than 5 minutes apart: match them on `wait_id` and `lease_id` instead.
"""

from __future__ import annotations

EVENT_PREFIX = "reslock.lock."
EVENT_WAITING = "reslock.lock.waiting"
EVENT_ACQUIRED = "reslock.lock.acquired"
EVENT_RELEASED = "reslock.lock.released"
EVENT_TIMED_OUT = "reslock.lock.timed_out"
# The promise the board's fenced release keeps a revoked holder's resource closed on: an
# acquired payload with "protocol": PROTOCOL promises that, once the lease is lost and while
# the block or one of its borrowers has not exited, the helper emits EVENT_STOPPING at once
# and then every STOPPING_PERIOD_SECONDS (one event per limit), and that EVENT_RELEASED
# (reason lease_lost) comes only after all of them have really stopped. Silence after
# EVENT_STOPPING is evidence of a dead process.
EVENT_STOPPING = "reslock.lock.stopping"
STOPPING_PERIOD_SECONDS = 5.0
PROTOCOL = 2

# Leases, as the helper takes them (Prefect's bounds).
DEFAULT_LEASE_SECONDS = 60.0
MIN_LEASE_SECONDS = 60.0  # Prefect refuses shorter leases (422)
MAX_LEASE_SECONDS = 86400.0
RENEWAL_FRACTION = 0.75  # renewed like Prefect's own: every 0.75 x the lease


def lease_length(lease_seconds: float | None) -> float:
    """A holder's lease, or the helper's default when its acquired event did not say."""
    return lease_seconds or DEFAULT_LEASE_SECONDS


def renews_every(lease_seconds: float | None) -> float:
    """How often a holder renews a lease of this length (the helper's default when unknown):
    a revoke is noticed at the latest this long after it, plus one request."""
    return lease_length(lease_seconds) * RENEWAL_FRACTION
