"""What an operator reads: the board's rows and banner, and /metrics as Prometheus scrapes it."""

from __future__ import annotations

import re
import uuid

from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

METRICS_TOKEN = "metrics-" + uuid.uuid4().hex  # the `token` fixture turns /metrics on with it


def row_names(html: str) -> list[str]:
    """The resource names of a board page's rows, in order."""
    return re.findall(r'<th scope="row" class="resource">\s*<a href="[^"]*">([^<]*)</a>', html)


def banner(client) -> str:
    html = client.get(reverse("board")).content.decode()
    return html.split('id="banner"', 1)[1].split("</div>", 1)[0]


def scrape(client, token: str = METRICS_TOKEN):
    """/metrics as Prometheus asks for it: the response."""
    return client.get("/metrics", headers={"Authorization": f"Bearer {token}"})


def samples(response) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the text format, as Prometheus parses it."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def unlabelled(client, token: str) -> dict[str, float]:
    """{sample name: value} of the unlabelled samples, as Prometheus parses them."""
    response = scrape(client, token)
    assert response.status_code == 200, response.content[:300]
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
        if not sample.labels
    }
