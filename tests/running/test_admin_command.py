from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def run_admin_command() -> str:
    out = io.StringIO()
    call_command("reslock_admin", stdout=out)
    return out.getvalue().strip()


def test_it_creates_an_admin_with_a_generated_password_and_prints_it(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    line = run_admin_command()
    username, password = line.removeprefix("log in as ").split(" / ")
    user = get_user_model().objects.get(username=username)
    assert user.is_superuser and user.check_password(password)
    assert (tmp_path / "admin-password").stat().st_mode & 0o777 == 0o600
    # A second run prints the same credentials and changes nothing.
    assert run_admin_command() == line
    assert get_user_model().objects.get(username=username).check_password(password)


def test_it_takes_the_credentials_from_the_environment(settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("RESLOCK_ADMIN_USER", "ops")
    monkeypatch.setenv("RESLOCK_ADMIN_PASSWORD", "s3cret-enough")
    assert run_admin_command() == "log in as ops with the password in RESLOCK_ADMIN_PASSWORD"
    assert get_user_model().objects.get(username="ops").check_password("s3cret-enough")
    assert not (tmp_path / "admin-password").exists()


def test_a_password_from_the_environment_is_set_once_and_never_printed(
    settings, tmp_path, monkeypatch
):
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("RESLOCK_ADMIN_USER", "ops")
    monkeypatch.setenv("RESLOCK_ADMIN_PASSWORD", "first-password")
    assert "first-password" not in run_admin_command()
    ops = get_user_model().objects.get(username="ops")
    ops.set_password("changed-since")  # from the admin pages, say
    ops.save()
    monkeypatch.setenv("RESLOCK_ADMIN_PASSWORD", "first-password")  # every `compose up`
    line = run_admin_command()
    assert "first-password" not in line and "unchanged" in line
    assert get_user_model().objects.get(username="ops").check_password("changed-since")
