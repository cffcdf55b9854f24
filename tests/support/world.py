"""The suite's small named world (a checkout workflow), tasks in it, and snapshots of what is stored.

intake --*--> review --approved--> ship
                    --declined--> notify
                    --approved--> audit   (fan-out: approved goes to two stages)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import task_claim, task_complete, task_create, task_fail

Factory = Callable[..., Task]


def make_world() -> dict[str, Stage]:
    """The checkout workflow's stages by slug, with their transitions."""
    stages = {
        slug: Stage.objects.create(slug=slug, name=slug.title(), kind=kind, handler=handler)
        for slug, kind, handler in [
            ("intake", Stage.Kind.HOOK, ""),
            ("review", Stage.Kind.SCRIPT, "tests.handlers.approve_small"),
            ("ship", Stage.Kind.SCRIPT, "tests.handlers.noop"),
            ("notify", Stage.Kind.SCRIPT, "tests.handlers.noop"),
            ("audit", Stage.Kind.SCRIPT, "tests.handlers.noop"),
        ]
    }
    for source, target, task_type in [
        ("intake", "review", ""),
        ("review", "ship", "approved"),
        ("review", "notify", "declined"),
        ("review", "audit", "approved"),
    ]:
        Transition.objects.create(source=stages[source], target=stages[target], task_type=task_type)
    return stages


def make_tasks_in_every_state(world: dict[str, Stage]) -> dict[str, Task]:
    """pending (review), locked by w1 (audit), expired lock (intake), completed (ship), failed (notify)."""
    hour_ago = timezone.now() - timedelta(hours=1)
    pending = task_create(stage=world["review"], type="order", payload={"amount": 10})

    completed = task_create(stage=world["ship"], type="order", payload={"state": "completed"})
    [claim] = task_claim(stage=world["ship"], worker_id="w1")
    task_complete(task_id=claim.pk, lock_token=claim.lock_token)

    failed = task_create(stage=world["notify"], type="order", payload={"state": "failed"})
    [claim] = task_claim(stage=world["notify"], worker_id="w1")
    task_fail(task_id=claim.pk, lock_token=claim.lock_token, error="ValueError: it broke")

    locked = task_create(stage=world["audit"], type="order", payload={"state": "locked"})
    task_claim(stage=world["audit"], worker_id="w1", lock_timeout=300)

    expired = task_create(stage=world["intake"], type="order", payload={"state": "expired"}, now=hour_ago)
    task_claim(stage=world["intake"], worker_id="w-gone", lock_timeout=1, now=hour_ago)

    found = {
        name: Task.objects.get(pk=t.pk)
        for name, t in [
            ("pending", pending),
            ("locked", locked),
            ("expired", expired),
            ("completed", completed),
            ("failed", failed),
        ]
    }
    assert [t.status for t in found.values()] == ["pending", "locked", "locked", "completed", "failed"]
    return found


def create(stage: Stage, type: str = "order", **payload: Any) -> Task:
    return task_create(stage=stage, type=type, payload=payload, actor="test")


def claim_one(stage: Stage, worker: str = "w") -> Task:
    [task] = task_claim(stage=stage, worker_id=worker)
    return task


def kinds(task_id: int) -> list[str]:
    """The kinds of a task's history events, oldest first."""
    return list(TaskEvent.objects.filter(task_id=task_id).order_by("id").values_list("kind", flat=True))


# -- snapshots: to show that nothing changed ------------------------------------------------


def db_state() -> tuple[list[dict[str, Any]], int]:
    """Every task row and the number of events."""
    return list(Task.objects.order_by("id").values()), TaskEvent.objects.count()


def state() -> dict[str, Any]:
    """Every row the API could write: tasks (all columns), events, stages, transitions."""
    return {
        "tasks": list(Task.objects.order_by("id").values()),
        "events": list(TaskEvent.objects.order_by("id").values_list("id", "task_id", "kind")),
        "stages": list(Stage.objects.order_by("id").values()),
        "transitions": list(Transition.objects.order_by("id").values()),
    }


@contextmanager
def nothing_written() -> Iterator[None]:
    """Asserts that the block changes no task, event, stage or transition."""
    before = state()
    yield
    after = state()
    assert len(after["tasks"]) == len(before["tasks"]), "tasks were created or deleted"
    assert len(after["events"]) == len(before["events"]), "events were written"
    assert after == before
