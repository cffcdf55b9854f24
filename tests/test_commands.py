"""Management commands: create_task, expire_locks, run_worker, load_demo, ensure_dev_admin.

Most tests call the commands in-process with call_command; a few run
`python manage.py ...` for real to check the exit status and what a person
sees on stderr. Tests that run the worker use committed data
(transaction=True): on PostgreSQL run_worker closes the connection to rename
it, which a test's wrapping transaction does not survive (see
test_run_worker_inside_an_open_transaction_keeps_it_usable).
"""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import task_claim, task_create
from tests.support.processes import manage

committed = pytest.mark.django_db(transaction=True)


def run(*args: str, **options: Any) -> str:
    """call_command, returning what the command wrote to stdout."""
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def counts() -> tuple[int, int]:
    return Task.objects.count(), TaskEvent.objects.count()


def set_handler(slug: str, handler: str, **fields: Any) -> None:
    Stage.objects.filter(slug=slug).update(handler=handler, **fields)


# -- create_task ---------------------------------------------------------------


def test_create_task_creates_a_pending_task_with_a_created_event(review: Stage) -> None:
    out = run("create_task", "review", "order", "--payload", '{"amount": 5, "items": ["book"]}')

    task = Task.objects.get()
    assert (task.stage, task.type, task.payload, task.status) == (
        review,
        "order",
        {"amount": 5, "items": ["book"]},
        Task.Status.PENDING,
    )
    assert task.attempts == 0 and task.lock_token == "" and task.parent is None
    assert [(e.kind, e.actor) for e in task.events.all()] == [("created", "cli")]
    assert out.strip() == f"created task {task.pk} (order) at review"


def test_create_task_without_payload_stores_an_empty_object(review: Stage) -> None:
    run("create_task", "review", "ping")
    assert Task.objects.get().payload == {}


def test_create_task_accepts_a_type_of_exactly_100_characters(review: Stage) -> None:
    run("create_task", "review", "t" * 100)
    assert Task.objects.get().type == "t" * 100


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["review", "order", "--payload", "{bad"], "--payload is not valid JSON: Expecting property name"),
        (["review", "order", "--payload", ""], "--payload is not valid JSON: Expecting value"),
        (["review", "order", "--payload", "[1]"], "payload: Payload must be a JSON object, not an array."),
        (["review", "order", "--payload", '"x"'], "payload: Payload must be a JSON object, not a string."),
        (["review", "order", "--payload", "3"], "payload: Payload must be a JSON object, not a number."),
        (["review", "order", "--payload", "null"], "payload: Payload must be a JSON object, not null."),
        (["review", "order", "--payload", '{"x": NaN}'], "payload: Payload is not JSON-serialisable"),
        (["review", ""], "type: Type must be a non-empty string."),
        (["review", "   "], "type: Type must be a non-empty string."),
        (["review", "t" * 101], "type: Type must be at most 100 characters (got 101)."),
        (["nope", "order"], "unknown stage 'nope'"),
        (["", "order"], "unknown stage ''"),
    ],
    ids=[
        "bad-json",
        "empty-payload",
        "payload-list",
        "payload-string",
        "payload-number",
        "payload-null",
        "payload-nan",
        "empty-type",
        "blank-type",
        "101-char-type",
        "unknown-stage",
        "empty-stage",
    ],
)
def test_create_task_rejects_bad_input_with_one_line_command_error_and_writes_nothing(
    world: dict[str, Stage], argv: list[str], message: str
) -> None:
    before = counts()
    with pytest.raises(CommandError, match=re.escape(message)) as info:
        run("create_task", *argv)
    assert "\n" not in str(info.value)
    assert counts() == before


def test_create_task_reports_both_a_bad_type_and_a_bad_payload(review: Stage) -> None:
    with pytest.raises(CommandError) as info:
        run("create_task", "review", "", "--payload", "[]")
    assert "type: " in str(info.value) and "payload: " in str(info.value)
    assert counts() == (0, 0)


def test_create_task_rejects_a_too_deeply_nested_payload_with_a_command_error(review: Stage) -> None:
    # json.loads raises RecursionError (not JSONDecodeError) for deep nesting.
    with pytest.raises(CommandError, match="--payload"):
        run("create_task", "review", "order", "--payload", "[" * 100_000)
    assert counts() == (0, 0)


@committed
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["review", "order", "--payload", "{bad"], "--payload is not valid JSON"),
        (["review", "order", "--payload", "[1]"], "Payload must be a JSON object, not an array"),
        (["review", "t" * 101], "Type must be at most 100 characters (got 101)"),
        (["nope", "order"], "unknown stage 'nope'"),
    ],
    ids=["bad-json", "payload-list", "101-char-type", "unknown-stage"],
)
def test_create_task_process_exits_non_zero_with_one_readable_stderr_line(
    world: dict[str, Stage], argv: list[str], message: str
) -> None:
    before = counts()
    result = manage("create_task", *argv)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("CommandError: ") and message in lines[0]
    assert counts() == before


