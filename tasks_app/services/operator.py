"""Actions people take on tasks (admin, monitoring page, API). Each records
an event naming the acting user."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from tasks_app.models import Task, TaskEvent
from tasks_app.services.dedupe import DedupeConflict, key_for, tasks_insert
from tasks_app.services.errors import TaskStateError
from tasks_app.services.events import CLAIM_COLUMNS, by_person_details, claim_facts, event_record
from tasks_app.services.lifecycle import CANCELLED_ON_HAND_BACK, ENDED, UNLOCKED
from tasks_app.services.notify import notify_stages
from tasks_app.services.routing import validate_task_input
from tasks_app.services.schemas import validate_arrival

S = Task.Status


def _refuse(task_id: int, action: str, allowed: Sequence[str]) -> TaskStateError:
    status = Task.objects.filter(pk=task_id).values_list("status", flat=True).first()
    if status is None:
        return TaskStateError(f"Task {task_id} does not exist.")
    return TaskStateError(f"Cannot {action} task {task_id}: it is {status} (allowed: {', '.join(allowed)}).")


def _transition(
    *, task_id: int, action: str, allowed: list[str], kind: str, actor: str, now: datetime | None, **changes: Any
) -> None:
    now = now or timezone.now()
    with transaction.atomic():
        # Read under the row lock: if the task is locked, this change ends that claim, and its event says so.
        before = (
            Task.objects.select_for_update()
            .filter(pk=task_id, status__in=allowed)
            .values("status", *CLAIM_COLUMNS)
            .first()
        )
        updated = Task.objects.filter(pk=task_id, status__in=allowed).update(updated_at=now, **changes)
        if updated != 1 or before is None:
            raise _refuse(task_id, action, allowed)
        claim = claim_facts(before) if before["status"] == S.LOCKED else None
        details = by_person_details(previous_status=before["status"], claim=claim)
        event_record(task_id=task_id, kind=kind, at=now, actor=actor, details=details)
        if changes.get("status") == S.PENDING:
            stage_id = Task.objects.filter(pk=task_id).values_list("stage_id", flat=True).get()
            notify_stages([stage_id])


def _dedupe_refusal(task_id: int, action: str) -> DedupeConflict:
    """Why `action` would make task_id live next to a live task with its dedupe key (task_dedupe_live)."""
    task = Task.objects.filter(pk=task_id).values("stage_id", "stage__slug", "dedupe_key").first()
    holder = None
    if task is not None and task["dedupe_key"]:
        holder = (
            Task.objects.filter(stage_id=task["stage_id"], dedupe_key=task["dedupe_key"])
            .filter(status__in=[S.PENDING, S.LOCKED])
            .values_list("pk", flat=True)
            .first()
        )
    slug = task["stage__slug"] if task else "?"
    return DedupeConflict(
        f"Cannot {action} task {task_id}: task {holder} is live at stage '{slug}' with the same dedupe key "
        "(the stage's dedupe_on); finish or cancel it first."
    )


def task_retry(*, task_id: int, actor: str, now: datetime | None = None) -> None:
    """Send a completed or failed task back to pending (attempts kept).

    Refused (TaskStateError, nothing changed) while another task at its stage is live with its dedupe key.
    """
    now = now or timezone.now()
    try:
        _transition(
            task_id=task_id, action="retry", allowed=[S.COMPLETED, S.FAILED], kind=TaskEvent.Kind.RETRIED,
            actor=actor, now=now, status=S.PENDING, available_at=now, completed_at=None, cancel_requested=False,
            **UNLOCKED,
        )  # fmt: skip
    except IntegrityError as exc:  # task_dedupe_live: the only unique index a status change can break
        raise _dedupe_refusal(task_id, "retry") from exc


def _cancel_requested(task_id: int) -> dict[str, Any] | None:
    """The claim of a locked task whose cancel was requested (services.cancel), read under its row lock; else None."""
    return (
        Task.objects.select_for_update(of=("self",))
        .filter(pk=task_id, status=S.LOCKED, cancel_requested=True)
        .values(*CLAIM_COLUMNS)
        .first()
    )


def task_force_release(*, task_id: int, actor: str, now: datetime | None = None) -> str:
    """Take a locked task away from its worker and make it pending now; its old token stops working.

    A task whose cancel was requested ends cancelled instead (pending, it would run again). Returns the
    status it is now.
    """
    now = now or timezone.now()
    with transaction.atomic():
        claim = _cancel_requested(task_id)
        if claim is None:
            _transition(
                task_id=task_id, action="release", allowed=[S.LOCKED], kind=TaskEvent.Kind.FORCE_RELEASED,
                actor=actor, now=now, status=S.PENDING, available_at=now, **UNLOCKED,
            )  # fmt: skip
            return S.PENDING
        Task.objects.filter(pk=task_id, status=S.LOCKED).update(status=S.CANCELLED, updated_at=now, **ENDED)
        details = by_person_details(previous_status=S.LOCKED, claim=claim_facts(claim))
        details["reason"] = f"released by hand; {CANCELLED_ON_HAND_BACK}"
        event_record(task_id=task_id, kind=TaskEvent.Kind.CANCELLED, at=now, actor=actor, details=details)
    return S.CANCELLED


def task_mark_completed(*, task_id: int, actor: str, now: datetime | None = None) -> None:
    """Mark a pending, locked or failed task completed by hand (sends no successors).

    Refused for a locked task whose cancel was requested: it ends cancelled, not completed.
    """
    now = now or timezone.now()
    with transaction.atomic():
        if _cancel_requested(task_id) is not None:
            raise TaskStateError(
                f"Cannot mark task {task_id} completed: a cancel was requested. Release it to cancel it now, "
                "or let its run end (it then ends cancelled)."
            )
        _transition(
            task_id=task_id, action="mark completed", allowed=[S.PENDING, S.LOCKED, S.FAILED],
            kind=TaskEvent.Kind.MARKED_COMPLETED, actor=actor, now=now,
            status=S.COMPLETED, completed_at=now, lock_token="", locked_until=None,
        )  # fmt: skip


def task_duplicate(*, task_id: int, actor: str, now: datetime | None = None) -> Task:
    """Create a pending copy of a task at the same stage.

    The copy is an arrival: refused (TaskStateError, nothing changed) when a live task at the stage
    holds its dedupe key, as the original itself does while it is live.
    """
    now = now or timezone.now()
    with transaction.atomic():
        # Locked so that a concurrent prune can't delete it under the "duplicated"
        # event written below (events have no database-level foreign key).
        original = Task.objects.select_for_update().filter(pk=task_id).first()
        if original is None:
            raise TaskStateError(f"Task {task_id} does not exist.")
        new = Task(
            stage_id=original.stage_id,
            type=original.type,
            payload=original.payload,
            created_at=now,
            updated_at=now,
            available_at=now,
            source_stage_id=original.source_stage_id,
            priority=original.priority,  # a copy keeps its original's priority
            # A copy stays in its original's fan-out: duplicating a failed branch completes its join group.
            fanout_id=original.fanout_id,
            fanout_size=original.fanout_size,
            dedupe_key=key_for(original.stage, original.payload),
        )
        [copy] = tasks_insert([new])
        if copy.deduplicated:
            raise DedupeConflict(
                f"Cannot duplicate task {task_id}: task {copy.pk} is live at stage '{original.stage.slug}' with the "
                "same dedupe key (the stage's dedupe_on)."
            )
        event_record(
            task_id=copy.pk, kind=TaskEvent.Kind.CREATED, at=now, actor=actor, details={"duplicate_of": task_id}
        )
        event_record(task_id=task_id, kind=TaskEvent.Kind.DUPLICATED, at=now, actor=actor, details={"copy": copy.pk})
        notify_stages([copy.stage_id])
    return copy


def task_edit_payload(*, task_id: int, payload: dict[str, Any], actor: str, now: datetime | None = None) -> None:
    """Replace the payload of a task that no worker holds.

    Its dedupe key follows the new payload (its stage's dedupe_on now); refused (TaskStateError, nothing
    changed) when that key is held by another live task at the stage and this one is pending.
    """
    validate_task_input(type="x", payload=payload)
    task = Task.objects.select_related("stage", "source_stage").filter(pk=task_id).first()
    if task is not None:
        # The edited payload must still match the schema it arrived under.
        validate_arrival(stage=task.stage, source_stage=task.source_stage, type=task.type, payload=payload)
    now = now or timezone.now()
    allowed = [S.PENDING, S.FAILED, S.COMPLETED]
    with transaction.atomic():
        before = Task.objects.filter(pk=task_id, status__in=allowed).values_list("payload", flat=True).first()
        key = key_for(task.stage, payload) if task is not None else ""
        try:
            with transaction.atomic():
                updated = Task.objects.filter(pk=task_id, status__in=allowed).update(
                    payload=payload, updated_at=now, dedupe_key=key
                )
        except IntegrityError as exc:  # task_dedupe_live
            raise _dedupe_refusal_for_key(task_id, key) from exc
        if updated != 1:
            raise _refuse(task_id, "edit the payload of", allowed)
        event_record(
            task_id=task_id,
            kind=TaskEvent.Kind.EDITED,
            at=now,
            actor=actor,
            details={"before": before, "after": payload},
        )


def _dedupe_refusal_for_key(task_id: int, key: str) -> DedupeConflict:
    task = Task.objects.filter(pk=task_id).values("stage_id", "stage__slug").first()
    holder = (
        Task.objects.filter(stage_id=task["stage_id"], dedupe_key=key, status__in=[S.PENDING, S.LOCKED])
        .exclude(pk=task_id)
        .values_list("pk", flat=True)
        .first()
        if task
        else None
    )
    return DedupeConflict(
        f"Cannot edit the payload of task {task_id}: task {holder} is live at stage "
        f"'{task['stage__slug'] if task else '?'}' with the dedupe key the new payload has (the stage's dedupe_on)."
    )
