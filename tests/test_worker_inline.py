"""At --concurrency 1 the coordinator runs handlers itself (no slot thread), safely.

Stages without a max_run_time run inline, on the main thread; a heartbeat
thread keeps their locks (and the registry heartbeat) alive while a handler
runs; stages with a max_run_time still go to the slot thread, which can be
abandoned; a stop hands back the unstarted rest of an inline batch. Real
worker processes, on whichever database the suite runs on.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Count
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent, Transition, WorkerProcess
from tasks_app.services import task_claim, task_create
from tasks_app.worker import Worker
from tasks_app.worker.pacing import Keeper
from tests.support.processes import finish, start_worker, wait_for

S = Task.Status
E = TaskEvent.Kind


def make_stage(slug: str, handler: str = "tests.handlers.thread_name_send", **fields: Any) -> Stage:
    """A script stage whose "seen" successors go to a hook stage no worker serves (they stay put)."""
    stage = Stage.objects.create(slug=slug, name=slug.title(), handler=handler, **fields)
    sink = Stage.objects.create(slug=f"{slug}-sink", name=f"{slug} sink", kind=Stage.Kind.HOOK, handler="")
    Transition.objects.create(source=stage, target=sink, task_type="seen")
    return stage


def threads(stage: Stage) -> dict[int, str]:
    """The thread each task's handler ran on, by task id (from its "seen" successor)."""
    return {t.payload["task"]: t.payload["thread"] for t in Task.objects.filter(stage__slug=f"{stage.slug}-sink")}


def completions(stage: Stage) -> dict[int, int]:
    return dict(
        TaskEvent.objects.filter(task__stage=stage, kind=E.COMPLETED)
        .values("task_id")
        .annotate(n=Count("id"))
        .values_list("task_id", "n")
    )


def stop(proc: Any, timeout: float = 30) -> str:
    proc.send_signal(signal.SIGTERM)
    return finish(proc, timeout)


def test_the_heartbeat_thread_beats_only_while_the_guard_is_free_and_outlives_a_failing_beat() -> None:
    guard = threading.Lock()
    guard.acquire()  # as the coordinator holds it, outside inline handlers
    beats: list[str] = []

    def beat() -> None:
        beats.append(threading.current_thread().name)
        if len(beats) == 1:
            raise RuntimeError("the first beat fails")

    keeper = Keeper(beat, guard, 0.01, name="keeper-test")
    keeper.start()
    try:
        time.sleep(0.2)
        assert beats == []  # the coordinator is at work: it beats itself
        guard.release()  # "inside a handler"
        assert wait_for(lambda: len(beats) >= 3, timeout=5, interval=0.01)  # the failing beat did not end it
        guard.acquire()
        seen = len(beats)  # once the coordinator has the guard back, no beat runs
        time.sleep(0.2)
        assert len(beats) == seen and set(beats) == {"keeper-test"}
    finally:
        keeper.stop()
    assert not keeper.is_alive()


@pytest.mark.django_db
def test_in_process_the_inline_switch_picks_the_thread() -> None:
    stage = make_stage("switch")
    first = [task_create(stage=stage, type="t", payload={}).pk for _ in range(3)]
    Worker(stage_slugs=["switch"], batch_size=3, progress_interval=0, worker_id="w-inline").run(once=True)
    second = [task_create(stage=stage, type="t", payload={}).pk for _ in range(3)]
    Worker(stage_slugs=["switch"], batch_size=3, progress_interval=0, worker_id="w-slot", inline=False).run(once=True)
    seen = threads(stage)
    assert {seen[pk] for pk in first} == {"MainThread"}
    assert {seen[pk] for pk in second} == {"w-slot-slot-1"}
    assert completions(stage) == {pk: 1 for pk in first + second}


@pytest.mark.django_db(transaction=True)
def test_at_concurrency_1_handlers_run_on_the_main_thread_unless_the_stage_has_a_max_run_time(
    workers: list[Any],
) -> None:
    free = make_stage("free", lock_timeout=60)
    limited = make_stage("limited", lock_timeout=60, max_run_time=30)
    free_ids = [task_create(stage=free, type="t", payload={}).pk for _ in range(12)]
    limited_ids = [task_create(stage=limited, type="t", payload={}).pk for _ in range(12)]
    proc = start_worker(
        "--stage", "free", "--stage", "limited", "--concurrency", "1", "--batch-size", "5", "--poll-interval", "0.2",
        "--progress-interval", "0", "--worker-id", "inl",
    )  # fmt: skip
    workers.append(proc)
    assert wait_for(lambda: len(completions(free)) + len(completions(limited)) == 24, timeout=60)
    out = stop(proc)
    assert proc.returncode == 0, out

    seen = threads(free) | threads(limited)
    # No max_run_time: the coordinator (the main thread) ran them; with one, the slot thread did.
    assert {seen[pk] for pk in free_ids} == {"MainThread"}
    assert {seen[pk] for pk in limited_ids} == {"inl-slot-1"}
    # Each once, completed once.
    assert completions(free) == {pk: 1 for pk in free_ids}
    assert completions(limited) == {pk: 1 for pk in limited_ids}
    assert set(Task.objects.filter(pk__in=free_ids + limited_ids).values_list("attempts", flat=True)) == {1}


