"""Scenario 5: a script (no flow) that takes a GCL slot through the lease-less REST call
POST /api/v2/concurrency_limits/increment and exits. The slot stays counted forever: nothing
holds it, no lease expires, no event names a holder (raw REST calls emit no events).

Params: name, limit (1), create (True), slots (1).
Events: process_started, limit_created {status}, acquired {name, status, body}, exited.
"""

from __future__ import annotations

from _common import api_url, emit, ensure_gcl, params, patient, run_main

P = params()


def main() -> None:
    name = P["name"]
    if P.get("create", True):
        emit("limit_created", name=name, status=ensure_gcl(name, int(P.get("limit", 1))))
    response = patient(
        "POST",
        f"{api_url()}/v2/concurrency_limits/increment",
        json={"names": [name], "slots": int(P.get("slots", 1)), "mode": "concurrency"},
        timeout=30,
    )
    emit("acquired", name=name, status=response.status_code, body=response.json())
    response.raise_for_status()


if __name__ == "__main__":
    run_main(main)
