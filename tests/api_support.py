"""Shared fixtures and helpers for the REST API tests (tests/test_api_*.py).

The test modules load this file with `pytest_plugins`. Users, one per role of
the permission matrix, each with a DRF token:

    anonymous  no credentials
    viewer     view_* on every tasks_app model, nothing else
    operator   view/add/change task (+ view taskevent), view stage and transition
    admin      superuser
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils.dateparse import parse_datetime
from rest_framework.authtoken.models import Token
from rest_framework.response import Response
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import task_claim, task_create

ROLES = ("anonymous", "viewer", "operator", "admin")

OPERATOR_PERMS = ["view_task", "add_task", "change_task", "view_taskevent", "view_stage", "view_transition"]


def make_user(username: str, *, codenames: list[str] | None = None, superuser: bool = False) -> Any:
    User = get_user_model()
    if superuser:
        user = User.objects.create_superuser(username, f"{username}@example.com", "pw")
    else:
        user = User.objects.create_user(username, f"{username}@example.com", "pw")
    if codenames is not None:
        perms = Permission.objects.filter(content_type__app_label="tasks_app", codename__in=codenames)
        user.user_permissions.set(perms)
    return user


def token_client(user: Any | None) -> APIClient:
    client = APIClient()
    if user is not None:
        token, _ = Token.objects.get_or_create(user=user)
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def make_role_user(role: str) -> Any | None:
    if role == "anonymous":
        return None
    if role == "admin":
        return make_user("admin", superuser=True)
    if role == "viewer":
        view_all = Permission.objects.filter(content_type__app_label="tasks_app", codename__startswith="view_")
        return make_user("viewer", codenames=list(view_all.values_list("codename", flat=True)))
    return make_user("operator", codenames=OPERATOR_PERMS)


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


# -- requests -----------------------------------------------------------------


def call(client: APIClient, method: str, url: str, body: Any = None) -> Response:
    """One JSON request; `body` None sends no body."""
    if method in ("get", "head", "delete") and body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format="json")


def post(client: APIClient, url: str, body: Any = None) -> Response:
    return call(client, "post", url, {} if body is None else body)


def get(client: APIClient, url: str, params: dict[str, Any] | None = None) -> Response:
    return client.get(url, params or {})


def raw_post(client: APIClient, url: str, text: str) -> Response:
    return client.generic("POST", url, text, content_type="application/json")


# -- state ----------------------------------------------------------------------


def create(stage: Stage, type: str = "order", **payload: Any) -> Task:
    return task_create(stage=stage, type=type, payload=payload, actor="test")


def claim_one(stage: Stage, worker: str = "w") -> Task:
    [task] = task_claim(stage=stage, worker_id=worker)
    return task


def state() -> dict[str, Any]:
    """Every row the API could write: tasks (all columns), events, stages, transitions."""
    return {
        "tasks": list(Task.objects.order_by("id").values()),
        "events": list(TaskEvent.objects.order_by("id").values_list("id", "task_id", "kind")),
        "stages": list(Stage.objects.order_by("id").values()),
        "transitions": list(Transition.objects.order_by("id").values()),
    }


@contextmanager
def nothing_written() -> Iterator[None]:
    """Asserts that the block changes no task, event, stage or transition."""
    before = state()
    yield
    after = state()
    assert len(after["tasks"]) == len(before["tasks"]), "tasks were created or deleted"
    assert len(after["events"]) == len(before["events"]), "events were written"
    assert after == before


def at(text: str) -> datetime:
    """A timestamp from a response."""
    value = parse_datetime(text)
    assert value is not None, text
    return value


def kinds(task_id: int) -> list[str]:
    """The kinds of a task's history events, oldest first."""
    return list(TaskEvent.objects.filter(task_id=task_id).order_by("id").values_list("kind", flat=True))


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [row["id"] for row in rows]


def list_ids(client: APIClient, params: dict[str, Any] | None = None) -> list[int]:
    """Ids of every task GET /api/tasks/ lists with these parameters, across all pages."""
    response = client.get("/api/tasks/", params or {})
    assert response.status_code == 200, response.content
    out = ids(response.data["results"])
    while response.data["next"]:
        response = client.get(response.data["next"])
        assert response.status_code == 200, response.content
        out += ids(response.data["results"])
    return out


def payload_of_size(size: int) -> dict[str, str]:
    """A payload whose compact JSON is exactly `size` bytes."""
    overhead = len(json.dumps({"blob": ""}, separators=(",", ":")))
    return {"blob": "x" * (size - overhead)}


Factory = Callable[..., Task]


def assert_refused(
    client: APIClient, url: str, cases: list[tuple[Any, str | None]], *, status: int = 400, method: str = "post"
) -> None:
    """Each (body, field) case answers `status`, names `field` (if given) and writes nothing."""
    for body, field in cases:
        with nothing_written():
            response = call(client, method, url, body)
        assert response.status_code == status, (body, response.content)
        if field is not None:
            assert field in response.data, (body, response.data)