@pytest.mark.django_db(transaction=True)
def test_heartbeat_thread_keeps_the_lock_and_the_registry_of_an_inline_handler_past_lock_timeout(
    workers: list[Any],
) -> None:
    stage = make_stage("long-inline", lock_timeout=2)
    task = task_create(stage=stage, type="t", payload={"seconds": 5})
    proc = start_worker(
        "--stage", "long-inline", "--poll-interval", "0.2", "--progress-interval", "0", "--worker-id", "inl-beater",
        env={"TASKS_WORKER_HEARTBEAT": "0.5"},
    )  # fmt: skip
    workers.append(proc)
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=S.LOCKED).exists(), timeout=30, interval=0.02)
    claimed_at = time.monotonic()
    row = WorkerProcess.objects.get(worker_id="inl-beater")
    beats = {row.last_heartbeat}

    for check_at in (3.0, 4.5):  # past the 2 s lock_timeout, before the 5 s handler ends
        time.sleep(max(0.0, claimed_at + check_at - time.monotonic()))
        task.refresh_from_db()
        assert task.status == S.LOCKED and task.locked_by == "inl-beater", check_at
        # The coordinator is inside the handler: only the heartbeat thread can have extended the lock.
        assert task.locked_until is not None and task.locked_until > timezone.now(), check_at
        assert TaskEvent.objects.filter(task=task, kind=E.LOCK_EXTENDED).exists()
        assert task_claim(stage=stage, worker_id="intruder", limit=1) == []
        # ... and kept the registry heartbeat (every 0.5 s) going, the held task listed.
        row = WorkerProcess.objects.get(worker_id="inl-beater")
        assert row.current_tasks == [task.pk] and row.stopped_at is None
        beats.add(row.last_heartbeat)
    assert len(beats) == 3

    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=S.COMPLETED).exists(), timeout=15)
    out = stop(proc)
    assert proc.returncode == 0, out
    assert threads(stage) == {task.pk: "MainThread"}
    task.refresh_from_db()
    assert task.attempts == 1
    kinds = list(TaskEvent.objects.filter(task=task).values_list("kind", flat=True))
    assert kinds.count(E.COMPLETED) == 1
    assert kinds.count(E.LOCK_EXTENDED) >= 3  # one per half lock_timeout (~1 s) over 5 s, on a loaded machine
    assert E.LOCK_EXPIRED not in kinds


@pytest.mark.django_db(transaction=True)
def test_sigterm_mid_inline_batch_finishes_the_running_handler_and_hands_back_the_rest(
    workers: list[Any], tmp_path: Path
) -> None:
    stage = Stage.objects.create(
        slug="inl-term", name="Inl term", handler="tests.handlers.sleep_and_mark", lock_timeout=60
    )
    ids = [task_create(stage=stage, type="t", payload={"seconds": 1.5, "dir": str(tmp_path)}).pk for _ in range(5)]
    proc = start_worker(
        "--stage", "inl-term", "--batch-size", "5", "--poll-interval", "0.2", "--progress-interval", "0",
        "--worker-id", "inl-term-w",
    )  # fmt: skip
    workers.append(proc)

    def started() -> set[int]:
        return {int(p.name.split(".")[0]) for p in tmp_path.glob("*.started")}

    assert wait_for(lambda: len(started()) == 1 and Task.objects.filter(status=S.LOCKED).count() == 5, timeout=30)
    [running] = started()
    assert running == ids[0]  # claim order
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, timeout=30)
    assert proc.returncode == 0, out
    assert "stopped: 1 done" in out

    # The running handler finished and its task completed; the rest never started.
    assert started() == {running} and (tmp_path / f"{running}.finished").exists()
    assert Task.objects.get(pk=running).status == S.COMPLETED
    now = timezone.now()
    for task in Task.objects.filter(pk__in=ids[1:]):
        # Handed back, not left to expire: pending at once, claimable, the attempt not counted.
        assert task.status == S.PENDING and task.attempts == 0 and task.locked_by == ""
        assert task.available_at <= now
        [released] = TaskEvent.objects.filter(task=task, kind=E.RELEASED)
        assert "worker stopped" in released.details["reason"] and released.actor == "inl-term-w"
    assert len(task_claim(stage=stage, worker_id="next", limit=10)) == 4
