"""Retention: prune_tasks and the workers' periodic prune (TASKS_RETENTION_DAYS).

Old tasks are made through the services with `now` in the past, so their
timestamps and history are what a real installation would have. Tests that
check the lineage or run processes use committed data (transaction=True):
on PostgreSQL, Task.parent is a deferred foreign key that is only checked
when a batch really commits.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from io import StringIO
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app.models import JobRun, Stage, Task, TaskEvent
from tasks_app.services import (
    retention,
    task_claim,
    task_complete,
    task_create,
    task_edit_payload,
    task_fail,
    task_retry,
)
from tasks_app.services.locks import LockKey
from tasks_app.services.retention import PruneBatch, PruneResult, delete_batch, tasks_prune
from tasks_app.worker import Worker
from tests.support.processes import manage
from tests.support.world import make_tasks_in_every_state

committed = pytest.mark.django_db(transaction=True)
DAY = timedelta(days=1)


def finished(
    stage: Stage,
    *,
    days_ago: float,
    status: str = "completed",
    send: list[tuple[str, dict[str, Any]]] | None = None,
    type: str = "order",
) -> Task:
    """A task created, claimed and completed (or failed) `days_ago` days ago, through the services.

    Two events: created, and completed or failed (which carries the claim).
    """
    at = timezone.now() - days_ago * DAY
    task = task_create(stage=stage, type=type, payload={"n": 1}, now=at)
    [claim] = task_claim(stage=stage, worker_id="w1", now=at)
    assert claim.pk == task.pk  # the helper needs the stage to have no older pending task
    if status == "completed":
        task_complete(task_id=task.pk, lock_token=claim.lock_token, send=send or [], now=at)
    else:
        task_fail(task_id=task.pk, lock_token=claim.lock_token, error="ValueError: broke", now=at)
    return Task.objects.get(pk=task.pk)


def ids() -> set[int]:
    return set(Task.objects.values_list("id", flat=True))


def event_task_ids() -> set[int]:
    return set(TaskEvent.objects.values_list("task_id", flat=True))


def prune_due(worker: Worker) -> PruneResult | None:
    """What `worker`'s upkeep does for retention: prune if its prune cadence is due."""
    return worker.cadences.prune.run(time.monotonic(), worker.prune)


def snapshot() -> tuple[object, ...]:
    return (
        sorted(Task.objects.values_list("id", "status", "parent_id", "updated_at")),
        sorted(TaskEvent.objects.values_list("id", flat=True)),
        sorted(JobRun.objects.values_list("id", flat=True)),
    )


def dangling_parents() -> list[tuple[int, int]]:
    """(task, parent_id) pairs whose parent does not exist."""
    existing = ids()
    rows = Task.objects.values_list("id", "parent_id")
    return [(pk, parent) for pk, parent in rows if parent is not None and parent not in existing]


def prune(**kwargs: Any) -> PruneResult:
    kwargs.setdefault("older_than", 30 * DAY)
    return tasks_prune(**kwargs)


# -- what is deleted, and what never is -------------------------------------------------------


def test_never_deletes_pending_or_locked_tasks_however_old(world: dict[str, Stage]) -> None:
    tasks = make_tasks_in_every_state(world)
    # A year from now every one of them is far older than the cutoff.
    result = prune(older_than=DAY, now=timezone.now() + 365 * DAY)

    assert ids() == {tasks[name].pk for name in ("pending", "locked", "expired")}
    assert (result.tasks, result.batches) == (2, 2)  # the completed one, then the failed one
    # The survivors' history is untouched.
    assert event_task_ids() == ids()
    assert Task.objects.get(pk=tasks["locked"].pk).status == Task.Status.LOCKED


