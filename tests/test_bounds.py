"""Every value has bounds (issue 11, section 4): stage numbers, payload depth, NUL characters, SECRET_KEY.

Each reproduction is tried on every way in: the API, the admin, the pages, the
commands, workflow files, hooks and handler sends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app import limits, services
from tasks_app.models import Stage, Task, Transition
from tasks_app.worker import Worker
from tests.support.api import post, raw_post
from tests.support.pages import STAGE_URL, TASK_URL, form_fields
from tests.support.processes import ROOT, manage, subprocess_env
from tests.support.world import claim_one, create, nothing_written, state

HUGE = 4611686018427387904  # 2**62: the lock_timeout that killed the worker on SQLite
DEPTH = limits.DEFAULT_PAYLOAD_DEPTH
TOO_DEEP = f"nested deeper than {DEPTH} levels"


def nested(levels: int) -> dict[str, Any]:
    """An object `levels` deep: nested(1) == {}, nested(2) == {"a": {}}."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def deep_array_payload(levels: int) -> dict[str, Any]:
    """An object holding arrays: {"a": [[...]]}, `levels` deep in all."""
    value: Any = []
    for _ in range(levels - 2):
        value = [value]
    return {"a": value}


def messages(response: Any) -> str:
    return json.dumps(response.json())


# -- the JSON walk -----------------------------------------------------------------


def test_depth_counts_objects_and_arrays_without_recursing() -> None:
    assert not limits.json_depth_exceeds({}, 1)
    assert limits.json_depth_exceeds({"a": []}, 1)
    assert not limits.json_depth_exceeds(deep_array_payload(64), 64)
    assert limits.json_depth_exceeds(deep_array_payload(65), 64)
    # Far beyond the recursion limit: an iterative walk doesn't care.
    assert limits.json_depth_exceeds(nested(50_000), 64)


def test_nul_is_found_in_strings_and_keys_at_any_depth() -> None:
    assert not limits.json_has_nul({"a": ["b", {"c": 1}]})
    assert limits.json_has_nul({"a": ["b", {"c": "x\x00"}]})
    assert limits.json_has_nul({"a": [{"k\x00": 1}]})
    assert limits.json_has_nul("\x00")


# -- stage numbers: model, database, API, admin, workflow files --------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lock_timeout", HUGE),
        ("lock_timeout", limits.MAX_LOCK_TIMEOUT + 1),
        ("max_attempts", limits.MAX_ATTEMPTS + 1),
        ("max_run_time", limits.MAX_RUN_TIME + 1),
        ("max_run_time", 0),
    ],
)
def test_model_validation_refuses_stage_numbers_out_of_bounds(db: None, field: str, value: int) -> None:
    stage = Stage(slug="s", name="S", handler="tests.handlers.noop", **{field: value})
    with pytest.raises(ValidationError) as exc:
        stage.full_clean()
    assert list(exc.value.message_dict) == [field]


def test_stage_numbers_at_their_bounds_are_valid(db: None) -> None:
    Stage(
        slug="s",
        name="S",
        handler="tests.handlers.noop",
        lock_timeout=limits.MAX_LOCK_TIMEOUT,
        max_attempts=limits.MAX_ATTEMPTS,
        max_run_time=limits.MAX_RUN_TIME,
    ).full_clean()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lock_timeout", limits.MAX_LOCK_TIMEOUT + 1),
        ("lock_timeout", 0),
        ("max_attempts", limits.MAX_ATTEMPTS + 1),
        ("max_run_time", limits.MAX_RUN_TIME + 1),
        ("max_run_time", 0),
    ],
)
def test_database_check_constraints_refuse_what_validation_would(
    world: dict[str, Stage], field: str, value: int
) -> None:
    # A raw UPDATE skips the validators: the constraints still hold.
    with pytest.raises(IntegrityError), transaction.atomic():
        Stage.objects.filter(slug="review").update(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lock_timeout", HUGE),
        ("lock_timeout", limits.MAX_LOCK_TIMEOUT + 1),
        ("max_attempts", limits.MAX_ATTEMPTS + 1),
        ("max_run_time", limits.MAX_RUN_TIME + 1),
        ("max_run_time", 2**70),
    ],
)
def test_api_stage_patch_and_create_refuse_numbers_out_of_bounds(
    world: dict[str, Stage], admin: APIClient, field: str, value: int
) -> None:
    with nothing_written():
        patched = admin.patch("/api/stages/review/", {field: value}, format="json")
        created = post(
            admin, "/api/stages/", {"slug": "new", "name": "New", "handler": "tests.handlers.noop", field: value}
        )
    for response in (patched, created):
        assert response.status_code == 400, response.content
        assert list(response.json()) == [field]


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/stages/review/claim/", {"lock_timeout": limits.MAX_LOCK_TIMEOUT + 1}),
        ("/api/stages/review/claim/", {"lock_timeout": HUGE}),
        ("/api/stages/review/claim/", {"limit": 2**70}),
    ],
)
def test_api_claim_refuses_a_lock_timeout_or_limit_out_of_bounds(
    world: dict[str, Stage], admin: APIClient, url: str, body: dict[str, Any]
) -> None:
    create(world["review"])
    with nothing_written():
        response = post(admin, url, body)
    assert response.status_code == 400, response.content
    assert list(response.json()) == list(body)


