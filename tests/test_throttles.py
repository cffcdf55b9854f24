"""Rate limits behind a proxy and across processes: who the client is, where the counters live."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache, caches
from django.db import DatabaseError, connection
from django.test import RequestFactory
from rest_framework.settings import api_settings
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from tasks_app.api.hooks import HookThrottle
from tasks_app.api.throttles import client_ip
from tasks_app.models import Stage
from tests.support.processes import ROOT, settings_in_a_fresh_process, subprocess_env

WRONG = {"X-Hook-Token": "not-the-secret"}


@pytest.fixture
def hook_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """10 hook posts a minute (the rates are copied into a class attribute at import)."""
    monkeypatch.setattr(HookThrottle, "THROTTLE_RATES", {"hook": "10/minute"})


def post_hook(forwarded_for: str, remote: str = "127.0.0.1") -> int:
    return (
        APIClient()
        .post(
            "/hooks/intake/",
            {"n": 1},
            format="json",
            headers=WRONG,
            HTTP_X_FORWARDED_FOR=forwarded_for,
            REMOTE_ADDR=remote,
        )
        .status_code
    )


def cached_rows() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM throttle_cache")
        return cursor.fetchone()[0]


# -- who the client is ---------------------------------------------------------------


def test_rotating_forwarded_for_does_not_escape_the_hook_limit(world: dict[str, Stage], hook_rate: None) -> None:
    """The reproduction: 80 wrong-secret posts, each with a new X-Forwarded-For, were all 401."""
    codes = [post_hook(f"198.51.100.{i}") for i in range(80)]
    assert codes[:10] == [401] * 10
    assert codes[10:] == [429] * 70


def test_with_one_trusted_proxy_the_last_hop_is_the_client(
    world: dict[str, Stage], hook_rate: None, settings: Any
) -> None:
    settings.NUM_PROXIES = 1
    # Whatever the client writes in front, the proxy's own entry (the last) counts.
    codes = [post_hook(f"198.51.100.{i}, 203.0.113.7") for i in range(12)]
    assert codes == [401] * 10 + [429] * 2
    # Another client behind the same proxy (same REMOTE_ADDR) has its own count.
    assert post_hook("203.0.113.8") == 401


@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "1.1.1.1, 2.2.2.2", "10.0.0.1"),  # nothing trusted: the header is ignored
        (1, "1.1.1.1, 2.2.2.2", "2.2.2.2"),
        (2, "1.1.1.1, 2.2.2.2, 3.3.3.3", "2.2.2.2"),
        (3, "2.2.2.2", "2.2.2.2"),  # fewer hops than proxies: the first
        (1, "", "10.0.0.1"),  # no header: the peer
        (1, " , ", "10.0.0.1"),
        (1, "1.1.1.1, 203.0.113.5:4711", "203.0.113.5"),  # a proxy that adds the port
        (1, "[2001:db8::1]:443", "2001:db8::1"),
        (1, "2001:db8::1", "2001:db8::1"),
        # Not an address: not written by a proxy, so the client reached gunicorn directly.
        (1, "<script>", "10.0.0.1"),
        (1, "x" * 300, "10.0.0.1"),
    ],
)
def test_client_ip_counts_trusted_proxies_from_the_right(
    settings: Any, proxies: int, forwarded: str, expected: str
) -> None:
    settings.NUM_PROXIES = proxies
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected


def test_drf_uses_the_same_proxy_count(settings: Any) -> None:
    """DRF's own get_ident would trust any X-Forwarded-For with NUM_PROXIES unset (None)."""
    assert settings.REST_FRAMEWORK["NUM_PROXIES"] == settings.NUM_PROXIES == 0
    assert api_settings.NUM_PROXIES == 0


