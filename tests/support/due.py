"""Remind and escalate (issue 16): setting a form stage's reminders and due time, and tasks that arrived a while ago.

Used with tests.support.work.form_world (review: a form stage, reviewers alice, bob, vera).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from tasks_app.models import Stage, Task
from tasks_app.services import task_create


def people(stage: Stage, **fields: Any) -> Stage:
    """Set the stage's remind_after / remind_max / due_after / on_overdue (and notify) as stored, unchecked."""
    Stage.objects.filter(pk=stage.pk).update(**fields)
    stage.refresh_from_db()
    return stage


def arrived(stage: Stage, seconds_ago: float, *, now: datetime | None = None, **payload: Any) -> Task:
    """A task of type "order" that arrived at `stage` `seconds_ago` before `now`."""
    at = (now or timezone.now()) - timedelta(seconds=seconds_ago)
    return task_create(stage=stage, type="order", payload=payload or {"order_id": 1}, now=at)


def kinds(task: Task) -> list[str]:
    return list(task.events.order_by("id").values_list("kind", flat=True))
