"""The helper (reslock/lock.py) called from the test process itself."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.support.prefect_server import PrefectServer


@contextmanager
def helper_talks_to(server: PrefectServer) -> Iterator[None]:
    """The helper's calls and events go to `server`; its events are sent before it stops."""
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield
        off_the_loop(lambda: EventsWorker.drain_all(timeout=10))


def off_the_loop(body: Callable[[], object]) -> object:
    """Run `body` in a thread of its own, with this context (Prefect's settings): after a
    browser test, Playwright leaves an event loop running in the main thread, where a sync
    `resource_lock` rightly refuses to run."""
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(context.run, body).result()
