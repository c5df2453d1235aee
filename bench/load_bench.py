"""Fifty logged-in viewers on a board of 5,000 resources while syncs run: latency under load.

Run by hand (not a test):

    .venv/bin/python -m bench.load_bench [--viewers 50] [--seconds 60] [--baseline-seconds 20]
        [--postgres postgresql://postgres@127.0.0.1:5432] [--web-workers 3] [--threads 4]

1. A fresh PostgreSQL database, migrated and filled by one full sync of the kept bench Prefect
   workspace (bench/_prefect_fixture.py: 5,000 limits, ~500 holders with their events, 60
   waiters of which 5 are self-deadlocked; created once under var/bench/prefect, ~85 s).
2. The viewers: plain users whose sessions are written straight into the session table, the
   state a log-in leaves (50 password hashes would cost the server more CPU than the minute
   measured; the log-in page itself is not what is measured here).
3. gunicorn as the Dockerfile and docker-compose.yml run it (`--workers 3 --threads 4`, gthread)
   on a free port, and
   the syncs: bench/_sync_loop.py in its own process changes 50 limits in the bench Prefect and
   runs `sync_all` against it every 10 s, as beat would (the real pass: read everything from
   Prefect, write what changed in one transaction), so each sync writes rows while viewers read.
4. The same viewer mix twice: one viewer (the baseline) for --baseline-seconds, then --viewers
   viewers for --seconds. Prints request count, p50/p95/max and errors per kind of request and
   overall, and each p95 as a ratio to the baseline's. Target: p95 <= 100 ms, 0 errors.

A viewer behaves like a person with the board open in a browser: it loads the board, then every
2-6 s does one thing (search as you type, a status facet, the next page, a resource page, a
reload, a look at the JSON API), while its open page polls the way the page itself says
(every element with `data-poll`: its hx-get, hx-trigger "every Ns", hx-include; answers update
what the next poll sends, as htmx's swaps would). So the bench follows the templates instead of
hard-coding today's poll URLs.

The client is asyncio + httpx, not locust: locust runs on gevent and monkey-patches the whole
process, while this process also runs Django and psycopg for the set-up (psycopg's C calls would
block gevent's loop), and following the page's own htmx polls takes a small parser, which is
simpler to write than to fit into locust's task model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from urllib.parse import urlencode

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._prefect_fixture import BenchPrefect  # noqa: E402
from bench.sync_bench import BENCH_DIR, database, setup_django  # noqa: E402
from tests.support.net import descendants, free_port, wait_for  # noqa: E402

TARGET_P95_MS = 100.0
SEARCHES = ["gcl-01", "bench-tag-00", "dep-0", "tag-019", "gcl-2", "bench-dep-05"]
FACETS = ["held", "contended", "waiting", "stale", "deadlocked", "free", "all"]
ACTIONS = {  # what a viewer does next, and how often
    "search": 25,
    "facet": 15,
    "page": 10,
    "resource": 20,
    "board": 20,
    "api": 10,
}
POLL_SECONDS = 0.0  # --poll-seconds: 0 polls as often as the page says
EVERY = re.compile(r"every\s+(\d+(?:\.\d+)?)(ms|s)")


# --- a minimal browser ----------------------------------------------------------------------
@dataclass
class Poll:
    element: str  # the polling element's id: htmx sends it as HX-Target / HX-Trigger
    url: str
    seconds: float
    include: list[str]  # ids of inputs whose name=value go with each request


@dataclass
class Page:
    """What one viewer has on screen: the polls it runs, the values they send, its links."""

    url: str = "/"
    polls: dict[str, Poll] = field(default_factory=dict)
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (name, value)
    resources: list[str] = field(default_factory=list)
    next_page: str = ""

    def absorb(self, html: str, whole: bool) -> None:
        """A full page load replaces everything; an htmx swap updates what it carries."""
        parsed = _Parser()
        parsed.feed(html)
        if whole:
            self.polls, self.inputs = {}, {}
            self.resources, self.next_page = [], ""
        self.polls.update(parsed.polls)
        self.inputs.update(parsed.inputs)
        if parsed.resources:
            self.resources = parsed.resources
        if parsed.next_page or whole:
            self.next_page = parsed.next_page

    def poll_request(self, poll: Poll) -> str:
        params = {self.inputs[i][0]: self.inputs[i][1] for i in poll.include if i in self.inputs}
        if not params:
            return poll.url
        return poll.url + ("&" if "?" in poll.url else "?") + urlencode(params)


# Only the start tags the viewer acts on, found with C-speed regexes: a full HTML parser in
# Python cost the simulated browsers as much CPU as a third of the web server's, on the same
# two cores, which is not what a real browser takes from the server.
TAG = re.compile(r"<(a|input|tbody|div|section|span|ul|table)\s([^>]*)>")
ATTR = re.compile(r'([a-zA-Z_:][-\w:.]*)(?:="([^"]*)")?')
WANTED = ("data-poll", 'href="/resources/', 'rel="next"', "<input")


class _Parser:
    def __init__(self) -> None:
        self.polls: dict[str, Poll] = {}
        self.inputs: dict[str, tuple[str, str]] = {}
        self.resources: list[str] = []
        self.next_page = ""

    def feed(self, html: str) -> None:
        for match in TAG.finditer(html):
            tag, attrs = match[1], match[2]
            if tag == "input" or any(token in attrs for token in WANTED):
                found = {name: unescape(value or "") for name, value in ATTR.findall(attrs)}
                self.handle_starttag(tag, found)

    def handle_starttag(self, tag: str, a: dict[str, str]) -> None:
        if "data-poll" in a and a.get("hx-get") and a.get("id"):
            match = EVERY.search(a.get("hx-trigger", ""))
            seconds = 1.0 if not match else float(match[1]) / (1000 if match[2] == "ms" else 1)
            include = [s.strip().lstrip("#") for s in a.get("hx-include", "").split(",") if s]
            self.polls[a["id"]] = Poll(a["id"], a["hx-get"], seconds, include)
        if tag == "input" and a.get("id") and a.get("name"):
            self.inputs[a["id"]] = (a["name"], a.get("value", ""))
        if tag == "a" and a.get("href", "").startswith("/resources/"):
            self.resources.append(a["href"])
        if tag == "a" and a.get("rel") == "next" and a.get("hx-get"):
            self.next_page = a["hx-get"]


# --- measuring ------------------------------------------------------------------------------
@dataclass
class Sample:
    kind: str
    ms: float
    ok: bool
    detail: str = ""
    at: float = 0.0  # wall-clock start, to set against the syncs' times


class Recorder:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    async def get(
        self, http: httpx.AsyncClient, kind: str, url: str, htmx: str = ""
    ) -> httpx.Response | None:
        headers = {"HX-Request": "true", "HX-Target": htmx, "HX-Trigger": htmx} if htmx else {}
        at, started = time.time(), time.perf_counter()
        try:
            response = await http.get(url, headers=headers)
        except httpx.HTTPError as error:
            ms = (time.perf_counter() - started) * 1000
            self.samples.append(Sample(kind, ms, False, f"{type(error).__name__}: {error}", at))
            return None
        ms = (time.perf_counter() - started) * 1000
        ok = response.status_code in (200, 204)
        self.samples.append(Sample(kind, ms, ok, "" if ok else f"{response.status_code} {url}", at))
        return response if ok else None


class Viewer:
    def __init__(self, base: str, session: str, recorder: Recorder, rng: random.Random) -> None:
        # Keep-alive shorter than gunicorn's (5 s): the client never reuses a socket the
        # server is closing, which would show up as errors that no browser sees.
        self.http = httpx.AsyncClient(
            base_url=base,
            cookies={"sessionid": session},
            timeout=15,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=4, keepalive_expiry=2.0),
        )
        self.record, self.rng = recorder, rng
        self.page = Page()
        self.status = "all"

    async def close(self) -> None:
        await self.http.aclose()

    async def load(self, kind: str, url: str) -> None:
        response = await self.record.get(self.http, kind, url)
        if response is not None:
            self.page = Page(url)
            self.page.absorb(response.text, whole=True)

    async def swap(self, kind: str, url: str, target: str = "results") -> None:
        response = await self.record.get(self.http, kind, url, htmx=target)
        if response is not None and response.status_code == 200:
            self.page.url = url
            self.page.absorb(response.text, whole=False)

    async def polls(self, until: float) -> None:
        """What the open page polls, each after its own interval."""
        while time.monotonic() < until:
            poll = next(iter(self.page.polls.values()), None)
            await asyncio.sleep((POLL_SECONDS or poll.seconds) if poll else 1.0)
            poll = next(iter(self.page.polls.values()), None)  # the viewer may have moved on
            if poll is None or time.monotonic() >= until:
                continue
            kind = "board poll" if poll.element == "rows" else f"{poll.element} poll"
            if self.page.url.startswith("/resources/"):
                kind = "resource poll"
            response = await self.record.get(
                self.http, kind, self.page.poll_request(poll), htmx=poll.element
            )
            if response is not None and response.status_code == 200:
                self.page.absorb(response.text, whole=False)

    async def run(self, until: float) -> None:
        await self.load("board", "/")
        poller = asyncio.create_task(self.polls(until))
        try:
            while time.monotonic() < until:
                await asyncio.sleep(self.rng.uniform(2.0, 6.0))
                if time.monotonic() >= until:
                    break
                action = self.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
                await getattr(self, f"do_{action}")()
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def do_search(self) -> None:
        """Typing: htmx sends the search after 300 ms without a key press (and at the end)."""
        word, sent = self.rng.choice(SEARCHES), ""
        await self.back_to_board()
        for length in range(1, len(word) + 1):
            gap = self.rng.uniform(0.08, 0.45)
            await asyncio.sleep(gap)
            if gap >= 0.3 or length == len(word):
                typed = word[:length]
                if typed != sent:
                    sent = typed
                    await self.swap("search", "/?" + urlencode({"q": typed, "status": "all"}))

    async def back_to_board(self) -> None:
        if self.page.url.startswith("/resources/"):
            await self.load("board", "/")

    async def do_facet(self) -> None:
        await self.back_to_board()
        self.status = self.rng.choice(FACETS)
        await self.swap("facet", "/?" + urlencode({"status": self.status}))

    async def do_page(self) -> None:
        await self.back_to_board()
        await self.swap("page", self.page.next_page or "/?page=2")

    async def do_resource(self) -> None:
        links = self.page.resources or ["/resources/resource:bench-gcl-0000"]
        await self.load("resource", self.rng.choice(links))

    async def do_board(self) -> None:
        await self.load("board", "/")

    async def do_api(self) -> None:
        url = self.rng.choice(
            [
                "/api/v1/resources?status=held",
                f"/api/v1/resources?search={self.rng.choice(SEARCHES)}",
                f"/api/v1/resources?page={self.rng.randint(1, 50)}",
                "/api/v1/resources/tag%3Abench-tag-0010",
            ]
        )
        await self.record.get(self.http, "api", url)


async def phase(base: str, sessions: list[str], seconds: float, seed: int) -> list[Sample]:
    recorder = Recorder()
    rng = random.Random(seed)
    viewers = [Viewer(base, s, recorder, random.Random(rng.random())) for s in sessions]
    until = time.monotonic() + seconds
    ramp = min(5.0, seconds / 10)

    async def start(index: int, viewer: Viewer) -> None:
        await asyncio.sleep(ramp * index / max(1, len(viewers)))
        await viewer.run(until)

    async def health() -> None:  # the cheapest request, as a load balancer sends it
        async with httpx.AsyncClient(base_url=base, timeout=15) as http:
            while time.monotonic() < until:
                await recorder.get(http, "healthz", "/healthz")
                await asyncio.sleep(1.0)

    try:
        await asyncio.gather(health(), *(start(i, v) for i, v in enumerate(viewers)))
    finally:
        await asyncio.gather(*(viewer.close() for viewer in viewers))
    return recorder.samples


# --- set-up -----------------------------------------------------------------------------
def make_viewers(count: int) -> list[str]:
    """Viewer accounts and their sessions, as a log-in would leave them."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore

    users = User.objects.bulk_create(
        [User(username=f"bench-viewer-{i:02d}", password=make_password(None)) for i in range(count)]
    )
    sessions = []
    for user in users:
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        sessions.append(session.session_key)
    return sessions


