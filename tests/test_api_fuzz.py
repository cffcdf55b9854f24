"""The REST API fuzzed against its own OpenAPI schema (schemathesis, property-based).

Every operation of the schema drf-spectacular serves at /api/schema/ gets
generated requests, valid and invalid, sent in-process to the WSGI app as a
superuser or as a staff user with an operator's permissions. Each answer must
be no 5xx, a documented status, the documented content type, and a body that
matches the documented schema.

A random slug or id would only ever meet 404, so most requests are steered
onto the rows of a small world (every stage kind, tasks in every state, held
locks with their tokens, a hook secret): claims claim, completes complete,
hooks send. The steering is a pure function of the generated case, and
generation is derandomized with no example database: each run sends the same
requests, on SQLite and on PostgreSQL alike.

Bounded to stay cheap: MAX_EXAMPLES per operation, no coverage or stateful phase.
"""

from __future__ import annotations

import copy
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import Group
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token

from tasks_app.models import Stage, Task, Transition
from tasks_app.services import task_claim, task_create
from tests.support.users import OPERATOR_PERMS, make_user
from tests.support.world import make_tasks_in_every_state

# Per operation. FUZZ_MAX_EXAMPLES=500 makes a deeper run (still derandomized) when hunting.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            # No .hypothesis/ replays: a run depends on the code only.
            "database": "none",
            # The test sends the credentials; generated Authorization headers would only test DRF.
            "with-security-parameters": False,
        },
        "phases": {
            "coverage": {"enabled": False},
            "stateful": {"enabled": False},
            # No feedback from answers into generation: answers carry timestamps, so runs would drift apart.
            "examples": {"extra-data-sources": {"responses": False}},
            "fuzzing": {"extra-data-sources": {"responses": False}, "error-feedback": {"enabled": False}},
        },
        "cache": {"enabled": False},
    }
)

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]


