"""Read events back from the test's Prefect server (POST /events/filter, every page)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx


def prefect_events(
    api: httpx.Client, names: list[str], resource_ids: list[str] | None = None
) -> list[dict]:
    """Events of the last hour with these names (optionally on these resources), oldest first."""
    now = datetime.now(UTC)
    query: dict[str, Any] = {
        "occurred": {
            "since": (now - timedelta(hours=1)).isoformat(),
            "until": (now + timedelta(minutes=5)).isoformat(),
        },
        "event": {"name": names},
        "order": "ASC",
    }
    if resource_ids is not None:
        query["resource"] = {"id": resource_ids}
    response = api.post("/events/filter", json={"filter": query, "limit": 50})
    response.raise_for_status()
    page = response.json()
    found = list(page["events"])
    while page.get("next_page"):
        response = api.get(page["next_page"])
        response.raise_for_status()
        page = response.json()
        found += page["events"]
    return found


def occurred(event: dict) -> float:
    """When the event happened (stamped by the emitting process), as time.time()."""
    return datetime.fromisoformat(event["occurred"]).timestamp()


def limit_resource(limit_id: str) -> str:
    return f"prefect.concurrency-limit.{limit_id}"


def emit(api_url: str, events: list[dict]) -> None:
    """Send events to Prefect as a client does (its events socket), with the times they carry."""
    import asyncio
    import threading

    from prefect.events.clients import PrefectEventsClient
    from prefect.events.schemas.events import Event

    async def send() -> None:
        async with PrefectEventsClient(api_url=api_url) as client:
            for event in events:
                await client.emit(Event.model_validate(event))

    # In a thread of its own: the caller may be running an event loop (Playwright's).
    thread = threading.Thread(target=asyncio.run, args=(send(),))
    thread.start()
    thread.join()


def lock_event_in_prefect(
    api: httpx.Client,
    name: str,
    limit_id: str,
    *,
    lease_id: str | None = None,
    flow_run_id: str | None = None,
    timeout: float = 60,
) -> dict:
    """Wait until Prefect's REST API returns this lock event of that limit (of that lease, or
    of that flow run), and return it. Prefect stores events in batches, a few seconds after
    they were sent (more on a loaded machine)."""
    from tests.support.net import wait_for

    def found() -> dict | None:
        for event in prefect_events(api, [name], [limit_resource(limit_id)]):
            if lease_id is not None and event["payload"].get("lease_id") != lease_id:
                continue
            runs = [
                item["prefect.resource.id"].rsplit(".", 1)[-1]
                for item in event["related"]
                if item["prefect.resource.role"] == "flow-run"
            ]
            if flow_run_id is not None and flow_run_id not in runs:
                continue
            return event
        return None

    return wait_for(  # type: ignore[return-value]
        found, timeout, interval=0.5, what=f"{name} of {lease_id or flow_run_id} in Prefect"
    )
