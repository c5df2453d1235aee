"""The live listener as a process of its own (`manage.py reslock_listen`), for the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Q

from reslock_web.models import Heartbeat
from tests.support.net import wait_for
from tests.support.paths import BASE_DIR


class ListenerProcess:
    def __init__(self, server, **extra_env: str) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PREFECT_API_URL": server.api_url,
            "DATABASE_URL": f"sqlite:///{connection.settings_dict['NAME']}",
            **extra_env,
        }
        # A file, not a pipe: a listener that logs a lot must never block on a full pipe.
        self.log = tempfile.NamedTemporaryFile(prefix="reslock-listener-", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "reslock_listen"],
            cwd=BASE_DIR,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: (
                (beat := Heartbeat.objects.filter(service="listener").first())
                and beat.pid == self.process.pid
                and beat.detail.get("connected")
            ),
            60,
            what="the listener to connect",
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)


@dataclass(frozen=True)
class QuietChanges:
    """A limit nobody holds, created and then changed while listeners ran."""

    name: str
    since: datetime
    last_event: datetime  # the newest of its events in Prefect
    events: int  # the creation, then each change


def change_a_quiet_limit(server, changes: int = 3) -> QuietChanges:
    """Create a limit, then change it `changes` times, each change on the board before the
    next (so that one re-sync cannot cover two), and wait until Prefect's REST API has all
    their events (a listener that reconnects is sent them again from there)."""
    from django.utils import timezone
    from django.utils.dateparse import parse_datetime

    from reslock_web.models import Limit
    from tests.support.patient import patient_client
    from tests.support.prefect_events import limit_resource, prefect_events

    name = f"db-quiet-{os.urandom(4).hex()}"
    since = timezone.now()
    with patient_client(server.api_url) as http:
        http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1}).raise_for_status()
        wait_for(lambda: Limit.objects.named(name), 60, what=f"{name} on the board")
        limit_id = http.get(f"/v2/concurrency_limits/{name}").json()["id"]
        for value in range(2, 2 + changes):
            http.patch(f"/v2/concurrency_limits/{name}", json={"limit": value}).raise_for_status()
            wait_for(
                lambda value=value: Limit.objects.named(name).limit == value,
                60,
                what=f"{name}'s limit {value} on the board",
            )
        events = wait_for(
            lambda: (
                (
                    found := prefect_events(
                        http,
                        ["prefect.concurrency-limit.created", "prefect.concurrency-limit.updated"],
                        [limit_resource(limit_id)],
                    )
                )
                and len(found) == 1 + changes
                and found
            ),
            60,
            interval=0.5,
            what=f"the events of {name} in Prefect",
        )
    last = max(parse_datetime(event["occurred"]) for event in events)
    return QuietChanges(name, since, last, 1 + changes)


def assert_each_applied_once(quiet: QuietChanges, pids: list[int]) -> None:
    """Each event of the quiet limit re-synced it once, whichever listener got it first.

    That is the effect a second application would repeat: a listener that applied an event
    again (one another listener applied, or one replayed to it) re-syncs once more for it. The
    ids the database keeps unique (applied events, lock events) cannot show this: a second
    application is refused there, or never tried, and either way leaves one row."""
    from django.utils.dateparse import parse_datetime

    from reslock_web.models import SyncRun

    # Every listener has had the last event (applied, or found applied already): each reports
    # the newest event it handled with its beat, and a second application comes with it.
    seen: set[int] = set()

    def everyone_had_it() -> bool:
        beat = Heartbeat.objects.get(service="listener")
        at = parse_datetime(beat.detail.get("last_event_at") or "")
        if at is not None and at >= quiet.last_event:
            seen.add(beat.pid)
        return seen >= set(pids)

    wait_for(everyone_had_it, 60, interval=0.1, what="every listener to have the last event")
    wait_for(
        lambda: (
            not SyncRun.objects.filter(passes_over(quiet.name), finished_at__isnull=True).exists()
        ),
        60,
        what=f"the re-syncs of {quiet.name} to end",
    )
    resyncs = SyncRun.objects.filter(passes_over(quiet.name), ok=True, started_at__gte=quiet.since)
    assert resyncs.count() == quiet.events, (resyncs.count(), quiet.events)


def passes_over(name: str) -> Q:
    """The passes whose scope names `name`: alone, or among the limits of one flush (a pass
    over several limits names them all, ", "-separated)."""
    return (
        Q(scope=name)
        | Q(scope__startswith=f"{name}, ")
        | Q(scope__endswith=f", {name}")
        | Q(scope__contains=f", {name}, ")
    )