def test_pending_and_locked_statuses_are_refused(world: dict[str, Stage]) -> None:
    make_tasks_in_every_state(world)
    before = snapshot()
    for statuses in (["pending"], ["locked"], ["completed", "locked"], []):
        with pytest.raises(ValueError, match="pending and locked tasks are work still to be done|no status"):
            prune(statuses=statuses, now=timezone.now() + 365 * DAY)
    assert snapshot() == before


def test_deletes_only_tasks_finished_before_the_cutoff(world: dict[str, Stage]) -> None:
    old_completed = finished(world["ship"], days_ago=40)
    new_completed = finished(world["ship"], days_ago=10)
    old_failed = finished(world["notify"], days_ago=40, status="failed")
    new_failed = finished(world["notify"], days_ago=10, status="failed")
    # Created long ago but completed recently: the age counts from the completion.
    slow = task_create(stage=world["audit"], type="order", payload={}, now=timezone.now() - 60 * DAY)
    [claim] = task_claim(stage=world["audit"], worker_id="w1")
    task_complete(task_id=slow.pk, lock_token=claim.lock_token)

    result = prune()

    assert ids() == {new_completed.pk, new_failed.pk, slow.pk}
    assert old_completed.pk not in event_task_ids() and old_failed.pk not in event_task_ids()
    assert (result.tasks, result.events) == (2, 4)  # created, completed/failed each


def test_a_failed_task_ages_from_its_last_change(world: dict[str, Stage]) -> None:
    failed = finished(world["notify"], days_ago=40, status="failed")
    # An operator fixed its payload five days ago: it is being looked at, so it stays.
    task_edit_payload(task_id=failed.pk, payload={"n": 2}, actor="user:ann", now=timezone.now() - 5 * DAY)

    assert prune().tasks == 0
    assert Task.objects.filter(pk=failed.pk).exists()


def test_status_selects_what_is_pruned(world: dict[str, Stage]) -> None:
    completed = finished(world["ship"], days_ago=40)
    failed = finished(world["notify"], days_ago=40, status="failed")

    assert prune(statuses=["failed"]).tasks == 1
    assert ids() == {completed.pk}
    assert prune(statuses=["completed"]).tasks == 1
    assert ids() == set()
    assert failed.pk not in event_task_ids()


def test_events_of_deleted_tasks_go_and_those_of_kept_tasks_stay(world: dict[str, Stage]) -> None:
    old = finished(world["ship"], days_ago=40)
    kept = finished(world["ship"], days_ago=1)
    kept_events = list(TaskEvent.objects.filter(task=kept).values_list("id", flat=True))
    assert TaskEvent.objects.filter(task=old).count() == 2

    result = prune()

    assert result.events == 2
    assert not TaskEvent.objects.filter(task_id=old.pk).exists()
    assert list(TaskEvent.objects.filter(task=kept).values_list("id", flat=True)) == kept_events


# -- lineage -------------------------------------------------------------------------------------


@committed
def test_a_surviving_child_of_a_pruned_parent_loses_only_the_link(world: dict[str, Stage]) -> None:
    # review -approved-> ship and audit: two children of one parent, 40 days ago.
    parent = finished(world["review"], days_ago=40, send=[("approved", {"n": 1})])
    ship_child, audit_child = Task.objects.filter(parent=parent).order_by("-stage__slug")
    assert (ship_child.stage.slug, audit_child.stage.slug) == ("ship", "audit")
    [claim] = task_claim(stage=world["ship"], worker_id="w1", now=timezone.now() - 39 * DAY)
    task_complete(task_id=claim.pk, lock_token=claim.lock_token, now=timezone.now() - 39 * DAY)

    result = prune()

    # The parent and its completed child go; the pending child stays, unlinked.
    assert ids() == {audit_child.pk}
    survivor = Task.objects.get(pk=audit_child.pk)
    assert survivor.parent_id is None and survivor.status == Task.Status.PENDING
    assert survivor.updated_at == audit_child.updated_at  # losing the link is not a change of state
    assert (result.tasks, result.unlinked) == (2, 1)
    # Its history still names the parent it came from.
    created = TaskEvent.objects.get(task=audit_child, kind=TaskEvent.Kind.CREATED)
    assert created.details == {"parent": parent.pk}
    assert dangling_parents() == []


