"""Errors that are logged: 500s leave a traceback with DEBUG off; in JSON mode every worker line is JSON."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tasks_app.api import health
from tasks_app.logcontext import ContextFilter
from tasks_app.models import Stage
from tasks_app.services import task_create
from tests.support.processes import ROOT, production_env, start_gunicorn, subprocess_env


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as a JSON object (fails on the first that isn't)."""
    parsed = []
    for line in text.splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}")
            assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= record.keys(), line
            parsed.append(record)
    return parsed


# -- 500s with DEBUG off ---------------------------------------------------------------------


def test_a_server_error_is_logged_with_its_traceback_when_debug_is_off(
    db: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reproduction: 59 errors with DEBUG off, and only access lines in the logs."""
    settings.DEBUG = False
    # settings.LOGGING's console handler (the one with the log-context filter; pytest adds its own).
    [handler] = [
        h
        for h in logging.getLogger("django.request").handlers
        if any(isinstance(f, ContextFilter) for f in h.filters)
    ]
    stream = io.StringIO()
    monkeypatch.setattr(handler, "stream", stream)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom in health")

    monkeypatch.setattr(health.Task.objects, "filter", broken)
    response = Client(raise_request_exception=False).get("/api/health/")
    assert response.status_code == 500
    output = stream.getvalue()
    assert "ERROR django.request Internal Server Error: /api/health/" in output
    assert "Traceback (most recent call last)" in output and "RuntimeError: boom in health" in output


def post(url: str) -> int:
    request = urllib.request.Request(
        url,
        data=b"{}",
        headers={"Host": "tasks.example.com", "X-Forwarded-Proto": "https", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_gunicorn_in_production_logs_a_500_with_its_traceback(tmp_path: Path, log_format: str) -> None:
    """A real server with .env.example's production block, whose database was never migrated."""
    env = production_env(tmp_path)
    env["TASKS_LOG_FORMAT"] = log_format
    gunicorn, base = start_gunicorn(env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                not_found = post(base + "/no/such/page/")
                break
            except OSError:
                assert gunicorn.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        assert not_found == 404
        assert post(base + "/hooks/orders/") == 500
    finally:
        gunicorn.terminate()
        _, errors = gunicorn.communicate(timeout=30)
    if log_format == "text":
        assert "ERROR django.request Internal Server Error: /hooks/orders/" in errors
        assert "Traceback (most recent call last)" in errors and "no such table" in errors
        assert "Not Found" not in errors  # client errors: the access log's business
        return
    django_lines = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
    [error] = [line for line in django_lines if line["logger"] == "django.request"]  # not the 404
    assert error["level"] == "ERROR" and error["message"] == "Internal Server Error: /hooks/orders/"
    assert "Traceback" in error["exc_info"] and "no such table" in error["exc_info"]
    assert error["status_code"] == 500


# -- worker and scheduler output in JSON mode -------------------------------------------------


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**subprocess_env(), "TASKS_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.django_db(transaction=True)
def test_every_line_run_worker_prints_is_json() -> None:
    stage = Stage.objects.create(slug="logged", name="Logged", handler="tests.handlers.noop")
    failing = Stage.objects.create(slug="failing", name="Failing", handler="tests.handlers.boom", max_attempts=1)
    task_create(stage=stage, type="t", payload={})
    task_create(stage=failing, type="t", payload={})
    result = run("run_worker", "--once", "--worker-id", "w-json", "--progress-interval", "0.001")
    assert result.returncode == 0, result.stderr
    out = json_lines(result.stdout)
    json_lines(result.stderr)
    messages = {line["message"].split(" (")[0]: line for line in out}
    assert messages["worker w-json started"]["logger"] == "tasks_app.worker"
    assert messages["worker w-json started"]["worker_id"] == "w-json"  # the log context, as on stderr
    assert any(m.startswith("worker w-json stopped: 1 done, 1 failed") for m in messages)
    assert any("tasks/s" in m for m in messages)  # the progress line


@pytest.mark.django_db(transaction=True)
def test_every_line_run_scheduler_prints_is_json() -> None:
    result = run("run_scheduler", "--once", "--worker-id", "s-json")
    assert result.returncode == 0, result.stderr
    out = json_lines(result.stdout)
    json_lines(result.stderr)
    assert [(line["logger"], line["message"]) for line in out] == [("tasks_app.scheduler", "no job due")]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["run_worker", "--once", "--stage", "nope"], 1, "unknown stage(s): nope"),
        (["run_worker", "--batch-size", "0"], 2, "--batch-size: must be at least 1"),
        (["run_scheduler", "--run-now", "nope"], 1, "unknown stage: nope"),
    ],
)
def test_errors_are_json_lines_too(argv: list[str], code: int, message: str) -> None:
    result = run(*argv)
    assert result.returncode == code
    assert result.stdout == ""
    [line] = json_lines(result.stderr)
    assert line["level"] == "ERROR" and message in line["message"]


@pytest.mark.django_db(transaction=True)
def test_a_crash_is_one_json_line_with_the_traceback(tmp_path: Path) -> None:
    result = run("run_worker", "--once", DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    assert result.returncode == 1
    [line] = json_lines(result.stderr)
    assert line["message"] == "run_worker crashed" and "no such table" in line["exc_info"]


@pytest.mark.django_db(transaction=True)
def test_text_mode_prints_plain_lines_as_before() -> None:
    result = run("run_scheduler", "--once", TASKS_LOG_FORMAT="text")
    assert result.returncode == 0 and result.stdout == "no job due\n"
