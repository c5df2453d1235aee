"""Adversarial scenarios for reslock's first promise: never two holders, never a live holder
called stale or zombie.

A seeded generator mixes holders (the helper on one or two names, blocked in a long call or
not; Prefect's `concurrency()` with `occupy=2`; tag tasks; the runs of a deployment with a
concurrency limit of 1, started by a real Prefect Runner), faults (the holder killed with
SIGKILL; Prefect's events failing to the worker; a revoke whose answer is lost; the worker
killed mid-operation, where the runner can restart it) and an operator's action through the
board's own pages (release, repair, set limit, deactivate then activate, bulk release). A
runner plays a scenario on the real stack (a real Prefect server, real flow processes, a real
Celery worker on Redis, the FaultProxy between the worker and Prefect) and checks:

- the bodies' own enter and leave times (each process writes them): never more slots inside
  at one instant than the limit allows (outside a window where an operator made the limit
  inactive or raised it);
- while it runs, the board is synced every few seconds: a holder the board calls stale or
  zombie while its process is alive and inside is a false verdict.

tests/operations/test_safety_suite.py runs a fixed-seed slice; bench/safety_soak.py runs hundreds.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.patient import patient_client

KINDS = ("helper", "helper_block", "helper_pair", "occupy", "tag")
FAULTS = ("none", "kill_holder", "events_failing", "revoke_answer_lost", "kill_worker")
ACTIONS = ("release", "repair", "set_limit", "toggle", "bulk")
# Deployment runs: one Runner process serves them all, each run in a child process of its own.
# Releasing a running one is refused (its process would work on); its drift can be repaired.
DEPLOYMENT = "deployment"
DEPLOYMENT_ACTIONS = ("release", "repair")
# Prefect lets a run awaiting a deployment slot try again every 30 s: the runs inside stay that
# long after the operator acted, so that a slot wrongly freed under one is taken meanwhile.
SLOT_RETRY_SECONDS = 35


@dataclass(frozen=True)
class Scenario:
    seed: int
    kind: str
    fault: str
    action: str
    waiters: int
    block: float = 0.0  # helper_block: seconds of one blocking call at the start of the body

    def __str__(self) -> str:
        extra = f" block={self.block:g}s" if self.block else ""
        return f"#{self.seed} {self.kind}{extra} + {self.fault} + {self.action} ({self.waiters} waiting)"


def generate(seed: int, faults: tuple[str, ...] = FAULTS) -> Scenario:
    rng = random.Random(seed)
    kind = rng.choice(KINDS)
    fault, action, waiters = rng.choice(faults), rng.choice(ACTIONS), rng.choice((1, 2))
    block = float(rng.randint(50, 75)) if kind == "helper_block" else 0.0
    # A draw of its own, so that every other seed keeps the scenario it always had.
    deployment = random.Random(f"{seed}-deployment")
    if deployment.random() < 1 / 6:
        kind, action, block = DEPLOYMENT, deployment.choice(DEPLOYMENT_ACTIONS), 0.0
    return Scenario(seed, kind, fault, action, waiters, block)


@dataclass
class Entry:
    """One run getting in through a process: a deployment's Runner lets in one run after
    another, each in a child process of its own (the `pid` its events carry)."""

    flow_run_id: str | None
    pid: int | None
    start: float
    end: float | None


def entries(process, killed: dict[int, float]) -> list[Entry]:
    """When each run of this process got in and left (its body's own times), or was killed."""
    events = process.events()
    several = process.script == "deployment_limit"
    found = []
    for acquired in [e for e in events if e.get("event") == "acquired"]:
        run, pid = acquired.get("flow_run_id"), acquired.get("pid")
        if several:
            left = [
                e for e in events if e.get("event") == "released" and e.get("flow_run_id") == run
            ]
        else:  # one run per process: the first time in counts
            left = [e for e in events if e.get("event") in ("left", "released", "lost", "exited")]
        ends = [e["t"] for e in left]
        if (pid if several else process.pid) in killed:
            ends.append(killed[pid if several else process.pid])
        end = min((t for t in ends if t >= acquired["t"]), default=None)
        found.append(Entry(run, pid, acquired["t"], end))
        if not several:
            break
    return found


@dataclass
class Span:
    who: str
    start: float
    end: float | None  # None: still inside when the scenario ended
    slots: int = 1


@dataclass
class Outcome:
    scenario: Scenario
    operations: list[tuple[str, str, str]] = field(default_factory=list)  # kind, status, message
    refused: list[str] = field(default_factory=list)  # plan summaries the pages refused
    double_admissions: list[str] = field(default_factory=list)
    false_verdicts: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def applied(self) -> int:
        return sum(status == "succeeded" for _, status, _ in self.operations)


def overlaps(spans: list[Span], allowed: int, exempt: list[tuple[float, float]]) -> list[str]:
    """Instants at which more slots were inside than allowed (outside the exempt windows)."""
    found = []
    for span in spans:  # the worst moments begin when somebody enters
        t = span.start + 1e-6
        if any(a <= t <= b for a, b in exempt):
            continue
        inside = [s for s in spans if s.start <= t and (s.end is None or t < s.end)]
        used = sum(s.slots for s in inside)
        if used > allowed:
            found.append(
                f"{used} slots inside a limit of {allowed} at {t:.2f}: "
                + ", ".join(f"{s.who} [{s.start:.2f}, {s.end or 'end'}]" for s in inside)
            )
    return found


class Runner:
    """Plays scenarios. `client` is a Django test client logged in as an operator; `sync` syncs
    the board from Prefect; `sweep` sends the sweep to the worker; `restart_worker` (optional)
    kills the worker with SIGKILL and starts another."""

    def __init__(
        self,
        server: Any,
        flows: Any,
        client: Any,
        proxy: Any,
        sync: Callable[[], None],
        sweep: Callable[[], None],
        restart_worker: Callable[[], None] | None = None,
    ) -> None:
        self.server, self.flows, self.client, self.proxy = server, flows, client, proxy
        self.sync, self.sweep, self.restart_worker = sync, sweep, restart_worker

    # --- one scenario ------------------------------------------------------------------
    def run(self, scenario: Scenario) -> Outcome:
        from reslock_web.models import Limit

        started = time.monotonic()
        self._scenario_fault = scenario.fault
        outcome = Outcome(scenario)
        rng = random.Random(scenario.seed * 7919)
        # The seed's own draw, then a part of this run alone: one seed played twice on one
        # Prefect (by hand, then with the auto-release policy) must not find its own leftovers.
        name = f"safety-{scenario.seed}-{rng.randrange(16**6):06x}-{uuid.uuid4().hex[:4]}"
        killed: dict[int, float] = {}
        limit_name, allowed, slots, processes = self._start_all(scenario, name)
        watcher = VerdictWatch(self.sync, processes, killed, limit_name)
        watcher.start()
        exempt: list[tuple[float, float]] = []
        try:
            self._wait_board(limit_name)
            self._fault(scenario, processes, killed)
            limit = Limit.objects.get(name=limit_name)
            allowed = self._act(scenario, limit, outcome, exempt, rng) or allowed
            self._finish_operations(outcome, limit_name)
            self._drain(processes, killed)
            if exempt and exempt[-1][1] == float("inf"):
                self._reactivate(limit_name, outcome, exempt)
        finally:
            self.proxy.ok()
            watcher.stop()
            for process in processes:
                if process.process.poll() is None:
                    process.stop()
        outcome.false_verdicts = watcher.false_verdicts
        spans = [
            Span(f"{p.params.get('flow_run_name', '?')} {e.flow_run_id}", e.start, e.end, slots)
            for p in processes
            for e in entries(p, killed)
        ]
        outcome.double_admissions = overlaps(spans, allowed, exempt)
        outcome.seconds = time.monotonic() - started
        return outcome

    def _start_all(self, scenario: Scenario, name: str) -> tuple[str, int, int, list]:
        """(the limit's name, its size, the slots one holder takes, the processes): the holder
        inside, its waiters waiting."""
        if scenario.kind == DEPLOYMENT:
            runs = self.flows.start(
                "deployment_limit",
                runs=1 + scenario.waiters,
                flow_run_name=f"run-{scenario.seed}",
            )
            limit_name = runs.wait_event("deployed", timeout=120)["limit_name"]
            runs.wait_event("acquired", timeout=120)
            # The Runner proposes the other runs at once: Prefect makes them wait for the slot.
            self._wait_board(limit_name, lambda row: row.waiter_count >= scenario.waiters, 90)
            return limit_name, 1, 1, [runs]
        limit_name, allowed, slots = self._create(scenario, name)
        processes = [self._start(scenario, name, "holder")]
        processes[0].wait_event("acquired", timeout=120)
        processes += [self._start(scenario, name, f"waiter-{i}") for i in range(scenario.waiters)]
        for waiter in processes[1:]:
            waiter.wait_event("want" if scenario.kind.startswith("helper") else "started", 60)
        return limit_name, allowed, slots, processes

    def _create(self, scenario: Scenario, name: str) -> tuple[str, int, int]:
        """(the limit's name, its size, the slots one holder takes)."""
        with patient_client(self.server.api_url) as http:
            if scenario.kind == "tag":
                http.post("/concurrency_limits/", json={"tag": name, "concurrency_limit": 1})
                return f"tag:{name}", 1, 1
            size = 3 if scenario.kind == "occupy" else 1
            http.post("/v2/concurrency_limits/", json={"name": name, "limit": size})
            if scenario.kind == "helper_pair":
                http.post("/v2/concurrency_limits/", json={"name": f"{name}-b", "limit": 1})
            return name, size, 2 if scenario.kind == "occupy" else 1

    def _start(self, scenario: Scenario, name: str, role: str):
        common = {"flow_run_name": f"{role}-{scenario.seed}"}
        if scenario.kind == "tag":
            return self.flows.start("tag_holder", tag=name, create=False, **common)
        if scenario.kind == "occupy":
            return self.flows.start("gcl_holder", name=name, create=False, occupy=2, **common)
        names = [name, f"{name}-b"] if scenario.kind == "helper_pair" else [name]
        block = scenario.block if role == "holder" else 0
        return self.flows.start("helper_holder", names=names, block=block, **common)

    def _wait_board(self, limit_name: str, check=None, timeout: float = 60) -> None:
        from reslock_web.models import Limit

        check = check or (lambda row: row.holder_count >= 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sync()
            limit = Limit.objects.filter(name=limit_name).first()
            if limit is not None and check(limit):
                return
            time.sleep(0.5)

    def _fault(self, scenario: Scenario, processes: list, killed: dict[int, float]) -> None:
        if scenario.fault == "kill_holder" and scenario.kind == DEPLOYMENT:
            # The run's own process, as an out-of-memory kill would: its Runner lives on and
            # reports the run crashed, which frees its slot.
            pid = processes[0].find_events("acquired")[0]["pid"]
            os.kill(pid, signal.SIGKILL)
            killed[pid] = time.time()
            self.sync()
        elif scenario.fault == "kill_holder":
            processes[0].kill()
            killed[processes[0].pid] = time.time()
            self.sync()
        elif scenario.fault == "events_failing":
            self.proxy.route("/events/filter", "fail", status=500)
            threading.Timer(20, self.proxy.ok).start()
        elif scenario.fault == "revoke_answer_lost":
            self.proxy.route("/decrement-with-lease", "hold", seconds=30)

    # --- the operator ------------------------------------------------------------------
    def _act(self, scenario, limit, outcome: Outcome, exempt, rng) -> int | None:
        from django.urls import reverse

        action = scenario.action
        if action == "release":
            holder = limit.holders.exclude(condition="leaving").first()
            if holder is None:
                outcome.refused.append("release: no holder on the board")
                return None
            url = reverse("operate", args=["release", limit.name]) + f"?holder={holder.pk}"
            extra = {"crash_flow_run": "on"} if rng.random() < 0.5 else {}
            self._confirm(url, outcome, {"reason": "soak", **extra})
        elif action == "repair":
            # A slot nobody holds (a raw increment never decremented) for the repair to find,
            # beside the live holders it must never free.
            with patient_client(self.server.api_url) as http:
                # A full limit refuses an increment; Prefect's PATCH takes any count.
                now = http.get(f"/v2/concurrency_limits/{limit.prefect_id}").json()
                http.patch(
                    f"/v2/concurrency_limits/{limit.prefect_id}",
                    json={"active_slots": now["active_slots"] + 1},
                )
            self._wait_board(limit.name, lambda row: row.has_drift, 30)
            url = reverse("operate", args=["repair", limit.name])
            fields = {"reason": "soak", "accept_risk": "on"}
            if not self._confirm(url, outcome, fields) and limit.kind == DEPLOYMENT:
                # Refused until no lease taken when the slot appeared can be live: the
                # operator comes back then (a deployment's waiting runs stay out meanwhile).
                self._confirm_once_allowed(limit, url, outcome, fields)
        elif action == "set_limit":
            url = reverse("operate", args=["set-limit", limit.name])
            if self._confirm(url, outcome, {"value": str(limit.limit + 1)}):
                return limit.limit + 1  # more inside is allowed from now on
        elif action == "toggle":
            url = reverse("operate", args=["deactivate", limit.name])
            if self._confirm(url, outcome, {}):
                exempt.append((time.time(), float("inf")))  # every run may enter meanwhile
                self._finish_operations(outcome, limit.name)
                time.sleep(3)
                self._reactivate(limit.name, outcome, exempt)
        elif action == "bulk":
            query = {"q": limit.resource}
            page = self.client.get(reverse("bulk-release"), query).content.decode()
            # Every hidden field as the browser posts it back: the holders the preview listed.
            fields: dict[str, list[str]] = {}
            for key, value in re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', page):
                fields.setdefault(key, []).append(value)
            response = self.client.post(
                reverse("bulk-release"), {**query, **fields, "reason": ["soak"]}
            )
            if response.status_code != 302:
                outcome.refused.append("bulk: nothing stale to release")
        return None

    def _confirm_once_allowed(self, limit, url: str, outcome: Outcome, fields: dict[str, str]):
        from reslock_web.operations.plans import longest_lease
        from reslock_web.status.diagnosis import REPOSSESS_SECONDS

        deadline = time.monotonic() + longest_lease(limit) + REPOSSESS_SECONDS + 60
        while time.monotonic() < deadline:
            time.sleep(2)
            self.sync()
            if "Refused" not in self.client.get(url).content.decode():
                self._confirm(url, outcome, fields)
                return

    def _reactivate(self, limit_name: str, outcome: Outcome, exempt: list) -> None:
        from django.urls import reverse

        url = reverse("operate", args=["activate", limit_name])
        for _ in range(3):
            self.sync()
            if self._confirm(url, outcome, {}):
                self._finish_operations(outcome, limit_name)
                if outcome.operations[-1][1] == "succeeded":
                    exempt[-1] = (exempt[-1][0], time.time())
                    return
            time.sleep(2)

    def _confirm(self, url: str, outcome: Outcome, fields: dict[str, str]) -> bool:
        """Open the confirmation page as an operator does; post it if the plan allows."""
        html = self.client.get(url).content.decode()
        hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))
        response = self.client.post(url, {**hidden, **fields})
        if response.status_code != 302:
            heading = re.search(r"<h1>(.*?)</h1>", html, re.S)
            outcome.refused.append(heading.group(1).strip() if heading else url)
            return False
        return True

    def _finish_operations(self, outcome: Outcome, limit_name: str, timeout: float = 240) -> None:
        """Wait for every operation on the limit to end, sweeping as beat would."""
        from reslock_web.models import FINAL_OPERATION_STATUSES, Operation

        deadline = time.monotonic() + timeout
        restarted = False
        while time.monotonic() < deadline:
            ops = list(Operation.objects.filter(limit_name=limit_name).order_by("id"))
            running = [op for op in ops if op.status == "running"]
            if running and self.restart_worker and not restarted and self._kill_worker_now():
                self.restart_worker()
                restarted = True
            if all(op.status in FINAL_OPERATION_STATUSES for op in ops):
                break
            self.sweep()
            time.sleep(2)
        outcome.operations = [
            (op.kind, op.status, op.message)
            for op in Operation.objects.filter(limit_name=limit_name).order_by("id")
        ]

    def _kill_worker_now(self) -> bool:
        return getattr(self, "_scenario_fault", "") == "kill_worker"

    def _drain(self, processes: list, killed: dict[int, float]) -> None:
        """Let every live process take its turn and leave, in the order they get in."""
        deadline = time.monotonic() + 300
        dwell_until = time.time() + SLOT_RETRY_SECONDS
        pending = [p for p in processes if p.pid not in killed]
        while pending and time.monotonic() < deadline:
            for process in list(pending):
                if process.process.poll() is not None:
                    pending.remove(process)
                elif process.script == "deployment_limit":
                    # Each run leaves when told to; the Runner serves on until all are done.
                    inside = process.find_events("acquired")
                    last = len(inside) == process.params["runs"]
                    for acquired in inside:
                        if last or time.time() >= dwell_until:
                            process.release(acquired)
                    done = [e for e in entries(process, killed) if e.end is not None]
                    if len(done) == process.params["runs"]:
                        process.stop()
                        pending.remove(process)
                elif process.find_events("acquired") and process.release_file:
                    process.release()
            self.sweep()
            time.sleep(1)