@committed
def test_children_are_pruned_before_their_parents(world: dict[str, Stage]) -> None:
    # review -declined-> notify: a parent completed 40 days ago, its child 39 days ago.
    parent = finished(world["review"], days_ago=40, send=[("declined", {"n": 1})])
    [child] = Task.objects.filter(parent=parent)
    [claim] = task_claim(stage=world["notify"], worker_id="w1", now=timezone.now() - 39 * DAY)
    task_complete(task_id=claim.pk, lock_token=claim.lock_token, now=timezone.now() - 39 * DAY)
    recent = finished(world["review"], days_ago=1, send=[("declined", {"n": 2})])
    seen: list[list[int]] = []

    def progress(batch: PruneBatch, total: PruneResult) -> None:
        seen.append(sorted(ids() & {parent.pk, child.pk}))  # what is left after each committed batch

    # One task per batch: newest first, so the child's batch commits before the parent's.
    result = prune(batch_size=1, progress=progress)

    assert seen == [[parent.pk], []]
    assert (result.tasks, result.batches, result.unlinked) == (2, 2, 0)
    assert Task.objects.filter(parent=recent).count() == 1  # young lineage untouched
    assert dangling_parents() == []


@committed
def test_a_parent_finished_after_its_child_is_unlinked_in_its_own_batch(world: dict[str, Stage]) -> None:
    # The parent was retried and completed again after its child had finished:
    # newest first now meets the parent before the child.
    parent = finished(world["review"], days_ago=40, send=[("declined", {"n": 1})])
    [child] = Task.objects.filter(parent=parent)
    [claim] = task_claim(stage=world["notify"], worker_id="w1", now=timezone.now() - 39 * DAY)
    task_complete(task_id=claim.pk, lock_token=claim.lock_token, now=timezone.now() - 39 * DAY)
    again = timezone.now() - 38 * DAY
    task_retry(task_id=parent.pk, actor="user:ann", now=again)
    [claim] = task_claim(stage=world["review"], worker_id="w1", now=again)
    task_complete(task_id=parent.pk, lock_token=claim.lock_token, now=again)
    seen: list[list[int]] = []

    def progress(batch: PruneBatch, total: PruneResult) -> None:
        # After each committed batch: which of the two are left, and where the child points.
        seen.append(sorted(ids() & {parent.pk, child.pk}))
        assert dangling_parents() == []

    result = prune(batch_size=1, progress=progress)

    # Batch 1 deleted the parent and cleared the child's link in the same
    # transaction (the deferred foreign key would refuse the commit otherwise).
    assert seen == [[child.pk], []]
    # The child did not stay, so no surviving task lost its parent.
    assert (result.tasks, result.batches, result.unlinked) == (2, 2, 0)


# -- batches, dry run, the conditional delete ----------------------------------------------------


@committed
def test_batches_of_two_take_three_batches_for_five_tasks(world: dict[str, Stage]) -> None:
    old = [finished(world["ship"], days_ago=40 + n) for n in range(5)]
    kept = finished(world["ship"], days_ago=2)
    seen: list[tuple[int, str, int, int, int]] = []

    def progress(batch: PruneBatch, total: PruneResult) -> None:
        seen.append((batch.number, batch.status, batch.tasks, batch.events, total.tasks))

    result = prune(batch_size=2, progress=progress)

    assert (result.tasks, result.events, result.batches, result.finished) == (5, 10, 3, True)
    assert seen == [(1, "completed", 2, 4, 2), (2, "completed", 2, 4, 4), (3, "completed", 1, 2, 5)]
    assert ids() == {kept.pk}
    assert not TaskEvent.objects.filter(task_id__in=[t.pk for t in old]).exists()


