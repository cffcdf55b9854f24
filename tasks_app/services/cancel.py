"""Cancelling tasks: at once when no worker holds them, by request when one does.

- A pending or failed task becomes `cancelled` at once: a conditional UPDATE
  that restates the status it expects (pending or failed) in its WHERE, with a
  `cancelled` event (actor, reason, the status before) in the same transaction.
- A locked task gets a cancel *request*: `cancel_requested` is set (again a
  conditional UPDATE: still locked, not yet requested) with a
  `cancel_requested` event. The worker holding it learns it at its next
  heartbeat (services.complete.tasks_extend_locks_reporting) and shows it to
  the handler as `task.cancel_requested`; whatever ends the claim by a
  completion (the worker's, an API client's, pipelined or not) ends it as
  `cancelled` and sends nothing: services.complete decides that in the
  completing statement itself, under the row lock, so a request that lands
  between the handler's return and the commit is obeyed too. Whatever else ends
  the claim ends it cancelled as well, never back in the queue: a handler error
  or a permanent failure (lifecycle.task_release, task_fail), a hand-back
  (task_unclaim at shutdown, tasks_unclaim_orphans, a person closing a form,
  operator.task_force_release), an expired lock (the expiry sweep: no claim
  takes over a requested task's expired lock, services.claim). Marking it
  completed by hand is refused (operator.task_mark_completed). A job run whose
  held tasks were all requested drops the run's sends (services.jobs).
- A completed or cancelled task is refused (TaskStateError), as is an unknown id.

`cascade` also cancels the pending descendants (children, their children, ...)
of the task, each with its own `cancelled` event naming the task the cascade
started from. Locked descendants are left alone (they finish, and may send);
tasks they send later are not cancelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from django.db import transaction
from django.utils import timezone

from tasks_app.models import Task, TaskEvent
from tasks_app.services.errors import TaskStateError
from tasks_app.services.events import event_record
from tasks_app.services.lifecycle import UNLOCKED

S = Task.Status
# Cancelled at once, no worker involved.
CANCELLABLE_NOW = (S.PENDING, S.FAILED)
# A reason is a short line people type; longer text is cut, not refused.
MAX_REASON = 1000
# The most descendants one cascade cancels (a runaway fan-out must not make one transaction unbounded).
MAX_CASCADE = 10_000


@dataclass
class CancelResult:
    """What a cancel did: `cancelled` at once, or `requested` (the task is locked); and the cascade's ids."""

    task_id: int
    outcome: Literal["cancelled", "requested"]
    cascaded: list[int] = field(default_factory=list)


def _refusal(task_id: int) -> TaskStateError:
    row = Task.objects.filter(pk=task_id).values("status", "cancel_requested").first()
    if row is None:
        return TaskStateError(f"Task {task_id} does not exist.")
    if row["status"] == S.LOCKED and row["cancel_requested"]:
        return TaskStateError(
            f"Task {task_id}: a cancel was already requested; it ends as cancelled when its worker's handler returns."
        )
    return TaskStateError(
        f"Cannot cancel task {task_id}: it is {row['status']} (allowed: pending, failed, or locked for a request)."
    )


def _cancel_now(
    *, ids: Sequence[int], now: datetime, statuses: Sequence[str] = CANCELLABLE_NOW
) -> list[tuple[int, str]]:
    """Cancel those of `ids` that are still in `statuses`; returns (id, status before) of each cancelled."""
    # Read under the row lock, so the status before is the one the UPDATE changes.
    before = list(
        Task.objects.select_for_update(of=("self",))
        .filter(pk__in=ids, status__in=statuses)
        .order_by("id")
        .values_list("id", "status")
    )
    if not before:
        return []
    Task.objects.filter(pk__in=[i for i, _ in before], status__in=statuses).update(
        status=S.CANCELLED, updated_at=now, cancel_requested=False, **UNLOCKED
    )
    return before


def task_cancel(
    *, task_id: int, actor: str, reason: str = "", cascade: bool = False, now: datetime | None = None
) -> CancelResult:
    """Cancel a pending or failed task at once, or request the cancel of a locked one; refuse anything else."""
    now = now or timezone.now()
    reason = reason.strip()[:MAX_REASON]
    outcome: Literal["cancelled", "requested"]
    with transaction.atomic():
        done = _cancel_now(ids=[task_id], now=now)
        if done:
            (_, previous), outcome = done[0], "cancelled"
            event_record(
                task_id=task_id,
                kind=TaskEvent.Kind.CANCELLED,
                at=now,
                actor=actor,
                details={"reason": reason, "previous_status": previous},
            )
        else:
            holder = (
                Task.objects.select_for_update(of=("self",))
                .filter(pk=task_id, status=S.LOCKED, cancel_requested=False)
                .values_list("locked_by", flat=True)
                .first()
            )
            updated = Task.objects.filter(pk=task_id, status=S.LOCKED, cancel_requested=False).update(
                cancel_requested=True
            )  # updated_at stays: a heartbeat-like flag, not a change of state; the event records when
            if updated != 1 or holder is None:
                raise _refusal(task_id)
            outcome = "requested"
            event_record(
                task_id=task_id,
                kind=TaskEvent.Kind.CANCEL_REQUESTED,
                at=now,
                actor=actor,
                details={"reason": reason, "worker": holder},
            )
        result = CancelResult(task_id=task_id, outcome=outcome)
        if cascade:
            result.cascaded = _cascade(root=task_id, actor=actor, reason=reason, now=now)
    return result


def _cascade(*, root: int, actor: str, reason: str, now: datetime) -> list[int]:
    """Cancel the pending descendants of `root`, level by level along task_parent_idx; returns their ids."""
    frontier: list[int] = [root]
    seen = {root}
    pending: list[int] = []
    while frontier and len(seen) <= MAX_CASCADE:
        children = list(
            Task.objects.filter(parent_id__in=frontier).order_by("id").values_list("id", flat=True)[:MAX_CASCADE]
        )
        frontier = [c for c in children if c not in seen]
        seen.update(frontier)
        pending += frontier
    cancelled = _cancel_now(ids=pending, now=now, statuses=[S.PENDING]) if pending else []
    TaskEvent.objects.bulk_create(
        TaskEvent(
            task_id=task_id,
            kind=TaskEvent.Kind.CANCELLED,
            at=now,
            actor=actor,
            details={"reason": reason, "previous_status": previous, "cascade_from": root},
        )
        for task_id, previous in cancelled
    )
    return [task_id for task_id, _ in cancelled]