def stop(process: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group we started (by its pid), SIGKILL it after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and everything below it."""
    total = 0
    for member in {pid, *descendants(pid)}:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy so far (all cores; /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def database_cpu(server: str, name: str, seen: dict[int, float]) -> float:
    """CPU seconds PostgreSQL's backends spent for database `name` since `seen` was last updated
    (backends come and go: each pid counts from when it was first seen, or from its start)."""
    import psycopg

    with psycopg.connect(f"{server.rstrip('/')}/postgres", autocommit=True) as admin:
        pids = [
            row[0]
            for row in admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))
        ]
    spent = 0.0
    for pid in pids:
        now = cpu_seconds(pid)
        spent += now - seen.get(pid, 0.0)
        seen[pid] = now
    return spent


@contextlib.contextmanager
def web_server(workers: int, threads: int) -> Iterator[tuple[str, int]]:
    port = free_port()
    log = open(BENCH_DIR / "load-gunicorn.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "reslock_web.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--worker-class",
            "gthread",
            "--keep-alive",
            "5",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base) or process.poll() is not None, 60, 0.2, "gunicorn")
        if process.poll() is not None:
            raise SystemExit((BENCH_DIR / "load-gunicorn.log").read_text()[-2000:])
        yield base, process.pid
    finally:
        stop(process)
        log.close()


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def sync_loop(api_url: str) -> Iterator[list[dict]]:
    """The syncs in their own process; yields the list its JSON lines are collected into."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench._sync_loop", api_url, "--every", "10"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[dict] = []
    try:
        yield lines
    finally:
        stop(process, grace=60)  # it finishes the sync under way, then restores the limits
        lines += [json.loads(line) for line in process.stdout.read().splitlines() if line]


# --- report -----------------------------------------------------------------------------
def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def table(samples: list[Sample]) -> dict[str, dict[str, float]]:
    kinds: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        kinds[sample.kind].append(sample)
        if sample.kind != "healthz":
            kinds["overall"].append(sample)
    result = {}
    for kind, group in kinds.items():
        ms = [s.ms for s in group]
        result[kind] = {
            "count": len(group),
            "p50": statistics.median(ms),
            "p95": percentile(ms, 0.95),
            "max": max(ms),
            "errors": sum(not s.ok for s in group),
        }
    return result


def report(base: list[Sample], load: list[Sample], seconds: float, viewers: int) -> bool:
    one, many = table(base), table(load)
    order = sorted(
        (k for k in many if k not in ("overall", "healthz")), key=lambda k: -many[k]["count"]
    )
    print(
        f"\n{viewers} viewers for {seconds:.0f} s: {many['overall']['count']} requests "
        f"({many['overall']['count'] / seconds:.0f}/s), baseline = the same mix with 1 viewer"
    )
    print(
        f"{'':16} {'count':>6} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'errors':>6}"
        f" {'base p95':>9} {'p95 ratio':>9}"
    )
    for kind in [*order, "overall", "healthz"]:
        row, ref = many[kind], one.get(kind)
        ratio = f"{row['p95'] / ref['p95']:8.1f}x" if ref else f"{'-':>9}"
        base_p95 = f"{ref['p95']:9.1f}" if ref else f"{'-':>9}"
        print(
            f"{kind:16} {row['count']:6d} {row['p50']:7.1f} {row['p95']:7.1f} {row['max']:7.1f}"
            f" {row['errors']:6d} {base_p95} {ratio}"
        )
    errors = [s for s in load if not s.ok]
    for sample in errors[:10]:
        print(f"  error: {sample.kind}: {sample.detail}")
    overall = many["overall"]
    passed = overall["p95"] <= TARGET_P95_MS and overall["errors"] == 0
    print(
        f"\ntarget: overall p95 <= {TARGET_P95_MS:.0f} ms with 0 errors: "
        f"{'PASS' if passed else 'MISS'} (p95 {overall['p95']:.1f} ms, {overall['errors']} errors)"
    )
    return passed


def around_syncs(samples: list[Sample], syncs: list[dict], after: float = 2.0) -> None:
    """Where the slow requests are: while a sync runs (and `after` seconds after it, when every
    open page finds the board's version raised), or between syncs."""
    windows = [
        (line["at"] - line["ms"] / 1000, line["at"] + after) for line in syncs if line.get("ms")
    ]
    inside: list[float] = []
    outside: list[float] = []
    for sample in samples:
        if sample.kind != "healthz":
            near = any(start <= sample.at <= end for start, end in windows)
            (inside if near else outside).append(sample.ms)
    for label, values in (("during a sync or 2 s after", inside), ("between syncs", outside)):
        if values:
            print(
                f"  requests started {label}: {len(values)}, p50 {statistics.median(values):.1f} ms, "
                f"p95 {percentile(values, 0.95):.1f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--baseline-seconds", type=float, default=20)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    # What the Dockerfile and docker-compose.yml run: measure what ships.
    parser.add_argument("--web-workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=0.0,
        help="poll every N s instead of what the page says (hx-trigger)",
    )
    args = parser.parse_args()
    global POLL_SECONDS
    POLL_SECONDS = args.poll_seconds
    os.environ.update(
        SECRET_KEY="reslock-load-bench-only",
        RESLOCK_SECURE_COOKIES="false",  # plain http on loopback
        LOG_LEVEL="WARNING",
        ALLOWED_HOSTS="127.0.0.1,localhost",
    )
    url, drop = database(argparse.Namespace(postgres=args.postgres))
    try:
        with BenchPrefect() as prefect:
            prefect.prepare()
            os.environ["PREFECT_API_URL"] = prefect.api_url
            setup_django(url, migrate=True)
            from django.core.management import call_command
            from django.db import connections

            from reslock_web.models import Holder, Limit, Waiter
            from reslock_web.prefect_io.api import PrefectAPI
            from reslock_web.sync.run import sync_all

            call_command("collectstatic", interactive=False, verbosity=0)
            with PrefectAPI(prefect.api_url) as api:
                run = sync_all(api)
            assert run is not None and run.ok, run and run.error
            print(
                f"seeded: {Limit.objects.count()} resources, {Holder.objects.count()} holders, "
                f"{Waiter.objects.count()} waiters"
            )
            sessions = make_viewers(args.viewers)
            connections.close_all()
            load_before = os.getloadavg()
            with (
                web_server(args.web_workers, args.threads) as (base, web_pid),
                sync_loop(prefect.api_url) as syncs,
            ):
                # Warm every gunicorn process (imports, templates, connections) first.
                asyncio.run(phase(base, sessions[: args.web_workers * 2], 8, args.seed + 1))
                # The web server's own CPU per request: what the noisy machine does not change.
                dbname, backends = url.rsplit("/", 1)[1], {}
                database_cpu(args.postgres, dbname, backends)
                cpu = [cpu_seconds(web_pid)]
                client, machine = [time.process_time()], [machine_busy()]
                baseline = asyncio.run(phase(base, sessions[:1], args.baseline_seconds, args.seed))
                cpu.append(cpu_seconds(web_pid))
                db_cpu = [database_cpu(args.postgres, dbname, backends)]
                client.append(time.process_time())
                machine.append(machine_busy())
                load = asyncio.run(phase(base, sessions, args.seconds, args.seed))
                cpu.append(cpu_seconds(web_pid))
                client.append(time.process_time())
                machine.append(machine_busy())
                db_cpu.append(database_cpu(args.postgres, dbname, backends))
                load_after = os.getloadavg()
        durations = [line["ms"] for line in syncs if line.get("ms") is not None]
        print(
            f"\nconditions: {os.cpu_count()} cores; load average {load_before[0]:.1f} before, "
            f"{load_after[0]:.1f} after (1 min); gunicorn gthread {args.web_workers} workers x "
            f"{args.threads} threads; polls every "
            f"{f'{POLL_SECONDS:g} s' if POLL_SECONDS else 'interval the page says'}; PostgreSQL, the bench Prefect server and this client on "
            f"the same machine"
        )
        print(
            f"syncs during the run: {len(syncs)} ({sum(bool(s['ok']) for s in syncs)} ok), "
            f"{statistics.median(durations) if durations else 0:.0f} ms median, "
            f"{max(durations) if durations else 0} ms max, ~{syncs[-1]['updated'] if syncs else 0} "
            f"limits written each"
        )
        passed = report(baseline, load, args.seconds, args.viewers)
        around_syncs(load, syncs)
        cores = os.cpu_count() or 1
        for index, (label, samples, db, seconds) in enumerate(
            (
                ("1 viewer", baseline, db_cpu[0], args.baseline_seconds),
                (f"{args.viewers} viewers", load, db_cpu[1], args.seconds),
            )
        ):
            used = cpu[index + 1] - cpu[index]
            browsers = client[index + 1] - client[index]
            busy = machine[index + 1] - machine[index]
            print(
                f"CPU, {label}: web server {used * 1000 / len(samples):.1f} ms + PostgreSQL "
                f"{db * 1000 / len(samples):.1f} ms per request; in cores used on average: "
                f"web {used / seconds:.2f}, PostgreSQL {db / seconds:.2f}, the simulated "
                f"browsers {browsers / seconds:.2f}, the whole machine {busy / seconds:.2f} "
                f"of {cores} (the rest: the sync loop, Prefect, the system)"
            )
    finally:
        drop()
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