def test_dry_run_deletes_nothing_and_counts_what_a_real_run_then_deletes(world: dict[str, Stage]) -> None:
    parent = finished(world["review"], days_ago=40, send=[("approved", {"n": 1})])
    for n in range(3):
        finished(world["notify"], days_ago=50 + n, status="failed")
    finished(world["notify"], days_ago=3, status="failed")
    before = snapshot()

    dry = prune(batch_size=2, dry_run=True)

    assert snapshot() == before
    assert dry.dry_run and (dry.tasks, dry.batches, dry.unlinked) == (4, 3, 2)  # ship and audit children
    real = prune(batch_size=2)
    assert (real.tasks, real.events, real.batches, real.unlinked, real.job_runs) == (
        dry.tasks,
        dry.events,
        dry.batches,
        dry.unlinked,
        dry.job_runs,
    )
    assert not Task.objects.filter(pk=parent.pk).exists()


def test_a_task_retried_after_selection_is_not_deleted(world: dict[str, Stage]) -> None:
    tasks = [finished(world["ship"], days_ago=40) for _ in range(3)]
    cutoff = timezone.now() - 30 * DAY
    selected = [t.pk for t in tasks]  # what a batch's SELECT returned
    # Between the selection and the DELETE an operator retries one of them.
    task_retry(task_id=tasks[1].pk, actor="user:ann")

    with transaction.atomic():
        deleted = delete_batch(ids=selected, status="completed", cutoff=cutoff)

    # The DELETE restates status and age, so the retried (now pending) task stays with its history.
    assert deleted == (2, 4, 0)
    assert ids() == {tasks[1].pk}
    assert Task.objects.get(pk=tasks[1].pk).status == Task.Status.PENDING
    assert TaskEvent.objects.filter(task_id=tasks[1].pk).count() == 3  # created, completed, retried


def test_delete_step_ignores_ids_that_do_not_match(world: dict[str, Stage]) -> None:
    tasks = make_tasks_in_every_state(world)
    before = snapshot()
    cutoff = timezone.now() + DAY  # everything is "old"
    everything = [t.pk for t in tasks.values()]
    with transaction.atomic():
        # Asked to delete failed tasks, given every id: only the failed one goes.
        assert delete_batch(ids=everything, status="failed", cutoff=cutoff)[0] == 1
        transaction.set_rollback(True)
    assert snapshot() == before


def test_a_batch_larger_than_sqlites_parameter_limit(world: dict[str, Stage]) -> None:
    task = finished(world["ship"], days_ago=40)
    # 40,000 ids in one statement: more than either database takes as separate parameters.
    many = [*range(10**9, 10**9 + 40_000), task.pk]
    with transaction.atomic():
        deleted = delete_batch(ids=many, status="completed", cutoff=timezone.now())
    assert deleted == (1, 2, 0)
    assert ids() == set()


def test_bad_service_arguments_are_refused(world: dict[str, Stage]) -> None:
    finished(world["ship"], days_ago=40)
    before = snapshot()
    with pytest.raises(ValueError, match="older_than must be more than 0"):
        prune(older_than=timedelta(0))
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        prune(batch_size=0)
    assert snapshot() == before


# -- job runs ------------------------------------------------------------------------------------


def test_old_finished_job_runs_go_except_each_jobs_latest(world: dict[str, Stage]) -> None:
    job = Stage.objects.create(slug="nightly", name="Nightly", kind=Stage.Kind.JOB, schedule="0 3 * * *")
    other = Stage.objects.create(slug="weekly", name="Weekly", kind=Stage.Kind.JOB, schedule="0 3 * * 1")
    now = timezone.now()

    def run(stage: Stage, days_ago: int, status: str = JobRun.Status.SUCCEEDED) -> JobRun:
        at = now - days_ago * DAY
        finished_at = None if status == JobRun.Status.RUNNING else at
        return JobRun.objects.create(stage=stage, due_at=at, started_at=at, status=status, finished_at=finished_at)

    old = [run(job, 50), run(job, 45, JobRun.Status.FAILED)]
    kept = [run(job, 44, JobRun.Status.RUNNING), run(job, 10), run(other, 60)]  # running; recent; weekly's latest

    assert prune(dry_run=True).job_runs == 2
    assert prune().job_runs == 2
    assert set(JobRun.objects.values_list("id", flat=True)) == {r.pk for r in kept}
    assert not JobRun.objects.filter(pk__in=[r.pk for r in old]).exists()


