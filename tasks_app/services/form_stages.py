"""Form stages: people take a task, decide, and send it on.

Opening a task locks it to the person, like a worker's claim (`locked_by` is
"user:<username>", the stage's lock timeout applies, the attempt counts), so
two people can't decide the same task: the second is told who holds it. Like a
worker's claim it writes no history of its own: the event that ends it
(completed by the submit, released by a cancel, lock_expired) carries it.
Submitting completes it and sends the chosen type in one transaction;
cancelling hands it back without counting the attempt.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from tasks_app.limits import clamp_lock_timeout
from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.selectors.work import may_work_on
from tasks_app.services.assign import open_refusal
from tasks_app.services.claim import lock_token, new_lock_tokens
from tasks_app.services.complete import task_complete
from tasks_app.services.errors import TaskError, TaskStateError
from tasks_app.services.events import actor_for, claim_facts, event_record, lock_expired_details, person_named
from tasks_app.services.flow_limits import gate_enter, gate_leave, gated
from tasks_app.services.lifecycle import task_unclaim


class TaskHeldError(TaskError):
    """Someone else has the task open."""

    def __init__(self, task: Task) -> None:
        self.holder = person_named(task.locked_by)
        self.locked_until = task.locked_until
        until = f" until {timezone.localtime(task.locked_until):%H:%M}" if task.locked_until else ""
        super().__init__(f"Task {task.pk} is being worked on by {self.holder}{until}.")


def form_task_open(*, task: Task, user: Any, now: datetime | None = None) -> Task:
    """Lock a pending task of a form stage to `user` (or return it if they hold it already)."""
    now = now or timezone.now()
    stage = task.stage
    if stage.kind != Stage.Kind.FORM:
        raise TaskStateError(f"Task {task.pk} waits at '{stage.slug}', which is not a form stage.")
    if stage.is_paused:
        raise TaskStateError(f"Stage '{stage.slug}' is paused; its tasks can't be opened.")
    who = actor_for(user)
    # As the workers' claim: an expired lock on its last attempt is the expiry sweep's to fail.
    claimable = Task.objects.claimable(now).filter(pk=task.pk)
    with transaction.atomic():
        current = Task.objects.select_for_update().get(pk=task.pk)
        until = now + timedelta(seconds=clamp_lock_timeout(stage.lock_timeout))
        if current.status == Task.Status.LOCKED and current.locked_by == who:
            # Reopening your own task (another tab, a reload): still yours. If
            # the lock ran out meanwhile and nobody took it, renew it, so the
            # person filling in the form holds it again.
            if current.locked_until is not None and current.locked_until < now:
                Task.objects.filter(pk=current.pk, status=Task.Status.LOCKED, lock_token=current.lock_token).update(
                    locked_until=until, updated_at=now
                )
                event_record(
                    task_id=current.pk,
                    kind=TaskEvent.Kind.LOCK_EXTENDED,
                    at=now,
                    actor=who,
                    details={"locked_until": until.isoformat(), "reopened": True},
                )
                current.refresh_from_db()
            return current
        # Assign (issue 16): a task assigned to someone else waits for them, unless it is overdue (services.assign).
        current.stage = stage
        if refusal := open_refusal(current, user, now):
            raise TaskStateError(refusal)
        # Read under the row lock: the expired lock this open takes over, if any (as services.claim).
        taken_over = claim_facts(current) if current.status == Task.Status.LOCKED else None
        # A capped or rate-limited form stage (services.flow_limits): opening a task is a claim, under the gate.
        gate = gate_enter(stage, limit=1, now=now) if gated(stage) and current.status != Task.Status.LOCKED else None
        if gate is not None and not gate.allowed:
            limit = f"{stage.max_concurrency} open at once" if gate.cap_room == 0 else f"{stage.rate_limit} opened"
            raise TaskStateError(f"Stage '{stage.slug}' is at its limit ({limit}); try again when a task is done.")
        token = lock_token(new_lock_tokens(1), 0)
        # The expected state is in the WHERE clause: whoever updates first holds it.
        updated = claimable.update(
            status=Task.Status.LOCKED,
            lock_token=token,
            locked_by=who,
            locked_at=now,
            locked_until=until,
            attempts=F("attempts") + 1,
            updated_at=now,
            reclaimed_from=taken_over["worker"] if taken_over else "",
        )
        current.refresh_from_db()
        if updated != 1:
            expired = current.status == Task.Status.LOCKED and current.locked_until and current.locked_until < now
            if expired and current.cancel_requested:
                # An expired lock whose cancel was requested is the expiry sweep's to cancel (services.claim).
                raise TaskStateError(f"Task {task.pk}: a cancel was requested and its lock expired; it ends cancelled.")
            if expired:
                # Only an expired lock on its last attempt gets here: the
                # expiry sweep fails it; nobody is working on it any more.
                raise TaskStateError(
                    f"Task {task.pk} used all {stage.max_attempts} attempts and its last lock expired; "
                    "it will be marked failed (retry it from the task page)."
                )
            if current.status == Task.Status.LOCKED:
                raise TaskHeldError(current)
            raise TaskStateError(f"Task {task.pk} is {current.status}; it can't be opened.")
        if gate is not None:
            gate_leave(gate, claimed=1, claimable_more=False, now=now)
        if taken_over:  # the previous holder's claim ends here, as when a worker's claim takes it over
            event_record(
                task_id=task.pk,
                kind=TaskEvent.Kind.LOCK_EXPIRED,
                at=now,
                actor=who,
                details=lock_expired_details(**taken_over, now="reclaimed"),
            )
    return current


def _held_by(task_id: int, user: Any) -> Task:
    task = Task.objects.select_related("stage").get(pk=task_id)
    if task.status != Task.Status.LOCKED or task.locked_by != actor_for(user):
        if task.status == Task.Status.LOCKED:
            raise TaskHeldError(task)
        raise TaskStateError(f"Task {task_id} is {task.status}; open it again to work on it.")
    return task


def form_task_submit(*, task_id: int, user: Any, type: str, fields: dict[str, Any]) -> list[Task]:
    """Complete the user's task and send `type` with the payload updated by `fields`, in one transaction."""
    task = _held_by(task_id, user)
    payload = {**task.payload, **fields}
    return task_complete(task_id=task.pk, lock_token=task.lock_token, send=[(type, payload)])


