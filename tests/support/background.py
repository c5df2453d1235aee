"""The helper's slow scenarios (each waits a minute or so for a lease to run out or for a
renewal) run in threads while the other tests of their module run.

    with scenarios_in_background(prefect_server, tmp_path_factory, "helper-scenario") as start:
        yield {"kill": start(kill_scenario), "renew": start(renew_scenario, extra_argument)}

`start(scenario, *extra)` calls `scenario(runner, api, stop, *extra)` in a thread, with a
FlowRunner and a Prefect client (httpx) of its own, and gives back its Future. At the end
`stop` is set (a scenario still polling gives up), every flow process is stopped and every
client closed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from tests.support.flows import FlowRunner
from tests.support.patient import patient_client
from tests.support.prefect_server import PrefectServer


@contextmanager
def scenarios_in_background(
    server: PrefectServer, tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[Callable[..., Future]]:
    stop = threading.Event()
    runners: list[FlowRunner] = []
    clients: list[httpx.Client] = []
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix=name)

    def start(scenario: Callable[..., dict], *extra: object) -> Future:
        runner = FlowRunner(server, tmp_path_factory.mktemp(scenario.__name__))
        client = patient_client(server.api_url, timeout=30)
        runners.append(runner)
        clients.append(client)
        return pool.submit(scenario, runner, client, stop, *extra)

    try:
        yield start
    finally:
        stop.set()
        for runner in runners:
            runner.stop_all()
        pool.shutdown(wait=True)
        for client in clients:
            client.close()
