"""Shared helpers for the flow scripts (plain Python, no Django).

Every script is started as `python <script>.py '<json params>'` by tests/support/flows.py with
PREFECT_API_URL pointing at the test server and RESLOCK_FLOW_EVENTS naming the events file.
Events are JSON lines `{"event": ..., "t": time.time(), "pid": ..., ...}` appended with a
single write(2) on an O_APPEND descriptor, so several processes may share one file.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

EVENTS_ENV = "RESLOCK_FLOW_EVENTS"
STOP = threading.Event()  # set when the process is asked to terminate (SIGTERM)


def params() -> dict[str, Any]:
    return json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}


def api_url() -> str:
    return os.environ["PREFECT_API_URL"].rstrip("/")


def emit(event: str, **fields: Any) -> None:
    path = fields.pop("events_file", None) or os.environ.get(EVENTS_ENV)
    if not path:
        return
    record = {"event": event, "t": time.time(), "pid": os.getpid(), **fields}
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def hold(
    release_file: str | None,
    seconds: float | None,
    max_hold: float = 600,
    also: str | None = None,
) -> str:
    """Block until `release_file` (or `also`) exists, or for `seconds`; returns why it stopped.

    Also returns ("stopped") as soon as the process is told to terminate, so that a SIGTERM
    ends the run instead of leaving Prefect's engine waiting for this thread forever.
    """
    deadline = time.monotonic() + (max_hold if release_file else float(seconds or 0))
    while True:
        if release_file and Path(release_file).exists():
            return "release_file"
        if also and Path(also).exists():
            return "release_all"
        if STOP.is_set():
            return "stopped"
        if time.monotonic() >= deadline:
            return "max_hold" if release_file else "hold"
        time.sleep(0.05)


def terminating(grace: float = 3.0) -> None:
    """The process got SIGTERM: let holders leave, and hard-exit after `grace` seconds.

    Prefect turns SIGTERM into `TerminationSignal` in the main thread, but its task runner
    then waits for the task threads before the engine reports the crash and exits; a task
    that is still holding (or waiting for a slot) would keep the process alive forever.
    """
    if STOP.is_set():
        return
    STOP.set()
    emit("terminating")

    def die_later() -> None:
        time.sleep(grace)
        emit("forced_exit")
        os._exit(143)

    threading.Thread(target=die_later, daemon=True).start()


def result(future: Any) -> Any:
    """`future.result()` from a flow body, turning a SIGTERM into `terminating()`."""
    from prefect.exceptions import TerminationSignal

    try:
        return future.result()
    except TerminationSignal:
        terminating()
        raise


def run_ids() -> dict[str, str | None]:
    """Flow run / task run ids and names of the current Prefect run context, if any."""
    from prefect.context import FlowRunContext, TaskRunContext

    ids: dict[str, str | None] = {
        "flow_run_id": None,
        "flow_run_name": None,
        "task_run_id": None,
        "task_run_name": None,
    }
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        ids["task_run_id"] = str(task_ctx.task_run.id)
        ids["task_run_name"] = task_ctx.task_run.name
        ids["flow_run_id"] = str(task_ctx.task_run.flow_run_id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        ids["flow_run_id"] = str(flow_ctx.flow_run.id)
        ids["flow_run_name"] = flow_ctx.flow_run.name
    return ids


def patient(method: str, url: str, **options: Any) -> httpx.Response:
    """One HTTP call that rides out Prefect's 503 "database is busy" (SQLite, loaded machine)."""
    options.setdefault("timeout", 30)
    for attempt in range(10):
        response = httpx.request(method, url, **options)
        if response.status_code != 503 or attempt == 9:
            return response
        time.sleep(min(0.1 * 2**attempt, 2.0))
    return response


def ensure_gcl(name: str, limit: int = 1) -> int:
    """Create a global concurrency limit; an existing one (409) is fine. Returns the status."""
    response = patient(
        "POST", f"{api_url()}/v2/concurrency_limits/", json={"name": name, "limit": limit}
    )
    if response.status_code not in (201, 409):
        response.raise_for_status()
    return response.status_code


def ensure_tag_limit(tag: str, limit: int = 1) -> int:
    """Create (upsert: 201 new, 200 existing) a tag-based concurrency limit."""
    response = patient(
        "POST", f"{api_url()}/concurrency_limits/", json={"tag": tag, "concurrency_limit": limit}
    )
    response.raise_for_status()
    return response.status_code


def run_main(main: Any) -> None:
    """Run a script's main(), recording "process_started", "exited" or "error" events."""
    emit("process_started", argv=sys.argv[1:])
    try:
        main()
    except SystemExit as exc:
        emit("exited", code=exc.code)
        raise
    except BaseException as exc:
        import traceback

        emit("error", error=repr(exc), traceback=traceback.format_exc())
        raise
    emit("exited")
