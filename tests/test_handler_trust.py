"""Who may name code (issue 11, section 1): stage handlers come only from TASKS_HANDLER_MODULES.

Every save path refuses a path outside the list (model, API, admin, workflow
files); the worker, the job runner and the hook view refuse it again at run
time; `manage.py check` warns about stored ones. User code that raises
anything (SystemExit included) fails or releases its task and the worker
lives on; a hook transform's errors stay in the log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from logging.config import fileConfig  # noqa: F401  (a re-export: refused, see below)
from os import system  # noqa: F401  (a re-export: refused, see below)
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.handler_modules import handler_path_problem, module_allowed
from tasks_app.models import JobRun, Stage, Task
from tasks_app.services import task_create
from tasks_app.services.jobs import jobs_run_due
from tasks_app.services.workflow import WorkflowInvalid, workflow_dump, workflow_load
from tasks_app.worker import Worker
from tests.support.pages import form_fields
from tests.support.processes import ROOT, finish, settings_in_a_fresh_process, start_worker, subprocess_env, wait_for
from tests.support.users import make_user, token_client

S = Task.Status
FILE_CONFIG = "logging.config.fileConfig"
SETTING = "TASKS_HANDLER_MODULES"


class CustomStop(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


def misbehave(task: Any) -> None:
    """A script handler that raises what the payload asks for (run by real worker processes)."""
    kind = task.payload.get("raise")
    if kind == "exit":
        sys.exit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt("pressed inside a handler")
    if kind == "base":
        raise CustomStop("a BaseException subclass")


def exiting_job(context: Any) -> None:
    sys.exit("job handler exits")


def leaky_transform(body: dict[str, Any], query: dict[str, str]) -> Any:
    """A transform whose error would carry a secret if it were echoed."""
    raise ValueError(f"SECRET_KEY={os.environ.get('SECRET_KEY', 'dev-secret')} and {body}")


def exiting_transform(body: dict[str, Any], query: dict[str, str]) -> Any:
    raise SystemExit("transform exits")


def three_items(body: dict[str, Any], query: dict[str, str]) -> Any:
    return ("order", {}, "extra")


@pytest.fixture
def hook(world: dict[str, Stage]) -> Stage:
    cache.clear()  # hook throttle counters
    return world["intake"]


def post_hook(stage: Stage, body: Any, query: str = "?type=order") -> Any:
    return APIClient().generic(
        "POST",
        f"/hooks/{stage.slug}/{query}",
        json.dumps(body).encode(),
        content_type="application/json",
        headers={"X-Hook-Token": stage.hook_secret},
    )


def stored(stage: Stage, handler: str) -> None:
    """Put a handler in the row as a save path never would (raw update: an old row, a narrowed list)."""
    Stage.objects.filter(pk=stage.pk).update(handler=handler)
    stage.refresh_from_db()


# -- the rule -----------------------------------------------------------------------------------


def test_prefixes_match_on_dotted_boundaries(settings: Any) -> None:
    settings.TASKS_HANDLER_MODULES = ["tasks_app.demo"]
    assert module_allowed("tasks_app.demo") and module_allowed("tasks_app.demo.extra")
    assert not module_allowed("tasks_app.demo2") and not module_allowed("tasks_app") and not module_allowed("tests")
    assert handler_path_problem("tasks_app.demo.check_stock") is None
    assert "TASKS_HANDLER_MODULES" in (handler_path_problem("tests.handlers.noop") or "")


def test_the_standard_library_is_refused_even_when_the_setting_lists_it(settings: Any) -> None:
    settings.TASKS_HANDLER_MODULES = ["logging", "os", "posix", "builtins", "tests"]
    for path in (FILE_CONFIG, "os.system", "builtins.print"):
        problem = handler_path_problem(path)
        assert problem is not None and SETTING in problem, path


def test_a_re_export_from_an_allowed_module_is_refused(settings: Any) -> None:
    settings.TASKS_HANDLER_MODULES = ["tests.test_handler_trust", "tasks_app.demo"]
    # This module does `from os import system`: the path is allowed, the object is posix's.
    assert handler_path_problem("tests.test_handler_trust.misbehave") is None
    problem = handler_path_problem("tests.test_handler_trust.system")
    assert problem is not None and "defined in module 'posix'" in problem and SETTING in problem
    problem = handler_path_problem("tests.test_handler_trust.fileConfig")
    assert problem is not None and "'logging.config'" in problem
    # The demo imports Counter and task_send: neither becomes a handler through it.
    assert "'collections'" in (handler_path_problem("tasks_app.demo.Counter") or "")
    assert "'tasks_app.services" in (handler_path_problem("tasks_app.demo.task_send") or "")


def test_odd_paths_are_refused_before_anything_is_imported(settings: Any) -> None:
    settings.TASKS_HANDLER_MODULES = ["tasks_app.demo"]
    for path in ("tasks_app.demo", "tasks_app.demo.__loader__", "tasks_app.demo..x", "noop"):
        assert handler_path_problem(path) is not None, path


# -- saving: model, API, admin, workflow files --------------------------------------------------


def test_model_validation_refuses_a_handler_outside_the_list(world: dict[str, Stage], settings: Any) -> None:
    hook = world["intake"]
    hook.handler = FILE_CONFIG
    with pytest.raises(ValidationError) as caught:
        hook.full_clean()
    [message] = caught.value.message_dict["handler"]
    assert SETTING in message and FILE_CONFIG in message
    settings.TASKS_HANDLER_MODULES = ["tasks_app.demo"]
    hook.handler = "tests.handlers.sleep_and_mark"
    with pytest.raises(ValidationError, match=SETTING):
        hook.full_clean()


def test_api_patch_and_post_refuse_a_handler_outside_the_list(world: dict[str, Stage], settings: Any) -> None:
    staff = token_client(make_user("stager", "view_stage", "change_stage", "add_stage"))
    response = staff.patch("/api/stages/intake/", {"handler": FILE_CONFIG}, format="json")
    assert response.status_code == 400
    assert SETTING in response.json()["handler"][0]
    assert Stage.objects.get(slug="intake").handler == ""

    settings.TASKS_HANDLER_MODULES = ["tasks_app.demo"]  # the test suite is not in it any more
    response = staff.post(
        "/api/stages/",
        {"slug": "marks", "name": "Marks", "kind": "script", "handler": "tests.handlers.sleep_and_mark"},
        format="json",
    )
    assert response.status_code == 400 and SETTING in response.json()["handler"][0]
    assert not Stage.objects.filter(slug="marks").exists()
    # What the list allows still saves.
    response = staff.patch("/api/stages/ship/", {"handler": "tasks_app.demo.invoice"}, format="json")
    assert response.status_code == 200, response.json()


def test_admin_refuses_a_handler_outside_the_list(client: Client, world: dict[str, Stage]) -> None:
    client.force_login(make_user("boss", superuser=True))
    url = f"/admin/tasks_app/stage/{world['intake'].pk}/change/"
    data = form_fields(client, url, form_id="stage_form")
    data.update({"handler": FILE_CONFIG, "_save": "Save"})
    response = client.post(url, data)
    assert response.status_code == 200  # the form again, with the error
    [message] = response.context["adminform"].form.errors["handler"]
    assert SETTING in message and FILE_CONFIG in message
    assert Stage.objects.get(pk=world["intake"].pk).handler == ""


def test_a_workflow_file_naming_a_handler_outside_the_list_loads_nothing(world: dict[str, Stage]) -> None:
    data = workflow_dump()
    for entry in data["stages"]:
        if entry["slug"] == "intake":
            entry["handler"] = FILE_CONFIG
    before = list(Stage.objects.values_list("slug", "handler"))
    with pytest.raises(WorkflowInvalid) as caught:
        workflow_load(data)
    [problem] = caught.value.problems
    i = [s["slug"] for s in data["stages"]].index("intake")
    assert problem.startswith(f"stages[{i}] (slug 'intake'): handler '{FILE_CONFIG}' is not in a module that {SETTING}")
    assert list(Stage.objects.values_list("slug", "handler")) == before


# -- run time: a stored handler that is not allowed runs nothing --------------------------------


def test_hook_with_a_stored_handler_that_is_not_allowed_answers_a_fixed_message(
    hook: Stage, caplog: pytest.LogCaptureFixture
) -> None:
    stored(hook, FILE_CONFIG)
    tasks = Task.objects.count()
    for body in ({"/proc/self/environ": 1}, {"/etc/passwd": 1}):
        with caplog.at_level(logging.ERROR, logger="tasks_app"):
            response = post_hook(hook, body)
        assert response.status_code == 503
        text = response.content.decode()
        assert set(response.json()) == {"detail", "request_id"}
        for leak in ("SECRET_KEY", "root:", "PATH=", "fileConfig", "logging"):
            assert leak not in text
        assert response.json()["request_id"] in caplog.text
    assert Task.objects.count() == tasks


def test_a_transform_error_is_logged_under_a_request_id_and_never_echoed(
    hook: Stage, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("leaky_transform", "exiting_transform", "three_items"):
        stored(hook, f"tests.test_handler_trust.{name}")
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="tasks_app"):
            response = post_hook(hook, {"sku": "x"})
        assert response.status_code == 400, name
        body = response.json()
        assert set(body) == {"detail", "request_id"} and len(body["request_id"]) == 32
        assert "SECRET_KEY" not in response.content.decode() and "sku" not in response.content.decode()
        [record] = [r for r in caplog.records if body["request_id"] in r.getMessage()]
        assert record.exc_info is not None, name  # the traceback goes to the log
    assert not Task.objects.filter(stage__slug="review").exists()


def test_worker_fails_a_task_whose_stored_handler_is_not_allowed_and_runs_nothing(
    world: dict[str, Stage], settings: Any, tmp_path: Path
) -> None:
    ship = world["ship"]
    stored(ship, "tests.handlers.sleep_and_mark")
    task = task_create(stage=ship, type="order", payload={"dir": str(tmp_path), "seconds": 0})
    settings.TASKS_HANDLER_MODULES = ["tasks_app.demo"]

    Worker(stage_slugs=["ship"], worker_id="w-trust", listen=False).run(once=True)

    task.refresh_from_db()
    assert task.status == S.FAILED
    assert SETTING in task.last_error and "tests.handlers.sleep_and_mark" in task.last_error
    assert list(tmp_path.iterdir()) == []  # the handler never ran


@pytest.mark.django_db(transaction=True)
def test_a_worker_process_refuses_the_test_suites_file_writing_handler_when_the_list_leaves_it_out(
    workers: list[subprocess.Popen[str]], settings: Any, tmp_path: Path
) -> None:
    stage = Stage.objects.create(slug="marks", name="Marks", handler="tests.handlers.sleep_and_mark")
    task = task_create(stage=stage, type="t", payload={"dir": str(tmp_path), "seconds": 0})
    settings.TASKS_HANDLER_MODULES = ["tasks_app.demo"]  # what subprocess_env() hands the worker
    proc = start_worker("--stage", "marks", "--once", "--progress-interval", "0", "--no-scheduler")
    workers.append(proc)
    out = finish(proc, timeout=60)
    assert proc.returncode == 0, out
    task.refresh_from_db()
    assert task.status == S.FAILED and SETTING in task.last_error
    assert list(tmp_path.iterdir()) == []  # the payload's file was never written


def test_a_job_whose_stored_handler_is_not_allowed_fails_its_run_and_claims_nothing(
    db: None, settings: Any
) -> None:
    stage = Stage.objects.create(
        slug="nightly", name="Nightly", kind=Stage.Kind.JOB, handler=FILE_CONFIG, schedule="* * * * *"
    )
    Stage.objects.filter(pk=stage.pk).update(created_at=timezone.now() - timedelta(hours=1))
    task = task_create(stage=stage, type="order", payload={})
    [run] = jobs_run_due(worker_id="s")
    assert run.status == JobRun.Status.FAILED and SETTING in run.error
    task.refresh_from_db()
    assert (task.status, task.attempts) == (S.PENDING, 0)


def test_load_demo_refuses_when_the_demo_handlers_are_not_allowed(db: None, settings: Any) -> None:
    settings.TASKS_HANDLER_MODULES = ["tests"]
    with pytest.raises(CommandError, match="tasks_app.demo.*TASKS_HANDLER_MODULES"):
        call_command("load_demo", stdout=StringIO())
    assert not Stage.objects.exists()


def test_check_warns_about_stored_stages_whose_handler_is_not_allowed(world: dict[str, Stage]) -> None:
    stored(world["intake"], FILE_CONFIG)
    err = StringIO()
    call_command("check", stdout=StringIO(), stderr=err)
    assert "tasks_app.W001" in err.getvalue() and "Stage 'intake'" in err.getvalue()
    assert SETTING in err.getvalue()


def test_check_does_not_fail_on_a_database_without_tables(tmp_path: Path) -> None:
    env = {**subprocess_env(), "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout and "Traceback" not in result.stderr


# -- the setting ------------------------------------------------------------------------------


def handler_modules_in_a_fresh_process(**env: str) -> subprocess.CompletedProcess[str]:
    return settings_in_a_fresh_process(
        "settings.TASKS_HANDLER_MODULES", env, drop=("TASKS_HANDLER_MODULES", "DEBUG")
    )


def test_setting_defaults_to_the_demo_in_development_and_to_nothing_in_production() -> None:
    assert handler_modules_in_a_fresh_process().stdout.strip() == "['tasks_app.demo']"
    production = handler_modules_in_a_fresh_process(DEBUG="false", SECRET_KEY="x" * 50)
    assert production.returncode == 0, production.stderr
    assert production.stdout.strip() == "[]"
    listed = handler_modules_in_a_fresh_process(TASKS_HANDLER_MODULES=" acme.tasks , acme.jobs ")
    assert listed.stdout.strip() == "['acme.tasks', 'acme.jobs']"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKS_HANDLER_MODULES": "os"}, "TASKS_HANDLER_MODULES: 'os' is the standard library"),
        ({"TASKS_HANDLER_MODULES": "acme,logging.config"}, "'logging.config' is the standard library"),
        ({"TASKS_HANDLER_MODULES": "acme tasks"}, "'acme tasks' is not a dotted module name"),
        (
            {"TASKS_HANDLER_MODULES": "tests.handlers", "DEBUG": "false", "SECRET_KEY": "x" * 50},
            "'tests.handlers' is the test suite, refused with DEBUG off",
        ),
    ],
)
def test_setting_refuses_the_standard_library_and_the_test_suite_in_production(
    env: dict[str, str], message: str
) -> None:
    result = handler_modules_in_a_fresh_process(**env)
    assert result.returncode != 0
    assert message in result.stderr.strip().splitlines()[-1]


# -- handlers that raise BaseExceptions: real worker processes ----------------------------------


@pytest.mark.django_db(transaction=True)
def test_handlers_raising_base_exceptions_fail_their_tasks_and_the_worker_serves_on_and_stops_on_one_sigterm(
    workers: list[subprocess.Popen[str]],
) -> None:
    stage = Stage.objects.create(
        slug="unruly", name="Unruly", handler="tests.test_handler_trust.misbehave", max_attempts=1
    )
    bad = {kind: task_create(stage=stage, type="t", payload={"raise": kind}) for kind in ("exit", "interrupt", "base")}
    good = task_create(stage=stage, type="t", payload={"raise": "nothing"})
    # One slot, one task per claim: the last task runs only if the slot outlived the three before it.
    proc = start_worker(
        "--stage", "unruly", "--batch-size", "1", "--concurrency", "1", "--poll-interval", "0.1",
        "--progress-interval", "0", "--no-scheduler", "--worker-id", "unruly-w",
    )  # fmt: skip
    workers.append(proc)

    def settled() -> bool:
        return Task.objects.filter(stage=stage, status__in=[S.FAILED, S.COMPLETED]).count() == 4

    assert wait_for(settled, timeout=60), Task.objects.filter(stage=stage).values("id", "status", "last_error")
    proc.send_signal(signal.SIGTERM)  # once
    out = finish(proc, timeout=30)
    assert proc.returncode == 0, out

    assert Task.objects.get(pk=good.pk).status == S.COMPLETED
    errors = {kind: Task.objects.get(pk=t.pk) for kind, t in bad.items()}
    assert all(t.status == S.FAILED for t in errors.values())
    assert "SystemExit: 3" in errors["exit"].last_error
    assert "KeyboardInterrupt: pressed inside a handler" in errors["interrupt"].last_error
    assert "CustomStop: a BaseException subclass" in errors["base"].last_error


def test_a_job_handler_raising_system_exit_fails_its_run_and_releases_its_tasks(db: None) -> None:
    stage = Stage.objects.create(
        slug="exiting", name="Exiting", kind=Stage.Kind.JOB, handler="tests.test_handler_trust.exiting_job",
        schedule="* * * * *",
    )  # fmt: skip
    Stage.objects.filter(pk=stage.pk).update(created_at=timezone.now() - timedelta(hours=1))
    task = task_create(stage=stage, type="t", payload={})
    [run] = jobs_run_due(worker_id="s")  # returns: the SystemExit did not escape
    assert run.status == JobRun.Status.FAILED
    assert run.error.startswith("HandlerAborted: the handler raised SystemExit: job handler exits")
    task.refresh_from_db()
    assert task.status == S.PENDING and "SystemExit" in task.last_error
