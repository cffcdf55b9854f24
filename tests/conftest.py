"""Fixtures and pytest hooks for the whole suite; the plain helpers are in tests/support/.

The world is the checkout workflow of tests.support.world:

intake --*--> review --approved--> ship
                    --declined--> notify
                    --approved--> audit   (fan-out: approved goes to two stages)
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

# The toolbox's asserts report their values the way a test's own do.
pytest.register_assert_rewrite("tests.support")

from rest_framework.test import APIClient  # noqa: E402

from tasks_app.models import Stage, Task  # noqa: E402
from tasks_app.services import task_create  # noqa: E402
from tests.support.chromium import CHROMIUM  # noqa: E402
from tests.support.processes import IS_POSTGRES, TEST_HANDLER_MODULES  # noqa: E402
from tests.support.users import ROLES, make_role_user, token_client  # noqa: E402
from tests.support.world import make_tasks_in_every_state, make_world  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # PostgreSQL-only tests are deselected (not skipped) on SQLite: the
    # PostgreSQL run of `make test` executes them. Browser tests (needs_chromium) run in the SQLite pass
    # only: what they check is what Chromium shows, and every page's queries run on both databases in
    # the view tests; running them twice cost minutes of `make test`'s budget.
    # BROWSER_TESTS_ON_POSTGRES=1 runs them on PostgreSQL too.
    if IS_POSTGRES:
        drop_item = _is_browser_test if os.environ.get("BROWSER_TESTS_ON_POSTGRES") != "1" else None
    else:
        drop_item = _is_postgres_only
    if drop_item is None:
        return
    keep, drop = [], []
    for item in items:
        (drop if drop_item(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _is_postgres_only(item: pytest.Item) -> bool:
    return item.get_closest_marker("postgres") is not None


def _is_browser_test(item: pytest.Item) -> bool:
    return any(str(m.kwargs.get("reason", "")).startswith(CHROMIUM) for m in item.iter_markers("skipif"))


@pytest.fixture(autouse=True)
def _fast_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _test_handlers_allowed(settings: Any) -> None:
    settings.TASKS_HANDLER_MODULES = list(TEST_HANDLER_MODULES)


# -- the world ------------------------------------------------------------------------


@pytest.fixture
def world(db: None) -> dict[str, Stage]:
    return make_world()


@pytest.fixture
def review(world: dict[str, Stage]) -> Stage:
    return world["review"]


@pytest.fixture
def pending_task(review: Stage) -> Task:
    return task_create(stage=review, type="order", payload={"amount": 10})


@pytest.fixture
def every_state(world: dict[str, Stage]) -> dict[str, Task]:
    """One task in every state, each at its own stage: pending, locked, expired lock, completed, failed."""
    return make_tasks_in_every_state(world)


# -- processes ------------------------------------------------------------------------


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes started by a test; killed at the end whatever happens."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


# -- REST API clients, one per role (tests.support.users) -----------------------------


@pytest.fixture
def users(db: None) -> dict[str, Any]:
    """Every role's user (anonymous is None)."""
    return {role: make_role_user(role) for role in ROLES}


@pytest.fixture
def clients(users: dict[str, Any]) -> dict[str, APIClient]:
    return {role: token_client(user) for role, user in users.items()}


# One role's client creates only that role's user: most tests need one.


@pytest.fixture
def anon(db: None) -> APIClient:
    return APIClient()


@pytest.fixture
def viewer(db: None) -> APIClient:
    return token_client(make_role_user("viewer"))


@pytest.fixture
def operator(db: None) -> APIClient:
    return token_client(make_role_user("operator"))


@pytest.fixture
def admin(db: None) -> APIClient:
    return token_client(make_role_user("admin"))
