"""The log-in throttle: growing delays per account and address, never a lock-out of the owner."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.auth import forms as auth_forms
from django.contrib.auth.signals import user_login_failed
from django.db import connection
from django.test import Client

from reslock_web.models import LoginFailure
from reslock_web.web import login_throttle
from tests.support.personas import PASSWORD

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def log_in(client: Client, username: str, password: str, ip: str = "10.0.0.1", forwarded: str = ""):
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return client.post(
        "/login/", {"username": username, "password": password}, REMOTE_ADDR=ip, headers=headers
    )


@pytest.fixture
def password_checks():
    """The user names whose password was checked and found wrong (Django's user_login_failed)."""
    calls: list[str] = []

    def record(sender, credentials, **kwargs):
        calls.append(credentials.get("username"))

    user_login_failed.connect(record)
    yield calls
    user_login_failed.disconnect(record)


# --- Growing delays per account and address ------------------------------------------
@pytest.mark.django_db
def test_after_five_wrong_passwords_each_attempt_waits_longer(client, viewer, password_checks):
    with time_machine.travel(START, tick=False) as clock:
        for _ in range(5):
            assert log_in(client, viewer.username, "guess").status_code == 200
        assert len(password_checks) == 5
        refused = log_in(client, viewer.username, PASSWORD)
        assert refused.status_code == 429
        assert len(password_checks) == 5  # the password was not even checked
        assert "_auth_user_id" not in client.session
        text = refused.content.decode()
        assert "Too many failed log-ins" in text and "Try again in 1 minute." in text
        assert 'name="password"' in text  # the form is shown again
        assert refused["Retry-After"] == "60"
        assert LoginFailure.objects.count() == 5  # refused attempts are not counted
        # Each further failure doubles the wait, up to 15 minutes.
        for wait in (60, 120, 240, 480, 900, 900):
            clock.shift(timedelta(seconds=wait - 1))
            assert log_in(client, viewer.username, "guess")["Retry-After"] == "1"
            clock.shift(timedelta(seconds=1))
            assert log_in(client, viewer.username, "guess").status_code == 200
        assert len(password_checks) == 11
        clock.shift(timedelta(seconds=900))
        assert log_in(client, viewer.username, PASSWORD).status_code == 302
        assert client.session["_auth_user_id"] == str(viewer.pk)
        assert not LoginFailure.objects.filter(username=viewer.username).exists()


@pytest.mark.django_db
def test_failures_older_than_an_hour_are_forgotten(client, viewer):
    with time_machine.travel(START, tick=False) as clock:
        for _ in range(5):
            log_in(client, viewer.username, "guess")
        clock.shift(timedelta(hours=1, seconds=1))
        log_in(client, viewer.username, "guess")
        assert LoginFailure.objects.count() == 1
        assert log_in(client, viewer.username, PASSWORD).status_code == 302


@pytest.mark.django_db
def test_an_attacker_at_one_address_cannot_lock_the_owner_out(client, viewer):
    with time_machine.travel(START, tick=False):
        for _ in range(5):
            log_in(client, viewer.username, "guess", ip="10.1.0.1")
        assert log_in(client, viewer.username, "guess", ip="10.1.0.1").status_code == 429
        assert log_in(Client(), viewer.username, PASSWORD, ip="10.1.0.2").status_code == 302


@pytest.mark.django_db
def test_guessing_one_account_from_many_addresses_slows_every_address(client, viewer):
    with time_machine.travel(START, tick=False) as clock:
        for n in range(20):
            log_in(client, viewer.username.upper(), "guess", ip=f"10.1.0.{n}")
        refused = log_in(client, viewer.username, PASSWORD, ip="10.1.0.99")
        assert refused.status_code == 429 and refused["Retry-After"] == "60"
        clock.shift(timedelta(seconds=60))  # a delay, not a lock-out
        assert log_in(client, viewer.username, PASSWORD, ip="10.1.0.99").status_code == 302


@pytest.mark.django_db
def test_one_address_guessing_many_accounts_is_slowed_but_others_get_in(client, viewer):
    with time_machine.travel(START, tick=False):
        for n in range(20):
            log_in(client, f"someone-{n}", "guess", ip="10.2.0.1")
        assert log_in(client, viewer.username, PASSWORD, ip="10.2.0.1").status_code == 429
        assert log_in(client, viewer.username, PASSWORD, ip="10.2.0.2").status_code == 302


@pytest.mark.django_db
def test_logging_into_ones_own_account_does_not_reset_guesses_at_others(client, viewer, admin):
    with time_machine.travel(START, tick=False) as clock:
        log_in(client, viewer.username, "typo", ip="10.3.0.1")
        for _ in range(3):
            clock.shift(timedelta(seconds=10))
            log_in(client, admin.username, "guess", ip="10.3.0.1")
        assert log_in(client, viewer.username, PASSWORD, ip="10.3.0.1").status_code == 302
        assert not LoginFailure.objects.filter(username=viewer.username).exists()
        other = Client()
        log_in(other, admin.username, "guess", ip="10.3.0.1")  # the 4th guess: still counted
        log_in(other, admin.username, "guess", ip="10.3.0.1")  # the 5th
        assert log_in(other, admin.username, PASSWORD, ip="10.3.0.1").status_code == 429


# --- Only a checked password counts as a success ------------------------------------------
@pytest.mark.django_db
def test_a_logged_in_user_posting_another_name_does_not_clear_its_failures(
    client, viewer, admin, password_checks
):
    with time_machine.travel(START, tick=False):
        for _ in range(4):
            log_in(Client(), admin.username, "guess", ip="10.5.0.1")
        client.force_login(viewer)
        answer = log_in(client, admin.username, "guess", ip="10.5.0.1")
        assert answer.status_code == 200  # the password was checked, and was wrong
        assert password_checks == [admin.username] * 5
        assert LoginFailure.objects.filter(username=admin.username).count() == 5
        assert client.session["_auth_user_id"] == str(viewer.pk)  # still the viewer
        assert log_in(Client(), admin.username, PASSWORD, ip="10.5.0.1").status_code == 429


@pytest.mark.django_db
def test_a_logged_in_user_who_gives_the_right_password_is_logged_in_as_that_user(
    client, viewer, admin
):
    client.force_login(viewer)
    assert log_in(client, admin.username, PASSWORD).status_code == 302
    assert client.session["_auth_user_id"] == str(admin.pk)


@pytest.mark.django_db
def test_a_logged_in_user_asked_to_return_to_the_login_page_goes_to_the_board(viewer_client):
    for url in ("/login/?next=/login/", "/login/?next=/login/%3Fnext%3D/login/"):
        answer = viewer_client.get(url)
        assert answer.status_code == 302 and answer["Location"] == "/"
    assert viewer_client.get("/login/?next=/audit").url == "/audit"


# --- The name the backend uses, and IPv6 networks -------------------------------------
@pytest.mark.django_db
def test_look_alike_names_that_log_in_as_one_account_share_its_count(client, admin):
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in admin.username)
    bold = "".join(chr(0x1D41A + ord(c) - ord("a")) if "a" <= c <= "z" else c for c in "alice")
    bold += admin.username.removeprefix("alice")
    assert log_in(Client(), fullwidth, PASSWORD).status_code == 302  # both really log in
    assert log_in(Client(), bold, PASSWORD).status_code == 302
    with time_machine.travel(START, tick=False):
        for name in (fullwidth, bold, f" {admin.username} ", fullwidth, bold):
            assert log_in(client, name, "guess").status_code == 200
        assert log_in(client, admin.username, PASSWORD).status_code == 429
        assert set(LoginFailure.objects.values_list("username", flat=True)) == {admin.username}


