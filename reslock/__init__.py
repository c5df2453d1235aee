"""reslock's flow-side helper: guard a resource from Prefect flows, visible on the board.

    from reslock import guarded, resource_lock

It needs Prefect only: `pip install <reslock>` on a flow worker brings Prefect and this
package, nothing of the board (whose own dependencies come with the `board` extra). See
reslock/lock.py for what a lock does, reslock/protocol.py for what it tells the board.
"""

from reslock.lock import (
    Hold,
    ResourceLock,
    ResourceLockLost,
    ResourceLockMisconfigured,
    ResourceLockTimeout,
    guarded,
    held_names,
    resource_lock,
    validate_name,
)

__all__ = [
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
