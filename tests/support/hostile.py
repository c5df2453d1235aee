"""Generated hostile input, shared by the property tests: how much Hypothesis tries, and how a
generated name travels in a URL path."""

from __future__ import annotations

from urllib.parse import quote_from_bytes

from django.conf import settings as django_settings
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis caches what it learns under a folder of its own: keep it out of the tree.
set_hypothesis_home_dir(str(django_settings.VAR_DIR / "hypothesis"))

hypothesis_settings = settings(
    max_examples=60,
    deadline=None,
    database=None,  # no example folder in the working tree; failures print their example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def raw(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def path_segment(name: str | bytes) -> str:
    # Slashes stay slashes (the <path:> converter takes them); everything else is escaped.
    return quote_from_bytes(raw(name), safe="/")
