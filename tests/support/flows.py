"""Run real Prefect flows in subprocesses against the test server.

    def test_something(flows, prefect_server):
        holder = flows.start("gcl_holder", name="resource:db-1234")
        acquired = holder.wait_event("acquired")      # {"event": "acquired", "flow_run_id": ...}
        ...
        holder.release()                              # touch its release file: the flow finishes
        assert holder.wait() == 0

Scripts live in tests/support/flow_scripts/<script>.py and get their parameters as JSON in
argv[1]. `start()` adds `release_file` (a path under the process folder) unless the caller
passes `release_file` or `hold`, so by default every holder holds until `release()`.

Each process has its own folder under tmp_path with its own PREFECT_HOME (no sqlite contention
in the client home), its events file (`events.jsonl`) and its stdout/stderr (`output.log`).
It runs in a new session (process group), so `kill()` and `stop()` reach everything it
started; the descendants found in /proc are signalled too (a Prefect runner may put its flow
run processes into groups of their own).

Scripts (each file's docstring lists its params and events):
  gcl_holder          @flow -> @task -> `with concurrency(name, lease_duration=60)`; creates
                      the GCL (limit 1) first. A second one on the same name waits, RUNNING.
  tag_holder          @flow -> @task(tags=[tag]); creates the tag limit (1). More of them:
                      one holder, the others PENDING/Pending. reset_override=True: the task
                      resets its own tag with slot_override (a finished run keeps the slot).
  nested_tags         `with tags(tag): outer()`, outer calls inner: self-deadlock, forever.
  deployment_limit    a Runner serving a deployment with concurrency_limit=1 and `runs` (2)
                      flow runs of it: one RUNNING, the rest SCHEDULED/AwaitingConcurrencySlot.
  raw_increment_leak  POST /v2/concurrency_limits/increment and exit: a slot with no holder.

Events every script writes: process_started, then its own, then exited (or error with a
traceback). Lock holders write "acquired" with flow_run_id, task_run_id, flow_run_name and
release_file; "released" when they let go.

`stop()` sends SIGTERM: a holder leaves its lock, Prefect marks the flow run CRASHED and the
process exits in about 1 s; `kill()` is SIGKILL: runs stay RUNNING, slots stay taken until
their lease expires (GCL and tag leases: 60 s here + up to 15 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import alive, descendants
from tests.support.prefect_server import PrefectServer

SCRIPTS_DIR = Path(__file__).resolve().parent / "flow_scripts"
EVENTS_ENV = "RESLOCK_FLOW_EVENTS"


class FlowProcess:
    """One subprocess running a flow script."""

    def __init__(
        self,
        process: subprocess.Popen,
        events_file: Path,
        *,
        script: str = "",
        params: dict[str, Any] | None = None,
        folder: Path | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.process = process
        self.events_file = events_file
        self.script = script
        self.params = dict(params or {})
        self.folder = folder or events_file.parent
        self.log_file = log_file
        self.release_file: Path | None = (
            Path(self.params["release_file"]) if self.params.get("release_file") else None
        )
        self._known: set[int] = set()

    @property
    def pid(self) -> int:
        return self.process.pid

    def __repr__(self) -> str:
        return f"<FlowProcess {self.script} pid={self.pid} rc={self.process.poll()}>"

    # --- events ----------------------------------------------------------------------
    def events(self) -> list[dict]:
        """Every complete line written so far (a half-written last line is left for later)."""
        try:
            data = self.events_file.read_bytes()
        except FileNotFoundError:
            return []
        found = []
        for line in data.split(b"\n")[:-1]:
            if line.strip():
                found.append(json.loads(line))
        return found

    def find_events(self, name: str) -> list[dict]:
        return [event for event in self.events() if event.get("event") == name]

    def wait_event(self, name: str, timeout: float = 60, **match: Any) -> dict:
        """Wait for the first line with that event (and, if given, those field values)."""
        deadline = time.monotonic() + timeout
        exited_at: float | None = None
        while True:
            for event in self.events():
                if event.get("event") == name and all(
                    event.get(key) == value for key, value in match.items()
                ):
                    return event
            now = time.monotonic()
            if self.process.poll() is not None:
                # Give the last write a moment to land, then give up: it will never come.
                if exited_at is None:
                    exited_at = now
                elif now - exited_at > 0.5:
                    raise AssertionError(
                        f"{self.script} exited with {self.process.returncode} before event "
                        f"{name!r}{match or ''}\n{self.describe()}"
                    )
            if now > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for event {name!r}{match or ''} "
                    f"from {self.script}\n{self.describe()}"
                )
            time.sleep(0.05)

    def describe(self, lines: int = 40) -> str:
        """The events so far and the tail of the output, for failure messages."""
        events = "\n".join(json.dumps(event) for event in self.events()[-20:])
        output = ""
        if self.log_file is not None and self.log_file.exists():
            output = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return (
            f"--- events ({self.events_file}):\n{events}\n--- output ({self.log_file}):\n{output}"
        )

    # --- control ---------------------------------------------------------------------
    def release(self, event: dict | None = None) -> Path:
        """Create the release file of `event` (e.g. an "acquired" event) or of this process."""
        path = event.get("release_file") if event else self.release_file
        if not path:
            raise ValueError(f"{self.script} holds for a fixed time: nothing to release")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return path

    def pids(self) -> set[int]:
        """Live pids of this process and everything it started."""
        return self._members()

    def _members(self) -> set[int]:
        """Our process and everything below it (remembered, so orphans are still found)."""
        if self.process.poll() is None:
            self._known.add(self.pid)
            self._known |= descendants(self.pid)
        return {pid for pid in self._known if alive(pid)}

    def _signal(self, sig: signal.Signals) -> None:
        members = self._members()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)  # the session we created: pgid == pid
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group (and descendants): how a crash looks."""
        self._signal(signal.SIGKILL)
        self._reap(5)

    def stop(self, grace: float = 5) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Idempotent.

        The scripts turn SIGTERM into a clean end: a holder leaves its lock, Prefect marks
        the flow run CRASHED and the process exits (about 1 s). A task still waiting for a
        slot cannot be interrupted; the script hard-exits 3 s after the SIGTERM.
        """
        if self.process.poll() is None or self._members():
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and (self.process.poll() is None or self._members()):
                time.sleep(0.05)
            if self.process.poll() is None or self._members():
                self._signal(signal.SIGKILL)
        self._reap(5)

    def _reap(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)

    def wait(self, timeout: float = 60) -> int:
        """Wait for the script to exit; returns its exit code."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.script} still running after {timeout} s\n{self.describe()}"
            ) from None


