"""Login lockout (django-axes): repeated wrong passwords lock a username out from an address."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.support.processes import settings_in_a_fresh_process

LIMIT = 3
LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"


@pytest.fixture
def users(db: None, settings: Any) -> dict[str, User]:
    settings.AXES_FAILURE_LIMIT = LIMIT
    return {
        "alice": User.objects.create_user("alice", password="right-horse-battery", is_staff=True, is_superuser=True),
        "bob": User.objects.create_user("bob", password="bobs-own-password"),
    }


def attempt(client: Client, username: str, password: str, url: str = LOGIN, **extra: Any) -> Any:
    return client.post(url, {"username": username, "password": password}, **extra)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def fail(client: Client, username: str, times: int = LIMIT, url: str = LOGIN, **extra: Any) -> None:
    """`times` wrong passwords: the form again with its error, and the LIMIT-th locks (429)."""
    for i in range(1, times + 1):
        response = attempt(client, username, f"guess-{i}", url, **extra)
        if i < LIMIT:
            assert response.status_code == 200
            page = response.content.decode()
            assert "didn't match" in page or "enter the correct username" in page
        else:
            assert response.status_code == 429


def test_wrong_passwords_lock_the_account_and_the_right_one_is_refused(users: dict[str, User]) -> None:
    client = Client()
    fail(client, "alice")
    response = attempt(client, "alice", "right-horse-battery")
    assert response.status_code == 429
    page = response.content.decode()
    assert "Too many failed logins" in page and f"after {LIMIT} wrong passwords" in page
    assert "Try again in 1:00:00" in page  # AXES_COOLOFF_TIME, 1 hour by default
    assert not logged_in(client)
    assert AccessAttempt.objects.filter(username="alice", ip_address="127.0.0.1").exists()


def test_fewer_failures_than_the_limit_then_the_right_password_logs_in(users: dict[str, User]) -> None:
    client = Client()
    fail(client, "alice", times=LIMIT - 1)
    assert attempt(client, "alice", "right-horse-battery").status_code == 302
    assert logged_in(client)
    # A success resets the count: the next mistakes start from zero.
    assert not AccessAttempt.objects.filter(username="alice").exists()


def test_other_users_and_other_addresses_are_not_locked(users: dict[str, User]) -> None:
    fail(Client(), "alice")
    # Another person at the same address.
    bob = Client()
    assert attempt(bob, "bob", "bobs-own-password").status_code == 302 and logged_in(bob)
    # Alice herself from another address: a guesser can't lock her out from elsewhere.
    elsewhere = Client(REMOTE_ADDR="192.0.2.10")
    assert attempt(elsewhere, "alice", "right-horse-battery").status_code == 302 and logged_in(elsewhere)


def test_the_admin_login_is_protected_too(users: dict[str, User]) -> None:
    client = Client()
    fail(client, "alice", url=ADMIN_LOGIN)
    response = attempt(client, "alice", "right-horse-battery", ADMIN_LOGIN)
    assert response.status_code == 429 and "Too many failed logins" in response.content.decode()
    # Failures anywhere count together: the site's login is locked as well.
    assert attempt(client, "alice", "right-horse-battery").status_code == 429


def test_axes_reset_unlocks(users: dict[str, User]) -> None:
    client = Client()
    fail(client, "alice")
    assert attempt(client, "alice", "right-horse-battery").status_code == 429
    call_command("axes_reset", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert attempt(client, "alice", "right-horse-battery").status_code == 302 and logged_in(client)


def test_the_lock_ends_after_the_cooloff_time(users: dict[str, User]) -> None:
    client = Client()
    fail(client, "alice")
    assert attempt(client, "alice", "right-horse-battery").status_code == 429
    # Two hours later (AXES_COOLOFF_TIME is one hour).
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(hours=2))
    assert attempt(client, "alice", "right-horse-battery").status_code == 302


def test_rotating_forwarded_for_does_not_escape_the_lockout(users: dict[str, User]) -> None:
    client = Client()
    for i in range(LIMIT):
        attempt(client, "alice", "guess", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")
    response = attempt(client, "alice", "right-horse-battery", HTTP_X_FORWARDED_FOR="198.51.100.99")
    assert response.status_code == 429


def test_behind_one_proxy_the_forwarded_client_is_locked(users: dict[str, User], settings: Any) -> None:
    settings.NUM_PROXIES = 1
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    client = Client()
    for i in range(LIMIT):
        attempt(client, "alice", "guess", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}, 203.0.113.5", **proxy)
    assert AccessAttempt.objects.get(username="alice").ip_address == "203.0.113.5"
    locked = attempt(client, "alice", "right-horse-battery", HTTP_X_FORWARDED_FOR="203.0.113.5", **proxy)
    assert locked.status_code == 429
    # Another client behind the same proxy is not.
    other = Client()
    response = attempt(other, "alice", "right-horse-battery", HTTP_X_FORWARDED_FOR="203.0.113.6", **proxy)
    assert response.status_code == 302


def test_a_forged_forwarded_for_that_is_no_address_is_not_stored(users: dict[str, User], settings: Any) -> None:
    """With NUM_PROXIES set, a client reaching gunicorn directly can send anything in the header."""
    settings.NUM_PROXIES = 1
    response = attempt(Client(), "alice", "guess", HTTP_X_FORWARDED_FOR="not-an-address", REMOTE_ADDR="192.0.2.7")
    assert response.status_code == 200
    assert AccessAttempt.objects.get(username="alice").ip_address == "192.0.2.7"


def test_api_tokens_and_sessions_made_without_a_password_keep_working(users: dict[str, User]) -> None:
    """Lockout is about guessing passwords: a token (a separate credential) still works while locked."""
    fail(Client(), "alice")
    token = Token.objects.create(user=users["alice"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.get("/api/stages/").status_code == 200
    # force_login (the tests' way in) doesn't authenticate with a password.
    client = Client()
    client.force_login(users["alice"])
    assert client.get("/admin/").status_code == 200


def test_lockout_settings_come_from_the_environment() -> None:
    def run(**env: str) -> subprocess.CompletedProcess[str]:
        expression = "settings.AXES_ENABLED, settings.AXES_FAILURE_LIMIT, settings.AXES_COOLOFF_TIME"
        return settings_in_a_fresh_process(f"*({expression})", env)

    assert run().stdout.split() == ["True", "10", "1.0"]
    assert run(AXES_FAILURE_LIMIT="5", AXES_COOLOFF_TIME="0.25", AXES_ENABLED="false").stdout.split() == [
        "False",
        "5",
        "0.25",
    ]
    assert run(AXES_COOLOFF_TIME="0").stdout.split()[-1] == "None"  # locked until axes_reset
    refused = run(AXES_FAILURE_LIMIT="0")
    assert refused.returncode != 0 and "AXES_FAILURE_LIMIT must be" in refused.stderr