@committed
def test_create_task_process_writes_to_the_shared_database(review: Stage) -> None:
    result = manage("create_task", "review", "order", "--payload", '{"amount": 7}')
    assert result.returncode == 0, result.stderr
    task = Task.objects.get()
    assert (task.stage_id, task.type, task.payload, task.status) == (review.pk, "order", {"amount": 7}, "pending")
    assert result.stdout.strip() == f"created task {task.pk} (order) at review"
    assert task.events.get().kind == TaskEvent.Kind.CREATED


# -- expire_locks --------------------------------------------------------------


def claim_with_expired_lock(stage: Stage, worker_id: str = "worker-gone") -> Task:
    """Claim the stage's task as if it happened 10 minutes ago with a 1 s lock."""
    past = timezone.now() - timedelta(minutes=10)
    [claimed] = task_claim(stage=stage, worker_id=worker_id, lock_timeout=1, now=past)
    assert claimed.locked_until is not None and claimed.locked_until < timezone.now()
    return claimed


def backdated_task(stage: Stage) -> Task:
    return task_create(stage=stage, type="order", payload={"amount": 10}, now=timezone.now() - timedelta(hours=1))


def test_expire_locks_returns_an_expired_task_to_pending_and_records_who_held_it(review: Stage) -> None:
    task = backdated_task(review)
    claim_with_expired_lock(review)

    out = run("expire_locks")

    task.refresh_from_db()
    assert task.status == Task.Status.PENDING
    assert (task.lock_token, task.locked_by, task.locked_at, task.locked_until) == ("", "", None, None)
    assert task.available_at <= timezone.now()
    assert task.attempts == 1
    event = task.events.get(kind=TaskEvent.Kind.LOCK_EXPIRED)
    assert event.details["worker"] == "worker-gone" and event.details["claimed_at"] is not None
    assert event.details["now"] == "pending"
    assert out.strip() == "1 expired lock(s) released"


def test_expire_locks_fails_the_task_when_the_stage_max_attempts_is_reached(review: Stage) -> None:
    Stage.objects.filter(pk=review.pk).update(max_attempts=1)
    task = backdated_task(review)
    claim_with_expired_lock(review)

    out = run("expire_locks")

    task.refresh_from_db()
    assert task.status == Task.Status.FAILED
    assert task.lock_token == "" and task.locked_until is None
    assert "max attempts" in task.last_error
    event = task.events.get(kind=TaskEvent.Kind.LOCK_EXPIRED)
    assert event.details["worker"] == "worker-gone" and event.details["claimed_at"] is not None
    assert event.details["now"] == "failed"
    assert out.strip() == "1 expired lock(s) released"


def test_expire_locks_leaves_a_live_lock_alone_and_says_0(review: Stage, pending_task: Task) -> None:
    [claimed] = task_claim(stage=review, worker_id="alive", lock_timeout=300)

    out = run("expire_locks")

    pending_task.refresh_from_db()
    assert pending_task.status == Task.Status.LOCKED
    assert pending_task.lock_token == claimed.lock_token
    assert not TaskEvent.objects.filter(kind=TaskEvent.Kind.LOCK_EXPIRED).exists()
    assert out.strip() == "0 expired lock(s) released"


# -- run_worker: arguments -----------------------------------------------------


def test_run_worker_refuses_an_unknown_stage_by_name(world: dict[str, Stage], pending_task: Task) -> None:
    with pytest.raises(CommandError, match=r"unknown stage\(s\): nope, nada"):
        run("run_worker", once=True, stage=["review", "nope", "nada"])
    pending_task.refresh_from_db()
    assert pending_task.status == Task.Status.PENDING


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["--batch-size", "5000"], "argument --batch-size: must be at most 1000, got 5000"),
        (["--batch-size", "abc"], "argument --batch-size: expected a whole number, got 'abc'"),
        (["--poll-interval", "-1"], "argument --poll-interval: must be greater than 0, got -1"),
        (["--poll-interval", "0"], "argument --poll-interval: must be greater than 0, got 0"),
        (["--poll-interval", "nan"], "argument --poll-interval: must be greater than 0, got nan"),
        (["--poll-interval", "abc"], "argument --poll-interval: expected a number of seconds, got 'abc'"),
        (["--lock-timeout", "0"], "argument --lock-timeout: must be at least 1, got 0"),
        (["--max-tasks", "-3"], "argument --max-tasks: must be at least 1, got -3"),
    ],
)
def test_run_worker_bad_flag_value_raises_command_error_before_doing_anything(
    world: dict[str, Stage], pending_task: Task, argv: list[str], message: str
) -> None:
    # In Django 5.2 call_command's parser raises CommandError("Error: ...")
    # for argparse errors (the command line gets usage + exit status 2).
    # Flags must be given as strings: keyword options skip argparse types.
    with pytest.raises(CommandError, match="^" + re.escape(f"Error: {message}") + "$"):
        run("run_worker", "--once", *argv)
    pending_task.refresh_from_db()
    assert pending_task.status == Task.Status.PENDING


