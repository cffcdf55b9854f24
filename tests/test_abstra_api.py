"""Abstra stage scripts, run as they are (issue 17): script files as handlers and the task API they call.

The sample scripts are examples/abstra/*.py, Abstra scripts unchanged
(`from abstra.tasks import ...`). They run through real worker runs: a
`manage.py run_worker --once` process, the in-process Worker at concurrency
2, and `manage.py run_scheduler --run-now` for a job stage.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client

from tasks_app import abstra
from tasks_app.checks import check_script_dirs, check_stage_handlers
from tasks_app.models import JobRun, Stage, Task, TaskEvent, Transition
from tasks_app.services import task_create
from tasks_app.services.script_api import ScriptRun, Served, set_current_run
from tasks_app.services.workflow import WorkflowInvalid, workflow_dump, workflow_load
from tasks_app.worker import Worker
from tests.support.pages import form_fields
from tests.support.processes import ROOT, settings_in_a_fresh_process, subprocess_env
from tests.support.users import make_user, token_client

S = Task.Status
INVOICE = "examples/abstra/invoice.py"
CHECK_STOCK = "examples/abstra/check_stock.py"
NOT_ALLOWED = "TASKS_SCRIPT_DIRS"


def _stage(slug: str, kind: str = Stage.Kind.SCRIPT, handler: str = "", **fields: Any) -> Stage:
    return Stage.objects.create(slug=slug, name=slug.title(), kind=kind, handler=handler, **fields)


def _route(source: Stage, target: Stage, task_type: str = "") -> None:
    Transition.objects.create(source=source, target=target, task_type=task_type)


def _invoice_flow(kind: str) -> tuple[Stage, Stage]:
    """A stage running examples/abstra/invoice.py, routing 'invoiced' to a books stage."""
    extra = {"schedule": "0 2 * * *"} if kind == Stage.Kind.JOB else {}
    invoice = _stage("invoice", kind, INVOICE, **extra)
    books = _stage("books", Stage.Kind.SCRIPT, "tests.handlers.noop")
    _route(invoice, books, "invoiced")
    return invoice, books


def _orders(stage: Stage) -> tuple[Task, Task, Task]:
    """A ready order, a ready order without a quantity, and one on hold (the script's `where` skips it)."""
    ready = task_create(stage=stage, type="order", payload={"status": "ready", "order_id": 1, "sku": "lamp", "qty": 2})
    empty = task_create(stage=stage, type="order", payload={"status": "ready", "order_id": 2, "sku": "desk", "qty": 0})
    held = task_create(stage=stage, type="order", payload={"status": "hold", "order_id": 3, "sku": "lamp", "qty": 1})
    return ready, empty, held


def _events(task: Task) -> list[TaskEvent]:
    return list(TaskEvent.objects.filter(task=task).order_by("id"))


def _last(task: Task, kind: str) -> dict[str, Any]:
    event = TaskEvent.objects.filter(task=task, kind=kind).order_by("-id").first()
    assert event is not None, f"no {kind} event for task {task.pk}: {[e.kind for e in _events(task)]}"
    return event.details


INVOICED_1 = {
    "order_id": 1,
    "lines": [{"sku": "lamp", "qty": 2}],  # a tuple of dataclasses
    "tags": ["abstra"],  # a set
    "on": "2026-12-02",  # a date
}


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


# -- one script, a script stage and a job stage --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_sample_script_runs_unchanged_as_a_script_stage_in_a_worker_process() -> None:
    invoice, books = _invoice_flow(Stage.Kind.SCRIPT)
    ready, empty, held = _orders(invoice)

    env = {**subprocess_env(), "TASKS_SCRIPT_DIRS": "examples/abstra"}
    done = subprocess.run(
        [sys.executable, "manage.py", "run_worker", "--once", "--stage", "invoice", "--no-scheduler", "--no-listen"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    # The ready order: completed; its one send created in the same transaction, normalised; the print kept.
    ready.refresh_from_db()
    assert ready.status == S.COMPLETED
    [child] = Task.objects.filter(parent=ready)
    assert (child.stage, child.type, child.payload, child.source_stage) == (books, "invoiced", INVOICED_1, invoice)
    completed = _last(ready, TaskEvent.Kind.COMPLETED)
    assert completed["output"] == "run for order 1\ninvoicing order 1\n" and completed["sent"] == [child.pk]

    # No quantity: the `with task:` body raised, the script caught it and went on: the task is released
    # (the failure policy: pending again after a backoff), nothing sent, the output and traceback kept.
    empty.refresh_from_db()
    assert empty.status == S.PENDING and empty.attempts == 1
    assert "order 2 has no quantity" in empty.last_error
    released = _last(empty, TaskEvent.Kind.RELEASED)
    assert released["output"] == "run for order 2\nskipped: order 2 has no quantity\n"
    assert "TriggerReleased" in released["error"] and "ValueError: order 2 has no quantity" in released["traceback"]
    assert 'invoice.py", line' in released["traceback"]  # the script's own file and line
    assert not Task.objects.filter(parent=empty).exists()

    # On hold: get_tasks(where=...) did not serve it; the run ended cleanly, which completes a trigger task.
    held.refresh_from_db()
    assert held.status == S.COMPLETED and not Task.objects.filter(parent=held).exists()
    assert _last(held, TaskEvent.Kind.COMPLETED)["output"] == "run for order 3\n"  # get_trigger_task() is it


def test_the_same_script_runs_as_a_job_stage(db: None, settings: Any) -> None:
    settings.TASKS_SCRIPT_DIRS = ["examples/abstra"]
    invoice, books = _invoice_flow(Stage.Kind.JOB)
    ready, empty, held = _orders(invoice)

    call_command("run_scheduler", "--run-now", "invoice", stdout=open(os.devnull, "w"))

    [run] = JobRun.objects.filter(stage=invoice)
    assert run.status == JobRun.Status.SUCCEEDED, run.error
    assert (run.tasks_processed, run.tasks_sent) == (1, 1)
    # complete() (the clean `with task:`) completed the ready order in the run's transaction, with the send.
    ready.refresh_from_db()
    assert ready.status == S.COMPLETED
    [child] = Task.objects.filter(source_stage=invoice)
    assert (child.stage, child.type, child.payload) == (books, "invoiced", INVOICED_1)
    # The whole run's print output; get_trigger_task() raised (no trigger task in a job), as in Abstra.
    output = "run by the schedule\ninvoicing order 1\nskipped: order 2 has no quantity\n"
    assert _last(ready, TaskEvent.Kind.COMPLETED)["output"] == output
    # Not completed (its body raised; the other not served by where=): back to pending, the attempt not counted.
    for task in (empty, held):
        task.refresh_from_db()
        assert (task.status, task.attempts, task.locked_by) == (S.PENDING, 0, "")
        assert _last(task, TaskEvent.Kind.RELEASED)["reason"] == "the job's script did not complete it"


def test_a_job_script_that_raises_fails_the_run_and_gives_every_task_back(
    db: None, settings: Any, tmp_path: Path
) -> None:
    settings.TASKS_SCRIPT_DIRS = [str(tmp_path)]
    path = _script(
        tmp_path,
        "boom.py",
        """
        from abstra.tasks import get_tasks, send_task
        for task in get_tasks():
            with task:
                print("done", task["n"])
                send_task("next", {"n": task["n"]})
        raise RuntimeError("the end")
        """,
    )
    job = _stage("nightly", Stage.Kind.JOB, path, schedule="0 2 * * *")
    _route(job, _stage("after", handler="tests.handlers.noop"), "next")
    tasks = [task_create(stage=job, type="n", payload={"n": n}) for n in (1, 2)]

    with pytest.raises(CommandError, match="job nightly failed"):
        call_command("run_scheduler", "--run-now", "nightly", stdout=open(os.devnull, "w"))

    [run] = JobRun.objects.filter(stage=job)
    assert run.status == JobRun.Status.FAILED
    assert "RuntimeError: the end" in run.error and "Output:\ndone 1\ndone 2\n" in run.error
    assert not Task.objects.filter(source_stage=job).exists()  # nothing sent: one transaction with the completions
    for task in tasks:
        task.refresh_from_db()
        assert task.status == S.PENDING
        assert _last(task, TaskEvent.Kind.RELEASED)["output"] == "done 1\ndone 2\n"


# -- get_trigger_task, complete(), unrouted sends --------------------------------------------------------


def test_get_trigger_task_is_the_claimed_task(db: None, settings: Any) -> None:
    settings.TASKS_SCRIPT_DIRS = ["examples/abstra"]
    check = _stage("check", handler=CHECK_STOCK)
    yes, no = _stage("yes", handler="tests.handlers.noop"), _stage("no", handler="tests.handlers.noop")
    _route(check, yes, "in_stock")
    _route(check, no, "out_of_stock")
    lamp = task_create(stage=check, type="order", payload={"order_id": 7, "sku": "lamp", "qty": 2})
    desk = task_create(stage=check, type="order", payload={"order_id": 8, "sku": "desk"})

    Worker(stage_slugs=["check"], worker_id="w-abstra", listen=False).run(once=True)

    assert [(t.stage.slug, t.payload) for t in Task.objects.filter(parent=lamp)] == [
        ("yes", {"order_id": 7, "sku": "lamp"})
    ]
    assert [t.stage.slug for t in Task.objects.filter(parent=desk)] == ["no"]
    assert _last(lamp, TaskEvent.Kind.COMPLETED)["output"] == "checking lamp for order 7\n"


def test_complete_is_idempotent_and_the_run_completes_the_trigger_once(db: None, settings: Any, tmp_path: Path) -> None:
    settings.TASKS_SCRIPT_DIRS = [str(tmp_path)]
    path = _script(
        tmp_path,
        "twice.py",
        """
        from abstra.tasks import get_trigger_task, send_task
        task = get_trigger_task()
        task.complete()
        task.complete()
        send_task("done", {"id": task.id})
        """,
    )
    stage = _stage("twice", handler=path)
    _route(stage, _stage("after", handler="tests.handlers.noop"))
    task = task_create(stage=stage, type="t", payload={})

    Worker(stage_slugs=["twice"], worker_id="w-abstra", listen=False).run(once=True)

    task.refresh_from_db()
    assert task.status == S.COMPLETED
    assert [e.kind for e in _events(task)] == ["created", "completed"]
    [child] = Task.objects.filter(parent=task)
    assert child.payload == {"id": task.pk}


def test_an_unrouted_type_fails_the_run_and_nothing_is_sent(db: None, settings: Any, tmp_path: Path) -> None:
    settings.TASKS_SCRIPT_DIRS = [str(tmp_path)]
    path = _script(
        tmp_path,
        "lost.py",
        """
        from abstra.tasks import send_task
        print("sending")
        send_task("routed", {})
        send_task("nowhere", {}, show_warning=False)
        """,
    )
    stage = _stage("lost", handler=path)
    _route(stage, _stage("after", handler="tests.handlers.noop"), "routed")
    task = task_create(stage=stage, type="t", payload={})

    Worker(stage_slugs=["lost"], worker_id="w-abstra", listen=False).run(once=True)

    task.refresh_from_db()
    assert task.status == S.FAILED  # a send nothing routes fails alike on every retry: no retries
    assert not Task.objects.filter(parent=task).exists() and not Task.objects.filter(source_stage=stage).exists()
    failed = _last(task, TaskEvent.Kind.FAILED)
    assert "NoRouteError" in failed["error"] and "nowhere" in failed["error"]
    assert 'lost.py", line 5' in failed["traceback"]
    assert failed["output"] == "sending\n"
    assert not TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.COMPLETED).exists()


def test_sys_exit_zero_ends_a_script_cleanly_and_another_status_fails_it(
    db: None, settings: Any, tmp_path: Path
) -> None:
    settings.TASKS_SCRIPT_DIRS = [str(tmp_path)]
    path = _script(
        tmp_path,
        "exits.py",
        """
        import sys
        from abstra.tasks import get_trigger_task
        print("bye")
        sys.exit(get_trigger_task()["status"])
        print("never")
        """,
    )
    stage = _stage("exits", handler=path, max_attempts=1)
    clean = task_create(stage=stage, type="t", payload={"status": 0})
    broken = task_create(stage=stage, type="t", payload={"status": 3})

    Worker(stage_slugs=["exits"], worker_id="w-abstra", listen=False).run(once=True)

    clean.refresh_from_db()
    broken.refresh_from_db()
    assert clean.status == S.COMPLETED and _last(clean, TaskEvent.Kind.COMPLETED)["output"] == "bye\n"
    assert broken.status == S.FAILED and "SystemExit" in broken.last_error


# -- print output under --concurrency 2 ----------------------------------------------------------------


def test_print_output_of_concurrent_runs_stays_apart(db: None, settings: Any, tmp_path: Path) -> None:
    """Two handler slots run the script at once (each waits, mid-output, until the other has started)."""
    settings.TASKS_SCRIPT_DIRS = [str(tmp_path)]
    meet = tmp_path / "meet"
    meet.mkdir()
    path = _script(
        tmp_path,
        "chatty.py",
        f"""
        import pathlib, time
        from abstra.tasks import get_trigger_task
        me = get_trigger_task()["n"]
        meet = pathlib.Path({str(meet)!r})
        for line in range(3):
            print(f"task {{me}} line {{line}}")
            if line == 1:
                (meet / str(me)).touch()
                deadline = time.monotonic() + 20
                while len(list(meet.iterdir())) < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
        """,
    )
    stage = _stage("chatty", handler=path)
    tasks = [task_create(stage=stage, type="t", payload={"n": n}) for n in (1, 2)]

    worker = Worker(stage_slugs=["chatty"], worker_id="w-two", listen=False, concurrency=2, batch_size=2)
    worker.run(once=True)

    assert sorted(p.name for p in meet.iterdir()) == ["1", "2"]  # both were mid-run together
    for task in tasks:
        task.refresh_from_db()
        n = task.payload["n"]
        assert task.status == S.COMPLETED
        assert _last(task, TaskEvent.Kind.COMPLETED)["output"] == "".join(f"task {n} line {i}\n" for i in range(3))


def test_output_is_bounded(db: None, settings: Any, tmp_path: Path) -> None:
    settings.TASKS_SCRIPT_DIRS = [str(tmp_path)]
    path = _script(tmp_path, "loud.py", 'print("x" * 25_000, end="")\n')
    stage = _stage("loud", handler=path)
    task = task_create(stage=stage, type="t", payload={})

    Worker(stage_slugs=["loud"], worker_id="w-abstra", listen=False).run(once=True)

    output = _last(task, TaskEvent.Kind.COMPLETED)["output"]
    assert output == "x" * 10_000 + "\n[... 15000 more characters not kept]"


# -- the import alias ----------------------------------------------------------------------------------


def test_the_abstra_alias_exists_only_inside_a_script(db: None, settings: Any, tmp_path: Path) -> None:
    with pytest.raises(ModuleNotFoundError):
        __import__("abstra")  # no real abstra here, and the alias is not installed anywhere
    settings.TASKS_SCRIPT_DIRS = [str(tmp_path)]
    path = _script(
        tmp_path,
        "imports.py",
        """
        import sys
        import abstra.tasks
        from abstra import tasks
        from abstra.tasks import Task, send_task
        assert tasks is abstra.tasks and tasks.send_task is send_task
        print("abstra" in sys.modules, isinstance(tasks.get_trigger_task(), Task))
        try:
            import abstra.forms
        except ModuleNotFoundError as exc:
            print(exc)
        """,
    )
    stage = _stage("imports", handler=path)
    task = task_create(stage=stage, type="t", payload={})

    Worker(stage_slugs=["imports"], worker_id="w-abstra", listen=False).run(once=True)

    task.refresh_from_db()
    assert task.status == S.COMPLETED, task.last_error
    assert _last(task, TaskEvent.Kind.COMPLETED)["output"] == (
        "False True\nNo module named 'abstra.forms': this project provides abstra.tasks only (tasks_app.abstra)\n"
    )
    assert "abstra" not in sys.modules


# -- the API on its own: a run set by hand ------------------------------------------------------------


def _run(stage: Stage, *payloads: dict[str, Any], trigger: bool = False) -> tuple[ScriptRun, list[tuple[str, Any]]]:
    sent: list[tuple[str, Any]] = []
    served = [Served(i + 1, "t", p) for i, p in enumerate(payloads)]
    run = ScriptRun(stage=stage, send=lambda t, p: sent.append((t, p)), served=served, trigger=1 if trigger else None)
    return run, sent


def test_the_api_outside_a_script_says_so() -> None:
    with pytest.raises(abstra.NotInAScript, match="inside a script file"):
        abstra.get_tasks()


def test_tasks_are_read_only_and_served_oldest_first_with_where(db: None) -> None:
    run, _ = _run(_stage("j", Stage.Kind.JOB), {"k": "a", "n": 1}, {"k": "b", "n": 2}, {"k": "a", "n": 3})
    previous = set_current_run(run)
    try:
        assert [t.id for t in abstra.get_tasks()] == [1, 2, 3]
        assert [t["n"] for t in abstra.get_tasks(where={"k": "a"})] == [1, 3]
        assert [t.id for t in abstra.get_tasks(limit=1, offset=1)] == [2]
        first = abstra.get_tasks()[0]
        assert (first.id, first.type, first.payload, first.get("k"), first.get("x", 9)) == (
            1,
            "t",
            run.served[0].payload,
            "a",
            9,
        )
        with pytest.raises(abstra.TaskWriteAttempt):
            first["k"] = "z"
        with pytest.raises(AttributeError):
            first.payload = {}  # type: ignore[misc]
        first.payload["k"] = "z"  # a copy: nothing stored changes
        assert first["k"] == "a"
        with pytest.raises(abstra.IncompatibleStage):
            abstra.get_trigger_task()
        # complete(): idempotent, and the task is no longer served; lock() on it says so.
        first.complete()
        first.complete()
        assert run.completed == {1}
        assert [t.id for t in abstra.iter_tasks(where={"k": "a"})] == [3]
        with pytest.raises(abstra.TaskNotWaiting):
            first.lock()
        # `with task:` completes on a clean exit, releases on an exception (which it lets through).
        second, third = abstra.get_tasks()
        with second:
            pass
        with pytest.raises(KeyError), third:
            third["missing"]
        assert run.completed == {1, 2} and set(run.released) == {3}
    finally:
        set_current_run(previous)


def test_send_task_normalises_the_payload_as_abstra_does(db: None) -> None:
    run, sent = _run(_stage("s"), {}, trigger=True)

    @dataclasses.dataclass
    class Point:
        x: int
        when: date

    ident = uuid.uuid4()
    previous = set_current_run(run)
    try:
        abstra.send_task(
            "t",
            {
                "day": date(2026, 12, 2),
                "at": datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC),
                "id": ident,
                "set": {7},
                "tuple": (1, "a"),
                "point": Point(1, date(2026, 1, 1)),
                "nested": {"ids": [ident], "price": Decimal("1.50"), "count": Decimal("2")},
                "plain": [None, True, 1, 1.5, "s"],
            },
        )
    finally:
        set_current_run(previous)
    assert sent == [
        (
            "t",
            {
                "day": "2026-12-02",
                "at": "2026-12-02T03:04:05+00:00",
                "id": str(ident),
                "set": [7],
                "tuple": [1, "a"],
                "point": {"x": 1, "when": "2026-01-01"},
                "nested": {"ids": [str(ident)], "price": 1.5, "count": 2},
                "plain": [None, True, 1, 1.5, "s"],
            },
        )
    ]
    json.dumps(sent[0][1], allow_nan=False)  # JSON as stored


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([("a", 1)], "a task payload must be a dict, not a list"),
        ({"a": [1, object()]}, r"payload\['a'\]\[1\]: a object is not JSON"),
        ({"a": {"b": b"x"}}, r"payload\['a'\]\['b'\]: a bytes is not JSON"),
        ({"a": math.nan}, r"payload\['a'\]: nan is not a JSON number"),
        ({"a": {1: "x"}}, r"payload\['a'\]: key 1 is a int; JSON object keys are strings"),
    ],
)
def test_a_payload_that_is_not_json_is_refused_naming_where(payload: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        abstra.to_json_payload(payload)


def test_get_sent_tasks_are_this_stages_newest_first(db: None) -> None:
    source, other = _stage("src"), _stage("other")
    sink = _stage("sink")
    made = [task_create(stage=sink, type="t", payload={"n": n, "k": n % 2}) for n in range(4)]
    Task.objects.filter(pk__in=[t.pk for t in made]).update(source_stage=source)
    Task.objects.filter(pk=task_create(stage=sink, type="t", payload={"n": 9, "k": 1}).pk).update(source_stage=other)
    run, _ = _run(source)
    previous = set_current_run(run)
    try:
        assert [t.id for t in abstra.get_sent_tasks()] == [t.pk for t in reversed(made)]
        assert [t["n"] for t in abstra.get_sent_tasks(where={"k": 1})] == [3, 1]
        assert [t["n"] for t in abstra.get_sent_tasks(limit=2, offset=1)] == [2, 1]
        with pytest.raises(abstra.TaskNotWaiting):
            abstra.get_sent_tasks()[0].complete()  # not this run's to complete
    finally:
        set_current_run(previous)


# -- which files may run: every path that sets a handler ---------------------------------------------


def _refusals(tmp_path: Path) -> dict[str, str]:
    """Handlers that must be refused, with what the message says, against TASKS_SCRIPT_DIRS = [tmp_path/allowed]."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "evil.py").write_text("print('evil')\n")
    (allowed / "notes.txt").write_text("print('notes')\n")
    (allowed / "escape.py").symlink_to(outside / "evil.py")
    (allowed / "notes.py").symlink_to(allowed / "notes.txt")
    (allowed / "folder.py").mkdir()
    return {
        str(outside / "evil.py"): "is not a script file inside a directory that TASKS_SCRIPT_DIRS allows",
        str(allowed / ".." / "outside" / "evil.py"): "is not a script file inside a directory",
        str(allowed / "escape.py"): "is not a script file inside a directory",  # a symlink out
        str(allowed / "missing.py"): "is a script file that does not exist",
        str(allowed / "notes.py"): "is not a regular .py file",  # a symlink to a .txt inside
        str(allowed / "folder.py"): "is not a regular .py file",
        "../../etc/passwd.py": "is not a script file inside a directory",
    }


def _allow(settings: Any, tmp_path: Path) -> str:
    settings.TASKS_SCRIPT_DIRS = [str(tmp_path / "allowed")]
    (tmp_path / "allowed").mkdir(exist_ok=True)
    good = tmp_path / "allowed" / "good.py"
    good.write_text("print('good')\n")
    return str(good)


def test_the_model_refuses_every_path_outside_the_allowed_dirs(db: None, settings: Any, tmp_path: Path) -> None:
    refusals = _refusals(tmp_path)
    good = _allow(settings, tmp_path)
    stage = Stage(slug="s", name="S", kind=Stage.Kind.SCRIPT)
    for path, message in refusals.items():
        stage.handler = path
        with pytest.raises(ValidationError) as caught:
            stage.full_clean()
        [error] = caught.value.message_dict["handler"]
        assert message in error and error.startswith(f"Handler '{path}'"), (path, error)
    stage.handler = good
    stage.full_clean()
    for kind in (Stage.Kind.HOOK, Stage.Kind.FORM):
        stage.kind = kind
        with pytest.raises(ValidationError, match="Only script and job stages run a script file"):
            stage.full_clean()
    settings.TASKS_SCRIPT_DIRS = []
    stage.kind = Stage.Kind.JOB
    with pytest.raises(ValidationError, match="empty: no script may run"):
        stage.full_clean()


def test_a_script_that_does_not_compile_is_refused_when_saved(db: None, settings: Any, tmp_path: Path) -> None:
    settings.TASKS_SCRIPT_DIRS = [str(tmp_path)]
    broken = _script(tmp_path, "broken.py", "def (:\n")
    with pytest.raises(ValidationError, match="cannot be read or compiled: SyntaxError"):
        Stage(slug="s", name="S", kind=Stage.Kind.SCRIPT, handler=broken).full_clean()


def test_the_api_refuses_a_script_outside_the_allowed_dirs(db: None, settings: Any, tmp_path: Path) -> None:
    refusals = _refusals(tmp_path)
    good = _allow(settings, tmp_path)
    staff = token_client(make_user("stager", "view_stage", "change_stage", "add_stage"))
    for path, message in refusals.items():
        response = staff.post(
            "/api/stages/", {"slug": "s", "name": "S", "kind": "script", "handler": path}, format="json"
        )
        assert response.status_code == 400 and message in response.json()["handler"][0], (path, response.json())
    assert not Stage.objects.filter(slug="s").exists()
    response = staff.post(
        "/api/stages/",
        {"slug": "s", "name": "S", "kind": "job", "handler": good, "schedule": "0 2 * * *"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    response = staff.patch("/api/stages/s/", {"handler": next(iter(refusals))}, format="json")
    assert response.status_code == 400 and Stage.objects.get(slug="s").handler == good


def test_the_admin_refuses_a_script_outside_the_allowed_dirs(
    client: Client, db: None, settings: Any, tmp_path: Path
) -> None:
    refusals = _refusals(tmp_path)
    _allow(settings, tmp_path)
    stage = _stage("s")
    client.force_login(make_user("boss", superuser=True))
    url = f"/admin/tasks_app/stage/{stage.pk}/change/"
    for path, message in refusals.items():
        data = form_fields(client, url, form_id="stage_form")
        data.update({"handler": path, "_save": "Save"})
        response = client.post(url, data)
        assert response.status_code == 200
        [error] = response.context["adminform"].form.errors["handler"]
        assert message in error, (path, error)
    assert Stage.objects.get(pk=stage.pk).handler == ""


def test_a_workflow_file_naming_a_script_outside_the_allowed_dirs_loads_nothing(
    db: None, settings: Any, tmp_path: Path
) -> None:
    refusals = _refusals(tmp_path)
    good = _allow(settings, tmp_path)
    _stage("s")
    data = workflow_dump()
    for path, message in refusals.items():
        data["stages"][0]["handler"] = path
        with pytest.raises(WorkflowInvalid) as caught:
            workflow_load(data)
        [problem] = caught.value.problems
        assert problem.startswith(f"stages[0] (slug 's'): handler '{path}' {message}"), problem
    data["stages"][0]["kind"] = "hook"
    data["stages"][0]["handler"] = good
    with pytest.raises(WorkflowInvalid) as caught:
        workflow_load(data)
    assert caught.value.problems == [
        "stages[0] (slug 's'): handler: Only script and job stages run a script file (a handler ending in .py)."
    ]
    assert Stage.objects.get(slug="s").handler == ""
    data["stages"][0]["kind"] = "script"
    workflow_load(data)
    assert Stage.objects.get(slug="s").handler == good


def test_a_stored_script_no_longer_allowed_runs_nothing_and_the_check_warns(
    db: None, settings: Any, tmp_path: Path
) -> None:
    good = _allow(settings, tmp_path)
    marker = tmp_path / "ran"
    Path(good).write_text(f"open({str(marker)!r}, 'w').close()\n")
    stage = _stage("s", handler=good)
    task = task_create(stage=stage, type="t", payload={})
    settings.TASKS_SCRIPT_DIRS = []

    Worker(stage_slugs=["s"], worker_id="w-abstra", listen=False).run(once=True)

    task.refresh_from_db()
    assert task.status == S.FAILED and NOT_ALLOWED in task.last_error
    assert not marker.exists()
    [warning] = check_stage_handlers(None)
    assert warning.id == "tasks_app.W001" and NOT_ALLOWED in warning.msg


def test_the_setting_defaults_to_the_examples_in_development_and_refuses_the_project_dir() -> None:
    expression = "settings.TASKS_SCRIPT_DIRS"
    drop = ("TASKS_SCRIPT_DIRS", "TASKS_HANDLER_MODULES", "DEBUG")
    assert settings_in_a_fresh_process(expression, {}, drop=drop).stdout.strip() == "['examples/abstra']"
    production = settings_in_a_fresh_process(expression, {"DEBUG": "false", "SECRET_KEY": "x" * 50}, drop=drop)
    assert production.returncode == 0 and production.stdout.strip() == "[]", production.stderr
    for entry in (".", "/", "..", "examples/.."):
        refused = settings_in_a_fresh_process(expression, {"TASKS_SCRIPT_DIRS": f"scripts,{entry}"}, drop=drop)
        assert refused.returncode != 0
        assert f"TASKS_SCRIPT_DIRS: {entry!r} is the filesystem root" in refused.stderr.strip().splitlines()[-1]
    tests = settings_in_a_fresh_process(
        expression, {"TASKS_SCRIPT_DIRS": "tests/scripts", "DEBUG": "false", "SECRET_KEY": "x" * 50}, drop=drop
    )
    assert "'tests/scripts' is the test suite, refused with DEBUG off" in tests.stderr


def test_the_check_holds_script_dirs_set_in_python_to_the_same_rule(db: None, settings: Any, tmp_path: Path) -> None:
    settings.TASKS_SCRIPT_DIRS = [".", str(tmp_path / "gone"), str(tmp_path)]
    errors = check_script_dirs(None)
    assert [(m.id, m.msg.split(" is ")[0]) for m in errors] == [
        ("tasks_app.E006", "TASKS_SCRIPT_DIRS: '.'"),
        ("tasks_app.W002", f"TASKS_SCRIPT_DIRS: {str(tmp_path / 'gone')!r}"),
    ]
    # The refused entry counts for nothing at run time either: a file of the project is not a script.
    with pytest.raises(ValidationError, match="is not a script file inside a directory"):
        Stage(slug="s", name="S", kind=Stage.Kind.SCRIPT, handler="manage.py").full_clean()
