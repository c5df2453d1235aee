"""Operating from the board in tests: sync the real Prefect, post a confirmation form as a
browser would, and wait for the worker's outcome."""

from __future__ import annotations

import re
import uuid

from django.urls import reverse

from reslock_web.models import Condition, Limit, Operation, OperationKind, SyncRun
from reslock_web.prefect_io.api import PrefectAPI
from reslock_web.sync.run import sync_all
from tests.support.net import wait_for


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sync(server) -> SyncRun:
    """A complete sync of the test's Prefect server, which must succeed."""
    with PrefectAPI(server.api_url) as api:
        run = sync_all(api)
    assert run is not None and run.ok, run and run.error
    return run


def sync_until(server, name: str, check, timeout: float = 30, what: str = "") -> Limit:
    """Events reach Prefect's REST API a few seconds late: sync until the board shows it."""

    def attempt():
        sync(server)
        limit = Limit.objects.named(name)
        return limit if limit is not None and check(limit) else None

    return wait_for(attempt, timeout, interval=0.5, what=what or f"{name} to match")


def stale_tag(flows, server, tag: str) -> Limit:
    """A tag limit whose holder's run ended while Prefect still counts its slot (the run
    reset its tag with itself as the override: its lease outlives it), synced: stale."""
    run = flows.start(
        "tag_holder", tag=tag, reset_override=True, hold=0.5, flow_run_name=f"{tag}-ended"
    )
    assert run.wait(timeout=90) == 0

    def synced():
        with PrefectAPI(server.api_url) as api:
            sync_all(api)
        limit = Limit.objects.named(f"tag:{tag}")
        return limit if limit and limit.is_stale else None

    return wait_for(synced, 30, interval=0.5, what=f"tag:{tag} to be stale")


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


# --- the fenced release of a live helper holder ----------------------------------------
def holder_and_waiter(flows, server, name: str, **holder_params):
    holder = flows.start("helper_holder", name=name, flow_run_name="stuck-job", **holder_params)
    holder.wait_event("acquired")
    waiter = flows.start("helper_holder", name=name, flow_run_name="next-job")
    waiter.wait_event("want")
    limit = sync_until(
        server, name, lambda limit: limit.holder_count == 1 and limit.waiter_count == 1
    )
    return holder, waiter, limit


def ask_release(client, limit, reason: str = "job hangs") -> Operation:
    row = limit.holders.get(condition=Condition.HOLDING)
    url = reverse("operate", args=["release", limit.name]) + f"?holder={row.pk}"
    response = client.post(url, {**form(client, url), "reason": reason})
    assert response.status_code == 302, response.content.decode()[:2000]
    return Operation.objects.get(limit=limit, kind=OperationKind.RELEASE_HOLDER)


def status_becomes(operation: Operation, status: str, timeout: float) -> Operation:
    return wait_for(
        lambda: (op := Operation.objects.get(pk=operation.pk)).status == status and op,
        timeout,
        what=f"operation {operation.pk} to be {status}",
    )


def sweep_until_finished(operation: Operation, timeout: float) -> Operation:
    """Beat's sweep, sent every 2 s, as beat would every 30 s."""
    from reslock_web.celery import app

    def ended():
        app.send_task("reslock.sweep")
        op = Operation.objects.get(pk=operation.pk)
        return op.finished and op

    return wait_for(ended, timeout, interval=2, what=f"operation {operation.pk} to end")
