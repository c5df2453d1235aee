"""Every limit name has a URL that a browser sends back unchanged, dot segments included."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import pytest
from django.urls import reverse

from tests.support.board_data import make_limit

NAMES = [
    ".",
    "..",
    "tag:x/../../operate/release/victim",
    "a/./b",
    "../..",
    "...",
    ".hidden/",
    "%2E",
    "%2E%2E",
    "%2E/%2E%2E%2E",
    "%2e",
    "x/%2E/..",
]
DOT_SEGMENTS = {".", "..", "%2e", "%2e%2e", ".%2e", "%2e."}


def as_a_browser_sends_it(url: str) -> str:
    """The path a browser requests for a link (RFC 3986 resolves `.` and `..`)."""
    return urlsplit(urljoin("http://board.example/resources/", url)).path


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("route", ["resource", "api-resource"])
def test_a_names_url_has_no_segment_a_browser_would_resolve(name, route):
    url = reverse(route, args=[name])
    assert not DOT_SEGMENTS & {segment.lower() for segment in url.split("/")}, url
    assert as_a_browser_sends_it(url) == url


@pytest.mark.django_db
def test_every_name_opens_its_own_page_and_operation_form(operator_client):
    for name in NAMES:
        make_limit(name)
    for name in NAMES:
        page = operator_client.get(as_a_browser_sends_it(reverse("resource", args=[name])))
        assert page.status_code == 200, name
        assert page.context["limit"].name == name
        api = operator_client.get(as_a_browser_sends_it(reverse("api-resource", args=[name])))
        assert api.status_code == 200 and api.json()["name"] == name
        form = operator_client.get(
            as_a_browser_sends_it(reverse("operate", args=["deactivate", name]))
        )
        assert form.status_code == 200, name
        assert name in form.content.decode() or "&" in name
