"""Prefect's concurrency limits, made and read straight over its REST API (httpx), as the tests
set them up and check them; and the lease times Prefect keeps, which the helper's tests wait on.
"""

from __future__ import annotations

import httpx

from reslock import lock
from tests.support.patient import patient_client

LEASE = 60  # Prefect's shortest lease: the helper renews it every 45 s
RENEWAL = LEASE * lock.RENEWAL_FRACTION
REPOSSESS = 15  # Prefect's repossessor frees an expired lease within this


def create_limits(server, names: list[str]) -> list[str]:
    """A limit of 1 for each name: a tag's (`tag:<tag>`) or a global one; the names back."""
    with patient_client(server.api_url, timeout=10) as http:
        for name in names:
            if name.startswith("tag:"):
                body = {"tag": name.removeprefix("tag:"), "concurrency_limit": 1}
                http.post("/concurrency_limits/", json=body).raise_for_status()
            else:
                http.post(
                    "/v2/concurrency_limits/", json={"name": name, "limit": 1}
                ).raise_for_status()
    return names


def gcl(api: httpx.Client, name: str) -> dict:
    """The global concurrency limit `name`, as Prefect shows it."""
    response = api.get(f"/v2/concurrency_limits/{name}")
    response.raise_for_status()
    return response.json()


def slots(api: httpx.Client, name: str) -> int:
    """The slots Prefect counts taken on `name`."""
    return gcl(api, name)["active_slots"]
