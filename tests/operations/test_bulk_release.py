"""The bulk release releases exactly what its preview showed, with the operator's own reason."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from reslock_web.models import Condition, Holder, Limit, Operation
from tests.support.board_data import make_holder, make_limit, settle

pytestmark = pytest.mark.django_db


def stale_tag(name: str) -> tuple[Limit, Holder]:
    limit = make_limit(f"tag:{name}")
    holder = make_holder(
        limit,
        key=f"{name}-holder",
        source="tag_lease",
        condition=Condition.STALE,
        task_run_id=uuid.uuid4(),
        flow_run_id=uuid.uuid4(),
        task_run_name=f"{name}-run",
        state_type="COMPLETED",
        state_name="Completed",
        acquired_at=timezone.now() - timedelta(hours=2),
    )
    return settle(limit), holder


def preview_form(client, url: str = "/operate/bulk-release?status=stale") -> dict[str, list[str]]:
    html = client.get(url).content.decode()
    form: dict[str, list[str]] = {}
    for name, value in re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', html):
        form.setdefault(name, []).append(value)
    return form


def test_the_confirmation_releases_only_the_holders_the_preview_listed(operator_client):
    stale_tag("bulk-seen-a")
    stale_tag("bulk-seen-b")
    form = preview_form(operator_client)
    late, _ = stale_tag("bulk-appeared-later")  # went stale after the operator looked
    answer = operator_client.post("/operate/bulk-release", {**form, "reason": "cleanup"})
    assert answer.status_code == 302
    released = set(Operation.objects.values_list("limit_name", flat=True))
    assert released == {"tag:bulk-seen-a", "tag:bulk-seen-b"}
    assert not Operation.objects.filter(limit=late).exists()


def test_a_previewed_holder_that_changed_is_left_alone_and_the_page_says_so(operator_client):
    stale_tag("bulk-keep")
    changing, holder = stale_tag("bulk-changes")
    form = preview_form(operator_client)
    holder.delete()  # it left meanwhile
    answer = operator_client.post(
        "/operate/bulk-release", {**form, "reason": "cleanup"}, follow=True
    )
    assert list(Operation.objects.values_list("limit_name", flat=True)) == ["tag:bulk-keep"]
    assert "1 holder(s) of the preview changed meanwhile" in answer.content.decode()


def test_a_link_cannot_pre_fill_the_audit_reason(operator_client):
    stale_tag("bulk-reason")
    url = "/operate/bulk-release?status=stale&reason=Approved+by+CTO"
    assert "Approved by CTO" not in operator_client.get(url).content.decode()
    form = preview_form(operator_client, url)
    answer = operator_client.post(url, form)  # the reason only in the query string
    assert answer.status_code == 400
    assert "Say why" in answer.content.decode()
    assert not Operation.objects.exists()