def served_schema() -> dict[str, Any]:
    """What GET /api/schema/ serves (same generator, same renderer), as plain JSON."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document, renderer_context={}))


APP = WSGIHandler()
schema = schemathesis.openapi.from_dict(served_schema(), config=CONFIG)
schema.app = APP


# -- the world the requests are steered onto ------------------------------------


class World:
    """Slugs, task ids and held locks the fuzz can hit, and the two identities."""

    def __init__(self) -> None:
        stages = {
            slug: Stage.objects.create(slug=slug, name=slug.title(), kind=kind, handler=handler, schedule=schedule)
            for slug, kind, handler, schedule in [
                ("intake", Stage.Kind.HOOK, "", ""),
                ("review", Stage.Kind.SCRIPT, "tests.handlers.approve_small", ""),
                ("ship", Stage.Kind.SCRIPT, "tests.handlers.noop", ""),
                ("notify", Stage.Kind.SCRIPT, "tests.handlers.noop", ""),
                ("audit", Stage.Kind.SCRIPT, "tests.handlers.noop", ""),
                ("approve", Stage.Kind.FORM, "", ""),
                ("digest", Stage.Kind.JOB, "", "0 3 * * *"),
            ]
        }
        stages["intake"].hook_secret = "fuzz-hook-secret"
        stages["intake"].save(update_fields=["hook_secret"])
        stages["approve"].groups.add(Group.objects.create(name="reviewers"))
        for source, target, task_type in [
            ("intake", "review", ""),
            ("review", "ship", "approved"),
            ("review", "notify", "declined"),
            ("review", "audit", "approved"),
            ("review", "approve", "manual"),
            ("digest", "notify", ""),
        ]:
            Transition.objects.create(source=stages[source], target=stages[target], task_type=task_type)
        make_tasks_in_every_state(stages)
        for stage, n in [("review", 4), ("approve", 2), ("ship", 2)]:
            for i in range(n):
                task_create(stage=stages[stage], type="order", payload={"amount": 10 * i, "customer": {"id": i}})
        self.locks = {t.pk: t.lock_token for t in task_claim(stage=stages["review"], worker_id="fuzz", limit=3)}
        self.slugs = sorted(stages)
        self.task_ids = list(Task.objects.order_by("id").values_list("id", flat=True))
        self.finished_ids = list(
            Task.objects.filter(status__in=["completed", "failed"]).order_by("id").values_list("id", flat=True)
        )
        self.transition_ids = list(Transition.objects.order_by("id").values_list("id", flat=True))
        admin = make_user("fuzz-admin", superuser=True)
        staff = make_user("fuzz-staff", *OPERATOR_PERMS)
        staff.is_staff = True
        staff.save(update_fields=["is_staff"])
        self.tokens = {role: Token.objects.create(user=user).key for role, user in [("admin", admin), ("staff", staff)]}


    def ids_for(self, path: str) -> list[int]:
        """The ids worth hitting at this path: locks for the lock verbs, finished tasks for retry."""
        if path.startswith("/api/transitions/"):
            return self.transition_ids
        if path.endswith(("/complete/", "/heartbeat/", "/release/")):
            return list(self.locks)
        if path.endswith("/retry/"):
            return self.finished_ids
        return self.task_ids


@pytest.fixture
def world(db: None) -> World:
    return World()


@pytest.fixture
def in_process() -> Iterator[None]:
    """Requests share the test's connection and transaction, as Django's test client arranges."""
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        yield
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)


def fingerprint(value: Any) -> int:
    """A number fixed by the value alone (repr of plain data; no id()-based repr, no salted hash())."""
    if not isinstance(value, dict | list | tuple | str | bytes | int | float | bool | type(None)):
        value = type(value).__name__  # e.g. schemathesis' NotSet for "no body"
    elif isinstance(value, tuple):
        return zlib.crc32(repr(tuple(fingerprint(v) for v in value)).encode())
    return zlib.crc32(repr(value).encode())


def pick(value: Any, options: list[Any], *, share: int = 4) -> Any:
    """Most values become one of `options` (chosen by the value); one in `share` stays as generated."""
    key = fingerprint(value)
    if not options or key % share == 0:
        return value
    return options[key // share % len(options)]


def steer(case: Any, world: World) -> None:
    """Point a generated case at real rows: deterministic in the case itself.

    Edits copies: an explicit example's body is one object that every run of it shares.
    """
    case.path_parameters = path = copy.deepcopy(case.path_parameters or {})
    if isinstance(case.body, dict | list):
        case.body = copy.deepcopy(case.body)
    if "slug" in path and isinstance(path["slug"], str):
        path["slug"] = pick(path["slug"], world.slugs)
    if "id" in path and isinstance(path["id"], int):
        path["id"] = pick(path["id"], world.ids_for(case.operation.path))
    body = case.body
    if isinstance(body, dict):
        steer_item(body, world, task_id=path.get("id"))
        for item in body.get("tasks", []) if isinstance(body.get("tasks"), list) else []:
            if isinstance(item, dict):
                steer_item(item, world, task_id=None)
    if case.operation.path.startswith("/hooks/"):
        case.path_parameters["slug"] = pick(case.path_parameters["slug"], ["intake"], share=5)
        headers = dict(case.headers) if isinstance(case.headers, dict) else {}
        if fingerprint(case.body) % 3:  # two in three carry the secret; the rest whatever was generated
            headers["X-Hook-Token"] = "fuzz-hook-secret"
        case.headers = headers


def steer_item(item: dict[str, Any], world: World, task_id: int | None) -> None:
    """A body (or one item of its `tasks`): stage slugs, held locks and their tokens, routed send types."""
    for key in ("stage", "source", "target"):
        if isinstance(item.get(key), str):
            item[key] = pick(item[key], world.slugs)
    if isinstance(item.get("id"), int):
        item["id"] = task_id = pick(item["id"], list(world.locks))
    if task_id in world.locks and isinstance(item.get("lock_token"), str):
        item["lock_token"] = pick(item["lock_token"], [world.locks[task_id]], share=3)
    for send in item.get("send", []) if isinstance(item.get("send"), list) else []:
        if isinstance(send, dict) and isinstance(send.get("type"), str):
            send["type"] = pick(send["type"], ["approved", "declined", "manual"])


@schema.parametrize()
# The world is built once per operation; its examples share it (and the test's transaction), on purpose.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_api_answers_as_its_schema_says(case: Any, world: World, in_process: None) -> None:
    # One request in three is the staff user's (403 where an operator may not), the rest the superuser's.
    role = "staff" if fingerprint((case.path_parameters, case.query, case.body)) % 3 == 0 else "admin"
    steer(case, world)
    case.call_and_validate(headers={"Authorization": f"Token {world.tokens[role]}"}, checks=CHECKS)