@committed
def test_run_worker_refuses_an_infinite_poll_interval(world: dict[str, Stage]) -> None:
    # With "inf" an idle worker would never poll again.
    with pytest.raises(CommandError, match="--poll-interval"):
        run("run_worker", "--once", "--poll-interval", "inf")


def test_run_worker_process_bad_flag_exits_2_naming_the_flag(db: None) -> None:
    result = manage("run_worker", "--once", "--batch-size", "0")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "manage.py run_worker: error: argument --batch-size: must be at least 1, got 0"
    )


# -- run_worker: processing ----------------------------------------------------


@committed
def test_run_worker_once_completes_a_review_task_and_fans_out_approved_successors(
    world: dict[str, Stage], pending_task: Task
) -> None:
    out = run("run_worker", once=True, stage=["review"], worker_id="test-worker")

    pending_task.refresh_from_db()
    assert pending_task.status == Task.Status.COMPLETED
    assert pending_task.completed_at is not None and pending_task.lock_token == ""
    successors = Task.objects.filter(parent=pending_task).order_by("stage__slug")
    assert [(t.stage.slug, t.type, t.payload, t.status, t.source_stage_id) for t in successors] == [
        ("audit", "approved", {"amount": 10}, Task.Status.PENDING, world["review"].pk),
        ("ship", "approved", {"amount": 10}, Task.Status.PENDING, world["review"].pk),
    ]
    kinds = list(pending_task.events.values_list("kind", "actor"))
    assert kinds == [("created", ""), ("completed", "test-worker")]
    done = pending_task.events.get(kind=TaskEvent.Kind.COMPLETED)
    assert (done.details["worker"], done.details["attempt"]) == ("test-worker", 1)
    assert done.details["claimed_at"] == pending_task.locked_at.isoformat()  # the row keeps the last claim
    # Only the review stage was served: the successors wait.
    assert "1 done, 0 failed, 0 released" in out


@committed
def test_run_worker_once_drains_every_script_stage_when_no_stage_is_given(world: dict[str, Stage]) -> None:
    task_create(stage=world["review"], type="order", payload={"amount": 10})
    task_create(stage=world["review"], type="order", payload={"amount": 500})

    run("run_worker", once=True)

    assert not Task.objects.exclude(status=Task.Status.COMPLETED).exists()
    assert sorted(Task.objects.values_list("stage__slug", "type")) == [
        ("audit", "approved"),
        ("notify", "declined"),
        ("review", "order"),
        ("review", "order"),
        ("ship", "approved"),
    ]


@committed
@pytest.mark.parametrize("path", ["tests.handlers.does_not_exist", "no_such_module.handler", "nodots"])
def test_run_worker_fails_a_task_whose_handler_cannot_be_imported_and_keeps_going(
    world: dict[str, Stage], path: str
) -> None:
    # review is served before ship (stages are served in id order).
    set_handler("review", path)
    broken = task_create(stage=world["review"], type="order", payload={"amount": 10})
    fine = task_create(stage=world["ship"], type="order", payload={})

    out = run("run_worker", once=True, stage=["review", "ship"])

    broken.refresh_from_db()
    assert broken.status == Task.Status.FAILED
    assert path in broken.last_error and "review" in broken.last_error
    assert broken.events.filter(kind=TaskEvent.Kind.FAILED).count() == 1
    assert not Task.objects.filter(parent=broken).exists()
    fine.refresh_from_db()
    assert fine.status == Task.Status.COMPLETED
    assert "1 done, 1 failed" in out


@committed
def test_run_worker_fails_a_task_whose_stage_has_no_handler(world: dict[str, Stage]) -> None:
    set_handler("ship", "")
    task = task_create(stage=world["ship"], type="order", payload={})

    run("run_worker", once=True, stage=["ship"])

    task.refresh_from_db()
    assert task.status == Task.Status.FAILED
    assert "has no handler configured" in task.last_error


