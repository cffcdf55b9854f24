"""Creating tasks and sending them along transitions.

Priority and run-at (issue 15). A task's priority is, in this order: the one
its creator gives; else, for a task sent by a task (a handler's send, an API
complete's send), the sender's; else, for a task that arrives without a
sending task (the API's create/bulk/stage send, a hook, a job, the New task
page), its stage's (stage_priority: the integer in the payload field the
stage names, clamped, else the stage's default_priority). Its available_at is
the `at` or now + `delay` its creator gives (checked by `schedule_problem`:
one or the other, at most MAX_DELAY ahead; a time already past means now).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from tasks_app.limits import MAX_DELAY, MAX_PRIORITY, MIN_PRIORITY
from tasks_app.models import Stage, Task, TaskEvent, Transition, validate_payload, validate_task_type
from tasks_app.services.dedupe import deduplicated_events, key_for, tasks_insert
from tasks_app.services.errors import NoRouteError, TaskStateError
from tasks_app.services.fanout import fanout_total, mark_fanout, parentless_fanout_id
from tasks_app.services.notify import notify_stages
from tasks_app.services.schemas import Senders, senders_into, validate_created, validate_sent


class Send(tuple[str, dict[str, Any]]):
    """A successor to create: a (type, payload) pair, carrying its priority and when it may run.

    A pair, so that everything that unpacks a send as `type, payload` takes
    one; a plain pair is a send with no options (send_options).
    priority None: the sender's (or, with no sending task, the stage's);
    `delay` counts from the moment the send is carried out (the completion).
    """

    priority: int | None
    at: datetime | None
    delay: float | None

    def __new__(
        cls,
        type: str,
        payload: dict[str, Any],
        priority: int | None = None,
        at: datetime | None = None,
        delay: float | None = None,
    ) -> Send:
        self = super().__new__(cls, (type, payload))
        self.priority, self.at, self.delay = priority, at, delay
        return self

    def __reduce__(self) -> Any:  # copy and pickle keep the options
        return (Send, (self[0], self[1], self.priority, self.at, self.delay))


SendLike = tuple[str, dict[str, Any]]  # a Send, or a plain pair


def as_send(item: SendLike) -> Send:
    return item if isinstance(item, Send) else Send(*item)


def clamp_priority(value: int) -> int:
    return max(MIN_PRIORITY, min(MAX_PRIORITY, value))


def priority_problem(value: object) -> str | None:
    """What is wrong with a priority someone gives (None: nothing)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, not {value!r}"
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        return f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY}, not {value}"
    return None


def schedule_problem(*, delay: object = None, at: object = None, now: datetime | None = None) -> str | None:
    """What is wrong with a delay (seconds) or a run-at time someone gives (None: nothing)."""
    if delay is not None and at is not None:
        return "give delay or at (available_at), not both"
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay):
            return f"delay must be a number of seconds, not {delay!r}"
        if not 0 <= delay <= MAX_DELAY:
            return f"delay must be from 0 to {MAX_DELAY} seconds (a year), not {delay:g}"
    if at is not None:
        if not isinstance(at, datetime):
            return f"at must be a datetime, not {at!r}"
        if timezone.is_naive(at):
            return "at must be a timezone-aware datetime"
        if at > (now or timezone.now()) + timedelta(seconds=MAX_DELAY):
            return f"at must be at most a year ahead, not {at.isoformat()}"
    return None


def run_at(*, now: datetime, at: datetime | None = None, delay: float | None = None) -> datetime:
    """When a task may first run: `at`, or now + `delay`, or now; a time already past is now."""
    if at is not None:
        return max(at, now)
    if delay:
        return now + timedelta(seconds=delay)
    return now


def stage_priority(stage: Stage, payload: dict[str, Any]) -> int:
    """The priority of a task arriving at `stage` without a sending task (and without one given)."""
    if stage.priority_from:
        value = payload.get(stage.priority_from)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return clamp_priority(value)
    return stage.default_priority


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
    priority: int | None = None,
) -> Task:
    """Create one pending task at a stage (priority: given, else the stage's; available_at: given, else now).

    Dedupe: if a live task at the stage has this payload's dedupe key, that task is returned instead
    (its `deduplicated` is True) and nothing is created (services.dedupe).
    """
    validate_task_input(type=type, payload=payload)
    validate_created(stage, type, payload)
    now = now or timezone.now()
    with transaction.atomic():
        new = Task(
            stage=stage,
            type=type,
            payload=payload,
            created_at=now,
            updated_at=now,
            available_at=run_at(now=now, at=available_at),
            idempotency_key=idempotency_key,
            priority=stage_priority(stage, payload) if priority is None else priority,
            dedupe_key=key_for(stage, payload),
        )
        [task] = tasks_insert([new])
        if task.deduplicated:
            TaskEvent.objects.bulk_create(deduplicated_events([new], [task], actor=actor, now=now, via="create"))
            return task
        details = {"idempotency_key": idempotency_key} if idempotency_key else {}
        TaskEvent.objects.create(task=task, kind=TaskEvent.Kind.CREATED, at=now, actor=actor, details=details)
        if task.available_at <= now:
            notify_stages([stage.pk])
    return task


