"""`reslock.lock` is the helper's public address: flows, pickled results and the board import
from it, whichever module of the `reslock` package defines a name."""

from __future__ import annotations

import pickle
import uuid

import cloudpickle
import pytest

from reslock import lock

# What flows, the tests, the benchmarks and the board read from reslock.lock.
USED = [
    "resource_lock",
    "guarded",
    "ResourceLock",
    "Hold",
    "held_names",
    "validate_name",
    "ResourceLockTimeout",
    "ResourceLockLost",
    "ResourceLockMisconfigured",
    "EVENT_WAITING",
    "EVENT_ACQUIRED",
    "EVENT_STOPPING",
    "EVENT_RELEASED",
    "EVENT_TIMED_OUT",
    "PROTOCOL",
    "STOPPING_PERIOD_SECONDS",
    "RENEWAL_FRACTION",
    "DEFAULT_LEASE_SECONDS",
    "LOST_MARGIN",
    "MAX_RETRY_WAIT",
]

ERRORS = [
    lock.ResourceLockTimeout(("db-1", "db-2"), 30.0, {"db-1": "task run 'copy' (42)"}),
    lock.ResourceLockLost(("db-1",), uuid.uuid4(), "the lease was revoked"),
    lock.ResourceLockMisconfigured("db-1", 1, ("allows 2 holders at once",)),
]


def fields(error: BaseException) -> tuple:
    return (type(error), str(error), error.__reduce__()[1])


def test_every_name_in_use_is_still_importable_from_reslock_lock() -> None:
    missing = [name for name in USED if not hasattr(lock, name)]
    assert missing == []
    from reslock_web import lock as old_address

    assert [getattr(old_address, name) for name in lock.__all__] == [
        getattr(lock, name) for name in lock.__all__
    ]


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
@pytest.mark.parametrize("pickler", [pickle, cloudpickle], ids=["pickle", "cloudpickle"])
def test_an_error_pickles_under_its_public_address(error: BaseException, pickler) -> None:
    data = pickler.dumps(error)
    # Pickled by reference to its class: under the address users import it from, so that a
    # result pickled today still loads when the class moves inside the package.
    assert b"reslock.lock" in data and b"reslock.errors" not in data
    assert fields(pickle.loads(data)) == fields(error)
