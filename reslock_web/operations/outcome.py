"""What every operation's steps share: the limit re-read first, and how a step says it is
done with nothing to do (`Skip`) or cannot be done (`Fail`)."""

from __future__ import annotations

import logging
from typing import Any

from reslock_web.models import (
    Operation,
    OperationKind,
    OperationStatus,
)
from reslock_web.prefect_io.api import PrefectAPI, PrefectError

log = logging.getLogger(__name__)


def limit_snapshot(info: Any) -> dict[str, Any]:
    if info is None:
        return {}
    return {"limit": info.limit, "active": info.active, "active_slots": info.active_slots}


# Operations that change a limit's settings; the others free slots.
CHANGES = {OperationKind.SET_LIMIT, OperationKind.ACTIVATE, OperationKind.DEACTIVATE}


class Skip(Exception):
    """Nothing to do any more (the holder left, the value is already there)."""


class Fail(Exception):
    """The change cannot be made, and trying again would not help."""


def skipping(handler):
    def wrapper(operation: Operation, api: PrefectAPI) -> tuple[str, str, dict[str, Any]]:
        try:
            return handler(operation, api)
        except Skip as skip:
            return OperationStatus.SKIPPED, f"Skipped: {skip}.", {}
        except Fail as fail:
            return OperationStatus.FAILED, f"Failed: {fail}; nothing was changed.", {}

    return wrapper


def current_limit(operation: Operation, api: PrefectAPI):
    info = api.read_limit(str(operation.limit.prefect_id))
    if info is None and operation.kind in CHANGES:
        # The change asked for cannot be made: that is a failure, not "nothing to do".
        raise Fail("the limit no longer exists in Prefect (it was deleted after this was asked)")
    if info is None:
        raise Skip("the limit no longer exists in Prefect, and its holders with it")
    return info


def read_quietly(api: PrefectAPI, operation: Operation):
    """The limit as Prefect shows it now, for the record; None if Prefect cannot say. After a
    change it is only that: a read refused (Prefect rate-limiting reslock, a 5xx) must not send
    a change that was made back for a retry, which would then find nothing to do."""
    try:
        return api.read_limit(str(operation.limit.prefect_id))
    except PrefectError:
        return None