def test_api_heartbeat_refuses_a_lock_timeout_out_of_bounds(world: dict[str, Stage], admin: APIClient) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    body = {"lock_token": task.lock_token, "lock_timeout": HUGE}
    with nothing_written():
        response = post(admin, f"/api/tasks/{task.pk}/heartbeat/", body)
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["lock_timeout"]


def test_admin_refuses_a_stage_lock_timeout_out_of_bounds(admin_client: Client, world: dict[str, Stage]) -> None:
    url = f"{STAGE_URL}{world['review'].pk}/change/"
    data = form_fields(admin_client, url, form_id="stage_form")
    data.update({"lock_timeout": str(HUGE), "max_run_time": str(limits.MAX_RUN_TIME + 1), "_save": "Save"})
    before = state()

    response = admin_client.post(url, data)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"lock_timeout", "max_run_time"}
    assert state() == before


def workflow_file(tmp_path: Path, stage: dict[str, Any], transitions: list[dict[str, Any]] | None = None) -> str:
    path = tmp_path / "flow.json"
    entry = {"slug": "s", "name": "S", "kind": "script", "handler": "tests.handlers.noop", **stage}
    path.write_text(json.dumps({"version": 1, "stages": [entry], "transitions": transitions or []}))
    return str(path)


def load_problems(path: str) -> list[str]:
    with pytest.raises(CommandError) as exc:
        call_command("load_workflow", path)
    head, *problems = str(exc.value).split("\n  ")
    assert "nothing was changed" in head
    return problems


def test_load_workflow_refuses_stage_numbers_out_of_bounds_with_their_location(db: None, tmp_path: Path) -> None:
    path = workflow_file(tmp_path, {"lock_timeout": HUGE, "max_attempts": 5000, "max_run_time": 0})
    problems = load_problems(path)
    assert [p.split(": ")[1] for p in problems] == ["lock_timeout", "max_attempts", "max_run_time"]
    assert all(p.startswith("stages[0] (slug 's'): ") for p in problems)
    assert not Stage.objects.exists()


# -- values stored before the bounds: the claim clamps instead of crashing -----------------


