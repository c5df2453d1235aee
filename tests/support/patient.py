"""HTTP to the test's Prefect server that rides out its "database is busy" answers.

Prefect on SQLite answers 503 when concurrent writers collide, which a loaded 2-core machine
makes likely. Test set-up calls (creating limits, raw increments) wait and send again; what
reslock itself does on a 503 is tested where that is the point.
"""

from __future__ import annotations

import time

import httpx


class PatientTransport(httpx.HTTPTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(10):
            response = super().handle_request(request)
            if response.status_code != 503 or attempt == 9:
                return response
            response.read()
            response.close()
            time.sleep(min(0.1 * 2**attempt, 2.0))
        return response


def patient_client(base_url: str, **options: object) -> httpx.Client:
    return httpx.Client(base_url=base_url, transport=PatientTransport(), **options)
