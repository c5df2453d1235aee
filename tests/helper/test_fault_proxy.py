"""The fault proxy's "drop" is a request Prefect carried out and whose answer was lost.

The helper's lost-answer tests rely on it: had the proxy dropped a refusal (Prefect busy, or the
limit full), there would be no orphan lease behind the lost answer, and the helper would get in
at its next try instead of waiting behind one.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.fault_proxy import FaultProxy
from tests.support.operating import unique
from tests.support.patient import patient_client
from tests.support.prefect_limits import gcl

INCREMENT = "/v2/concurrency_limits/increment-with-lease"


def test_a_drop_skips_the_requests_prefect_refused_and_takes_the_first_it_carried_out(
    prefect_server,
):
    name = unique("proxy-drop")
    proxy = FaultProxy(prefect_server.api_url)
    body = {"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": 60}
    try:
        with (
            patient_client(prefect_server.api_url) as direct,
            httpx.Client(base_url=proxy.url, timeout=30) as through,
        ):
            direct.post("/v2/concurrency_limits/", json={"name": name, "limit": 1})
            first = direct.post(INCREMENT, json=body).json()["lease_id"]
            proxy.route("/increment-with-lease", "drop", times=1)
            # The limit is full: Prefect refuses, and its refusal is passed on.
            assert through.post(INCREMENT, json=body).status_code == 423
            direct.post("/v2/concurrency_limits/decrement-with-lease", json={"lease_id": first})
            assert gcl(direct, name)["active_slots"] == 0
            # Now Prefect grants it, and the answer never comes.
            with pytest.raises(httpx.RemoteProtocolError):
                through.post(INCREMENT, json=body)
            assert gcl(direct, name)["active_slots"] == 1
            # The drop was for one request only: the next is answered (the orphan fills it).
            assert through.post(INCREMENT, json=body).status_code == 423
    finally:
        proxy.close()
