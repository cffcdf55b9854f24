"""Creating tasks and sending them along transitions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent, Transition, validate_payload, validate_task_type
from tasks_app.services.errors import NoRouteError, TaskStateError
from tasks_app.services.notify import notify_stages
from tasks_app.services.schemas import Senders, senders_into, validate_created, validate_sent

Send = tuple[str, dict[str, Any]]

# ValidationError code for an over-size payload (the API answers 413 for it).
TOO_LARGE = "payload_too_large"


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
    if "payload" not in errors:  # validate_payload checked depth and NUL characters first
        try:
            # JSONField would fail later, half-way through a transaction; fail here.
            size = len(json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode())
        except (TypeError, ValueError, RecursionError) as exc:
            errors["payload"] = [f"Payload is not JSON-serialisable: {exc}"]
        else:
            limit = int(settings.TASKS_MAX_PAYLOAD_BYTES)
            if size > limit:
                raise ValidationError(
                    {"payload": [ValidationError(f"Payload is {size} bytes; the limit is {limit}.", code=TOO_LARGE)]}
                )
    if errors:
        raise ValidationError(errors)


def task_create(
    *,
    stage: Stage,
    type: str,
    payload: dict[str, Any],
    actor: str = "",
    available_at: datetime | None = None,
    idempotency_key: str = "",
    now: datetime | None = None,
) -> Task:
    """Create one pending task at a stage."""
    validate_task_input(type=type, payload=payload)
    validate_created(stage, type, payload)
    now = now or timezone.now()
    with transaction.atomic():
        task = Task.objects.create(
            stage=stage,
            type=type,
            payload=payload,
            created_at=now,
            updated_at=now,
            available_at=available_at or now,
            idempotency_key=idempotency_key,
        )
        details = {"idempotency_key": idempotency_key} if idempotency_key else {}
        TaskEvent.objects.create(task=task, kind=TaskEvent.Kind.CREATED, at=now, actor=actor, details=details)
        if task.available_at <= now:
            notify_stages([stage.pk])
    return task


def task_create_idempotent(
    *, stage: Stage, type: str, payload: dict[str, Any], idempotency_key: str, actor: str = ""
) -> tuple[Task, bool]:
    """Create a task unless one with this key exists at the stage; returns (task, created).

    Reusing a key with a different type or payload is refused (TaskStateError):
    it is almost certainly a client bug, and returning the old task would hide it.
    """

    def existing() -> Task | None:
        task = Task.objects.filter(stage=stage, idempotency_key=idempotency_key).first()
        if task is not None and (task.type, task.payload) != (type, payload):
            raise TaskStateError(
                f"Idempotency key '{idempotency_key}' was already used at stage '{stage.slug}' "
                f"for task {task.pk} with a different type or payload."
            )
        return task

    validate_task_input(type=type, payload=payload)
    if (task := existing()) is not None:
        return task, False
    try:
        return task_create(stage=stage, type=type, payload=payload, actor=actor, idempotency_key=idempotency_key), True
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its task.
        if (task := existing()) is None:
            raise
        return task, False


def tasks_create_bulk(*, items: Sequence[tuple[Stage, str, dict[str, Any]]], actor: str = "") -> list[Task]:
    """Create many pending tasks in one transaction: all of them, or none."""
    senders: dict[int, Senders] = {}  # one query per stage, not per task
    for stage, type, payload in items:
        validate_task_input(type=type, payload=payload)
        if stage.pk not in senders:
            senders[stage.pk] = senders_into(stage)
        validate_created(stage, type, payload, senders=senders[stage.pk])
    now = timezone.now()
    tasks = [
        Task(stage=stage, type=type, payload=payload, created_at=now, updated_at=now, available_at=now)
        for stage, type, payload in items
    ]
    with transaction.atomic():
        Task.objects.bulk_create(tasks)
        TaskEvent.objects.bulk_create(
            TaskEvent(task=t, kind=TaskEvent.Kind.CREATED, at=now, actor=actor, details={"bulk": True}) for t in tasks
        )
        notify_stages({t.stage_id for t in tasks})
    return tasks


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
        validate_sent(stage, type, payload)
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