@committed
def test_run_worker_releases_a_task_whose_handler_raises_with_its_traceback(world: dict[str, Stage]) -> None:
    set_handler("ship", "tests.handlers.boom")
    task = task_create(stage=world["ship"], type="order", payload={})
    started = timezone.now()

    out = run("run_worker", once=True, stage=["ship"])

    task.refresh_from_db()
    assert task.status == Task.Status.PENDING
    assert task.last_error == f"RuntimeError: boom on task {task.pk}"
    assert (task.lock_token, task.locked_by, task.locked_until) == ("", "", None)
    assert task.attempts == 1
    assert task.available_at > started  # retried after a backoff, not at once
    event = task.events.get(kind=TaskEvent.Kind.RELEASED)
    assert "boom" in event.details["error"]
    assert event.details["traceback"].startswith("Traceback (most recent call last)")
    assert "tests/handlers.py" in event.details["traceback"]
    assert "0 done, 0 failed, 1 released" in out


@committed
def test_run_worker_fails_a_raising_task_at_max_attempts(world: dict[str, Stage]) -> None:
    set_handler("ship", "tests.handlers.boom", max_attempts=1)
    task = task_create(stage=world["ship"], type="order", payload={})

    out = run("run_worker", once=True, stage=["ship"])

    task.refresh_from_db()
    assert task.status == Task.Status.FAILED
    assert "boom" in task.last_error
    event = task.events.get(kind=TaskEvent.Kind.FAILED)
    assert event.details["reason"] == "max attempts (1) reached"
    assert "Traceback" in event.details["traceback"]
    assert "0 done, 1 failed, 0 released" in out


@committed
def test_run_worker_fails_a_task_whose_handler_sends_an_unrouted_type(world: dict[str, Stage]) -> None:
    set_handler("ship", "tests.handlers.send_unrouted")
    task = task_create(stage=world["ship"], type="order", payload={})
    before = Task.objects.count()

    run("run_worker", once=True, stage=["ship"])

    task.refresh_from_db()
    assert task.status == Task.Status.FAILED
    assert "nobody-routes-this" in task.last_error and "NoRouteError" in task.last_error
    assert Task.objects.count() == before  # nothing was sent


@committed
def test_run_worker_does_not_store_a_handlers_changes_to_the_payload(world: dict[str, Stage]) -> None:
    set_handler("ship", "tests.handlers.mutate_payload")
    task = task_create(stage=world["ship"], type="order", payload={"amount": 1, "nested": {"a": [1]}})

    run("run_worker", once=True, stage=["ship"])

    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED
    assert task.payload == {"amount": 1, "nested": {"a": [1]}}


@committed
def test_run_worker_max_tasks_1_processes_exactly_one_of_two_tasks(world: dict[str, Stage]) -> None:
    first = task_create(stage=world["ship"], type="order", payload={})
    second = task_create(stage=world["ship"], type="order", payload={})

    out = run("run_worker", "--max-tasks", "1", "--stage", "ship")  # stops by itself: no --once needed

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (Task.Status.COMPLETED, Task.Status.PENDING)
    assert (second.attempts, second.locked_at) == (0, None)  # never claimed
    assert list(second.events.values_list("kind", flat=True)) == ["created"]
    assert "1 done" in out


@committed
def test_run_worker_skips_a_paused_stage(world: dict[str, Stage], pending_task: Task) -> None:
    Stage.objects.filter(slug="review").update(is_paused=True)
    run("run_worker", once=True, stage=["review"])
    pending_task.refresh_from_db()
    assert pending_task.status == Task.Status.PENDING and pending_task.attempts == 0


@pytest.mark.django_db  # deliberately not transaction=True
def test_run_worker_inside_an_open_transaction_keeps_it_usable(world: dict[str, Stage], pending_task: Task) -> None:
    # On PostgreSQL run_worker closes the connection to set application_name;
    # inside an atomic block that throws away the caller's transaction and the
    # worker's first query raises OperationalError "the connection is closed".
    # Passes on SQLite; fails on PostgreSQL until the command stops closing a
    # connection that is in an atomic block.
    run("run_worker", once=True, stage=["review"])
    assert Task.objects.get(pk=pending_task.pk).status == Task.Status.COMPLETED


# -- ensure_dev_admin ----------------------------------------------------------


def test_ensure_dev_admin_creates_the_admin_superuser_once(
    db: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.DEBUG = True  # pytest-django runs tests with DEBUG off
    monkeypatch.delenv("DEV_ADMIN_USER", raising=False)
    monkeypatch.delenv("DEV_ADMIN_PASSWORD", raising=False)
    User = get_user_model()

    first = run("ensure_dev_admin")

    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.is_active
    assert admin.check_password("admin")
    assert "created admin user 'admin'" in first

    admin.set_password("changed-by-hand")
    admin.save()
    second = run("ensure_dev_admin")

    assert User.objects.filter(username="admin").count() == 1
    admin.refresh_from_db()
    assert admin.check_password("changed-by-hand")
    assert "exists" in second


def test_ensure_dev_admin_refuses_with_debug_off(db: None, settings: Any) -> None:
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG off"):
        run("ensure_dev_admin")
    assert not get_user_model().objects.exists()