@pytest.mark.django_db
def test_addresses_in_one_ipv6_64_share_a_count(client, viewer):
    with time_machine.travel(START, tick=False):
        for n in range(1, 6):
            log_in(client, viewer.username, "guess", ip=f"2001:db8:1:2::{n:x}")
        assert (
            log_in(client, viewer.username, PASSWORD, ip="2001:db8:1:2:ffff::1").status_code == 429
        )
        assert log_in(client, viewer.username, PASSWORD, ip="2001:db8:1:3::1").status_code == 302
    assert login_throttle.client_network_of("::ffff:192.0.2.1") == "192.0.2.1"
    assert login_throttle.client_network_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"


# --- Concurrent attempts -------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_concurrent_attempts_get_no_more_than_the_free_tries(viewer, monkeypatch, password_checks):
    real = auth_forms.authenticate

    def slow(*args, **kwargs):
        threading.Event().wait(0.3)  # a slow hash: every attempt is in flight at once
        return real(*args, **kwargs)

    monkeypatch.setattr(auth_forms, "authenticate", slow)
    start = threading.Barrier(12)
    codes: list[int] = []

    def attempt() -> None:
        try:
            start.wait()
            codes.append(log_in(Client(), viewer.username, "guess").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(codes) == 12
    assert len(password_checks) <= 5, codes
    assert codes.count(200) == len(password_checks)
    assert LoginFailure.objects.count() == len(password_checks)


# --- Proxies ----------------------------------------------------------------------------
@pytest.mark.django_db
def test_forwarded_addresses_count_only_behind_a_trusted_proxy(client, viewer, settings):
    with time_machine.travel(START, tick=False):
        for n in range(5):
            log_in(client, viewer.username, "guess", ip="10.4.0.1", forwarded=f"192.0.2.{n}")
        # Without a trusted proxy a client cannot escape by inventing X-Forwarded-For.
        assert LoginFailure.objects.filter(ip="10.4.0.1").count() == 5
        escape = log_in(client, viewer.username, PASSWORD, ip="10.4.0.1", forwarded="192.0.2.77")
        assert escape.status_code == 429
        settings.TRUSTED_PROXIES = 1
        behind_proxy = log_in(
            client, viewer.username, PASSWORD, ip="10.4.0.1", forwarded="6.6.6.6, 192.0.2.9"
        )
        assert behind_proxy.status_code == 302  # the proxy saw 192.0.2.9: no failures there
        log_in(Client(), "y", "guess", ip="10.4.0.1", forwarded="192.0.2.9")
        assert LoginFailure.objects.filter(ip="192.0.2.9").count() == 1


@pytest.mark.django_db
def test_requests_through_an_undeclared_proxy_are_warned_about_once(client, caplog, monkeypatch):
    monkeypatch.setattr(login_throttle, "_warned_about_proxy", False)
    with caplog.at_level(logging.WARNING, logger="reslock_web.web.login_throttle"):
        client.get("/login/", REMOTE_ADDR="10.6.0.1")
        assert not caplog.records  # a direct request says nothing
        for _ in range(3):
            client.get("/login/", REMOTE_ADDR="10.6.0.1", headers={"X-Forwarded-For": "192.0.2.1"})
    [record] = caplog.records
    assert "RESLOCK_TRUSTED_PROXIES" in record.getMessage()


@pytest.mark.django_db
def test_a_declared_proxy_is_not_warned_about(client, caplog, monkeypatch, settings):
    monkeypatch.setattr(login_throttle, "_warned_about_proxy", False)
    settings.TRUSTED_PROXIES = 1
    with caplog.at_level(logging.WARNING, logger="reslock_web.web.login_throttle"):
        client.get("/login/", REMOTE_ADDR="10.6.0.1", headers={"X-Forwarded-For": "192.0.2.1"})
    assert not caplog.records


@pytest.mark.django_db
def test_the_admin_login_form_goes_through_the_throttled_one(admin, viewer_client):
    anonymous = Client()
    credentials = {"username": admin.username, "password": PASSWORD}
    answer = anonymous.post("/admin/login/?next=/admin/", credentials)
    assert answer.status_code == 302
    assert answer["Location"] == "/login/?next=%2Fadmin%2F"
    assert "_auth_user_id" not in anonymous.session  # no password was checked there
    assert anonymous.get("/admin/").url == "/admin/login/?next=/admin/"
    assert viewer_client.get("/admin/login/").status_code == 403  # logged in, no staff: no loop
