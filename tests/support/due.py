"""Remind and escalate (issue 16): setting a form stage's reminders and due time, and tasks that arrived a while ago.

Used with tests.support.work.form_world (review: a form stage, reviewers alice, bob, vera).
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from tasks_app.models import Stage, Task
from tasks_app.services import task_create
from tasks_app.services.workflow import workflow_dump, workflow_problems


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


def load_file(data: dict[str, Any], folder: Path) -> None:
    """`manage.py load_workflow` of `data` written as a file in `folder` (CommandError if it is refused)."""
    path = folder / "wf.json"
    path.write_text(json.dumps(data))
    call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=io.StringIO())


def dumped_with(slug: str, **fields: Any) -> dict[str, Any]:
    """workflow_dump() with these fields of stage `slug` changed."""
    dumped = workflow_dump()
    next(s for s in dumped["stages"] if s["slug"] == slug).update(fields)
    return dumped


def one_problem(stage: dict[str, Any], transitions: list[dict[str, str]]) -> str:
    """The one problem workflow_problems finds in a file with this one stage (asserted one line, about it)."""
    problems = workflow_problems({"version": 1, "stages": [stage], "transitions": transitions})
    assert len(problems) == 1 and "\n" not in problems[0], problems
    assert problems[0].startswith(f"stages[0] (slug '{stage['slug']}'): "), problems
    return problems[0]


def model_errors(stage: Stage, **fields: Any) -> dict[str, list[str]]:
    """Stage.full_clean's messages per field with these fields set ({} when it passes)."""
    for name, value in fields.items():
        setattr(stage, name, value)
    try:
        stage.full_clean()
    except ValidationError as exc:
        return exc.message_dict
    return {}


def api_refuses(client: Any, slug: str, body: dict[str, Any], field: str) -> bool:
    """A PATCH of stage `slug` with `body` is refused with 400, with a message for `field`."""
    response = client.patch(f"/api/stages/{slug}/", body, format="json")
    return bool(response.status_code == 400 and field in response.json())


def round_trip(slug: str, folder: Path, **fields: Any) -> Stage:
    """Load the dump with these fields of stage `slug` changed; the next dump is that file again. The stage."""
    changed = dumped_with(slug, **fields)
    load_file(changed, folder)
    assert workflow_dump() == changed
    return Stage.objects.get(slug=slug)
