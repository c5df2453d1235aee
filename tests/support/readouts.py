"""What an operator reads of the sync's health: the board's banner and /metrics."""

from __future__ import annotations

from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families


def banner(client) -> str:
    html = client.get(reverse("board")).content.decode()
    return html.split('id="banner"', 1)[1].split("</div>", 1)[0]


def scrape(client, token: str) -> dict[str, float]:
    """{sample name: value} of the unlabelled samples, as Prometheus parses them."""
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.content[:300]
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
        if not sample.labels
    }
