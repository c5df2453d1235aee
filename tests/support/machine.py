"""What `make test` needs from the machine: Chromium, Redis, Python's venv, promtool. Run before
the suite.

`python3 -m tests.support.machine` (the Makefile's first step, before the venv exists: standard
library only) finds each of them, installs what is missing with apt-get when it runs as root,
and otherwise stops within seconds with one line naming what to install. The suite finds the
browser with `find_chromium()` too, so both agree on which one runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# Names a Chromium goes by on PATH (Debian, Ubuntu and others, Google's build).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# promtool checks deploy/prometheus/alerts.yml (tests/web/test_alert_rules.py); Debian ships it in
# the prometheus package, whose server the suite never starts.
PACKAGES = {
    "chromium": "chromium",
    "redis-server": "redis-server",
    "venv": "python3-venv",
    "promtool": "prometheus",
}


def find_chromium(env: Mapping[str, str] = os.environ) -> str | None:
    """RESLOCK_CHROMIUM if set, else a Chromium on PATH, else one Playwright downloaded."""
    given = env.get("RESLOCK_CHROMIUM", "").strip()
    if given:
        return given if os.access(given, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name, path=env.get("PATH", ""))
        if found:
            return found
    home = env.get("HOME", "")
    cache = env.get("PLAYWRIGHT_BROWSERS_PATH") or (f"{home}/.cache/ms-playwright" if home else "")
    if cache:
        for candidate in sorted(Path(cache).glob("chromium-*/chrome-linux*/chrome"), reverse=True):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def find_promtool(env: Mapping[str, str] = os.environ) -> str | None:
    return shutil.which("promtool", path=env.get("PATH", ""))


def redis_answers(port: int = 6379) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def has_venv() -> bool:
    try:
        import ensurepip  # noqa: F401
        import venv  # noqa: F401
    except ImportError:
        return False
    return True


def missing(env: Mapping[str, str] = os.environ) -> list[str]:
    """What the suite cannot run without, by Debian package name."""
    lacking = []
    if find_chromium(env) is None:
        lacking.append(PACKAGES["chromium"])
    # The suite starts a redis-server of its own when none answers (tests/support/redis_server).
    if not redis_answers() and not shutil.which("redis-server", path=env.get("PATH", "")):
        lacking.append(PACKAGES["redis-server"])
    if not has_venv():
        lacking.append(PACKAGES["venv"])
    if find_promtool(env) is None:
        lacking.append(PACKAGES["promtool"])
    return lacking


def can_install(env: Mapping[str, str]) -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get", path=env.get("PATH", "")) is not None


def install(packages: list[str]) -> bool:
    sys.stdout.write(f"make test: installing {' '.join(packages)} with apt-get\n")
    sys.stdout.flush()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]
    for command in (
        ["apt-get", *wait, "update", "-qq"],
        ["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-2000:])
            return False
    return True


def main(env: Mapping[str, str] = os.environ) -> int:
    lacking = missing(env)
    if lacking and can_install(env) and install(lacking):
        lacking = missing(env)
    if not lacking:
        return 0
    names = " ".join(lacking)
    hints = []
    if PACKAGES["chromium"] in lacking:
        hints.append("or set RESLOCK_CHROMIUM to a Chromium or Chrome binary")
    if PACKAGES["promtool"] in lacking:
        hints.append(
            "prometheus brings promtool, which checks the alert rules; its server need not run"
        )
    hint = f" ({'; '.join(hints)})" if hints else ""
    sys.stderr.write(
        f"make test: this machine lacks {names}: install with `sudo apt-get install {names}`"
        f"{hint}, then run make test again\n"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
