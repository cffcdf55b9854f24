"""Job stages and the scheduler: due times, catch-up, batch runs, exactly-once, the commands.

Due-time tests pass explicit `now` values (no clock freezing). Tests with real
processes or threads use committed data (transaction=True) and a job whose
one pending due time was a minute ago on a daily schedule, so no real minute
boundary can add a second due time while they run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import Count
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.models import JobRun, Stage, Task, TaskEvent, Transition
from tasks_app.services import task_create
from tasks_app.services.jobs import MAX_MISSED, due_time, job_run_start, job_runs_abandon, jobs_run_due
from tests.support.processes import ROOT, finish, manage, start_worker, subprocess_env, wait_for

committed = pytest.mark.django_db(transaction=True)
Procs = list[subprocess.Popen[str]]

S = Task.Status
R = JobRun.Status


def at(day: int, hour: int, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    """A moment in March 2024, UTC (TIME_ZONE is UTC unless a test changes it)."""
    return datetime(2024, 3, day, hour, minute, second, micro, tzinfo=UTC)


def make_job(
    slug: str = "nightly",
    *,
    schedule: str = "0 3 * * *",
    handler: str = "tests.handlers.digest",
    created_at: datetime | None = None,
    **fields: Any,
) -> Stage:
    """A job stage whose "digest" tasks go to the script stage "outbox"."""
    stage = Stage.objects.create(
        slug=slug,
        name=slug.title(),
        kind=Stage.Kind.JOB,
        schedule=schedule,
        handler=handler,
        created_at=created_at or at(1, 12),
        **fields,
    )
    outbox, _ = Stage.objects.get_or_create(
        slug="outbox", defaults={"name": "Outbox", "kind": Stage.Kind.SCRIPT, "handler": "tests.handlers.noop"}
    )
    Transition.objects.create(source=stage, target=outbox, task_type="digest")
    return stage


def make_job_due_a_minute_ago(**fields: Any) -> tuple[Stage, datetime]:
    """A daily job whose only pending due time is the start of the previous minute (the next is tomorrow)."""
    due = timezone.localtime(timezone.now() - timedelta(minutes=1)).replace(second=0, microsecond=0)
    stage = make_job(schedule=f"{due.minute} {due.hour} * * *", created_at=due - timedelta(hours=1), **fields)
    return stage, due


def waiting(stage: Stage, count: int) -> list[Task]:
    return [task_create(stage=stage, type="note", payload={"n": n}) for n in range(count)]


def outbox() -> list[Task]:
    return list(Task.objects.filter(stage__slug="outbox").order_by("id"))


def completions(tasks: list[Task]) -> dict[int, int]:
    rows = TaskEvent.objects.filter(task__in=tasks, kind=TaskEvent.Kind.COMPLETED).values("task_id")
    return dict(rows.annotate(n=Count("id")).values_list("task_id", "n"))


def run(*args: str, **options: Any) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **options)
    return out.getvalue()


def start_scheduler(*args: str) -> subprocess.Popen[str]:
    """`manage.py run_scheduler ARGS` on this run's database."""
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_scheduler", *args],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Lines:
    """Collects a process's output lines as they come, so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)

    def has(self, fragment: str) -> bool:
        return any(fragment in line for line in self.lines)


# -- due times ------------------------------------------------------------------------------------


def test_a_new_job_is_not_due_until_its_first_tick_after_creation(db: None) -> None:
    stage = make_job(schedule="0 * * * *", created_at=at(1, 10, 30))
    # 10:00 passed before the stage existed: it does not fire at once for it.
    assert due_time(stage, at(1, 10, 30, 1)) is None
    assert due_time(stage, at(1, 10, 59, 59, 999999)) is None
    # A tick at exactly `now` is due, and stays the due time until the next tick.
    assert due_time(stage, at(1, 11)) == (at(1, 11), 0)
    assert due_time(stage, at(1, 11, 0, 0, 500000)) == (at(1, 11), 0)
    assert due_time(stage, at(1, 11, 59, 59)) == (at(1, 11), 0)
    assert due_time(stage, at(1, 12)) == (at(1, 12), 1)


def test_a_nightly_job_created_in_the_day_first_runs_the_next_night(db: None) -> None:
    stage = make_job(schedule="0 3 * * *", created_at=at(1, 12))
    assert jobs_run_due(worker_id="s", now=at(1, 12, 0, 1)) == []
    assert jobs_run_due(worker_id="s", now=at(2, 2, 59, 59)) == []
    [run] = jobs_run_due(worker_id="s", now=at(2, 3, 0, 5))
    assert (run.due_at, run.missed, run.status) == (at(2, 3), 0, R.SUCCEEDED)
    assert not JobRun.objects.exclude(pk=run.pk).filter(stage=stage).exists()


def test_after_downtime_a_job_runs_once_with_the_missed_ticks_counted(db: None) -> None:
    stage = make_job(schedule="*/5 * * * *", created_at=at(1, 9))
    JobRun.objects.create(stage=stage, due_at=at(1, 10), status=R.SUCCEEDED, finished_at=at(1, 10))

    # Down from 10:00 to 11:02: 10:05 ... 10:55 (11 ticks) were missed, 11:00 is due.
    assert due_time(stage, at(1, 11, 2)) == (at(1, 11), 11)
    runs = jobs_run_due(worker_id="s1", now=at(1, 11, 2))
    assert [(r.due_at, r.missed, r.status) for r in runs] == [(at(1, 11), 11, R.SUCCEEDED)]

    # Covered now, for this scheduler and any other, until the next tick.
    assert due_time(stage, at(1, 11, 2)) is None
    assert jobs_run_due(worker_id="s1", now=at(1, 11, 2)) == []
    assert jobs_run_due(worker_id="s2", now=at(1, 11, 4, 59)) == []
    [later] = jobs_run_due(worker_id="s2", now=at(1, 11, 5))
    assert (later.due_at, later.missed) == (at(1, 11, 5), 0)

    assert JobRun.objects.filter(stage=stage).count() == 3
    assert [t.payload["missed"] for t in outbox()] == [11, 0]


def test_the_missed_count_stops_at_its_cap(db: None) -> None:
    stage = make_job(schedule="* * * * *", created_at=at(1, 0))
    assert due_time(stage, at(8, 0)) == (at(8, 0), MAX_MISSED)  # a week: 10,079 ticks


def test_the_schedule_is_read_in_time_zone(db: None, settings: Any) -> None:
    settings.TIME_ZONE = "Europe/Berlin"
    stage = make_job(schedule="0 3 * * *", created_at=at(1, 12))
    # 03:00 in Berlin is 02:00 UTC in winter (CET) ...
    assert due_time(stage, at(2, 2, 0, 1)) == (at(2, 2), 0)
    assert due_time(stage, at(2, 1, 59)) is None
    # ... and 01:00 UTC in summer (CEST, from 31 March).
    JobRun.objects.create(stage=stage, due_at=at(30, 2), status=R.SUCCEEDED)
    assert due_time(stage, at(31, 1, 0, 1)) == (at(31, 1), 0)


def test_a_paused_job_stage_does_not_run(db: None) -> None:
    stage = make_job(is_paused=True)
    waiting(stage, 1)
    assert jobs_run_due(worker_id="s", now=at(2, 3)) == []
    assert not JobRun.objects.exists()


def test_starting_a_due_time_that_already_has_a_run_returns_none(db: None) -> None:
    stage = make_job()
    first = job_run_start(stage=stage, due_at=at(2, 3), worker_id="a")
    assert first is not None
    assert job_run_start(stage=stage, due_at=at(2, 3), worker_id="b") is None
    # Nor an earlier due time once a later one has started.
    assert job_run_start(stage=stage, due_at=at(1, 3), worker_id="b") is None
    assert list(JobRun.objects.values_list("worker_id", flat=True)) == ["a"]


# -- running a job --------------------------------------------------------------------------------


def test_a_job_processes_the_waiting_tasks_in_one_batch_and_sends_a_digest(db: None) -> None:
    stage = make_job()
    tasks = [task_create(stage=stage, type=kind, payload={"n": n}) for n, kind in enumerate(["a", "b", "a"])]

    [run] = jobs_run_due(worker_id="sched-1", now=at(2, 3, 0, 5))

    assert run.status == R.SUCCEEDED, run.error
    assert (run.due_at, run.missed, run.tasks_processed, run.tasks_sent) == (at(2, 3), 0, 3, 1)
    assert run.worker_id == "sched-1" and run.finished_at is not None and run.error == ""
    for task in tasks:
        task.refresh_from_db()
        assert task.status == S.COMPLETED
    assert completions(tasks) == {t.pk: 1 for t in tasks}
    assert set(TaskEvent.objects.filter(task__in=tasks, kind="completed").values_list("actor", flat=True)) == {
        "sched-1"
    }
    [digest] = outbox()
    assert digest.payload == {
        "count": 3,
        "ids": [t.pk for t in tasks],
        "types": ["a", "b"],
        "missed": 0,
        "due_at": "2024-03-02T03:00:00+00:00",
    }
    assert (digest.type, digest.status, digest.source_stage_id, digest.parent_id) == (
        "digest",
        S.PENDING,
        stage.pk,
        None,
    )
    assert digest.events.get().actor == "job:nightly"


def test_a_job_with_no_waiting_tasks_still_runs(db: None) -> None:
    make_job()
    [run] = jobs_run_due(worker_id="s", now=at(2, 3))
    assert (run.status, run.tasks_processed, run.tasks_sent) == (R.SUCCEEDED, 0, 1)
    assert [t.payload["count"] for t in outbox()] == [0]


def test_a_failing_job_releases_its_tasks_and_records_the_error(db: None) -> None:
    stage = make_job(handler="tests.handlers.job_boom")
    tasks = waiting(stage, 2)

    [run] = jobs_run_due(worker_id="s", now=at(2, 3))

    assert run.status == R.FAILED and run.finished_at is not None
    assert run.error.startswith("RuntimeError: job broke with 2 task(s)\n\nTraceback")
    assert "job_boom" in run.error
    assert (run.tasks_processed, run.tasks_sent) == (0, 0)
    for task in tasks:
        task.refresh_from_db()
        # Back to pending at once (the schedule spaces the retries), the attempt counted.
        assert (task.status, task.attempts, task.lock_token) == (S.PENDING, 1, "")
        assert task.last_error == "RuntimeError: job broke with 2 task(s)"
        assert task.available_at <= timezone.now()
        released = task.events.get(kind=TaskEvent.Kind.RELEASED)
        assert "job_boom" in released.details["traceback"]
    assert outbox() == []

    # A failed due time is not retried; the next one gets the tasks again.
    assert jobs_run_due(worker_id="s", now=at(2, 23)) == []
    Stage.objects.filter(pk=stage.pk).update(handler="tests.handlers.digest")
    [next_run] = jobs_run_due(worker_id="s", now=at(3, 3))
    assert (next_run.status, next_run.tasks_processed) == (R.SUCCEEDED, 2)


def test_a_failing_job_fails_a_task_at_its_max_attempts(db: None) -> None:
    stage = make_job(handler="tests.handlers.job_boom", max_attempts=1)
    [task] = waiting(stage, 1)
    jobs_run_due(worker_id="s", now=at(2, 3))
    task.refresh_from_db()
    assert task.status == S.FAILED


@pytest.mark.parametrize(
    ("handler", "schemas", "error"),
    [
        ("tests.handlers.send_unrouted", {}, "NoRouteError: Stage 'nightly' has no transition for task type"),
        (
            "tests.handlers.digest",
            {"digest": {"type": "object", "required": ["signed_off"]}},
            "ValidationError: {'payload': [\"Does not match the 'digest' schema of stage 'nightly'",
        ),
    ],
)
def test_a_job_whose_send_is_refused_fails_and_sends_nothing(
    db: None, handler: str, schemas: dict[str, Any], error: str
) -> None:
    stage = make_job(handler=handler, schemas=schemas)
    [task] = waiting(stage, 1)
    [run] = jobs_run_due(worker_id="s", now=at(2, 3))
    assert run.status == R.FAILED
    assert run.error.startswith(error), run.error
    task.refresh_from_db()
    assert task.status == S.PENDING
    assert outbox() == []


def test_a_job_whose_handler_cannot_be_imported_fails_before_claiming_anything(db: None) -> None:
    stage = make_job(handler="tests.handlers.no_such_handler")
    [task] = waiting(stage, 1)
    [run] = jobs_run_due(worker_id="s", now=at(2, 3))
    assert run.status == R.FAILED
    assert run.error.startswith(
        "HandlerImportError: Handler 'tests.handlers.no_such_handler' of stage 'nightly' cannot be imported"
    ), run.error
    task.refresh_from_db()
    assert (task.status, task.attempts, task.locked_at) == (S.PENDING, 0, None)  # never claimed
    assert list(task.events.values_list("kind", flat=True)) == [TaskEvent.Kind.CREATED]


def test_a_run_claims_at_most_tasks_job_max_tasks(db: None, settings: Any) -> None:
    settings.TASKS_JOB_MAX_TASKS = 2
    stage = make_job()
    tasks = waiting(stage, 3)
    [run] = jobs_run_due(worker_id="s", now=at(2, 3))
    assert run.tasks_processed == 2
    assert [t.payload["ids"] for t in outbox()] == [[tasks[0].pk, tasks[1].pk]]
    assert Task.objects.get(pk=tasks[2].pk).status == S.PENDING  # for the next run


# -- exactly once ---------------------------------------------------------------------------------


@committed
def test_two_threads_running_due_jobs_at_the_same_moment_start_one_run() -> None:
    stage = make_job()
    tasks = waiting(stage, 3)
    barrier = threading.Barrier(2)
    results: dict[str, list[JobRun]] = {}
    errors: list[BaseException] = []

    def scheduler(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            results[name] = jobs_run_due(worker_id=name, now=at(2, 3, 0, 1))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=scheduler, args=(f"t{n}",)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    # Both found the job due; the (stage, due_at) row let one of them run it.
    assert sorted(len(runs) for runs in results.values()) == [0, 1]
    [run] = JobRun.objects.filter(stage=stage)
    assert run.status == R.SUCCEEDED and run.tasks_processed == 3
    assert len(outbox()) == 1
    assert completions(tasks) == {t.pk: 1 for t in tasks}


@committed
def test_two_scheduler_processes_run_a_due_job_exactly_once(workers: Procs) -> None:
    # Paused until both schedulers are up, so that they compete for the same due time.
    stage, due = make_job_due_a_minute_ago(is_paused=True)
    tasks = waiting(stage, 5)
    outputs = []
    for name in ("sched-a", "sched-b"):
        workers.append(start_scheduler("--interval", "0.1", "--worker-id", name))
        outputs.append(Lines(workers[-1]))
    assert wait_for(lambda: all(o.has("started") for o in outputs), timeout=60), [o.lines for o in outputs]

    Stage.objects.filter(pk=stage.pk).update(is_paused=False)
    assert wait_for(lambda: JobRun.objects.filter(stage=stage).exclude(status=R.RUNNING).exists(), timeout=60)
    time.sleep(0.5)  # several more ticks each: none may start the due time again
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    texts = [o.text() for o in outputs]
    for proc, text in zip(workers, texts, strict=True):
        assert proc.wait(timeout=30) == 0, text
        assert "stopped" in text

    [run] = JobRun.objects.filter(stage=stage)
    assert (run.status, run.due_at, run.missed, run.tasks_processed) == (R.SUCCEEDED, due, 0, 5)
    assert run.worker_id in ("sched-a", "sched-b")
    assert [t.payload["count"] for t in outbox()] == [5]
    assert completions(tasks) == {t.pk: 1 for t in tasks}
    # Exactly one of them says it ran the job.
    assert sum(f"job nightly @ {due:%Y-%m-%d %H:%M:%S}: succeeded" in text for text in texts) == 1


# -- run_scheduler -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("nope", "CommandError: unknown stage: nope"),
        ("outbox", "CommandError: not a job stage: outbox is a script stage"),
    ],
)
@committed
def test_run_scheduler_run_now_refuses_a_bad_slug_with_one_line_and_changes_nothing(slug: str, message: str) -> None:
    stage = make_job()
    [task] = waiting(stage, 1)
    result = manage("run_scheduler", "--run-now", slug)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [message]
    assert not JobRun.objects.exists()
    assert Task.objects.get(pk=task.pk).status == S.PENDING


def test_run_scheduler_run_now_runs_a_job_whatever_its_schedule(db: None) -> None:
    stage = make_job(created_at=timezone.now())  # not due for hours
    waiting(stage, 2)
    before = timezone.now().replace(microsecond=0)
    out = run("run_scheduler", "--run-now", "nightly", "--worker-id", "ops")
    [run_] = JobRun.objects.all()
    assert run_.status == R.SUCCEEDED and run_.worker_id == "ops"
    assert before <= run_.due_at <= timezone.now() and run_.due_at.microsecond == 0
    assert out.strip().endswith("succeeded, 2 task(s) processed, 1 sent")
    # It is the stage's latest run now: the scheduler counts from it.
    assert due_time(stage, timezone.now()) is None


def test_run_scheduler_run_now_of_a_failing_job_exits_non_zero(db: None) -> None:
    make_job(handler="tests.handlers.job_boom")
    with pytest.raises(CommandError, match="^job nightly failed$"):
        run("run_scheduler", "--run-now", "nightly")
    assert JobRun.objects.get().status == R.FAILED


def test_run_scheduler_once_runs_the_due_jobs_or_says_none_is_due(db: None) -> None:
    stage, due = make_job_due_a_minute_ago()
    out = run("run_scheduler", "--once", "--worker-id", "cron")
    assert out.strip() == f"job nightly @ {due:%Y-%m-%d %H:%M:%S}: succeeded, 0 task(s) processed, 1 sent"
    assert run("run_scheduler", "--once").strip() == "no job due"
    assert JobRun.objects.filter(stage=stage).count() == 1


def test_run_scheduler_process_bad_interval_exits_2_naming_the_flag(db: None) -> None:
    result = manage("run_scheduler", "--interval", "0")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "manage.py run_scheduler: error: argument --interval: must be greater than 0, got 0"
    )


# -- run_worker's scheduler -----------------------------------------------------------------------


@committed
def test_every_stage_kind_end_to_end_hook_script_job_script(world: dict[str, Stage]) -> None:
    """intake (hook) -> review (script) -approved-> nightly (job) -digest-> outbox (script)."""
    cache.clear()  # hook throttle counters
    nightly, due = make_job_due_a_minute_ago()
    Transition.objects.create(source=world["review"], target=nightly, task_type="approved")
    response = APIClient().post(
        "/hooks/intake/?type=order",
        {"amount": 10},
        format="json",
        headers={"X-Hook-Token": world["intake"].hook_secret},
    )
    assert response.status_code == 202, response.content

    # Workers don't take tasks at job stages: the approved order waits at nightly.
    run("run_worker", once=True, no_scheduler=True, worker_id="w1")
    assert not JobRun.objects.exists()
    [order] = Task.objects.filter(stage=nightly)
    assert (order.type, order.status) == ("approved", S.PENDING)

    # With its scheduler, --once runs the due job first, then drains what it sent.
    out = run("run_worker", once=True, worker_id="w2")
    assert f"job nightly @ {due:%Y-%m-%d %H:%M:%S}: succeeded, 1 task(s) processed, 1 sent" in out
    [job_run] = JobRun.objects.all()
    assert job_run.worker_id == "w2/scheduler"
    assert Task.objects.get(pk=order.pk).status == S.COMPLETED
    [digest] = outbox()
    assert (digest.status, digest.payload["ids"]) == (S.COMPLETED, [order.pk])


@committed
def test_run_worker_no_scheduler_leaves_a_due_job_alone(world: dict[str, Stage]) -> None:
    stage, _ = make_job_due_a_minute_ago()
    [task] = waiting(stage, 1)
    run("run_worker", once=True, no_scheduler=True)
    assert not JobRun.objects.exists()
    assert Task.objects.get(pk=task.pk).status == S.PENDING


@committed
def test_run_worker_runs_a_due_job_in_its_scheduler_thread_and_stops_with_it(workers: Procs) -> None:
    stage, due = make_job_due_a_minute_ago()
    tasks = waiting(stage, 2)
    proc = start_worker("--progress-interval", "0", "--poll-interval", "0.2", "--worker-id", "w-sched")
    workers.append(proc)

    # The thread runs the job; the worker then completes the digest the job sent.
    done = wait_for(lambda: Task.objects.filter(stage__slug="outbox", status=S.COMPLETED).exists(), timeout=60)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, timeout=30)
    assert done, out
    assert proc.returncode == 0, out

    [job_run] = JobRun.objects.filter(stage=stage)
    assert (job_run.status, job_run.due_at, job_run.worker_id) == (R.SUCCEEDED, due, "w-sched/scheduler")
    assert completions(tasks) == {t.pk: 1 for t in tasks}
    assert "scheduler w-sched/scheduler started" in out
    # The thread (a daemon) said goodbye: the process waited for it before exiting.
    assert "scheduler w-sched/scheduler stopped (1 run(s))" in out


def test_a_run_whose_scheduler_died_is_closed_as_abandoned_after_its_lock_timeout(db: None) -> None:
    stage = Stage.objects.create(slug="nightly", name="N", kind="job", schedule="0 2 * * *", lock_timeout=60)
    now = timezone.now()
    old = JobRun.objects.create(stage=stage, due_at=now - timedelta(days=1), started_at=now - timedelta(seconds=121))
    recent = JobRun.objects.create(stage=stage, due_at=now, started_at=now - timedelta(seconds=119))

    assert job_runs_abandon(now=now) == 1

    old.refresh_from_db()
    recent.refresh_from_db()
    assert (old.status, recent.status) == ("failed", "running")
    assert old.error.startswith("Abandoned") and old.finished_at == now
    assert job_runs_abandon(now=now) == 0
