"""`make test` prepares the machine itself, or says in one line what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.machine import find_chromium, find_promtool
from tests.support.paths import BASE_DIR


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def check_machine(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.machine"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - started


def test_without_a_browser_it_stops_within_seconds_naming_what_to_install(tmp_path):
    # No Chromium on PATH, none downloaded by Playwright, no apt-get to install one with.
    (tmp_path / "bin").mkdir()
    env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}
    result, seconds = check_machine(env)
    assert result.returncode == 1 and seconds < 10
    [line] = result.stderr.splitlines()
    assert "chromium" in line and "apt-get install" in line and "RESLOCK_CHROMIUM" in line
    assert result.stdout == ""


def test_a_browser_installed_elsewhere_is_found(tmp_path):
    executable(tmp_path / "bin" / "redis-server")
    executable(tmp_path / "bin" / "promtool")
    chrome = executable(tmp_path / "bin" / "chromium-browser")
    env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}
    result, _ = check_machine(env)
    assert result.returncode == 0, result.stderr
    assert find_chromium(env) == str(chrome)


def test_without_promtool_it_names_the_package_that_brings_it(tmp_path):
    executable(tmp_path / "bin" / "redis-server")
    executable(tmp_path / "bin" / "chromium")
    env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}
    result, seconds = check_machine(env)
    assert result.returncode == 1 and seconds < 10
    [line] = result.stderr.splitlines()
    assert "lacks prometheus:" in line and "`sudo apt-get install prometheus`" in line
    assert "promtool" in line and "chromium" not in line
    promtool = executable(tmp_path / "bin" / "promtool")
    assert find_promtool(env) == str(promtool)


def test_a_browser_that_playwright_downloaded_or_one_named_is_found(tmp_path):
    downloaded = executable(tmp_path / ".cache/ms-playwright/chromium-1187/chrome-linux/chrome")
    assert find_chromium({"PATH": "", "HOME": str(tmp_path)}) == str(downloaded)
    named = executable(tmp_path / "opt" / "chrome")
    assert find_chromium({"PATH": "", "RESLOCK_CHROMIUM": str(named)}) == str(named)
    assert find_chromium({"PATH": "", "RESLOCK_CHROMIUM": str(tmp_path / "nothing")}) is None


def test_make_test_prepares_the_machine_first_and_ci_only_calls_it():
    makefile = (BASE_DIR / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    steps = [line.strip() for line in recipe.splitlines() if line.startswith("\t")]
    assert steps[0] == "$(PYTHON) -m tests.support.machine"
    assert steps[-1].startswith("$(BIN)/python -m pytest")
    ci = (BASE_DIR / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line and not line.startswith("#")]
    assert commands[-1] == "make test"
    assert "apt-get" not in ci and "redis-server" not in ci
    assert os.access(BASE_DIR / ".ci" / "run", os.X_OK)


@pytest.mark.skipif(not shutil.which("initdb"), reason="PostgreSQL is not installed here")
def test_where_no_postgresql_answers_one_is_started_for_the_run_and_stopped_after():
    code = (
        "import psycopg; from tests.support import postgres; url = postgres.start_server(); "
        "psycopg.connect(url + '/postgres').execute('select 1'); print(url)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith("postgresql://postgres@127.0.0.1:") and url != postgres.DEFAULT
    assert not postgres.answers(url)  # stopped when the run ended
