"""`make run`: bring up the whole board on one machine with nothing else installed.

It picks a Prefect server and a Celery broker (reusing what answers, starting what it can),
prepares the database, then runs web, worker and beat in the foreground. Ctrl-C (or SIGTERM)
stops every process it started, and only those.

This module does not import Django: it only starts processes that do. It is one module, longer
than the others, on purpose: it runs before anything is prepared, and read top to bottom
(probes, choices, then `launch`) it is the whole start-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# The password of a URL (`scheme://user:password@host`) in anything said: PREFECT_API_URL,
# REDIS_URL and CELERY_BROKER_URL are printed as chosen.
_URL_PASSWORD = re.compile(r"(?P<user>[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#:@]*):[^\s/?#]*@")


def hide_passwords(text: str) -> str:
    return _URL_PASSWORD.sub(r"\g<user>:[redacted]@", text)


def say(message: str) -> None:
    sys.stdout.write(f"[reslock] {hide_passwords(message)}\n")
    sys.stdout.flush()


class LaunchError(Exception):
    """Something the person running `make run` has to fix; the message says what."""


class BadSetting(LaunchError):
    """A variable with a value of the wrong form (exit code 2, like the Django entry points)."""


# The launcher's own variables, read without Django but refused in the same words as
# reslock_web.env refuses the settings'.
CONFIG_ERROR = "reslock: configuration error: "  # = reslock_web.startup's prefix
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def env_port(env: dict[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise BadSetting(f"{name}={value!r} is not valid: expected a port number (1-65535)")
    return int(value)


def env_bool(env: dict[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip()
    if not value:
        return default
    if value.lower() in TRUE_WORDS | FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise BadSetting(
        f"{name}={value!r} is not valid: expected one of true/false, yes/no, on/off, 1/0"
    )


def env_int(env: dict[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or not minimum <= int(value) <= maximum:
        raise BadSetting(
            f"{name}={value!r} is not valid: expected a whole number >= {minimum} <= {maximum}"
        )
    return int(value)


def demo_resources(env: dict[str, str]) -> int:
    return env_int(env, "RESLOCK_DEMO_RESOURCES", 300, minimum=1, maximum=10_000)


def check_settings(environ: dict[str, str]) -> None:
    """Refuse a bad value before anything starts: a Prefect server or a redis-server started
    for a launch that then fails on DEBUG=maybe would only hide the one line that matters."""
    env_port(environ, "RESLOCK_WEB_PORT", 8000)
    env_port(environ, "RESLOCK_PREFECT_PORT", 4200)
    env_bool(environ, "RESLOCK_START_REDIS", True)
    demo_resources(environ)
    check_django_settings(environ)


def check_django_settings(environ: dict[str, str]) -> None:
    """Load the settings in a child, the way every process started later will load them."""
    # The key `make run` generates is not written yet: stand in for it, not for one given empty.
    env = {"SECRET_KEY": "launcher-check-" + "x" * 40, **environ}
    result = subprocess.run(
        [PYTHON, "-c", "from reslock_web.startup import configure_or_exit; configure_or_exit()"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stderr.strip().splitlines()
    if result.returncode == 2 and len(lines) == 1 and lines[0].startswith(CONFIG_ERROR):
        raise BadSetting(lines[0].removeprefix(CONFIG_ERROR))
    if result.returncode != 0:
        raise LaunchError(f"the settings do not load:\n{result.stderr.strip()}")


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: Path | None = None
    optional: bool = False  # its exit is reported, and the rest keeps running (the demo)
    reported: bool = False


@dataclass
class Launcher:
    environ: dict[str, str]
    var_dir: Path
    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    # --- processes -------------------------------------------------------------------
    def start(
        self,
        name: str,
        args: list[str],
        *,
        log: Path | None = None,
        optional: bool = False,
        service: bool = False,
    ) -> Child:
        """Start a child; a `service` (not reslock) gets no secret of ours in its environment."""
        out = open(log, "ab") if log else None  # noqa: SIM115 - lives as long as the child
        # Each child leads its own process group so that stopping it also stops whatever it
        # spawned (Prefect's server forks uvicorn, Celery forks pool workers).
        process = subprocess.Popen(
            args,
            cwd=BASE_DIR,
            env=service_environ(self.environ) if service else self.environ,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        child = Child(name, process, log, optional)
        self.children.append(child)
        return child

    def run_step(self, what: str, args: list[str]) -> str:
        result = subprocess.run(
            args, cwd=BASE_DIR, env=self.environ, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise LaunchError(f"{what} failed:\n{result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    def stop_all(self) -> None:
        self.stopping.set()
        # The demo first, while Prefect still answers: its flows then end their runs and give
        # their slots back, instead of leaving them held on a server that forgets the leases.
        optional = [child for child in self.children if child.optional]
        for child in optional:
            _signal_group(child.process, signal.SIGTERM)
        for child in optional:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=12)
        for child in reversed(self.children):
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in reversed(self.children):
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop in time; killing it")
        for child in self.children:
            # Also reap grandchildren still in the group after their leader exited.
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait()

    def supervise(self) -> int:
        while not self.stopping.is_set():
            for child in self.children:
                code = child.process.poll()
                if code is not None and not self.stopping.is_set():
                    where = f" (see {child.log})" if child.log else ""
                    if child.optional:
                        if not child.reported:
                            child.reported = True
                            say(f"{child.name} exited with code {code}{where}; the rest goes on")
                        continue
                    say(f"{child.name} exited with code {code}{where}; stopping everything")
                    return 1
            self.stopping.wait(0.5)
        return 0


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


# --- probes ----------------------------------------------------------------------------
def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our URLs
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """A raw PING, so that the probe needs nothing but the standard library."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or parts.scheme == "rediss":
        return False
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout
        ) as s:
            if parts.password:
                user = parts.username or "default"
                s.sendall(f"AUTH {user} {parts.password}\r\n".encode())
                s.recv(64)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_until(check, timeout: float, stop: threading.Event | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if stop is not None and stop.is_set():
            return False
        time.sleep(0.3)
    return False


# --- choices ---------------------------------------------------------------------------
def prepare_var_dir(var_dir: Path) -> None:
    """Local state (the database with its sessions, generated secrets): for our user alone."""
    var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if var_dir.stat().st_uid == os.getuid():
        var_dir.chmod(0o700)  # a folder made by an older version, or by hand


def write_private(path: Path, text: str) -> None:
    """Create `path` holding `text`, readable by our user alone from its first byte on.

    The file is written under a temporary name created with mode 0600, then linked into
    place: nobody ever sees it wider open or half written, and an existing file is kept.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        with contextlib.suppress(FileExistsError):  # another launch wrote it first
            os.link(temporary, path)
    finally:
        temporary.unlink()


def secret_key(var_dir: Path) -> str:
    path = var_dir / "secret_key"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(50))
    return path.read_text().strip()


# What only reslock's own processes may see: a Prefect server, a redis-server and the demo's
# flows get the environment without these.
PRIVATE_ENV = re.compile(
    r"^(SECRET_KEY|DATABASE_URL|REDIS_URL|CELERY_BROKER_URL|PREFECT_API_KEY)$"
    r"|PASSWORD|TOKEN|SECRET"
)


def service_environ(environ: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in environ.items() if not PRIVATE_ENV.search(key)}


def choose_prefect(launcher: Launcher) -> tuple[str, str]:
    """Returns (api url, how it was chosen). May start a local server in the background."""
    env = launcher.environ
    given = env.get("PREFECT_API_URL", "").strip()
    if given:
        if http_ok(given.rstrip("/") + "/health"):
            return given, f"PREFECT_API_URL {given} (it answers)"
        say(f"PREFECT_API_URL {given} does not answer; starting a local Prefect server instead")
    port = env_port(env, "RESLOCK_PREFECT_PORT", 4200)
    url = f"http://127.0.0.1:{port}/api"
    if http_ok(url + "/health"):
        return url, f"the Prefect server already answering at {url}"
    if not port_is_free("127.0.0.1", port):
        raise LaunchError(
            f"port {port} is taken by something that is not a Prefect server; "
            "free it or set PREFECT_API_URL or RESLOCK_PREFECT_PORT"
        )
    home = launcher.var_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    prefect_env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_API_URL": url,
    }
    saved = launcher.environ
    launcher.environ = {**saved, **prefect_env}
    launcher.start(
        "prefect server",
        [PYTHON, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        log=launcher.var_dir / "log" / "prefect.log",
        service=True,
    )
    launcher.environ = saved
    fresh = not (home / "prefect.db").exists()
    return (
        url,
        f"a local Prefect server started at {url} (data in {home}{', first start: ~30 s' if fresh else ''})",
    )


def choose_broker(launcher: Launcher) -> tuple[str, str]:
    env = launcher.environ
    if env.get("CELERY_BROKER_URL", "").strip():
        return env["CELERY_BROKER_URL"], "CELERY_BROKER_URL as given"
    redis_url = env.get("REDIS_URL", "").strip() or "redis://127.0.0.1:6379/0"
    if redis_answers(redis_url):
        return redis_url, f"Redis at {redis_url} (it answers)"
    why_not = _why_not_start_redis(env, redis_url)
    if why_not is None:
        return redis_url, _start_redis(launcher, redis_url)
    folder = launcher.var_dir / "broker"
    for sub in ("messages", "processed"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    launcher.environ["RESLOCK_BROKER_DIR"] = str(folder)
    return "filesystem://", (
        f"Celery's filesystem transport under {folder} "
        f"(Redis at {redis_url} does not answer and {why_not})"
    )


def _why_not_start_redis(env: dict[str, str], redis_url: str) -> str | None:
    parts = urlsplit(redis_url)
    if not env_bool(env, "RESLOCK_START_REDIS", True):
        return "RESLOCK_START_REDIS is off"
    if not shutil.which("redis-server", path=env.get("PATH")):
        return "no redis-server is installed"
    if parts.scheme != "redis" or parts.hostname not in ("127.0.0.1", "localhost"):
        return "it is not on this machine"
    if not port_is_free("127.0.0.1", parts.port or 6379):
        return f"port {parts.port or 6379} is taken by something else"
    return None


def _start_redis(launcher: Launcher, redis_url: str) -> str:
    port = urlsplit(redis_url).port or 6379
    folder = launcher.var_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    log = launcher.var_dir / "log" / "redis.log"
    binary = shutil.which("redis-server", path=launcher.environ.get("PATH")) or "redis-server"
    launcher.start(
        "redis-server",
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        log=log,
        service=True,
    )
    if not wait_until(lambda: redis_answers(redis_url), 15):
        raise LaunchError(f"redis-server did not answer; see {log}")
    return f"redis-server started under {folder} on 127.0.0.1:{port}"


# --- main ------------------------------------------------------------------------------
def launch(environ: dict[str, str]) -> int:
    var_dir = Path(environ.get("RESLOCK_VAR_DIR") or BASE_DIR / "var").resolve()
    environ = {**environ, "RESLOCK_VAR_DIR": str(var_dir), "PYTHONUNBUFFERED": "1"}
    # The web server here speaks plain http on 127.0.0.1: HTTPS-only cookies would never return.
    environ.setdefault("RESLOCK_SECURE_COOKIES", "false")
    try:
        check_settings(environ)
    except LaunchError as error:
        return failed(error)
    prepare_var_dir(var_dir)
    (var_dir / "log").mkdir(parents=True, exist_ok=True)
    environ.setdefault("SECRET_KEY", secret_key(var_dir))
    launcher = Launcher(environ, var_dir)

    def on_signal(signum: int, frame: object) -> None:
        launcher.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        web_port = env_port(environ, "RESLOCK_WEB_PORT", 8000)
        if not port_is_free("127.0.0.1", web_port):
            raise LaunchError(
                f"port {web_port} is taken; stop what uses it or set RESLOCK_WEB_PORT"
            )
        prefect_url, prefect_why = choose_prefect(launcher)
        broker_url, broker_why = choose_broker(launcher)
        launcher.environ.update({"PREFECT_API_URL": prefect_url, "CELERY_BROKER_URL": broker_url})
        say(f"Prefect: {prefect_why}")
        say(f"Broker:  {broker_why}")

        manage = [PYTHON, "manage.py"]
        # Migrate, static files (only when changed), admin user: one Django start-up.
        credentials = launcher.run_step("prepare", [*manage, "reslock_prepare"]).strip()

        launcher.start(
            "web",
            [
                PYTHON,
                "-m",
                "gunicorn",
                "reslock_web.wsgi",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "--access-logfile",
                "-",
                "--log-level",
                "warning",
            ],
        )
        launcher.start(
            "worker",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "reslock_web.celery",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "2",
                "--hostname",
                "reslock@%h",
            ],
        )
        launcher.start(
            "beat",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "reslock_web.celery",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(var_dir / "celerybeat-schedule"),
            ],
        )
        # Live updates: it reconnects by itself while a local Prefect is still starting.
        launcher.start(
            "listener", [*manage, "reslock_listen"], log=var_dir / "log" / "listener.log"
        )
        board = f"http://127.0.0.1:{web_port}/"
        if not wait_until(lambda: http_ok(board + "healthz"), 60, launcher.stopping):
            if launcher.stopping.is_set():
                return 0
            raise LaunchError("the web server did not come up within 60 s")
        say(f"Board:   {board}  ({credentials})")
        threading.Thread(target=_report_prefect, args=(launcher, prefect_url), daemon=True).start()
        say("Press Ctrl-C to stop everything.")
        return launcher.supervise()
    except LaunchError as error:
        return failed(error)
    finally:
        if launcher.children:
            say("stopping " + ", ".join(child.name for child in launcher.children))
            launcher.stop_all()
            say("stopped")


def failed(error: LaunchError) -> int:
    """Say why the launch stopped; the exit code. A bad value gets the one stderr line (and
    code 2) that every Django entry point gives it."""
    if isinstance(error, BadSetting):
        sys.stderr.write(f"{CONFIG_ERROR}{hide_passwords(str(error))}\n")
        sys.stderr.flush()
        return 2
    say(f"error: {error}")
    return 1


def _report_prefect(launcher: Launcher, url: str) -> None:
    if wait_until(lambda: http_ok(url + "/health"), 240, launcher.stopping):
        say(f"Prefect is ready: {url.removesuffix('/api')}")
        _start_demo(launcher, url)
    elif not launcher.stopping.is_set():
        say(
            f"Prefect at {url} is still not answering; see {launcher.var_dir / 'log' / 'prefect.log'}"
        )


# --- the demo ----------------------------------------------------------------------------
# Only on the Prefect server the launcher started itself, and only while it has no concurrency
# limits (a fresh one): `manage.py reslock_demo` then fills it with resources and real flows.
LOCAL_PREFECT_ENV = "RESLOCK_LOCAL_PREFECT"  # = reslock_web.demo.LOCAL_PREFECT_ENV


def _prefect_is_empty(url: str) -> bool:
    request = urllib.request.Request(  # noqa: S310 - our own server
        url.rstrip("/") + "/v2/concurrency_limits/filter",
        data=b'{"limit": 1}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read()) == []
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _start_demo(launcher: Launcher, url: str) -> None:
    ours = any(child.name == "prefect server" for child in launcher.children)
    if not ours or launcher.stopping.is_set():
        return
    if not _prefect_is_empty(url):
        say("Demo:    not started (the local Prefect server already has concurrency limits)")
        return
    log = launcher.var_dir / "log" / "demo.log"
    launcher.environ[LOCAL_PREFECT_ENV] = url  # the demo refuses any other Prefect
    command = ["manage.py", "reslock_demo", "--resources", str(demo_resources(launcher.environ))]
    child = launcher.start("demo", [PYTHON, *command], log=log, optional=True)
    if launcher.stopping.is_set():  # Ctrl-C came while it started: stop_all may have missed it
        _signal_group(child.process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=12)
        _signal_group(child.process, signal.SIGKILL)
        return
    say(
        f"Demo:    started `{' '.join(command)}` on this empty Prefect: resources and "
        "flows that hold, queue for, leak, crash on and deadlock over some of them "
        f"(log: {log})"
    )


def main() -> None:
    sys.exit(launch(dict(os.environ)))


if __name__ == "__main__":
    main()
