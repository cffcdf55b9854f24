"""The worker's light claim (task_claim_rows): the same claim as task_claim, rows instead of Django models.

Runs on SQLite and, under scripts/with_postgres.py, on PostgreSQL (the two
paths build the rows differently: RETURNING with epoch timestamps there,
RETURNING * as text here).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import task_claim, task_create
from tasks_app.services.claim import ClaimedRow, task_claim_rows
from tasks_app.services.handlers import HandlerTask
from tasks_app.worker import Worker

# The fields a ClaimedRow carries, compared with the stored task (attname on Task).
FIELDS = ("id", "stage_id", "type", "payload", "attempts", "lock_token", "locked_by", "locked_until", "created_at")
PAYLOAD: dict[str, Any] = {"amount": 12, "nested": {"list": [1, "two", None, 3.5]}, "text": "é ✓", "flag": True}


def make_tasks(stage: Stage, parent: Task | None = None) -> list[Task]:
    tasks = [task_create(stage=stage, type="order", payload=dict(PAYLOAD, n=n)) for n in range(3)]
    if parent is not None:
        Task.objects.filter(pk=tasks[1].pk).update(parent=parent)
    return tasks


def test_rows_carry_what_a_fresh_query_of_the_task_says(world: dict[str, Stage]) -> None:
    parent = task_create(stage=world["audit"], type="root", payload={})
    make_tasks(world["ship"], parent=parent)
    rows = task_claim_rows(stage=world["ship"], worker_id="w-rows", limit=10, lock_timeout=60)
    assert len(rows) == 3 and all(type(r) is ClaimedRow for r in rows)
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    for row in rows:
        stored = Task.objects.get(pk=row.id)
        assert stored.status == Task.Status.LOCKED
        for name in FIELDS:
            assert getattr(row, name) == getattr(stored, name), name
        assert row.parent_id == stored.parent_id
        assert row.pk == row.id and row.stage is world["ship"]
        assert row.created_at.tzinfo is not None
    assert [r.parent_id for r in rows] == [None, parent.pk, None]
    assert rows[0].payload == dict(PAYLOAD, n=0)


def test_rows_and_models_agree_on_identical_setups(world: dict[str, Stage]) -> None:
    """The same claim on two stages with the same tasks: the light rows and the Tasks say the same things."""
    make_tasks(world["ship"])
    make_tasks(world["notify"])
    now = timezone.now()
    rows = task_claim_rows(stage=world["ship"], worker_id="w", limit=5, lock_timeout=30, now=now)
    models = task_claim(stage=world["notify"], worker_id="w", limit=5, lock_timeout=30, now=now)
    assert len(rows) == len(models) == 3
    for row, model in zip(rows, models, strict=True):
        for name in ("type", "payload", "attempts", "locked_by", "locked_until", "parent_id"):
            assert getattr(row, name) == getattr(model, name), name
        assert len(row.lock_token) == len(model.lock_token) == 32
    # Neither path writes history for a claim of pending tasks; each leaves the claim on the row alike.
    for stage in ("ship", "notify"):
        assert not TaskEvent.objects.filter(task__stage=world[stage]).exclude(kind=TaskEvent.Kind.CREATED).exists()
        stored = Task.objects.filter(stage=world[stage]).values_list("locked_by", "locked_at", "reclaimed_from")
        assert set(stored) == {("w", now, "")}


def test_a_reclaim_by_rows_fences_the_old_token_and_says_whom_it_took_from(world: dict[str, Stage]) -> None:
    stage = world["ship"]
    [task] = [task_create(stage=stage, type="t", payload={})]
    now = timezone.now()
    [first] = task_claim_rows(stage=stage, worker_id="w-old", limit=1, lock_timeout=5, now=now)
    [second] = task_claim_rows(stage=stage, worker_id="w-new", limit=1, lock_timeout=5, now=now + timedelta(seconds=6))
    assert second.id == task.pk and second.attempts == 2 and second.lock_token != first.lock_token
    # The reclaim ends w-old's claim with a lock_expired event; the row names w-old as reclaimed_from.
    event = TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.LOCK_EXPIRED).get()
    assert (event.actor, event.details["worker"], event.details["now"]) == ("w-new", "w-old", "reclaimed")
    stored = Task.objects.get(pk=task.pk)
    assert stored.reclaimed_from == "w-old"
    assert (stored.lock_token, stored.locked_by, stored.locked_until) == (
        second.lock_token,
        "w-new",
        second.locked_until,
    )


def test_paused_stage_and_bad_limits_as_task_claim(world: dict[str, Stage]) -> None:
    make_tasks(world["ship"])
    with pytest.raises(ValueError):
        task_claim_rows(stage=world["ship"], worker_id="w", limit=0)
    with pytest.raises(ValueError):
        task_claim_rows(stage=world["ship"], worker_id="w", limit=1, lock_timeout=0)
    world["ship"].is_paused = True
    world["ship"].save()
    assert task_claim_rows(stage=world["ship"], worker_id="w", limit=5) == []
    assert Task.objects.filter(stage=world["ship"], status=Task.Status.PENDING).count() == 3


SEEN: list[HandlerTask] = []


def record(task: HandlerTask) -> None:
    """Handler: remember what it was given, send a successor."""
    SEEN.append(task)
    task.send("approved", {"from": task.id})


def flaky(task: HandlerTask) -> None:
    raise RuntimeError("try again")


def test_the_worker_holds_light_rows_and_handlers_get_the_documented_task(world: dict[str, Stage]) -> None:
    """Regression: the worker's held tasks are ClaimedRows (no Task built per row); handlers see a HandlerTask."""
    parent = task_create(stage=world["audit"], type="root", payload={})
    world["review"].handler = "tests.test_claim_rows.record"
    world["review"].save()
    tasks = make_tasks(world["review"], parent=parent)
    SEEN.clear()
    worker = Worker(stage_slugs=["review"], worker_id="w-light", batch_size=10, concurrency=2)
    held_types: set[type] = set()
    original = worker.dispatch

    def spy(held: list[Any]) -> None:
        held_types.update(type(h.task) for h in held)
        original(held)

    worker.dispatch = spy  # type: ignore[method-assign]
    assert worker.run_once() is True
    assert held_types == {ClaimedRow}
    assert worker.stats.done == 3 and not worker.held
    by_id = {t.id: t for t in SEEN}
    assert set(by_id) == {t.pk for t in tasks}
    for task in tasks:
        stored = Task.objects.get(pk=task.pk)
        seen = by_id[task.pk]
        assert type(seen) is HandlerTask
        assert (seen.type, seen.payload, seen.stage, seen.attempts, seen.created_at, seen.parent_id) == (
            stored.type,
            stored.payload,
            "review",
            1,
            stored.created_at,
            stored.parent_id,
        )
        assert stored.status == Task.Status.COMPLETED and stored.locked_by == "w-light"
        children = Task.objects.filter(parent=stored)  # approved fans out to ship and audit
        assert {(c.stage.slug, c.type) for c in children} == {("ship", "approved"), ("audit", "approved")}
        assert {str(c.payload) for c in children} == {str({"from": task.pk})}


def test_the_worker_releases_a_failed_handlers_light_row_for_a_retry(world: dict[str, Stage]) -> None:
    world["ship"].handler = "tests.test_claim_rows.flaky"
    world["ship"].save()
    task = task_create(stage=world["ship"], type="t", payload={})
    worker = Worker(stage_slugs=["ship"], worker_id="w-retry")
    assert worker.run_once() is True
    stored = Task.objects.get(pk=task.pk)
    assert stored.status == Task.Status.PENDING and "try again" in stored.last_error
    assert not worker.held