# -- the command ---------------------------------------------------------------------------------


def command(*args: str) -> str:
    out = StringIO()
    call_command("prune_tasks", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_command_prints_a_line_per_batch_and_a_summary(world: dict[str, Stage]) -> None:
    for n in range(3):
        finished(world["ship"], days_ago=40 + n)
    finished(world["notify"], days_ago=40, status="failed")

    lines = command("--older-than", "30d", "--batch-size", "2").splitlines()

    assert [line.split(" in ")[0] for line in lines[:-1]] == [
        "batch 1: deleted 1 failed tasks, 2 events",
        "batch 2: deleted 2 completed tasks, 4 events",
        "batch 3: deleted 1 completed tasks, 2 events",
    ]
    assert lines[-1] == (
        "deleted 4 tasks and 8 events in 3 batches; 0 surviving tasks lost their parent link; 0 job runs deleted"
    )
    assert ids() == set()


def test_command_dry_run_says_so_and_changes_nothing(world: dict[str, Stage]) -> None:
    finished(world["ship"], days_ago=40)
    before = snapshot()

    lines = command("--older-than", "4w", "--dry-run", "--status", "completed").splitlines()

    assert lines[0].startswith("batch 1: would delete 1 completed tasks, 2 events in ")
    assert lines[-1].startswith("dry run: would delete 1 tasks and 2 events in 1 batch; ")
    assert snapshot() == before


@pytest.mark.parametrize(
    ("age", "kept"),
    [("30d", 1), ("30", 1), ("12h", 0), ("90m", 0), ("45s", 0), ("3w", 1), ("1D", 0), ("6w", 2), (" 30d ", 1)],
)
def test_command_age_formats(world: dict[str, Stage], age: str, kept: int) -> None:
    finished(world["ship"], days_ago=40)
    finished(world["ship"], days_ago=20)
    command("--older-than", age)
    assert Task.objects.count() == kept


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "0"], "argument --older-than: must be more than 0, got '0'"),
        (["--older-than", "0d"], "argument --older-than: must be more than 0, got '0d'"),
        (["--older-than=-5d"], "argument --older-than: expected an age like 30d, 12h, 90m, 45s or 2w, got '-5d'"),
        (["--older-than", "soon"], "argument --older-than: expected an age like 30d, 12h, 90m, 45s or 2w, got 'soon'"),
        (["--older-than", "30x"], "expected an age like"),
        (["--older-than", "1.5d"], "expected an age like"),
        (["--older-than", "99999999999w"], "argument --older-than: too long ago: '99999999999w'"),
        (["--older-than", "9" * 5000], "argument --older-than: too long ago"),
        (["--older-than", "30d", "--status", "pending"], "pending tasks are never pruned"),
        (["--older-than", "30d", "--status", "locked"], "locked tasks are never pruned"),
        (["--older-than", "30d", "--status", "done"], "expected completed, failed or cancelled, got 'done'"),
        (["--older-than", "30d", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["--older-than", "30d", "--batch-size", "many"], "argument --batch-size: expected a whole number"),
        ([], "the following arguments are required: --older-than"),
    ],
)
def test_command_refuses_bad_arguments_and_changes_nothing(
    world: dict[str, Stage], args: list[str], message: str
) -> None:
    finished(world["ship"], days_ago=40)
    before = snapshot()
    with pytest.raises(CommandError) as excinfo:
        command(*args)
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert snapshot() == before


