"""Bad settings stop every entry point with one line naming the variable; good ones apply."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from reslock_web.env import SettingError, envbool, envint, envurl
from reslock_web.sync.schedule import beat_schedule
from tests.support.entry_points import run_entry_point

MANAGE_CHECK = "import sys; sys.argv=['manage.py','check']; import manage; manage.main()"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DEBUG", "maybe", "one of true/false"),
        ("RESLOCK_SYNC_SECONDS", "10s", "a whole number >= 2"),
        ("RESLOCK_SYNC_SECONDS", "0", "a whole number >= 2"),
        ("DATABASE_URL", "mysql://db/reslock", "a URL starting with sqlite://"),
        ("PREFECT_API_URL", "127.0.0.1:4200/api", "a URL starting with http://"),
        ("REDIS_URL", "localhost", "a URL starting with redis://"),
        ("LOG_LEVEL", "LOUD", "one of DEBUG, INFO"),
        ("RESLOCK_SECURE_COOKIES", "yes please", "one of true/false"),
        # Pruned events must lie beyond what the sync reads back (7 days by default).
        ("RESLOCK_EVENTS_RETENTION_DAYS", "7", "a whole number >= 8"),
    ],
)
def test_a_bad_value_stops_manage_py_with_one_line(variable, value, expected):
    result = run_entry_point(MANAGE_CHECK, **{variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and expected in lines[0]


def test_a_missing_secret_key_without_debug_is_an_error():
    result = run_entry_point(MANAGE_CHECK, SECRET_KEY="", DEBUG="false")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "reslock: configuration error: SECRET_KEY is not set: "
        "expected a long random string (required unless DEBUG=true)"
    )


def test_debug_runs_without_a_secret_key():
    result = run_entry_point(MANAGE_CHECK, SECRET_KEY="", DEBUG="true")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "code", ["import reslock_web.celery", "import reslock_web.wsgi"], ids=["celery", "wsgi"]
)
def test_the_worker_and_web_entry_points_refuse_bad_values_too(code):
    result = run_entry_point(code, RESLOCK_HEARTBEAT_SECONDS="often")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "reslock: configuration error: RESLOCK_HEARTBEAT_SECONDS='often' is not valid: "
        "expected a whole number >= 5 <= 3600"
    ]


def test_the_settings_read_the_environment():
    code = (
        "from django.conf import settings as s; import reslock_web.startup as st; "
        "st.configure_or_exit(); "
        "print(s.DEBUG, s.SYNC_SECONDS, s.PREFECT_UI_URL, s.DATABASES['default']['ENGINE'], "
        "s.CELERY_BROKER_URL)"
    )
    result = run_entry_point(
        code,
        DEBUG="yes",
        RESLOCK_SYNC_SECONDS="25",
        PREFECT_API_URL="https://prefect.example.org/api",
        DATABASE_URL="postgres://reslock@db:5432/reslock",
        REDIS_URL="redis://cache:6379/2",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "True",
        "25",
        "https://prefect.example.org",
        "django.db.backends.postgresql",
        "redis://cache:6379/2",
    ]


def test_a_prefect_cloud_workspace_gets_its_ui_links_and_a_request_budget():
    code = (
        "from django.conf import settings as s; import reslock_web.startup as st; "
        "st.configure_or_exit(); print(s.PREFECT_UI_URL, s.PREFECT_MAX_REQUESTS_PER_MINUTE)"
    )
    cloud = "https://api.prefect.cloud/api/accounts/a1/workspaces/w2"
    result = run_entry_point(code, PREFECT_API_URL=cloud)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["https://app.prefect.cloud/account/a1/workspace/w2", "100"]
    result = run_entry_point(
        code, PREFECT_API_URL=cloud, RESLOCK_PREFECT_MAX_REQUESTS_PER_MINUTE="40"
    )
    assert result.stdout.split()[1] == "40"
    result = run_entry_point(code, PREFECT_API_URL="http://prefect.internal:4200/api")
    assert result.stdout.split() == ["http://prefect.internal:4200", "0"]


def test_envbool_accepts_the_usual_words_and_nothing_else():
    assert envbool("X", False, environ={"X": "Yes"}) is True
    assert envbool("X", True, environ={"X": "off"}) is False
    assert envbool("X", True, environ={}) is True
    with pytest.raises(SettingError, match="X='treu'"):
        envbool("X", False, environ={"X": "treu"})


def test_envint_checks_bounds():
    assert envint("N", 5, minimum=1, environ={"N": " 7 "}) == 7
    with pytest.raises(SettingError):
        envint("N", 5, maximum=10, environ={"N": "11"})
    with pytest.raises(SettingError):
        envint("N", 5, environ={"N": "1e3"})


def test_envurl_needs_a_host_except_for_file_transports():
    assert (
        envurl("U", "", ("filesystem", "redis"), environ={"U": "filesystem://"}) == "filesystem://"
    )
    with pytest.raises(SettingError):
        envurl("U", "", ("redis",), environ={"U": "redis://"})


def test_the_beat_schedule_follows_the_settings():
    schedule = beat_schedule(SimpleNamespace(HEARTBEAT_SECONDS=12, SYNC_SECONDS=10))
    heartbeat = schedule["reslock-heartbeat"]
    assert heartbeat["task"] == "reslock.heartbeat"
    assert heartbeat["schedule"] == 12.0
    # A late copy expires before the next one is due, so a backed-up queue does not stack runs.
    assert heartbeat["options"]["expires"] < 12
    sync = schedule["reslock-sync"]
    assert sync["task"] == "reslock.sync" and sync["schedule"] == 10.0
    assert sync["options"]["expires"] < 10
    assert schedule["reslock-prune"]["task"] == "reslock.prune"


def test_celery_speaks_json_only():
    from reslock_web.celery import app

    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.beat_schedule["reslock-heartbeat"]["task"] == "reslock.heartbeat"


def test_the_file_transport_writes_only_under_its_broker_folder(tmp_path):
    """`make run` without Redis: every folder kombu writes sits under RESLOCK_BROKER_DIR, none
    in the directory the process was started from (kombu's default puts `control/` there)."""
    cwd, broker = tmp_path / "cwd", tmp_path / "broker"
    cwd.mkdir()
    for sub in ("messages", "processed"):  # as the launcher makes them
        (broker / sub).mkdir(parents=True)
    code = (
        "import django; django.setup();"
        "from reslock_web.celery import app;"
        "app.send_task('reslock.heartbeat')"
    )
    done = run_entry_point(
        code, cwd=cwd, CELERY_BROKER_URL="filesystem://", RESLOCK_BROKER_DIR=str(broker)
    )
    assert done.returncode == 0, done.stderr
    assert list(cwd.iterdir()) == []
    assert list((broker / "messages").iterdir()), "the message went to the broker folder"
    assert (broker / "control" / "celery.exchange").exists()
