"""Creating tasks and sending them along transitions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent, Transition, validate_payload, validate_task_type
from tasks_app.services.errors import NoRouteError
from tasks_app.services.notify import notify_stages

Send = tuple[str, dict[str, Any]]


def validate_task_input(*, type: object, payload: object) -> None:
    """Raise ValidationError with field messages for a bad type or payload."""
    errors: dict[str, list[str]] = {}
    for field, validator, value in (
        ("type", validate_task_type, type),
        ("payload", validate_payload, payload),
    ):
        try:
            validator(value)
        except ValidationError as exc:
            errors[field] = exc.messages
    if "payload" not in errors:
        try:
            # JSONField would fail later, half-way through a transaction; fail here.
            json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            errors["payload"] = [f"Payload is not JSON-serialisable: {exc}"]
    if errors:
        raise ValidationError(errors)


def task_create(
    *,
    stage: Stage,
    type: str,
    payload: dict[str, Any],
    actor: str = "",
    available_at: datetime | None = None,
    now: datetime | None = None,
) -> Task:
    """Create one pending task at a stage."""
    validate_task_input(type=type, payload=payload)
    now = now or timezone.now()
    with transaction.atomic():
        task = Task.objects.create(
            stage=stage,
            type=type,
            payload=payload,
            created_at=now,
            updated_at=now,
            available_at=available_at or now,
        )
        TaskEvent.objects.create(task=task, kind=TaskEvent.Kind.CREATED, at=now, actor=actor)
        if task.available_at <= now:
            notify_stages([stage.pk])
    return task


def matching_transitions(*, stage: Stage, type: str) -> list[Transition]:
    """The stage's transitions that pass `type`, or NoRouteError naming what they accept."""
    transitions = list(stage.outgoing.select_related("target").order_by("id"))
    matching = [t for t in transitions if t.accepts(type)]
    if not matching:
        accepted = sorted({t.task_type or "*" for t in transitions})
        raise NoRouteError(stage_slug=stage.slug, task_type=type, accepted=accepted)
    return matching


def successor_tasks(
    *,
    transitions: list[Transition],
    type: str,
    payload: dict[str, Any],
    source_stage_id: int,
    parent_id: int | None,
    now: datetime,
) -> list[Task]:
    """Unsaved pending tasks, one per transition, as sending `type` creates them."""
    return [
        Task(
            stage_id=t.target_id,
            type=type,
            payload=payload,
            created_at=now,
            updated_at=now,
            available_at=now,
            parent_id=parent_id,
            source_stage_id=source_stage_id,
        )
        for t in transitions
    ]


def _send_one(
    *, stage: Stage, type: str, payload: dict[str, Any], parent: Task | None, actor: str, now: datetime
) -> list[Task]:
    assert connection.in_atomic_block
    tasks = successor_tasks(
        transitions=matching_transitions(stage=stage, type=type),
        type=type,
        payload=payload,
        source_stage_id=stage.pk,
        parent_id=parent.pk if parent else None,
        now=now,
    )
    Task.objects.bulk_create(tasks)
    details: dict[str, Any] = {"from_stage": stage.slug}
    if parent is not None:
        details["parent"] = parent.pk
    TaskEvent.objects.bulk_create(
        [TaskEvent(task=t, kind=TaskEvent.Kind.CREATED, at=now, actor=actor, details=details) for t in tasks]
    )
    notify_stages({t.stage_id for t in tasks})
    return tasks


def tasks_send_many(
    *,
    stage: Stage,
    sends: Iterable[Send],
    parent: Task | None = None,
    actor: str = "",
    now: datetime | None = None,
) -> list[Task]:
    """Send several (type, payload) pairs out of a stage: all are routed, or none is."""
    sends = list(sends)
    for type, payload in sends:
        validate_task_input(type=type, payload=payload)
    now = now or timezone.now()
    created: list[Task] = []
    with transaction.atomic():
        for type, payload in sends:
            created += _send_one(stage=stage, type=type, payload=payload, parent=parent, actor=actor, now=now)
    return created


def task_send(
    *,
    stage: Stage,
    type: str,
    payload: dict[str, Any],
    parent: Task | None = None,
    actor: str = "",
    now: datetime | None = None,
) -> list[Task]:
    """Send a task of `type` out of `stage`: one pending copy per matching transition."""
    return tasks_send_many(stage=stage, sends=[(type, payload)], parent=parent, actor=actor, now=now)
