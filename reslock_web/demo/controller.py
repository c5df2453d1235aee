"""The demo's loop: create the resources, start the flows, restart them as they end.

Every flow runs in a subprocess of this one (`flow_script.py`), in this process's group (no
new session): whoever stops the demo's group stops its flows too. On its own stop the demo
also signals every process it started, including those a Prefect runner spawned, and kills
what is left after a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from reslock_web.demo import catalog
from reslock_web.demo.processes import FlowProcess, children_by_parent
from reslock_web.prefect_io.api import PrefectAPI, PrefectError

log = logging.getLogger("reslock_web.demo")

SCRIPT = Path(__file__).resolve().with_name("flow_script.py")
EVENTS_ENV = "RESLOCK_DEMO_EVENTS"
REPEAT_SECONDS = 600.0  # the crashed holder and the leaked slot come back after this, if fixed
FAILED_RETRY_SECONDS = 60.0  # a flow process that failed at once is retried after this
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# Environment a flow process must not inherit (Prefect's settings are set explicitly).
PRIVATE_ENV = re.compile(
    r"^(PREFECT_|SECRET_KEY$|DATABASE_URL$|REDIS_URL$|CELERY_BROKER_URL$|.*(PASSWORD|TOKEN|SECRET))"
)


# --- scenarios -------------------------------------------------------------------------------
@dataclass
class Slot:
    """One scenario process kept going: started when due, restarted `after_exit` s after it ends."""

    label: str
    start: Callable[[], FlowProcess]
    after_exit: Callable[[FlowProcess], float]
    due: float  # time.monotonic() of the next start
    ready: Callable[[], bool] = lambda: True  # checked when due; False postpones by REPEAT
    process: FlowProcess | None = None
    starts: int = 0


@dataclass
class Demo:
    api: PrefectAPI
    api_url: str
    home: Path  # <var>/demo: one folder per scenario process (PREFECT_HOME, events, output)
    stop: threading.Event
    api_key: str = ""
    prefix: str = ""
    resources: int = 300
    python: str = sys.executable
    rng: random.Random = field(default_factory=random.Random)
    slots: list[Slot] = field(default_factory=list)
    processes: list[FlowProcess] = field(default_factory=list)  # all with processes left
    zombie_run: UUID | None = None
    next_leak: float = 0.0

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.wait_for_prefect()
        if self.stop.is_set():
            return
        self.ensure_limits()
        if self.stop.is_set():
            return
        self.slots = self.build_slots(time.monotonic())
        try:
            while not self.stop.is_set():
                self.tick(time.monotonic())
                self.stop.wait(1.0)
        finally:
            self.shutdown()

    def wait_for_prefect(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            try:
                if self.api.health():
                    return
                error = PrefectError("its health check is not true", retryable=True)
            except PrefectError as failed:
                error = failed
            if time.monotonic() > deadline:
                raise error
            log.info("waiting for Prefect at %s (%s)", self.api_url, error)
            self.stop.wait(2.0)

    def tick(self, now: float) -> None:
        children = children_by_parent()
        for process in self.processes:
            process.refresh(children)
        self.processes = [p for p in self.processes if p.running() or p.members()]
        for slot in self.slots:
            if slot.process is not None and not slot.process.running():
                process, slot.process = slot.process, None
                slot.due = now + self._after_exit(slot, process, now)
            if slot.process is None and now >= slot.due and not self.stop.is_set():
                if not self._ready(slot):
                    slot.due = now + REPEAT_SECONDS
                    continue
                try:
                    slot.process = slot.start()
                except OSError as error:
                    log.warning("%s: could not start a flow process: %s", slot.label, error)
                    slot.due = now + FAILED_RETRY_SECONDS
                    continue
                slot.starts += 1
                self.processes.append(slot.process)
        if now >= self.next_leak:
            self.next_leak = now + REPEAT_SECONDS
            try:
                self.leak()
            except PrefectError as error:
                log.warning("leaked slot: could not check %s: %s", self.name(catalog.LEAKED), error)

    def _ready(self, slot: Slot) -> bool:
        try:
            return slot.ready()
        except PrefectError as error:
            log.warning("%s: could not check Prefect (%s); trying again later", slot.label, error)
            return False

    def _after_exit(self, slot: Slot, process: FlowProcess, now: float) -> float:
        code = process.process.returncode
        delay = slot.after_exit(process)
        if (
            code not in (0, -signal.SIGKILL)
            and now - process.started < 30
            and not self.stop.is_set()
        ):
            log.warning(
                "%s: the flow process exited with code %s after %.0f s (see %s); "
                "starting it again in %.0f s",
                slot.label,
                code,
                now - process.started,
                process.log_file,
                max(delay, FAILED_RETRY_SECONDS),
            )
            return max(delay, FAILED_RETRY_SECONDS)
        return delay

    def shutdown(self, grace: float = 8.0) -> None:
        """Let the flows go (they may have had the signal already), SIGTERM, then SIGKILL."""
        children = children_by_parent()
        for process in self.processes:
            process.refresh(children)
        left = [p for p in self.processes if p.running() or p.members()]
        if not left:
            return
        log.info("stopping %d flow processes", len(left))
        # When the whole group was signalled they are already leaving: a second SIGTERM could
        # cut short Prefect's own crash handling, so give them a moment first.
        self._wait(left, time.monotonic() + 3.0)
        for process in left:
            process.signal(signal.SIGTERM)
        self._wait(left, time.monotonic() + grace)
        for process in left:
            if process.members():
                log.warning("%s: still running after %.0f s; killing it", process.label, grace)
            process.signal(signal.SIGKILL)
        for process in left:
            try:
                process.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) did not exit", process.label, process.pid)
        self.processes = []
        log.info("every flow process of the demo has ended")

    @staticmethod
    def _wait(processes: list[FlowProcess], deadline: float) -> None:
        while time.monotonic() < deadline:
            for process in processes:
                process.process.poll()  # reap our children so that they stop counting
            if not any(p.members() for p in processes):
                return
            time.sleep(0.1)

    # --- names ---------------------------------------------------------------------------
    def name(self, resource: str) -> str:
        return self.prefix + resource

    @staticmethod
    def stamp() -> str:
        return datetime.now(UTC).strftime("%m%d-%H%M")

    # --- resources -----------------------------------------------------------------------
    def ensure_limits(self) -> None:
        """Every resource of the catalog as a Prefect limit; existing ones are left as they are."""
        started = time.monotonic()
        wanted = catalog.resources(self.resources, self.prefix)
        existing = {info.name for info in self.api.list_limits().limits}
        missing = [resource for resource in wanted if resource.limit_name not in existing]
        with ThreadPoolExecutor(max_workers=4) as pool:
            created = sum(pool.map(self._create, missing))
        tags = sum(resource.kind == catalog.TAG for resource in wanted)
        log.info(
            "resources: %d limits (%d global, %d tag limits), %d created now, in %.1f s",
            len(wanted),
            len(wanted) - tags,
            tags,
            created,
            time.monotonic() - started,
        )

    def _create(self, resource: catalog.Resource) -> bool:
        """True if created now. SQLite-backed servers answer 503 when writers collide: retry."""
        for delay in (0.5, 1.0, 2.0, 4.0, 0.0):
            try:
                return self._create_once(resource)
            except PrefectError as error:
                if not error.retryable or not delay or self.stop.is_set():
                    raise
                log.debug("creating %s: %s; trying again", resource.limit_name, error)
                time.sleep(delay * self.rng.uniform(1, 1.5))
        return False

    def _create_once(self, resource: catalog.Resource) -> bool:
        try:
            if resource.kind == catalog.TAG:
                # An upsert: 201 new, 200 existing.
                self.api.request(
                    "POST",
                    "concurrency_limits/",
                    json={"tag": resource.resource, "concurrency_limit": resource.limit},
                )
            else:
                self.api.request(
                    "POST",
                    "v2/concurrency_limits/",
                    json={"name": resource.resource, "limit": resource.limit},
                )
        except PrefectError as error:
            if error.status == 409:  # created meanwhile by someone else: fine
                return False
            raise
        return True

    def leak(self) -> None:
        """Take a slot of the leaked resource with the lease-less REST call, if it is free."""
        name = self.name(catalog.LEAKED)
        info = self.api.read_limit(name)
        if info is None:
            log.warning("leaked slot: %s does not exist", name)
            return
        if info.active_slots:
            return
        self.api.request(
            "POST",
            "v2/concurrency_limits/increment",
            json={"names": [name], "slots": 1, "mode": "concurrency"},
        )
        log.info(
            "leaked slot: took a slot of %s with a raw POST /api/v2/concurrency_limits/increment "
            "and no lease, as an old script would; nothing ever gives it back (drift on the board)",
            name,
        )

    # --- flow processes ------------------------------------------------------------------
    def spawn(self, label: str, scenario: str, params: dict[str, Any]) -> FlowProcess:
        folder = self.home / (re.sub(r"[^A-Za-z0-9._-]", "_", self.prefix) + label)
        home = folder / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        events = folder / "events.jsonl"
        events.write_bytes(b"")
        env = {key: value for key, value in os.environ.items() if not PRIVATE_ENV.match(key)}
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            **{EVENTS_ENV: str(events)},
        )
        if self.api_key:
            env["PREFECT_API_KEY"] = self.api_key
        with open(folder / "output.log", "wb") as output:
            # No start_new_session: the flows stay in the demo's process group.
            process = subprocess.Popen(
                [self.python, str(SCRIPT), scenario, json.dumps(params)],
                cwd=SCRIPT.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        return FlowProcess(label, process, folder)

    def build_slots(self, now: float) -> list[Slot]:
        slots: list[Slot] = []
        at = now

        def later(step: float = 0.7) -> float:
            nonlocal at
            at += step
            return at

        # First the crashed holder: it shows (uncounted) only once its lease ran out (about a minute).
        slots.append(
            Slot("crashed", self._crashed, self._after_crash, due=at, ready=self._zombie_gone)
        )
        # A queue: the first to start holds the tag, the next two wait for it.
        for i, (flow, task, run) in enumerate(catalog.CONTENDED_FLOWS):
            slots.append(
                Slot(
                    f"contended-{i + 1}",
                    self._contended(flow, task, run),
                    lambda _p: 2.0,  # back in the queue at once: two keep waiting
                    due=later(0.7 if i == 0 else 1.5),
                )
            )
        slots.append(Slot("deadlock", self._deadlock, lambda _p: REPEAT_SECONDS, due=later()))
        for i, held in enumerate(catalog.HELD):
            slots.append(
                Slot(
                    f"held-{i + 1}",
                    self._held(held),
                    lambda _p: self.rng.uniform(10, 40),  # free for a while, then taken again
                    due=later(),
                )
            )
        slots.append(Slot("deployment", self._deployment, lambda _p: 30.0, due=later()))
        return slots

    def _held(self, held: catalog.Held) -> Callable[[], FlowProcess]:
        def start() -> FlowProcess:
            hold = round(self.rng.uniform(60, 180))
            run = f"{held.run}-{self.stamp()}"
            name = self.name(held.resource)
            log.info("held: flow %s, run %s, holds %s for %d s", held.flow, run, name, hold)
            return self.spawn(
                f"held-{held.run}",
                "hold-gcl",
                {"name": name, "hold": hold, "flow": held.flow, "task": held.task, "run": run},
            )

        return start

    def _contended(self, flow: str, task: str, run_name: str) -> Callable[[], FlowProcess]:
        def start() -> FlowProcess:
            hold = round(self.rng.uniform(60, 150))
            tag = self.name(catalog.CONTENDED_TAG)
            run = f"{run_name}-{self.stamp()}"
            log.info(
                "contended: flow %s, run %s, queues for tag %s (holds it %d s once in)",
                flow,
                run,
                tag,
                hold,
            )
            return self.spawn(
                f"contended-{run_name}",
                "hold-tag",
                {"tag": tag, "hold": hold, "flow": flow, "task": task, "run": run},
            )

        return start

    def _crashed(self) -> FlowProcess:
        tag_name, flow, task, run_name = catalog.CRASHED
        tag = self.name(tag_name)
        run = f"{run_name}-{self.stamp()}"
        log.info(
            "crashed holder: flow %s, run %s, takes tag %s and is killed with SIGKILL 10 s later; "
            "its runs stay Running, the slot frees when the lease expires (uncounted on the board: "
            "nothing shows a tag holder's process dead)",
            flow,
            run,
            tag,
        )
        return self.spawn(
            "crashed-holder",
            "hold-tag",
            {"tag": tag, "hold": 10, "flow": flow, "task": task, "run": run, "crash": True},
        )

    def _after_crash(self, process: FlowProcess) -> float:
        acquired = process.events("acquired")
        if process.process.returncode == -signal.SIGKILL and acquired:
            self.zombie_run = UUID(acquired[-1]["flow_run_id"])
            log.info(
                "crashed holder: flow run %s died holding its tag; a new one comes only once it "
                "is no longer Running (checked every %.0f min)",
                self.zombie_run,
                REPEAT_SECONDS / 60,
            )
            return REPEAT_SECONDS
        return FAILED_RETRY_SECONDS

    def _zombie_gone(self) -> bool:
        """One zombie at a time: the next one only once someone fixed the last (or it is gone)."""
        if self.zombie_run is None:
            return True
        run = self.api.flow_runs([self.zombie_run]).get(self.zombie_run)
        return run is None or run.state_type in FINAL_STATES

    def _deadlock(self) -> FlowProcess:
        tag_name, flow, outer, inner, run_name = catalog.DEADLOCKED
        tag = self.name(tag_name)
        run = f"{run_name}-{self.stamp()}"
        log.info(
            "deadlock: flow %s, run %s: task %s holds tag %s and calls task %s with the same tag, "
            "which waits for it forever",
            flow,
            run,
            outer,
            tag,
            inner,
        )
        return self.spawn(
            "deadlock",
            "nested-tags",
            {"tag": tag, "flow": flow, "outer": outer, "inner": inner, "run": run},
        )

    def _deployment(self) -> FlowProcess:
        name, flow = catalog.DEPLOYMENT
        deployment = self.name(name)
        log.info(
            "deployment: a runner serves %s/%s with concurrency_limit=1 and keeps two runs going: "
            "one holds the deployment's slot for 1-3 min, the other waits (AwaitingConcurrencySlot)",
            flow,
            deployment,
        )
        return self.spawn(
            "deployment",
            "deployment",
            {"deployment": deployment, "runs": 2, "hold_min": 60, "hold_max": 180},
        )