def store_lock_timeout_beyond_bounds(stage: Stage) -> int:
    """Write the largest lock_timeout the column holds with a raw UPDATE, past the check constraint."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Rolled back with the test's transaction.
            cursor.execute("ALTER TABLE tasks_app_stage DROP CONSTRAINT stage_lock_timeout_range")
            value = 2**31 - 1  # integer column
        else:
            cursor.execute("PRAGMA ignore_check_constraints = ON")
            value = HUGE
        try:
            cursor.execute("UPDATE tasks_app_stage SET lock_timeout = %s WHERE id = %s", [value, stage.pk])
        finally:
            if connection.vendor == "sqlite":
                cursor.execute("PRAGMA ignore_check_constraints = OFF")
    stage.refresh_from_db()
    assert stage.lock_timeout == value
    return value


def test_api_claim_on_a_stage_stored_beyond_the_bounds_clamps_the_lock(
    world: dict[str, Stage], admin: APIClient
) -> None:
    create(world["review"])
    store_lock_timeout_beyond_bounds(world["review"])
    before = timezone.now()

    response = post(admin, "/api/stages/review/claim/", {})  # was a 500 (OverflowError) on SQLite

    assert response.status_code == 200, response.content
    [task] = Task.objects.filter(status=Task.Status.LOCKED)
    assert task.locked_until is not None
    assert task.locked_until - before <= timedelta(seconds=limits.MAX_LOCK_TIMEOUT + 5)
    heartbeat = post(admin, f"/api/tasks/{task.pk}/heartbeat/", {"lock_token": response.json()[0]["lock_token"]})
    assert heartbeat.status_code == 200, heartbeat.content


def test_worker_survives_a_stage_stored_beyond_the_bounds(world: dict[str, Stage]) -> None:
    task = create(world["ship"])
    store_lock_timeout_beyond_bounds(world["ship"])

    Worker(stage_slugs=["ship"], worker_id="w-bounds", listen=False).run(once=True)  # the worker died here

    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED


# -- the migration clamps stored rows before adding the constraints ------------------------


@pytest.mark.django_db(transaction=True)
def test_migration_clamps_stored_stage_numbers_then_adds_the_constraints() -> None:
    executor = MigrationExecutor(connection)
    before, after = [("tasks_app", "0008_task_autovacuum")], [("tasks_app", "0009_stage_bounds")]
    huge = 2**31 - 1 if connection.vendor == "postgresql" else HUGE
    try:
        executor.migrate(before)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO tasks_app_stage (slug, name, kind, handler, lock_timeout, max_attempts, max_run_time, "
                "is_paused, hook_secret, schedule, schemas, description, created_at, updated_at) "
                "VALUES ('old', 'Old', 'script', '', %s, %s, 0, %s, '', '', '{}', '', %s, %s)",
                [huge, 2**31 - 1, False, timezone.now(), timezone.now()],
            )
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        row = Stage.objects.values("lock_timeout", "max_attempts", "max_run_time").get(slug="old")
        assert row == {
            "lock_timeout": limits.MAX_LOCK_TIMEOUT,
            "max_attempts": limits.MAX_ATTEMPTS,
            "max_run_time": None,
        }
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())


# -- commands and settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--lock-timeout", str(limits.MAX_LOCK_TIMEOUT + 1)), ("--lock-timeout", str(HUGE)), ("--concurrency", "100000")],
)
def test_run_worker_refuses_flags_out_of_bounds(db: None, flag: str, value: str) -> None:
    with pytest.raises(CommandError, match="must be at most"):
        call_command("run_worker", flag, value, "--once")


@pytest.mark.parametrize(
    "args",
    [
        ["run_worker", "--max-tasks", str(2**70), "--once"],
        ["run_worker", "--poll-interval", "1e300", "--once"],
        ["run_scheduler", "--interval", "1e300", "--once"],
        ["prune_tasks", "--older-than", "30d", "--batch-size", str(2**64)],
    ],
)
def test_command_numbers_have_a_ceiling(db: None, args: list[str]) -> None:
    # 2**64 as a LIMIT overflowed SQLite's integer (and PostgreSQL's bigint).
    with pytest.raises(CommandError, match="must be at most"):
        call_command(*args)


def settings_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**subprocess_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKS_LOCK_TIMEOUT": str(limits.MAX_LOCK_TIMEOUT + 1)}, "TASKS_LOCK_TIMEOUT must be between 1 and 604800"),
        ({"TASKS_MAX_PAYLOAD_DEPTH": "100000"}, "TASKS_MAX_PAYLOAD_DEPTH must be between 1 and 200"),
        ({"TASKS_WORKER_DEAD_AFTER": "1e308"}, "TASKS_WORKER_DEAD_AFTER must be between"),
        ({"TASKS_POLL_INTERVAL": "nan"}, "TASKS_POLL_INTERVAL must be between"),
        ({"DEBUG": "false", "SECRET_KEY": ""}, "SECRET_KEY must be set when DEBUG is off"),
        ({"DEBUG": "false", "SECRET_KEY": "   "}, "SECRET_KEY must be set when DEBUG is off"),
    ],
)
def test_settings_out_of_bounds_refuse_to_start_in_one_line(db: None, env: dict[str, str], message: str) -> None:
    result = settings_check(**env)
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback


def test_system_check_refuses_a_lock_timeout_setting_out_of_bounds(settings: Any) -> None:
    from tasks_app.checks import check_task_settings

    settings.TASKS_LOCK_TIMEOUT = limits.MAX_LOCK_TIMEOUT + 1
    assert [e.id for e in check_task_settings(None)] == ["tasks_app.E005"]


def test_retry_backoff_does_not_overflow_after_a_thousand_attempts(settings: Any) -> None:
    settings.TASKS_RETRY_JITTER = 0
    assert services.retry_delay(5000) == settings.TASKS_RETRY_BACKOFF_MAX


# -- payload depth on every way in -----------------------------------------------------------


def test_api_create_refuses_a_350_deep_payload_with_a_field_message(world: dict[str, Stage], admin: APIClient) -> None:
    with nothing_written():
        response = raw_post(admin, "/api/tasks/", json.dumps({"stage": "review", "type": "t", "payload": nested(350)}))
    assert response.status_code == 400, response.content  # was a 500 (RecursionError)
    assert TOO_DEEP in response.json()["payload"][0]


@pytest.mark.parametrize("make", [nested, deep_array_payload])
def test_api_create_accepts_the_depth_limit_and_refuses_one_more(
    world: dict[str, Stage], admin: APIClient, make: Any
) -> None:
    ok = post(admin, "/api/tasks/", {"stage": "review", "type": "t", "payload": make(DEPTH)})
    assert ok.status_code == 201, ok.content
    with nothing_written():
        refused = post(admin, "/api/tasks/", {"stage": "review", "type": "t", "payload": make(DEPTH + 1)})
    assert refused.status_code == 400
    assert TOO_DEEP in refused.json()["payload"][0]


def test_payload_depth_follows_the_setting(world: dict[str, Stage], admin: APIClient, settings: Any) -> None:
    settings.TASKS_MAX_PAYLOAD_DEPTH = 3
    assert post(admin, "/api/tasks/", {"stage": "review", "type": "t", "payload": nested(3)}).status_code == 201
    refused = post(admin, "/api/tasks/", {"stage": "review", "type": "t", "payload": nested(4)})
    assert refused.status_code == 400
    assert "nested deeper than 3 levels" in refused.json()["payload"][0]


@pytest.mark.parametrize("levels", [350, limits.MAX_DOCUMENT_DEPTH - 8])
def test_every_api_payload_entry_refuses_deep_payloads(world: dict[str, Stage], admin: APIClient, levels: int) -> None:
    deep = nested(levels)
    create(world["review"])
    task = claim_one(world["review"])
    entries = [
        ("/api/tasks/bulk/", {"tasks": [{"stage": "review", "type": "t", "payload": deep}]}),
        ("/api/stages/review/send/", {"type": "approved", "payload": deep}),
        (
            f"/api/tasks/{task.pk}/complete/",
            {"lock_token": task.lock_token, "send": [{"type": "approved", "payload": deep}]},
        ),
        (
            "/api/tasks/bulk-complete/",
            {
                "tasks": [
                    {"id": task.pk, "lock_token": task.lock_token, "send": [{"type": "approved", "payload": deep}]}
                ]
            },
        ),
    ]
    for url, body in entries:
        with nothing_written():
            response = raw_post(admin, url, json.dumps(body))
        assert response.status_code == 400, (url, response.content)
        assert TOO_DEEP in messages(response), (url, response.content)


@pytest.mark.parametrize("levels", [limits.MAX_DOCUMENT_DEPTH + 1, 5000])
def test_api_body_nested_beyond_any_limit_is_refused_by_the_parser(
    world: dict[str, Stage], admin: APIClient, levels: int
) -> None:
    with nothing_written():
        body = '{"stage": "review", "type": "t", "payload": {"a": ' + "[" * levels + "]" * levels + "}}"
        response = raw_post(admin, "/api/tasks/", body)
    assert response.status_code == 400, response.content
    assert response.json()["detail"] == f"JSON parse error - nested deeper than {limits.MAX_DOCUMENT_DEPTH} levels."


def test_hook_refuses_a_350_deep_body(world: dict[str, Stage]) -> None:
    hook = world["intake"]
    with nothing_written():
        response = APIClient().generic(
            "POST",
            "/hooks/intake/?type=order",
            json.dumps(nested(350)).encode(),
            content_type="application/json",
            headers={"X-Hook-Token": hook.hook_secret},
        )
    assert response.status_code == 400, response.content  # was a 500 (RecursionError)
    assert TOO_DEEP in messages(response)


def test_page_create_refuses_a_350_deep_payload(admin_client: Client, world: dict[str, Stage]) -> None:
    with nothing_written():
        response = admin_client.post(
            "/tasks/new/", {"stage": "review", "type": "t", "payload": json.dumps(nested(350))}
        )
    assert response.status_code == 400
    assert TOO_DEEP in response.content.decode()


def test_page_edit_refuses_a_350_deep_payload(admin_client: Client, world: dict[str, Stage]) -> None:
    task = create(world["review"])
    with nothing_written():
        response = admin_client.post(f"/tasks/{task.pk}/edit/", {"payload": json.dumps(nested(350))})
    assert response.status_code == 400
    assert TOO_DEEP in response.content.decode()


def test_admin_add_form_refuses_a_350_deep_payload(admin_client: Client, world: dict[str, Stage]) -> None:
    data = form_fields(admin_client, TASK_URL + "add/")
    data.update(stage=str(world["review"].pk), type="t", payload=json.dumps(nested(350)), _save="Save")
    with nothing_written():
        response = admin_client.post(TASK_URL + "add/", data)
    assert response.status_code == 200
    assert any(TOO_DEEP in m for m in response.context["adminform"].form.errors["payload"])


@pytest.mark.parametrize("levels", [limits.MAX_DOCUMENT_DEPTH + 1, 5000])
def test_admin_refuses_payloads_and_schemas_nested_beyond_any_limit(
    admin_client: Client, world: dict[str, Stage], levels: int
) -> None:
    text = "[" * levels + "]" * levels  # 5000: json itself raised RecursionError, a 500
    data = form_fields(admin_client, TASK_URL + "add/")
    data.update(stage=str(world["review"].pk), type="t", payload='{"a": ' + text + "}", _save="Save")
    url = f"{STAGE_URL}{world['review'].pk}/change/"
    stage_data = form_fields(admin_client, url, form_id="stage_form")
    stage_data.update(schemas='{"t": ' + text + "}", _save="Save")
    with nothing_written():
        task = admin_client.post(TASK_URL + "add/", data)
        stage = admin_client.post(url, stage_data)
    assert task.status_code == 200
    too_deep = [f"Nested deeper than {limits.MAX_DOCUMENT_DEPTH} levels."]
    assert task.context["adminform"].form.errors["payload"] == too_deep
    assert stage.status_code == 200
    assert stage.context["adminform"].form.errors["schemas"] == too_deep


def test_create_task_command_refuses_a_350_deep_payload_in_one_line(world: dict[str, Stage]) -> None:
    with nothing_written(), pytest.raises(CommandError) as exc:
        call_command("create_task", "review", "t", "--payload", json.dumps(nested(350)))
    assert str(exc.value).startswith("payload: ") and TOO_DEEP in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.django_db(transaction=True)  # the command runs in another process
def test_create_task_command_exits_non_zero_without_a_traceback(world: dict[str, Stage]) -> None:
    result = manage("create_task", "review", "t", "--payload", json.dumps(nested(350)))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and TOO_DEEP in result.stderr
    assert not Task.objects.exists()


def test_handler_sends_are_held_to_the_depth_limit(world: dict[str, Stage], settings: Any) -> None:
    task = create(world["review"], amount=1, items=[[{"x": 1}]])  # 4 levels; approve_small sends it on
    settings.TASKS_MAX_PAYLOAD_DEPTH = 3

    Worker(stage_slugs=["review"], worker_id="w-depth", listen=False).run(once=True)

    task.refresh_from_db()
    assert task.status != Task.Status.COMPLETED
    assert "nested deeper than 3 levels" in task.last_error
    assert Task.objects.count() == 1  # no successor


def test_load_workflow_refuses_a_file_nested_beyond_the_document_limit(db: None, tmp_path: Path) -> None:
    path = workflow_file(tmp_path, {"description": "x"})
    text = Path(path).read_text().replace('"x"', "[" * 600 + "]" * 600)
    Path(path).write_text(text)
    with pytest.raises(CommandError) as exc:
        call_command("load_workflow", path)
    assert str(exc.value) == f"{path}: nested deeper than {limits.MAX_DOCUMENT_DEPTH} levels; nothing was changed."


# -- NUL characters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "transitions", "where"),
    [
        ({"name": "Ship\x00"}, [], "stages[0].name"),
        ({"description": "a\x00b"}, [], "stages[0].description"),
        ({"groups": ["ops\x00"]}, [], "stages[0].groups[0]"),
        ({"schemas": {"order": {"description": "\x00"}}}, [], "stages[0].schemas.order.description"),
        ({}, [{"source": "s", "target": "s", "type": "t\x00"}], "transitions[0].type"),
        ({}, [{"source": "s", "target": "gone\x00"}], "transitions[0].target"),
    ],
)
def test_load_workflow_refuses_nul_characters_with_their_location(
    db: None, tmp_path: Path, stage: dict[str, Any], transitions: list[dict[str, Any]], where: str
) -> None:
    path = workflow_file(tmp_path, stage, transitions)
    problems = load_problems(path)
    assert problems == [f"{where}: contains the NUL character (U+0000), which is not allowed"]
    assert not Stage.objects.exists()


def test_load_workflow_with_a_nul_name_exits_1_without_a_traceback(db: None, tmp_path: Path) -> None:
    # PostgreSQL answered this with a DataError traceback.
    result = manage("load_workflow", workflow_file(tmp_path, {"name": "Ship\x00"}))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "stages[0].name: contains the NUL character" in result.stderr


def test_model_validation_refuses_nul_in_stage_text_and_task_types(db: None) -> None:
    stage = Stage(slug="s", name="S\x00", description="\x00", handler="tests.handlers.noop", schemas={"t\x00": {}})
    with pytest.raises(ValidationError) as exc:
        stage.full_clean()
    assert {"name", "description", "schemas"} <= set(exc.value.message_dict)
    with pytest.raises(ValidationError):
        Transition(task_type="a\x00").clean_fields(exclude=["source", "target"])
    with pytest.raises(ValidationError, match="type"):
        services.validate_task_input(type="t\x00", payload={})


def test_api_refuses_nul_in_stage_schemas_and_task_payloads(world: dict[str, Stage], admin: APIClient) -> None:
    # jsonb can't store U+0000: these were 500s on PostgreSQL.
    with nothing_written():
        schemas = admin.patch("/api/stages/review/", {"schemas": {"order": {"title": "\x00"}}}, format="json")
        payload = post(admin, "/api/tasks/", {"stage": "review", "type": "t", "payload": {"k": ["\x00"]}})
        typed = post(admin, "/api/tasks/", {"stage": "review", "type": "t\x00", "payload": {}})
    assert (schemas.status_code, list(schemas.json())) == (400, ["schemas"])
    assert (payload.status_code, list(payload.json())) == (400, ["payload"])
    assert (typed.status_code, list(typed.json())) == (400, ["type"])


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/api/tasks/", {"stage": "rev\x00", "type": "t"}, "stage"),
        ("/api/tasks/bulk/", {"tasks": [{"stage": "rev\x00", "type": "t"}]}, "tasks"),
        ("/api/transitions/", {"source": "review", "target": "sh\x00ip", "task_type": "x"}, "target"),
        ("/api/stages/", {"slug": "n", "name": "N", "handler": "tests.handlers.noop", "groups": ["g\x00"]}, "groups"),
    ],
)
def test_api_refuses_nul_in_names_it_looks_up(
    world: dict[str, Stage], admin: APIClient, url: str, body: dict[str, Any], field: str
) -> None:
    # PostgreSQL can't even be asked about such a name: these lookups were 500s (DataError).
    with nothing_written():
        response = post(admin, url, body)
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert "Null characters" in messages(response)


def test_page_create_refuses_nul_in_the_stage_and_type(admin_client: Client, world: dict[str, Stage]) -> None:
    with nothing_written():
        stage = admin_client.post("/tasks/new/", {"stage": "rev\x00", "type": "t", "payload": "{}"})
        typed = admin_client.post("/tasks/new/", {"stage": "review", "type": "t\x00", "payload": "{}"})
    assert stage.status_code == 400  # was a 500 on PostgreSQL
    assert "Unknown stage" in stage.content.decode()
    assert typed.status_code == 400
    assert "Null characters" in typed.content.decode()


def test_hook_refuses_nul_in_the_type_and_query(world: dict[str, Stage]) -> None:
    headers = {"X-Hook-Token": world["intake"].hook_secret}
    for query in ("?type=t%00", "?type=t&note=%00"):
        with nothing_written():
            response = APIClient().generic(
                "POST", f"/hooks/intake/{query}", b"{}", content_type="application/json", headers=headers
            )
        assert response.status_code == 400, (query, response.content)