@pytest.fixture
def tiny_api_rates(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rates = {"user": "3/minute", "anon": "3/minute"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", api_settings.DEFAULT_THROTTLE_RATES)


def test_anonymous_api_limit_ignores_forwarded_for_too(world: dict[str, Stage], tiny_api_rates: None) -> None:
    codes = [
        APIClient().get("/api/health/", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}").status_code for i in range(5)
    ]
    assert codes == [200, 200, 200, 429, 429]


# -- where the counters live ---------------------------------------------------------------


def test_counters_are_rows_in_the_database_cache_not_process_memory(
    world: dict[str, Stage], hook_rate: None, tiny_api_rates: None
) -> None:
    assert caches["throttle"].__class__.__name__ == "DatabaseCache"
    before = cached_rows()
    post_hook("198.51.100.1")
    APIClient().get("/api/health/")
    assert cached_rows() == before + 2  # one history per scope and client
    # Emptying every process's local memory forgets nothing.
    cache.clear()
    assert [post_hook("198.51.100.2") for _ in range(10)] == [401] * 9 + [429]


def test_a_broken_throttle_cache_lets_requests_through_and_says_so(
    world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing_table(*args: Any, **kwargs: Any) -> None:
        raise DatabaseError("no such table: throttle_cache")

    monkeypatch.setattr(type(caches["throttle"]), "get", missing_table)
    assert post_hook("198.51.100.1") == 401  # not a 500
    assert "createcachetable" in caplog.text


SUBPROCESS_POSTS = textwrap.dedent(
    """
    import django, json, sys
    django.setup()
    from django.test import Client
    codes = [
        Client(SERVER_NAME="localhost").post(
            "/hooks/intake/", "{}", content_type="application/json", headers={"X-Hook-Token": "wrong"}
        ).status_code
        for _ in range(int(sys.argv[1]))
    ]
    print(json.dumps(codes))
    """
)


@pytest.fixture
def throttle_rows_cleared() -> Iterator[None]:
    """A transactional test's rows outlive it (flush empties model tables only)."""
    yield
    caches["throttle"].clear()


@pytest.fixture(autouse=True)
def _fresh_counters(db: None) -> None:
    """Start every test here from no counters: earlier tests' clients (127.0.0.1) counted in the same table."""
    caches["throttle"].clear()


@pytest.mark.django_db(transaction=True)
def test_two_processes_share_one_count(throttle_rows_cleared: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each gunicorn process counted on its own: N processes let N times the rate through."""
    Stage.objects.create(slug="intake", name="Intake", kind=Stage.Kind.HOOK)
    monkeypatch.setattr(HookThrottle, "THROTTLE_RATES", {"hook": "5/minute"})
    other = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_POSTS, "5"],
        cwd=ROOT,
        env={**subprocess_env(), "HOOK_THROTTLE": "5/minute"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout.splitlines()[-1]) == [401] * 5
    # The same client's sixth request, in this process, is over the shared limit.
    assert post_hook("") == 429


def test_migrate_creates_the_cache_table(tmp_path: Path) -> None:
    """No separate `createcachetable` step to forget on deploy or upgrade."""
    database = tmp_path / "fresh.sqlite3"
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"],
        cwd=ROOT,
        env={**subprocess_env(), "DATABASE_URL": f"sqlite:///{database}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(database) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"throttle_cache", "axes_accessattempt"} <= tables


# -- configuration ---------------------------------------------------------------------------


def settings_value(env: dict[str, str], expression: str) -> subprocess.CompletedProcess[str]:
    return settings_in_a_fresh_process(expression, env)


def test_throttle_cache_url_switches_to_redis() -> None:
    result = settings_value(
        {"THROTTLE_CACHE_URL": "redis://cache.internal:6379/1"},
        "settings.CACHES['throttle'], settings.CACHES['default']['BACKEND']",
    )
    assert result.returncode == 0, result.stderr
    assert "RedisCache" in result.stdout and "redis://cache.internal:6379/1" in result.stdout
    assert "LocMemCache" in result.stdout  # other cache users keep per-process memory


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("THROTTLE_CACHE_URL", "memcached://x", "THROTTLE_CACHE_URL must be empty"),
        ("NUM_PROXIES", "-1", "NUM_PROXIES must be"),
        ("NUM_PROXIES", "one", "NUM_PROXIES must be an integer"),
    ],
)
def test_bad_proxy_and_throttle_settings_refuse_to_start(variable: str, value: str, message: str) -> None:
    result = settings_value({variable: value}, "1")
    assert result.returncode != 0 and message in result.stderr, result.stderr