@committed
def test_command_process_exits_non_zero_with_one_readable_line(world: dict[str, Stage]) -> None:
    finished(world["ship"], days_ago=40)
    before = snapshot()

    result = manage("prune_tasks", "--older-than", "0")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "manage.py prune_tasks: error: argument --older-than: must be more than 0, got '0' "
        "(that would prune every finished task)"
    )
    result = manage("prune_tasks", "--older-than", "30d", "--status", "pending")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "manage.py prune_tasks: error: argument --status: pending tasks are never pruned "
        "(they are work still to be done)"
    )
    assert result.stdout == ""
    assert snapshot() == before

    result = manage("prune_tasks", "--older-than", "30d")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("deleted 1 tasks and 2 events in 1 batch; ")
    assert Task.objects.count() == 0


# -- periodic pruning ----------------------------------------------------------------------------


def test_prune_due_is_off_without_a_retention_setting(world: dict[str, Stage], settings: Any) -> None:
    settings.TASKS_RETENTION_DAYS = None
    finished(world["ship"], days_ago=4000)
    assert prune_due(Worker(listen=False)) is None
    assert Task.objects.count() == 1


def test_prune_due_prunes_then_waits_for_its_interval(world: dict[str, Stage], settings: Any) -> None:
    settings.TASKS_RETENTION_DAYS = 30
    settings.TASKS_PRUNE_INTERVAL = 600
    old = finished(world["ship"], days_ago=40)
    recent = finished(world["ship"], days_ago=20)
    pruner = Worker(listen=False)

    result = prune_due(pruner)

    assert result is not None and (result.tasks, result.finished) == (1, True)
    assert ids() == {recent.pk}
    # Not due again before the interval (±10% jitter) ...
    waited = pruner.cadences.prune.next_at - time.monotonic()
    assert 500 < waited <= 660
    finished(world["ship"], days_ago=41)
    assert prune_due(pruner) is None
    assert Task.objects.count() == 2
    # ... and due once it has passed.
    pruner.cadences.prune.next_at = time.monotonic() - 1
    result = prune_due(pruner)
    assert result is not None and result.tasks == 1
    assert old.pk not in ids()


