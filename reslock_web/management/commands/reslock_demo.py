"""Fill the local Prefect server with resources and real flows that use them, until stopped."""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
from types import FrameType

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from reslock_web.demo import LOCAL_PREFECT_ENV, is_local_prefect
from reslock_web.demo.catalog import NAME_RULE
from reslock_web.demo.controller import Demo
from reslock_web.prefect_io.api import PrefectAPI, PrefectError


def _count(value: str) -> int:
    if not value.strip().isdigit() or not 1 <= int(value) <= 10_000:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 10000, not {value!r}")
    return int(value)


class Command(BaseCommand):
    help = (
        "Demo data for the board: creates ~300 resources in Prefect and keeps real flows holding, "
        "queueing for, leaking, crashing on and deadlocking over some of them until stopped "
        "(SIGTERM or Ctrl-C). Only against the local Prefect server `make run` started, unless "
        "--force."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force",
            action="store_true",
            help="run even though PREFECT_API_URL is not the Prefect server `make run` started",
        )
        parser.add_argument(
            "--resources",
            type=_count,
            default=300,
            metavar="N",
            help="how many limits to create (1-10000, default 300)",
        )
        parser.add_argument(
            "--prefix",
            default="",
            help="put before every name the demo creates (to keep several demos apart)",
        )

    def handle(self, *args: object, **options: object) -> None:
        api_url = settings.PREFECT_API_URL
        if not options["force"] and not is_local_prefect(api_url, os.environ):
            raise CommandError(
                f"refusing to fill {api_url} with demo data: it is not the local Prefect server "
                f"`make run` started ({LOCAL_PREFECT_ENV} does not name it); use --force to do it "
                "anyway",
                returncode=2,
            )
        prefix = str(options["prefix"])
        if prefix and not NAME_RULE.match(prefix):
            raise CommandError(
                f"--prefix {prefix!r} may not contain / % & < or >: Prefect refuses such names",
                returncode=2,
            )

        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.stdout.write(f"reslock demo against {api_url}; SIGTERM or Ctrl-C stops it")
        with PrefectAPI.for_url(api_url) as api:
            demo = Demo(
                api=api,
                api_url=api_url,
                api_key=settings.PREFECT_API_KEY,
                home=settings.VAR_DIR / "demo",
                stop=stop,
                prefix=prefix,
                resources=int(options["resources"]),
                rng=random.Random(),
            )
            try:
                demo.run()
            except PrefectError as error:
                raise CommandError(f"demo stopped: {error}") from None
        self.stdout.write("reslock demo stopped")
