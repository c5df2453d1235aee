"""Fixtures of the web tests."""

from __future__ import annotations

import pytest

from tests.support.readouts import METRICS_TOKEN


@pytest.fixture
def token(settings):
    """/metrics on, behind METRICS_TOKEN."""
    settings.METRICS_TOKEN = METRICS_TOKEN
    return METRICS_TOKEN