def task_create_idempotent(
    *,
    stage: Stage,
    type: str,
    payload: dict[str, Any],
    idempotency_key: str,
    actor: str = "",
    priority: int | None = None,
    available_at: datetime | None = None,
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
        task = task_create(
            stage=stage,
            type=type,
            payload=payload,
            actor=actor,
            idempotency_key=idempotency_key,
            priority=priority,
            available_at=available_at,
        )
        return task, not task.deduplicated
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its task.
        if (task := existing()) is None:
            raise
        return task, False


class NewTask(NamedTuple):
    """One task of tasks_create_bulk; priority None: the stage's; available_at None: now."""

    stage: Stage
    type: str
    payload: dict[str, Any]
    priority: int | None = None
    available_at: datetime | None = None


def tasks_create_bulk(*, items: Sequence[NewTask | tuple[Stage, str, dict[str, Any]]], actor: str = "") -> list[Task]:
    """Create many pending tasks in one transaction: all of them, or none.

    One task per item, in order; an item whose dedupe key a live task holds (or an earlier item of the
    same stage and key) gets that task, with `deduplicated` True (services.dedupe).
    """
    news = [item if isinstance(item, NewTask) else NewTask(*item) for item in items]
    senders: dict[int, Senders] = {}  # one query per stage, not per task
    for stage, type, payload, _, _ in news:
        validate_task_input(type=type, payload=payload)
        if stage.pk not in senders:
            senders[stage.pk] = senders_into(stage)
        validate_created(stage, type, payload, senders=senders[stage.pk])
    now = timezone.now()
    tasks = [
        Task(
            stage=n.stage,
            type=n.type,
            payload=n.payload,
            created_at=now,
            updated_at=now,
            available_at=run_at(now=now, at=n.available_at),
            priority=stage_priority(n.stage, n.payload) if n.priority is None else n.priority,
            dedupe_key=key_for(n.stage, n.payload),
        )
        for n in news
    ]
    with transaction.atomic():
        arrived = tasks_insert(tasks)
        made = [t for t in arrived if not t.deduplicated]
        TaskEvent.objects.bulk_create(
            [TaskEvent(task=t, kind=TaskEvent.Kind.CREATED, at=now, actor=actor, details={"bulk": True}) for t in made]
            + deduplicated_events(tasks, arrived, actor=actor, now=now, via="bulk")
        )
        notify_stages({t.stage_id for t in made if t.available_at <= now})
    return arrived


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
    priority: int | None = None,
    available_at: datetime | None = None,
) -> list[Task]:
    """Unsaved pending tasks, one per transition, as sending `type` creates them.

    priority None: each target stage's (stage_priority; the transitions' targets must be loaded).
    Each carries its target stage's dedupe key of the payload (services.dedupe inserts them).
    """
    return [
        Task(
            stage=t.target,  # loaded (key_for reads it): the notification outbox reads its notify without a query
            type=type,
            payload=payload,
            created_at=now,
            updated_at=now,
            available_at=available_at or now,
            parent_id=parent_id,
            source_stage_id=source_stage_id,
            priority=stage_priority(t.target, payload) if priority is None else priority,
            dedupe_key=key_for(t.target, payload),
        )
        for t in transitions
    ]


def _send_one(
    *,
    stage: Stage,
    send: Send,
    parent: Task | None,
    actor: str,
    now: datetime,
    fanout_size: int | None = None,
    fanout_id: int | None = None,
) -> list[Task]:
    assert connection.in_atomic_block
    type, payload = send
    priority = send.priority
    if priority is None and parent is not None:
        priority = parent.priority  # successors inherit the sender's
    tasks = successor_tasks(
        transitions=matching_transitions(stage=stage, type=type),
        type=type,
        payload=payload,
        source_stage_id=stage.pk,
        parent_id=parent.pk if parent else None,
        now=now,
        priority=priority,
        available_at=run_at(now=now, at=send.at, delay=send.delay),
    )
    mark_fanout(tasks, parent=parent, size=fanout_size, fanout_id=fanout_id)  # join stages (services.fanout)
    details: dict[str, Any] = {"from_stage": stage.slug}
    if parent is not None:
        details["parent"] = parent.pk
    arrived = tasks_insert(tasks)
    made = [t for t in arrived if not t.deduplicated]
    TaskEvent.objects.bulk_create(
        [TaskEvent(task=t, kind=TaskEvent.Kind.CREATED, at=now, actor=actor, details=details) for t in made]
        + deduplicated_events(tasks, arrived, actor=actor, now=now, via="send", details=[details] * len(tasks))
    )
    notify_stages({t.stage_id for t in made if t.available_at <= now})
    return arrived


def tasks_send_many(
    *,
    stage: Stage,
    sends: Iterable[SendLike],
    parent: Task | None = None,
    actor: str = "",
    now: datetime | None = None,
) -> list[Task]:
    """Send several (type, payload) pairs (or Sends) out of a stage: all are routed, or none is."""
    checked = [as_send(item) for item in sends]
    for type, payload in checked:
        validate_task_input(type=type, payload=payload)
        validate_sent(stage, type, payload)
    now = now or timezone.now()
    created: list[Task] = []
    with transaction.atomic():
        # One call's sends are one fan-out (services.fanout): its size is all the tasks they create, and
        # with no sending task its id is drawn once here, not once per send, or a job that sends twice
        # would make two fan-outs of 2 that never join.
        size = fanout_total(stage, [type for type, _ in checked]) if len(checked) > 1 else None
        fanout_id = parentless_fanout_id() if parent is None and size is not None and size >= 2 else None
        for send in checked:
            created += _send_one(
                stage=stage, send=send, parent=parent, actor=actor, now=now, fanout_size=size, fanout_id=fanout_id
            )
    return created


def task_send(
    *,
    stage: Stage,
    type: str,
    payload: dict[str, Any],
    parent: Task | None = None,
    actor: str = "",
    now: datetime | None = None,
    priority: int | None = None,
    available_at: datetime | None = None,
    delay: float | None = None,
) -> list[Task]:
    """Send a task of `type` out of `stage`: one pending copy per matching transition."""
    send = Send(type, payload, priority=priority, at=available_at, delay=delay)
    return tasks_send_many(stage=stage, sends=[send], parent=parent, actor=actor, now=now)
