"""Sync Prefect's limits, holders and waiters now, and print a one-line summary."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from reslock_web.sync.run import sync_with_settings


class Command(BaseCommand):
    help = "Read every Prefect concurrency limit, its holders and waiters into reslock's tables."

    def handle(self, *args: object, **options: object) -> None:
        # Progress (a first sync's read of past events) on stderr: stdout keeps one line.
        run = sync_with_settings(progress=self.stderr.write)
        if run is None:
            self.stdout.write("another sync is running; nothing done")
            return
        if run.outcome == "failed":
            raise CommandError(run.summary())
        self.stdout.write(run.summary())
