"""Operating from the board in tests: sync the real Prefect, post a confirmation form as a
browser would, and wait for the worker's outcome."""

from __future__ import annotations

import re
import uuid

from reslock_web.models import Limit, Operation
from reslock_web.prefect_api import PrefectAPI
from reslock_web.sync import sync_all
from tests.support.net import wait_for


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sync(server) -> None:
    with PrefectAPI(server.api_url) as api:
        run = sync_all(api)
    assert run is not None and run.ok, run and run.error


def sync_until(server, name, check, timeout=30):
    def attempt():
        sync(server)
        limit = Limit.objects.named(name)
        return limit if limit and check(limit) else None

    return wait_for(attempt, timeout, interval=0.5, what=f"{name} to match")


def form(client, url: str) -> dict[str, str]:
    """The hidden fields of the confirmation page, as a browser would post them back."""
    html = client.get(url).content.decode()
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))


def finished(operation_id: int, timeout: float = 60) -> Operation:
    return wait_for(
        lambda: (op := Operation.objects.get(pk=operation_id)).finished and op,
        timeout,
        what=f"operation {operation_id} to finish",
    )
