"""Handler slots take work a batch at a time: one chunk per slot, outcomes handed back per chunk.

The pool on its own (no database), then a worker whose chunk meets an
overrunning handler, on whichever database the suite runs on.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import task_create
from tasks_app.worker import HandlerTask, Worker
from tasks_app.worker.slots import Job, Result, SlotPool, chunks


def view(task_id: int, seconds: float = 0.0) -> HandlerTask:
    return HandlerTask(
        id=task_id, type="t", payload={"seconds": seconds}, stage="s", attempts=1, created_at=None, parent_id=None,
        _stage=Stage(slug="s"),
    )  # type: ignore[arg-type]  # fmt: skip


def nap(task: Any) -> None:
    time.sleep(task.payload["seconds"])


def jobs(*seconds: float) -> list[Job]:
    return [Job(task_id=n, lock_token=f"t{n}", handler=nap, view=view(n, s)) for n, s in enumerate(seconds, 1)]


def gather(pool: SlotPool, count: int, timeout: float = 30) -> list[list[Result]]:
    """The hand-backs (each one put by a slot) until `count` outcomes came."""
    deadline = time.monotonic() + timeout
    out: list[list[Result]] = []
    while sum(len(r) for r in out) < count:
        assert time.monotonic() < deadline, out
        if (results := pool.get(0.05)) is not None:
            out.append(results)
    return out


def test_chunks_cut_a_batch_into_at_most_one_run_per_slot_in_order() -> None:
    batch = jobs(*[0] * 10)
    cut = chunks(batch, 4)
    assert [len(c) for c in cut] == [3, 3, 2, 2]
    assert [j for c in cut for j in c] == batch  # claim order kept, nothing dropped or doubled
    assert [len(c) for c in chunks(batch[:2], 4)] == [1, 1]
    assert [len(c) for c in chunks(batch, 1)] == [10]


def test_a_batch_goes_over_in_one_put_per_slot_and_comes_back_in_one_per_chunk() -> None:
    pool = SlotPool(2, "w-chunks", report_after=60)  # nothing is old enough to go back early
    try:
        pool.submit(jobs(*[0] * 10))
        handed = gather(pool, 10)
        # Two chunks of five: two hand-backs, each with its chunk's outcomes in order.
        assert sorted([j.task_id for j, _ in r] for r in handed) == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
        assert all(outcome.kind == "ok" for r in handed for _, outcome in r)
        assert all(j.started_at is not None and j.finished_at is not None for r in handed for j, _ in r)
    finally:
        pool.stop()


def test_a_finished_task_does_not_wait_for_a_long_handler_after_it_in_its_chunk() -> None:
    pool = SlotPool(1, "w-overdue", report_after=0.2)
    try:
        pool.submit(jobs(0, 3.0))  # one chunk: a quick task, then a 3 s one
        deadline = time.monotonic() + 2.5
        taken: list[Result] = []
        while not taken and time.monotonic() < deadline:
            taken = (pool.get(0.05) or []) + pool.overdue(time.monotonic())
        # Handed back after report_after, while the long handler behind it still runs.
        assert [j.task_id for j, _ in taken] == [1]
        assert [j.task_id for j in pool.running()] == [2]
        [[(last, _)]] = gather(pool, 1)
        assert last.task_id == 2
    finally:
        pool.stop()


def test_shutdown_takes_back_the_unstarted_rest_of_a_running_chunk() -> None:
    pool = SlotPool(1, "w-rest", report_after=60)
    try:
        pool.submit(jobs(1.0, 0, 0))
        assert wait(lambda: [j.task_id for j in pool.running()] == [1])
        assert sorted(j.task_id for j in pool.take_unstarted()) == [2, 3]
        [[(ran, _)]] = gather(pool, 1)  # the running one finishes and comes back on its own
        assert ran.task_id == 1
    finally:
        pool.stop()


def wait(predicate: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.django_db
def test_a_chunk_whose_first_handler_overruns_max_run_time_runs_the_rest_and_loses_none() -> None:
    stage = Stage.objects.create(slug="overrun", name="Overrun", handler="tests.handlers.sleep", max_run_time=1)
    slow = task_create(stage=stage, type="t", payload={"seconds": 4})
    quick = [task_create(stage=stage, type="t", payload={"seconds": 0}) for _ in range(3)]
    # Concurrency 1: the whole batch is one chunk, the overrunning handler first.
    worker = Worker(stage_slugs=["overrun"], batch_size=4, concurrency=1, progress_interval=0, worker_id="w-overrun")
    stats = worker.run(once=True)

    slow.refresh_from_db()
    # Abandoned at its limit and released for a retry (later: the retry backs off), not completed.
    assert slow.status == Task.Status.PENDING and "max_run_time" in slow.last_error
    assert not TaskEvent.objects.filter(task=slow, kind=TaskEvent.Kind.COMPLETED).exists()
    # The rest of its chunk ran on the slot that replaced it: each completed, once.
    for task in quick:
        task.refresh_from_db()
        assert task.status == Task.Status.COMPLETED and task.attempts == 1
        assert TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.COMPLETED).count() == 1
    assert (stats.done, stats.released, stats.lost) == (3, 1, 0)