def form_task_cancel(*, task_id: int, user: Any) -> str:
    """Hand the user's task back to the queue; the attempt is not counted. Returns the status it is now:
    pending, or cancelled when a cancel was requested while they held it (services.lifecycle.task_unclaim)."""
    task = _held_by(task_id, user)
    return task_unclaim(task_id=task.pk, lock_token=task.lock_token, reason=f"closed by {user.get_username()}")


def outgoing_types(stage: Stage, task_type: str) -> list[str]:
    """The buttons of a form: the types its transitions pass, in order.

    A transition with a blank filter passes any type: it offers the task's own.
    """
    seen: list[str] = []
    for t in stage.outgoing.order_by("id"):
        type = t.task_type or task_type
        if type not in seen:
            seen.append(type)
    return seen


def form_stage_refusal(user: Any, stage: Stage) -> str | None:
    """Why `user` may not claim, complete, release, extend or send the tasks of `stage` (None: they may).

    The group rule of /work/ (may_work_on), for every other way in (the API):
    a form stage's tasks are decided by its groups' members, whoever holds
    the change-task permission.
    """
    if stage.kind != Stage.Kind.FORM or may_work_on(user, stage):
        return None
    return (
        f"Stage '{stage.slug}' is a form stage: only members of its groups may claim, complete, release, "
        "extend or send its tasks."
    )


def form_tasks_refusal(user: Any, task_ids: list[int]) -> str | None:
    """form_stage_refusal for the stages of many tasks at once (a bulk completion); None if all are allowed."""
    stage_ids = Task.objects.filter(pk__in=task_ids, stage__kind=Stage.Kind.FORM).values("stage_id").distinct()
    for stage in Stage.objects.filter(pk__in=stage_ids).order_by("slug"):
        refusal = form_stage_refusal(user, stage)
        if refusal:
            return refusal
    return None
