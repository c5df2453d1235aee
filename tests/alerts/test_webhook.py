"""The webhook: a resource entering or leaving a bad status reaches RESLOCK_WEBHOOK_URL once,
as Slack-compatible JSON, through failures of the receiver.

The receiver is a real HTTP server in the test; the changes come from real syncs of a real
Prefect server (a stale tag holder made by a real flow, then released by a real operation), and
the posts are made by a real Celery worker running beat's `reslock.notify`.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from reslock_web.alerts import webhook
from reslock_web.celery import app
from reslock_web.models import Condition, OperationKind, OperationStatus, Status, StatusChange
from reslock_web.operations.requests import request_operation
from tests.support.board_data import make_limit
from tests.support.net import wait_for
from tests.support.operating import finished, sync_until, unique

pytestmark = pytest.mark.django_db(transaction=True)


class Receiver:
    """An HTTP endpoint that answers `failures` 500s to each change first, then 200s, and
    keeps every body (other changes of this worker's Prefect may arrive too: `of` picks one)."""

    def __init__(self, failures: int = 0) -> None:
        self.bodies: list[dict] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen = sum(1 for earlier in receiver.bodies if earlier["id"] == body["id"])
                status = 500 if seen < receiver.failures else 200
                body["answer"] = status
                receiver.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, change_id: int) -> list[dict]:
        return [body for body in self.bodies if body["id"] == change_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    found = Receiver(failures=2)
    settings.WEBHOOK_URL = found.url
    settings.BOARD_URL = "https://reslock.example.org"
    yield found
    found.close()


def beat_until(check, timeout: float, what: str):
    """Send `reslock.notify` every second, as beat does every 10 s, until `check` holds."""

    def tick():
        app.send_task("reslock.notify")
        return check()

    return wait_for(tick, timeout, interval=1, what=what)


def test_a_stale_holder_is_announced_once_through_failures_and_its_release_too(
    receiver, prefect_server, flows, celery_worker, operator
):
    tag = unique("resource:hook")
    stale = flows.start("tag_holder", tag=tag, reset_override=True, hold=0.5, flow_run_name="ended")
    assert stale.wait(timeout=90) == 0
    limit = sync_until(prefect_server, f"tag:{tag}", lambda limit: limit.is_stale)
    [change] = StatusChange.objects.filter(limit=limit)
    assert change.status == Status.STALE
    # The receiver fails twice: the third try, after the back-off, is the one that counts.
    beat_until(
        lambda: StatusChange.objects.get(pk=change.pk).sent_at, 90, "the change to be accepted"
    )
    # Tried again after each failure, until a 2xx. A post whose answer was lost (a timeout on
    # a loaded machine) is posted again: delivery is at least once, and `id` names the change.
    answers = [body["answer"] for body in receiver.of(change.pk)]
    assert answers[:2] == [500, 500] and set(answers[2:]) == {200}, answers
    tried = StatusChange.objects.get(pk=change.pk).attempts
    assert tried == len(answers), (tried, answers)
    body = receiver.of(change.pk)[-1]
    assert body["text"].startswith(f"reslock: tag:{tag} is stale")
    assert "<https://reslock.example.org/resources/tag%3A" in body["text"]
    assert body["status"] == "stale" and body["bad"] is True and body["resource"] == f"tag:{tag}"

    holder = limit.holders.get(condition=Condition.STALE)
    operation = request_operation(
        kind=OperationKind.RELEASE_HOLDER,
        limit=limit,
        holder=holder,
        user=operator,
        reason="task over, slot stuck",
    )
    assert finished(operation.pk, 90).status == OperationStatus.SUCCEEDED
    left = wait_for(
        lambda: StatusChange.objects.filter(limit=limit, previous=Status.STALE).first(),
        30,
        what="the release to be recorded",
    )
    beat_until(lambda: StatusChange.objects.get(pk=left.pk).sent_at, 60, "the release's message")
    assert receiver.of(left.pk)[-1]["text"].startswith(
        f"reslock: tag:{tag} is no longer stale: now"
    )
    assert receiver.of(left.pk)[-1]["bad"] is False
    posts = len(receiver.bodies)
    for _ in range(3):  # later ticks find nothing due
        app.send_task("reslock.notify")
    wait_for(lambda: celery_idle(), 30, what="the worker to be idle")
    assert len(receiver.bodies) == posts  # nothing after each change was accepted


def celery_idle() -> bool:
    active = app.control.inspect(timeout=1).active() or {}
    return all(not tasks for tasks in active.values())


def test_only_news_is_recorded_and_nothing_at_all_without_a_webhook(settings):
    assert webhook.newsworthy("held", "stale") and webhook.newsworthy("stale", "zombie")
    assert webhook.newsworthy("stale", "held") and webhook.newsworthy("", "drift")
    assert not webhook.newsworthy("held", "contended") and not webhook.newsworthy("", "free")
    assert not webhook.newsworthy("stale", "stale")
    settings.WEBHOOK_URL = ""
    limit = make_limit("db-quiet", is_held=True, is_stale=True)
    webhook.record(limit, "held")
    assert not StatusChange.objects.exists()
    settings.WEBHOOK_URL = "http://127.0.0.1:9/hook"
    webhook.record(limit, "held")
    webhook.record(limit, "stale")  # no change: no news
    assert StatusChange.objects.count() == 1


def test_a_change_is_claimed_by_one_worker_and_given_up_after_its_last_try(settings, caplog):
    settings.WEBHOOK_URL = "http://127.0.0.1:9/hook"  # nothing listens on the discard port
    limit = make_limit("db-dead-end", has_zombie=True)
    webhook.record(limit, "held")
    change = StatusChange.objects.get()
    now = timezone.now()
    assert StatusChange.objects.claim(change.pk, now, seconds=30)
    assert not StatusChange.objects.claim(change.pk, now, seconds=30)  # a second worker
    StatusChange.objects.filter(pk=change.pk).update(claimed_until=None)
    for attempt in range(1, webhook.MAX_ATTEMPTS + 1):
        assert webhook.deliver_due(now) == 0
        change.refresh_from_db()
        assert change.attempts == attempt and change.sent_at is None
        assert webhook.deliver_due(now) == 0 and change.attempts == attempt  # not yet due again
        now = change.next_try_at + timedelta(seconds=1)
    assert change.given_up and "ConnectError" in change.last_error
    assert "gave up" in caplog.text
    assert webhook.deliver_due(now + timedelta(hours=1)) == 0
    assert StatusChange.objects.get().attempts == webhook.MAX_ATTEMPTS
