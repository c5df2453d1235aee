"""Fixtures of the helper's tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.patient import patient_client
from tests.support.prefect_server import PrefectServer


@pytest.fixture
def api(prefect_server: PrefectServer) -> Iterator[httpx.Client]:
    """Prefect's REST API, read directly (httpx), the way reslock reads it."""
    with patient_client(prefect_server.api_url, timeout=30) as client:
        yield client
