"""`make run`'s launcher, run for real: it picks Prefect and a broker, serves the board, and
Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.net import alive, descendants, free_port, wait_for
from tests.support.prefect_server import migrated_template

BASE_DIR = Path(__file__).resolve().parent.parent


class RunningLauncher:
    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
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
            self.lines.append(line.rstrip("\n"))

    def line(self, prefix: str) -> str | None:
        return next((line for line in self.lines if line.startswith(prefix)), None)

    def wait_line(self, prefix: str, timeout: float) -> str:
        return wait_for(lambda: self.line(prefix), timeout, what=f"{prefix!r} in {self.lines}")

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


def test_it_starts_prefect_and_redis_itself_and_ctrl_c_stops_everything(tmp_path):
    redis_port = free_port()
    prefect_port = free_port()
    env = launcher_env(
        tmp_path,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        RESLOCK_PREFECT_PORT=str(prefect_port),
        RESLOCK_HEARTBEAT_SECONDS="5",
    )
    # A migrated Prefect database, as a second `make run` would find it, keeps this test short.
    (tmp_path / "var" / "prefect").mkdir(parents=True)
    shutil.copyfile(migrated_template(), tmp_path / "var" / "prefect" / "prefect.db")
    run = RunningLauncher(env)
    try:
        assert "local Prefect server started" in run.wait_line("[reslock] Prefect:", 30)
        assert f"redis-server started under {tmp_path / 'var' / 'redis'}" in run.line(
            "[reslock] Broker:"
        )
        board_line = run.wait_line("[reslock] Board:", 90)
        board = f"http://127.0.0.1:{env['RESLOCK_WEB_PORT']}/"
        http = log_in(board, board_line)
        stylesheet = re.search(
            r'href="(/static/reslock/reslock\.[0-9a-f]+\.css)"', http.get("/").text
        )
        assert stylesheet, "static files are served with hashed names by WhiteNoise"
        assert http.get(stylesheet.group(1)).status_code == 200
        run.wait_line("[reslock] Prefect is ready", 90)
        assert httpx.get(f"http://127.0.0.1:{prefect_port}/api/health").json() is True
        # beat -> Redis -> worker -> database: the whole background chain works.
        wait_for(lambda: heartbeats(tmp_path / "var") > 0, 30, what="a worker heartbeat")
        started = descendants(run.process.pid)
        assert len(started) >= 5
    finally:
        code = run.interrupt()
    assert code == 0, run.lines[-20:]
    assert run.lines[-1] == "[reslock] stopped"
    wait_for(lambda: not any(alive(pid) for pid in started), 10, what="every child to exit")


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


def test_it_refuses_a_taken_web_port_with_a_clear_message(tmp_path, prefect_server):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = launcher_env(tmp_path, PREFECT_API_URL=prefect_server.api_url)
        env["RESLOCK_WEB_PORT"] = str(busy.getsockname()[1])
        result = subprocess.run(
            [sys.executable, "-m", "reslock_web.launcher"],
            cwd=BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"error: port {env['RESLOCK_WEB_PORT']} is taken" in result.stdout


@pytest.mark.parametrize("variable", ["RESLOCK_WEB_PORT", "RESLOCK_PREFECT_PORT"])
def test_a_bad_port_is_refused_in_one_line(tmp_path, variable):
    env = launcher_env(tmp_path, **{variable: "eighty"})
    result = subprocess.run(
        [sys.executable, "-m", "reslock_web.launcher"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout.strip().splitlines()[-1] == (
        f"[reslock] error: {variable}='eighty' is not valid: expected a port number (1-65535)"
    )
