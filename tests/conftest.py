"""One small named world for the tests: a checkout workflow, users, helpers.

intake --*--> review --approved--> ship
                    --declined--> notify
                    --approved--> audit   (fan-out: approved goes to two stages)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from tasks_app.models import Stage, Task, Transition
from tasks_app.services import task_claim, task_complete, task_create, task_fail

ROOT = Path(__file__).resolve().parent.parent
IS_POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
# The handlers the suite's stages name live in the test suite itself (tests.handlers,
# tests.test_*), which TASKS_HANDLER_MODULES never allows by default: the test run names
# it here, for this process and (subprocess_env) for the workers and commands it starts.
TEST_HANDLER_MODULES = ["tasks_app.demo", "tests", "bench.handlers"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # PostgreSQL-only tests are deselected (not skipped) on SQLite: the
    # PostgreSQL run of `make test` executes them.
    if IS_POSTGRES:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("postgres") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _fast_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _test_handlers_allowed(settings: Any) -> None:
    settings.TASKS_HANDLER_MODULES = list(TEST_HANDLER_MODULES)


@pytest.fixture
def world(db: None) -> dict[str, Stage]:
    stages = {
        slug: Stage.objects.create(slug=slug, name=slug.title(), kind=kind, handler=handler)
        for slug, kind, handler in [
            ("intake", Stage.Kind.HOOK, ""),
            ("review", Stage.Kind.SCRIPT, "tests.handlers.approve_small"),
            ("ship", Stage.Kind.SCRIPT, "tests.handlers.noop"),
            ("notify", Stage.Kind.SCRIPT, "tests.handlers.noop"),
            ("audit", Stage.Kind.SCRIPT, "tests.handlers.noop"),
        ]
    }
    for source, target, task_type in [
        ("intake", "review", ""),
        ("review", "ship", "approved"),
        ("review", "notify", "declined"),
        ("review", "audit", "approved"),
    ]:
        Transition.objects.create(source=stages[source], target=stages[target], task_type=task_type)
    return stages


@pytest.fixture
def review(world: dict[str, Stage]) -> Stage:
    return world["review"]


@pytest.fixture
def pending_task(review: Stage) -> Task:
    return task_create(stage=review, type="order", payload={"amount": 10})


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


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes started by a test; killed at the end whatever happens."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def make_tasks_in_every_state(world: dict[str, Stage]) -> dict[str, Task]:
    """pending (review), locked by w1 (audit), expired lock (intake), completed (ship), failed (notify)."""
    hour_ago = timezone.now() - timedelta(hours=1)
    pending = task_create(stage=world["review"], type="order", payload={"amount": 10})

    completed = task_create(stage=world["ship"], type="order", payload={"state": "completed"})
    [claim] = task_claim(stage=world["ship"], worker_id="w1")
    task_complete(task_id=claim.pk, lock_token=claim.lock_token)

    failed = task_create(stage=world["notify"], type="order", payload={"state": "failed"})
    [claim] = task_claim(stage=world["notify"], worker_id="w1")
    task_fail(task_id=claim.pk, lock_token=claim.lock_token, error="ValueError: it broke")

    locked = task_create(stage=world["audit"], type="order", payload={"state": "locked"})
    task_claim(stage=world["audit"], worker_id="w1", lock_timeout=300)

    expired = task_create(stage=world["intake"], type="order", payload={"state": "expired"}, now=hour_ago)
    task_claim(stage=world["intake"], worker_id="w-gone", lock_timeout=1, now=hour_ago)

    found = {
        name: Task.objects.get(pk=t.pk)
        for name, t in [
            ("pending", pending),
            ("locked", locked),
            ("expired", expired),
            ("completed", completed),
            ("failed", failed),
        ]
    }
    assert [t.status for t in found.values()] == ["pending", "locked", "locked", "completed", "failed"]
    return found


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