def test_prune_due_takes_a_bounded_bite_and_comes_back_soon(
    world: dict[str, Stage], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.TASKS_RETENTION_DAYS = 30
    for n in range(3):
        finished(world["ship"], days_ago=40 + n)
    monkeypatch.setattr(retention, "PERIODIC_BATCH", 1)
    monkeypatch.setattr(retention, "PERIODIC_BUDGET", 0.0)  # one batch per call
    pruner = Worker(listen=False)

    result = prune_due(pruner)

    assert result is not None and (result.tasks, result.finished) == (1, False)
    # A backlog brings it back after PERIODIC_PAUSE, not after the interval.
    assert pruner.cadences.prune.next_at - time.monotonic() <= retention.PERIODIC_PAUSE
    pruner.cadences.prune.next_at = 0.0
    assert prune_due(pruner).tasks == 1  # type: ignore[union-attr]


def test_prune_due_stops_when_another_worker_takes_the_lock_over(
    world: dict[str, Stage], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.TASKS_RETENTION_DAYS = 30
    settings.TASKS_PRUNE_INTERVAL = 600
    for n in range(3):
        finished(world["ship"], days_ago=40 + n)
    monkeypatch.setattr(retention, "PERIODIC_BATCH", 1)
    # Free for the first three batches (the failed and cancelled passes find none, then one completed task),
    # then taken.
    answers = iter([True, True, True, False])
    monkeypatch.setattr(retention, "advisory_xact_lock", lambda key, wait: next(answers))
    pruner = Worker(listen=False)

    result = prune_due(pruner)

    assert result is not None and (result.tasks, result.busy, result.finished) == (1, True, False)
    assert Task.objects.count() == 2
    # The other worker carries on: this one waits for its interval, not PERIODIC_PAUSE.
    assert pruner.cadences.prune.next_at - time.monotonic() > 500
    # Taken from the start: it did not prune at all.
    pruner.cadences.prune.next_at = 0.0
    monkeypatch.setattr(retention, "advisory_xact_lock", lambda key, wait: False)
    assert prune_due(pruner) is None
    assert Task.objects.count() == 2


@committed
def test_a_worker_with_retention_prunes_an_old_completed_task(
    world: dict[str, Stage], settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.TASKS_RETENTION_DAYS = 30
    old = finished(world["ship"], days_ago=40)
    recent = finished(world["ship"], days_ago=2)
    work = task_create(stage=world["ship"], type="order", payload={})

    with caplog.at_level("INFO", logger="tasks_app"):
        Worker(stage_slugs=["ship"], listen=False, worker_id="pruner").run(once=True)

    assert ids() == {recent.pk, work.pk}
    assert Task.objects.get(pk=work.pk).status == Task.Status.COMPLETED
    assert old.pk not in event_task_ids()
    assert "pruned 1 old task(s) with 2 event(s) and 0 job run(s)" in caplog.text


def test_a_worker_without_retention_prunes_nothing(world: dict[str, Stage], settings: Any) -> None:
    settings.TASKS_RETENTION_DAYS = None
    old = finished(world["ship"], days_ago=400)
    Worker(stage_slugs=["ship"], listen=False).run(once=True)
    assert ids() == {old.pk}


# -- PostgreSQL: one pruner at a time, the plan, autovacuum ---------------------------------------


def other_connection() -> psycopg.Connection[Any]:
    s = connection.settings_dict
    return psycopg.connect(
        host=s["HOST"], port=s["PORT"], user=s["USER"], dbname=s["NAME"], password=s["PASSWORD"], autocommit=True
    )


@pytest.mark.postgres
@committed
def test_prune_due_skips_while_another_worker_holds_the_prune_lock(world: dict[str, Stage], settings: Any) -> None:
    settings.TASKS_RETENTION_DAYS = 30
    old = finished(world["ship"], days_ago=40)
    pruner = Worker(listen=False)
    other = other_connection()
    try:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", [LockKey.PRUNE]).fetchone() == (True,)
        assert prune_due(pruner) is None
        assert old.pk in ids()
        # A dry run needs no lock.
        assert tasks_prune(older_than=30 * DAY, dry_run=True).tasks == 1
        other.execute("SELECT pg_advisory_unlock(%s)", [LockKey.PRUNE])
    finally:
        other.close()
    pruner.cadences.prune.next_at = 0.0
    result = prune_due(pruner)
    assert result is not None and result.tasks == 1
    # The lock lives only as long as a batch's transaction: another session can take it now.
    other = other_connection()
    try:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", [LockKey.PRUNE]).fetchone() == (True,)
    finally:
        other.close()


@pytest.mark.postgres
@committed
def test_two_concurrent_periodic_prunes_only_one_prunes(
    world: dict[str, Stage], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.TASKS_RETENTION_DAYS = 30
    old = [finished(world["ship"], days_ago=40 + n) for n in range(4)]
    inside, go_on = threading.Event(), threading.Event()
    real_delete = retention.delete_batch

    def slow_delete(**kwargs: Any) -> tuple[int, int, int]:
        inside.set()  # in a batch's transaction, holding the prune lock
        assert go_on.wait(timeout=30)
        return real_delete(**kwargs)

    monkeypatch.setattr(retention, "delete_batch", slow_delete)
    results: dict[str, PruneResult | None] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            results[name] = prune_due(Worker(listen=False, worker_id=name))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()  # each thread has its own connection

    first = threading.Thread(target=worker, args=("first",))
    first.start()
    assert inside.wait(timeout=30)
    # A second worker (its own process in real life, and its own schedule) comes along now.
    second = threading.Thread(target=worker, args=("second",))
    second.start()
    second.join(timeout=30)
    go_on.set()
    first.join(timeout=60)

    assert errors == []
    assert results["second"] is None  # the lock was taken: it skipped its turn
    assert results["first"] is not None and results["first"].tasks == 4
    assert not Task.objects.filter(pk__in=[t.pk for t in old]).exists()


@pytest.mark.postgres
@committed
def test_the_command_waits_for_a_periodic_prune_instead_of_racing_it(world: dict[str, Stage]) -> None:
    old = finished(world["ship"], days_ago=40)
    other = other_connection()
    done = threading.Event()
    results: list[PruneResult] = []

    def run_command_prune() -> None:
        try:
            results.append(tasks_prune(older_than=30 * DAY))
        finally:
            connection.close()
            done.set()

    try:
        # A worker's batch holds the lock (here: for as long as the test likes).
        other.execute("BEGIN")
        other.execute("SELECT pg_advisory_xact_lock(%s)", [LockKey.PRUNE])
        thread = threading.Thread(target=run_command_prune)
        thread.start()
        assert not done.wait(timeout=1.0)  # queued behind it, deleting nothing meanwhile
        assert old.pk in ids()
        other.execute("COMMIT")
        thread.join(timeout=30)
    finally:
        other.close()
    assert [(r.tasks, r.busy) for r in results] == [(1, False)]
    assert ids() == set()


BULK_FINISHED_SQL = """
INSERT INTO tasks_app_task (stage_id, type, payload, status, created_at, updated_at, available_at,
                            attempts, lock_token, locked_by, completed_at, last_error)
SELECT %(stage)s, 'bulk', '{}'::jsonb, CASE WHEN i %% 50 = 0 THEN 'pending' ELSE 'completed' END,
       now() - i * interval '1 minute', now() - i * interval '1 minute', now() - i * interval '1 minute',
       1, '', '', CASE WHEN i %% 50 = 0 THEN NULL ELSE now() - i * interval '1 minute' END, ''
FROM generate_series(1, %(n)s) AS i
"""


@pytest.mark.postgres
def test_selecting_a_batch_walks_the_completed_at_index(world: dict[str, Stage]) -> None:
    with connection.cursor() as cursor:
        # 50,000 tasks, half of them older than the cutoff.
        cursor.execute(BULK_FINISHED_SQL, {"stage": world["ship"].pk, "n": 50_000})
        cursor.execute("ANALYZE tasks_app_task")
    cutoff = timezone.now() - timedelta(minutes=25_000)
    # The statements of a first and a second batch, as the service sends them.
    with CaptureQueriesContext(connection) as queries:
        ids, after = retention._select_batch(status="completed", cutoff=cutoff, after=None, limit=10_000)
        retention._select_batch(status="completed", cutoff=cutoff, after=after, limit=10_000)
    assert len(ids) == 10_000
    selects = [q["sql"] for q in queries.captured_queries if "LIMIT" in q["sql"]]
    assert len(selects) == 2
    for sql in selects:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "Index Scan Backward using task_completed_at_idx" in plan, plan
        assert "Seq Scan" not in plan, plan


@pytest.mark.postgres
def test_the_migration_sets_autovacuum_options(db: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reloptions FROM pg_class WHERE relname IN ('tasks_app_task', 'tasks_app_taskevent')"
        )
        options = {name: sorted(opts or []) for name, opts in cursor.fetchall()}
    assert options == {
        "tasks_app_task": ["autovacuum_analyze_scale_factor=0.02", "autovacuum_vacuum_scale_factor=0.01"],
        "tasks_app_taskevent": [
            "autovacuum_vacuum_insert_scale_factor=0.05",
            "autovacuum_vacuum_scale_factor=0.02",
        ],
    }
