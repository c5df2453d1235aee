"""`make run`'s launcher, run for real: it picks Prefect and a broker, serves the board, and
Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from reslock_web.demo import catalog
from tests.support.entry_points import run_entry_point
from tests.support.net import alive, descendants, free_port, wait_for
from tests.support.paths import BASE_DIR
from tests.support.prefect_server import migrated_template
from tests.support.redis_server import ensure_redis_url


class RunningLauncher:
    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.seconds: dict[str, float] = {}  # first arrival of each line, since the start
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reslock_web.launcher"],
            cwd=BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.seconds.setdefault(line.rstrip("\n"), time.monotonic() - self.started)
            self.lines.append(line.rstrip("\n"))

    def line(self, prefix: str) -> str | None:
        return next((line for line in self.lines if line.startswith(prefix)), None)

    def wait_line(self, prefix: str, timeout: float) -> str:
        return wait_for(lambda: self.line(prefix), timeout, what=f"{prefix!r} in {self.lines}")

    def seconds_until(self, prefix: str) -> float:
        return self.seconds[self.wait_line(prefix, 0)]

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=40)


def launcher_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.update(RESLOCK_VAR_DIR=str(tmp_path / "var"), RESLOCK_WEB_PORT=str(free_port()))
    env.update(extra)
    return env


def log_in(board: str, credentials_line: str) -> httpx.Client:
    username, password = re.search(r"log in as (\S+) / (\S+)\)", credentials_line).groups()
    http = httpx.Client(base_url=board, timeout=10, follow_redirects=True)
    login = http.get("/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
    page = http.post(
        "/login/", data={"username": username, "password": password, "csrfmiddlewaretoken": token}
    )
    assert page.status_code == 200 and "Lock board" in page.text, page.text[:500]
    return http


def heartbeats(var_dir: Path) -> int:
    with sqlite3.connect(var_dir / "reslock.sqlite3") as db:
        return db.execute("SELECT count(*) FROM reslock_heartbeat").fetchone()[0]


def applied_migrations(var_dir: Path) -> list[tuple]:
    with sqlite3.connect(var_dir / "reslock.sqlite3") as db:
        return db.execute("SELECT id, app, name, applied FROM django_migrations").fetchall()


def admin_accounts(var_dir: Path) -> list[tuple]:
    """With the password hash: a reset password, or an account made again, changes the row."""
    with sqlite3.connect(var_dir / "reslock.sqlite3") as db:
        return db.execute(
            "SELECT id, username, password, date_joined FROM auth_user WHERE is_superuser"
        ).fetchall()


def limit_names(api_url: str) -> set[str]:
    response = httpx.post(f"{api_url}/v2/concurrency_limits/filter", json={"limit": 200})
    response.raise_for_status()
    return {limit["name"] for limit in response.json()}


def demo_limit_names() -> set[str]:
    return {resource.limit_name for resource in catalog.resources(1)}


def assert_it_stopped_every_child(run: RunningLauncher, code: int, started: set[int]) -> None:
    assert code == 0, run.lines[-20:]
    assert run.lines[-1] == "[reslock] stopped"
    wait_for(lambda: not any(alive(pid) for pid in started), 15, what="every child to exit")


def report_start_up(which: str, run: RunningLauncher) -> None:
    """Shown with `pytest -s`; how fast it should be is a benchmark's business, not this test's."""
    sys.stdout.write(
        f"\n{which} launch: board up after {run.seconds_until('[reslock] Board:'):.1f} s, "
        f"Prefect ready after {run.seconds_until('[reslock] Prefect is ready'):.1f} s\n"
    )


def test_it_starts_prefect_redis_and_the_demo_itself_and_a_second_launch_reuses_them(tmp_path):
    var_dir = tmp_path / "var"
    dead_prefect = f"http://127.0.0.1:{free_port()}/api"
    prefect_port = free_port()
    local_prefect = f"http://127.0.0.1:{prefect_port}/api"
    env = launcher_env(
        tmp_path,
        PREFECT_API_URL=dead_prefect,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        RESLOCK_PREFECT_PORT=str(prefect_port),
        RESLOCK_HEARTBEAT_SECONDS="5",
        RESLOCK_DEMO_RESOURCES="1",  # the scenarios' own resources only
    )
    # A migrated Prefect database, as a second `make run` would find it, keeps this test short.
    (var_dir / "prefect").mkdir(parents=True)
    shutil.copyfile(migrated_template(), var_dir / "prefect" / "prefect.db")

    first = RunningLauncher(env)
    started: set[int] = set()
    try:
        assert first.wait_line("[reslock] PREFECT_API_URL", 30) == (
            f"[reslock] PREFECT_API_URL {dead_prefect} does not answer; "
            "starting a local Prefect server instead"
        )
        assert "local Prefect server started" in first.wait_line("[reslock] Prefect:", 30)
        assert f"redis-server started under {var_dir / 'redis'}" in first.line("[reslock] Broker:")
        board_line = first.wait_line("[reslock] Board:", 90)
        board = f"http://127.0.0.1:{env['RESLOCK_WEB_PORT']}/"
        http = log_in(board, board_line)
        stylesheet = re.search(
            r'href="(/static/reslock/reslock\.[0-9a-f]+\.css)"', http.get("/").text
        )
        assert stylesheet, "static files are served with hashed names by WhiteNoise"
        assert http.get(stylesheet.group(1)).status_code == 200
        first.wait_line("[reslock] Prefect is ready", 90)
        assert httpx.get(f"{local_prefect}/health").json() is True
        # Its own Prefect came up empty: the demo fills it, sized by RESLOCK_DEMO_RESOURCES.
        demo_line = first.wait_line("[reslock] Demo:", 30)
        assert "started `manage.py reslock_demo --resources 1`" in demo_line
        wait_for(
            lambda: demo_limit_names() <= limit_names(local_prefect), 90, what="demo resources"
        )
        httpx.post(
            f"{local_prefect}/v2/concurrency_limits/", json={"name": "kept-by-prefect", "limit": 2}
        ).raise_for_status()
        # beat -> Redis -> worker -> database: the whole background chain works.
        wait_for(lambda: heartbeats(var_dir) > 0, 30, what="a worker heartbeat")
        started = descendants(first.process.pid)
        assert len(started) >= 6  # prefect, redis, web, worker, beat, listener, demo
    finally:
        code = first.interrupt()
    assert_it_stopped_every_child(first, code, started)
    report_start_up("first", first)
    migrations, admins = applied_migrations(var_dir), admin_accounts(var_dir)

    second = RunningLauncher(env)
    started = set()
    try:
        assert "local Prefect server started" in second.wait_line("[reslock] Prefect:", 30)
        second_board_line = second.wait_line("[reslock] Board:", 90)
        assert second_board_line.split("(", 1)[1] == board_line.split("(", 1)[1]
        log_in(board, second_board_line)  # the same credentials still work
        second.wait_line("[reslock] Prefect is ready", 90)
        assert {"kept-by-prefect", *demo_limit_names()} <= limit_names(local_prefect)
        assert second.wait_line("[reslock] Demo:", 30) == (
            "[reslock] Demo:    not started "
            "(the local Prefect server already has concurrency limits)"
        )
        started = descendants(second.process.pid)
    finally:
        code = second.interrupt()
    assert_it_stopped_every_child(second, code, started)
    report_start_up("second", second)
    assert applied_migrations(var_dir) == migrations, "no migration is applied twice"
    assert admin_accounts(var_dir) == admins, "the admin account is kept as it was"


def test_it_uses_a_given_prefect_and_falls_back_to_the_filesystem_broker(tmp_path, prefect_server):
    env = launcher_env(
        tmp_path,
        PREFECT_API_URL=prefect_server.api_url,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        RESLOCK_START_REDIS="false",
        RESLOCK_HEARTBEAT_SECONDS="5",
    )
    run = RunningLauncher(env)
    try:
        prefect_line = run.wait_line("[reslock] Prefect:", 30)
        assert (
            prefect_line
            == f"[reslock] Prefect: PREFECT_API_URL {prefect_server.api_url} (it answers)"
        )
        assert "filesystem transport" in run.line("[reslock] Broker:")
        assert "RESLOCK_START_REDIS is off" in run.line("[reslock] Broker:")
        run.wait_line("[reslock] Board:", 90)
        wait_for(lambda: heartbeats(tmp_path / "var") > 0, 40, what="a heartbeat via the files")
        started = descendants(run.process.pid)
    finally:
        code = run.interrupt()
    assert code == 0
    assert not any(line.startswith("[reslock] stopping prefect") for line in run.lines)
    wait_for(lambda: not any(alive(pid) for pid in started), 10, what="every child to exit")
    assert prefect_server.process.poll() is None, "a Prefect server we did not start is left alone"


def test_it_uses_redis_at_redis_url_when_it_answers(tmp_path, prefect_server):
    redis_url = ensure_redis_url()  # the suite's Redis, on its RESLOCK_TEST_REDIS_DB database
    env = launcher_env(
        tmp_path,
        PREFECT_API_URL=prefect_server.api_url,
        REDIS_URL=redis_url,
        RESLOCK_HEARTBEAT_SECONDS="5",
    )
    run = RunningLauncher(env)
    started: set[int] = set()
    try:
        assert run.wait_line("[reslock] Broker:", 30) == (
            f"[reslock] Broker:  Redis at {redis_url} (it answers)"
        )
        run.wait_line("[reslock] Board:", 90)
        wait_for(lambda: heartbeats(tmp_path / "var") > 0, 40, what="a heartbeat via Redis")
        started = descendants(run.process.pid)
    finally:
        code = run.interrupt()
    assert_it_stopped_every_child(run, code, started)
    assert not (tmp_path / "var" / "redis").exists(), "no redis-server of its own"
    assert not any(line.startswith("[reslock] stopping redis") for line in run.lines)


def run_launcher_once(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reslock_web.launcher"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        # Read by the Django settings, which the launcher loads before it starts anything.
        ("DEBUG", "maybe", "one of true/false, yes/no, on/off, 1/0"),
        ("RESLOCK_SYNC_SECONDS", "10s", "a whole number >= 2 <= 3600"),
        ("PREFECT_API_URL", "127.0.0.1:4200/api", "a URL starting with http:// or https://"),
        # The launcher's own.
        ("RESLOCK_START_REDIS", "maybe", "one of true/false, yes/no, on/off, 1/0"),
        ("RESLOCK_DEMO_RESOURCES", "lots", "a whole number >= 1 <= 10000"),
        ("RESLOCK_WEB_PORT", "eighty", "a port number (1-65535)"),
        ("RESLOCK_PREFECT_PORT", "eighty", "a port number (1-65535)"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line_before_anything_starts(
    tmp_path, variable, value, expected
):
    ports = [free_port(), free_port(), free_port()]
    env = launcher_env(
        tmp_path,
        RESLOCK_WEB_PORT=str(ports[0]),
        RESLOCK_PREFECT_PORT=str(ports[1]),
        REDIS_URL=f"redis://127.0.0.1:{ports[2]}/0",
    )
    env[variable] = value
    result = run_launcher_once(env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"reslock: configuration error: {variable}={value!r} is not valid: expected {expected}"
    ]
    # Nothing was started: it said nothing, made no Prefect, Redis or log folder, holds no port.
    assert result.stdout == ""
    var_dir = tmp_path / "var"
    assert not [name for name in ("prefect", "redis", "log") if (var_dir / name).exists()]
    assert all(port_is_free(port) for port in ports)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_it_refuses_a_taken_web_port_with_a_clear_message(tmp_path, prefect_server):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = launcher_env(tmp_path, PREFECT_API_URL=prefect_server.api_url)
        env["RESLOCK_WEB_PORT"] = str(busy.getsockname()[1])
        result = run_launcher_once(env)
    assert result.returncode == 1
    assert f"error: port {env['RESLOCK_WEB_PORT']} is taken" in result.stdout


def test_what_the_launcher_says_never_carries_a_urls_password(capsys):
    from reslock_web import launcher

    launcher.say("Broker:  Redis at redis://:s3cret-pw@127.0.0.1:6379/0 (it answers)")
    launcher.say("PREFECT_API_URL https://bob:s3:cr@t@prefect.example/api does not answer")
    out = capsys.readouterr().out
    assert "s3cret-pw" not in out and "s3:cr" not in out
    assert "redis://:[redacted]@127.0.0.1:6379/0" in out
    assert "https://bob:[redacted]@prefect.example/api" in out


def test_secret_files_are_created_private_not_opened_up_and_closed_later(tmp_path, monkeypatch):
    from reslock_web import launcher

    # Only the mode a file is created with counts: a chmod afterwards leaves a window.
    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)
    old = os.umask(0o022)
    try:
        key = launcher.secret_key(tmp_path)
    finally:
        os.umask(old)
    path = tmp_path / "secret_key"
    assert path.stat().st_mode & 0o777 == 0o600 and len(key) > 40
    assert launcher.secret_key(tmp_path) == key  # kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret_key"]  # nothing left over


def test_the_var_folder_and_the_sqlite_database_are_for_our_user_alone(tmp_path):
    from reslock_web import launcher

    old = tmp_path / "old-var"
    old.mkdir(mode=0o755)
    launcher.prepare_var_dir(old)
    assert old.stat().st_mode & 0o777 == 0o700
    var = tmp_path / "fresh-var"
    code = (
        "import os; os.umask(0o022); import django; django.setup(); "
        "from django.db import connection; connection.ensure_connection(); "
        "connection.cursor().execute('create table t (x)')"
    )
    result = run_entry_point(code, RESLOCK_VAR_DIR=str(var), DATABASE_URL=None)
    assert result.returncode == 0, result.stderr
    assert var.stat().st_mode & 0o777 == 0o700
    files = sorted(var.glob("reslock.sqlite3*"))
    assert files and all(f.stat().st_mode & 0o077 == 0 for f in files), [
        (f.name, oct(f.stat().st_mode)) for f in files
    ]


def test_prefect_and_redis_started_by_the_launcher_get_none_of_our_secrets(tmp_path, monkeypatch):
    from reslock_web import launcher

    started: dict[str, dict[str, str]] = {}

    class FakeProcess:
        pid = 0

    def fake_popen(args, **kwargs):
        started[Path(args[0]).name if "prefect" not in args else "prefect"] = kwargs["env"]
        return FakeProcess()

    monkeypatch.setattr(launcher.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(launcher, "http_ok", lambda url, timeout=2.0: False)
    monkeypatch.setattr(launcher, "port_is_free", lambda host, port: True)
    monkeypatch.setattr(launcher, "wait_until", lambda *args, **kwargs: True)
    secrets = {
        "SECRET_KEY": "k" * 50,
        "DATABASE_URL": "postgres://u:p@db/x",
        "REDIS_URL": "redis://:p@127.0.0.1:6379/0",
        "RESLOCK_ADMIN_PASSWORD": "pw",
        "RESLOCK_METRICS_TOKEN": "tok",
        "PREFECT_API_KEY": "pnu_x",
    }
    (tmp_path / "log").mkdir()
    running = launcher.Launcher({"PATH": os.environ["PATH"], **secrets}, tmp_path)
    launcher.choose_prefect(running)
    launcher._start_redis(running, "redis://127.0.0.1:6399/0")
    assert set(started) == {"prefect", "redis-server"}, started
    for env in started.values():
        assert not set(secrets) & set(env), env
        assert env["PATH"] == os.environ["PATH"]
    assert running.environ["SECRET_KEY"] == "k" * 50  # reslock's own processes still get it
