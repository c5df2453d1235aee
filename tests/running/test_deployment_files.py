"""docker-compose.yml, the Dockerfile and the README's settings table agree with the code.

Docker cannot run on the test machines, so the compose file is checked against what it names:
management commands that exist, modules that import, and an environment the settings accept.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml
from celery import Celery
from django.core.management import get_commands

from tests.support.paths import BASE_DIR

COMPOSE = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OURS = [name for name, service in SERVICES.items() if service.get("image") == "reslock:latest"]


def substitute(value: str) -> str:
    """Resolve ${VAR:-default} and ${VAR:?message} the way compose would with an .env file."""
    env = {"SECRET_KEY": "s" * 50, "RESLOCK_ADMIN_PASSWORD": "from-dot-env"}

    def one(match: re.Match) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if name in env:
            return env[name]
        if op == ":?":
            raise AssertionError(f"{name} is required by compose and missing from the test .env")
        return rest or ""

    return re.sub(r"\$\{([A-Z_]+)(?:(:-|:\?)([^}]*))?\}", one, value)


def command_words(service: dict) -> list[str]:
    command = service["command"]
    return command if isinstance(command, list) else shlex.split(command)


def commands_of(service: dict) -> list[list[str]]:
    words = command_words(service)
    if words[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in words[2].split("&&")]
    return [words]


def test_it_has_every_service_a_deployment_needs():
    assert {"redis", "postgres", "prefect", "migrate", "web", "worker", "beat", "listener"} <= set(
        SERVICES
    )
    assert SERVICES["prefect"]["image"] == "prefecthq/prefect:3.9.1-python3.11"
    assert command_words(SERVICES["prefect"]) == ["prefect", "server", "start", "--host", "0.0.0.0"]
    assert set(OURS) == {"migrate", "web", "worker", "beat", "listener"}
    assert all(SERVICES[name]["build"] == "." for name in OURS)


@pytest.mark.parametrize("name", OURS)
def test_each_command_names_something_that_exists(name):
    for words in commands_of(SERVICES[name]):
        if words[:2] == ["python", "manage.py"]:
            assert words[2] in get_commands(), f"{name}: no management command {words[2]}"
        elif words[0] == "gunicorn":
            module, _, attr = words[1].partition(":")
            assert hasattr(importlib.import_module(module), attr or "application")
        elif words[0] == "celery":
            assert words[1] == "-A"
            app = importlib.import_module(words[2]).app
            assert isinstance(app, Celery)
            assert words[3] in {"worker", "beat"}
        else:
            pytest.fail(f"{name}: unexpected command {words}")


@pytest.mark.parametrize("name", OURS)
def test_each_environment_is_accepted_by_the_real_settings(name):
    environment = {
        key: substitute(str(value)) for key, value in SERVICES[name]["environment"].items()
    }
    code = (
        "from reslock_web.startup import configure_or_exit; configure_or_exit(); "
        "from django.conf import settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.DATABASES['default']['HOST'], "
        "s.CELERY_BROKER_URL, s.PREFECT_API_URL, s.DEBUG)"
    )
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "reslock_web.settings",
        **environment,
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.postgresql",
        "postgres",
        "redis://redis:6379/0",
        "http://prefect:4200/api",
        "False",
    ]


def test_the_dockerfile_serves_the_same_wsgi_app_as_compose():
    dockerfile = (BASE_DIR / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile
    assert '"gunicorn", "reslock_web.wsgi"' in dockerfile
    assert command_words(SERVICES["web"])[:2] == ["gunicorn", "reslock_web.wsgi"]


SETTING_CALL = re.compile(
    r"(?:envstr|envbool|envchoice|envint|envurl|envlist|env_port|env_bool|env_int)\(\s*(?:env(?:iron)?,\s*)?\"([A-Z_]+)\"|"
    r"env(?:iron)?\.get\(\"([A-Z_]+)\""
)


def variables_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for path in (BASE_DIR / "reslock_web").rglob("*.py"):
        for match in SETTING_CALL.finditer(path.read_text()):
            names.add(match.group(1) or match.group(2))
    return names - {"PATH"}


def variables_in_the_readme() -> set[str]:
    readme = (BASE_DIR / "README.md").read_text()
    return set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.MULTILINE))


def test_the_readme_documents_every_variable_the_code_reads():
    read = variables_read_by_the_code()
    # The scan itself works, for the settings and for the launcher's own helpers.
    assert {"DATABASE_URL", "PREFECT_UI_URL", "SECRET_KEY", "RESLOCK_START_REDIS"} <= read
    assert "RESLOCK_DEMO_RESOURCES" in read
    assert read == variables_in_the_readme()


def test_compose_sets_only_documented_variables():
    documented = variables_in_the_readme()
    for name in OURS:
        assert set(SERVICES[name]["environment"]) <= documented, name


def published_ports(entry: str | int | dict) -> list[int] | None:
    """The host ports a `ports:` entry may bind (None: an ephemeral port chosen by Docker)."""
    if isinstance(entry, dict):
        published = entry.get("published")
    else:
        parts = str(entry).rsplit(":", 1)
        published = parts[0].rsplit(":", 1)[-1] if len(parts) == 2 else None
    if published in (None, ""):
        return None
    first, _, last = str(published).partition("-")
    return list(range(int(first), int(last or first) + 1))


@pytest.mark.parametrize(
    "entry, ports",
    [
        ("8000:8000", [8000]),
        ("8000-8002:8000", [8000, 8001, 8002]),
        ("127.0.0.1:8000-8001:8000", [8000, 8001]),
        ("8000", None),
        ({"target": 8000, "published": "9000-9001"}, [9000, 9001]),
    ],
)
def test_published_ports_reads_every_form_compose_accepts(entry, ports):
    assert published_ports(entry) == ports


@pytest.mark.parametrize("name", ["web", "worker", "listener"])
def test_services_that_scale_out_can_run_several_replicas(name):
    """`docker compose up --scale web=2 --scale worker=2`: a fixed host port or container name
    would make the second replica fail to start."""
    service = SERVICES[name]
    assert "container_name" not in service
    assert "replicas" not in service.get("deploy", {})  # --scale decides
    for entry in service.get("ports", []):
        ports = published_ports(entry)
        assert ports is None or len(ports) >= 2, f"{name}: {entry} allows a single replica"


def test_the_web_servers_publish_a_port_range_and_answer_inside_the_container():
    [entry] = SERVICES["web"]["ports"]
    assert published_ports(entry)[0] == 8000  # a lone replica is where the header says
    assert str(entry).endswith(":8000")
    assert "0.0.0.0:8000" in command_words(SERVICES["web"])
    assert "127.0.0.1:8000/healthz" in " ".join(SERVICES["web"]["healthcheck"]["test"])
    assert "ports" not in SERVICES["worker"] and "ports" not in SERVICES["beat"]


TOP_LEVEL = {
    ".ci",
    ".gitignore",
    "Dockerfile",
    "Makefile",
    "README.md",
    "bench",
    "deploy",  # deploy/prometheus: the alert rules and a scrape config
    "docker-compose.yml",
    "manage.py",
    "pyproject.toml",
    "reslock",
    "reslock_web",
    "static",
    "templates",
    "tests",
}


def test_the_repository_top_level_holds_only_what_the_project_is_made_of():
    """A stray folder at the top (a scratch copy, a second app) must not slip into a commit."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=BASE_DIR, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert {path.split("/", 1)[0] for path in tracked} == TOP_LEVEL


def test_prefect_without_a_log_in_is_published_on_this_machine_only():
    for entry in SERVICES["prefect"].get("ports", []):
        published = entry.get("host_ip") if isinstance(entry, dict) else str(entry)
        assert str(published).startswith("127.0.0.1"), entry


def test_compose_lets_the_proxy_count_be_declared():
    environment = SERVICES["web"]["environment"]
    assert substitute(environment["RESLOCK_TRUSTED_PROXIES"]) == "0"