class FlowRunner:
    """Starts flow scripts; `stop_all()` (run at fixture teardown) stops every one of them."""

    def __init__(self, server: PrefectServer, tmp_path: Path) -> None:
        self.server = server
        self.tmp_path = tmp_path
        self.processes: list[FlowProcess] = []
        self.env: dict[str, str] = {}  # extra environment for every process started later

    def start(self, script: str, **params: Any) -> FlowProcess:
        """Start tests/support/flow_scripts/<script>.py with `params` as JSON in argv[1]."""
        name = script.removesuffix(".py")
        path = SCRIPTS_DIR / f"{name}.py"
        if not path.exists():
            raise FileNotFoundError(path)
        folder = self.tmp_path / f"flow-{len(self.processes) + 1:02d}-{name}"
        home = folder / "prefect-home"
        home.mkdir(parents=True)
        events_file = folder / "events.jsonl"
        events_file.touch()
        log_file = folder / "output.log"
        if "release_file" not in params and "hold" not in params:
            params["release_file"] = str(folder / "release")
        params.setdefault("events_file", str(events_file))

        env = self.server.client_env()
        env.update(
            PREFECT_HOME=str(home),
            TMPDIR=str(folder),
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            **{EVENTS_ENV: str(events_file)},
        )
        env.update(self.env)
        with open(log_file, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, str(path), json.dumps(params)],
                env=env,
                cwd=SCRIPTS_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        flow_process = FlowProcess(
            process, events_file, script=name, params=params, folder=folder, log_file=log_file
        )
        self.processes.append(flow_process)
        return flow_process

    def stop_all(self, grace: float = 5) -> None:
        """SIGTERM every process at once, SIGKILL what is left after `grace` seconds."""
        running = [p for p in self.processes if p.process.poll() is None or p._members()]
        for flow_process in running:
            flow_process._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for flow_process in running:
            while time.monotonic() < deadline and (
                flow_process.process.poll() is None or flow_process._members()
            ):
                time.sleep(0.05)
        for flow_process in running:
            flow_process.stop()  # SIGKILLs at once whatever is still there


@pytest.fixture
def flows(prefect_server: PrefectServer, tmp_path: Path) -> Iterator[FlowRunner]:
    runner = FlowRunner(prefect_server, tmp_path)
    try:
        yield runner
    finally:
        runner.stop_all()
