"""This test run's environment for child processes: manage.py commands, workers, servers."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent.parent
IS_POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
# The handlers the suite's stages name live in the test suite itself (tests.handlers,
# tests.test_*), which TASKS_HANDLER_MODULES never allows by default: the test run names
# it here, for this process and (subprocess_env) for the workers and commands it starts.
TEST_HANDLER_MODULES = ["tasks_app.demo", "tests", "bench.handlers"]


def subprocess_env() -> dict[str, str]:
    """Environment for a child process that must use this test run's database."""
    env = dict(os.environ)
    name = connection.settings_dict["NAME"]
    if connection.vendor == "postgresql":
        s = connection.settings_dict
        env["DATABASE_URL"] = f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{name}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{name}"
    env["PYTHONPATH"] = str(ROOT)
    env["DJANGO_SETTINGS_MODULE"] = "workflowsite.settings"
    # As this test has it (a test may narrow it); accepted from the environment with DEBUG on only.
    env["TASKS_HANDLER_MODULES"] = ",".join(django_settings.TASKS_HANDLER_MODULES)
    return env


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python manage.py ARGS` for real, against this test run's database."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def start_worker(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[str]:
    """`manage.py run_worker ARGS` on this run's database; `env` adds variables."""
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_worker", *args],
        cwd=ROOT,
        env={**subprocess_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def finish(proc: subprocess.Popen[str], timeout: float) -> str:
    """Wait for a worker process and return its output (stdout and stderr)."""
    out, _ = proc.communicate(timeout=timeout)
    return out or ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def production_env(tmp_path: Path) -> dict[str, str]:
    """The environment .env.example's production block describes, with a real secret and local paths."""
    block = (ROOT / ".env.example").read_text().split("# --- production essentials ---")[1].split("\n# --- ")[0]
    values = dict(
        line.split("=", 1) for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )
    assert {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "SECURE_PROXY_SSL_HEADER"} <= values.keys()
    # Not the test run's own switches (the browser tests set DJANGO_ALLOW_ASYNC_UNSAFE).
    drop = ("DATABASE_URL", "DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE")
    env = {k: v for k, v in subprocess_env().items() if k not in drop}
    env.update(values)
    env["SECRET_KEY"] = secrets.token_urlsafe(50)
    env["STATIC_ROOT"] = str(tmp_path / "static")
    env["ALLOWED_HOSTS"] = values["ALLOWED_HOSTS"] + ",127.0.0.1"
    # Nothing here needs the database; keep it local and throwaway.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    return env


def start_gunicorn(env: dict[str, str], *, workers: int = 1, **popen: Any) -> tuple[subprocess.Popen[str], str]:
    """gunicorn with the project's gunicorn.conf.py on a free local port: the process and its base URL."""
    port = free_port()
    env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": str(workers)}
    gunicorn = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen([str(gunicorn), "-c", "gunicorn.conf.py"], cwd=ROOT, env=env, text=True, **popen)
    return proc, f"http://127.0.0.1:{port}"


def settings_in_a_fresh_process(
    expression: str, env: dict[str, str], *, drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Print a settings expression from a new process with the test run's environment plus `env`, less `drop`."""
    code = f"import django; django.setup(); from django.conf import settings; print({expression})"
    base = {k: v for k, v in subprocess_env().items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120
    )
