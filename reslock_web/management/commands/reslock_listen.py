"""Follow Prefect's event stream and apply lock changes to the board as they happen."""

from __future__ import annotations

import asyncio
import signal

from django.core.management.base import BaseCommand

from reslock_web.sync.listener import Listener


class Command(BaseCommand):
    help = "Listen to Prefect's events and update holders and waiters within a second."

    def handle(self, *args: object, **options: object) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        listener = Listener()
        self.stdout.write(f"listening to {listener.api_url}")
        await listener.run(stop)
        self.stdout.write("stopped")