class VerdictWatch:
    """Syncs the board every few seconds; a holder called stale or zombie while its process
    is alive and inside its lock is a false verdict."""

    def __init__(self, sync, processes: list, killed: dict[int, float], limit_name: str):
        self.sync, self.processes, self.killed = sync, processes, killed
        self.limit_name = limit_name
        self.false_verdicts: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _inside(self, flow_run_id: str, at: float) -> bool:
        """Whether that run was inside, alive, at that instant (by its body's own times)."""
        for process in self.processes:
            for entry in entries(process, self.killed):
                if entry.flow_run_id == flow_run_id and entry.start <= at:
                    if entry.pid in self.killed or process.pid in self.killed:
                        return False
                    return entry.end is None or entry.end > at
        return False

    def _run(self) -> None:
        from django.db import connection

        from reslock_web.models import Holder

        try:
            while not self._stop.wait(3):
                before = time.time()
                try:
                    self.sync()
                except Exception:  # Prefect failing on purpose: no verdict to check
                    continue
                after = time.time()
                flagged = Holder.objects.filter(
                    limit__name=self.limit_name, condition__in=("stale", "zombie")
                )
                for holder in flagged:
                    run_id = str(holder.flow_run_id)
                    if self._inside(run_id, before - 2) and self._inside(run_id, after + 2):
                        self.false_verdicts.append(
                            f"{holder.flow_run_name or holder.key} called {holder.condition} "
                            f"while inside and alive: {holder.evidence}"
                        )
        finally:
            connection.close()
