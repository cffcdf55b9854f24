"""Production settings: check --deploy, and one real gunicorn serving pages and static files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from django.test import Client

from tests.support.processes import ROOT, production_env, start_gunicorn


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_the_documented_production_environment(tmp_path: Path) -> None:
    result = manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_flags_a_production_environment_without_https(tmp_path: Path) -> None:
    env = production_env(tmp_path)
    env["SECURE_HSTS_SECONDS"] = "0"
    env["SECURE_COOKIES"] = "false"
    result = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "security.W004" in result.stderr and "security.W012" in result.stderr


def test_debug_off_refuses_the_development_secret_key(tmp_path: Path) -> None:
    env = production_env(tmp_path)
    env.pop("SECRET_KEY")
    result = manage(env, "check")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_pages_carry_a_content_security_policy_and_refuse_framing(db: None, client: Client) -> None:
    response = client.get("/accounts/login/")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["X-Frame-Options"] == "DENY"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers={"Host": "tasks.example.com", **(headers or {})})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_one_gunicorn_process_serves_pages_and_static_files_in_production(tmp_path: Path) -> None:
    env = production_env(tmp_path)
    for step in (["migrate", "-v0"], ["collectstatic", "--noinput", "-v0"]):
        done = manage(env, *step)
        assert done.returncode == 0, done.stderr
    gunicorn, base = start_gunicorn(env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    https = {"X-Forwarded-Proto": "https"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, headers, body = get(base + "/accounts/login/", https)
                break
            except OSError:
                assert gunicorn.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)

        assert status == 200
        assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "Secure" in headers["Set-Cookie"] and "csrftoken" in headers["Set-Cookie"]
        # The page links the hashed stylesheet; the same process serves it, cached for good.
        page = body.decode()
        href = page.split('rel="stylesheet" href="')[1].split('"')[0]
        assert (
            href.startswith("/static/tasks_app/app.") and href.endswith(".css") and href != "/static/tasks_app/app.css"
        )
        status, headers, css = get(base + href, https)
        assert status == 200 and b".badge" in css
        assert "immutable" in headers["Cache-Control"]

        # Plain HTTP is sent to HTTPS, except the health check (load balancers probe it directly).
        status, headers, _ = get(base + "/accounts/login/")
        assert status == 301 and headers["Location"].startswith("https://tasks.example.com/")
        status, _, body = get(base + "/api/health/")
        assert status == 200 and b'"status":"ok"' in body
    finally:
        gunicorn.terminate()
        output, _ = gunicorn.communicate(timeout=30)
    assert gunicorn.returncode == 0, output
    assert os.path.exists(tmp_path / "static" / "staticfiles.json")
