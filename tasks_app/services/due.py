"""The due time (Stage.due_after, Stage.on_overdue; issue 16): overdue form tasks, and the sweep that escalates them.

The rule, in one place (`due_q` for queries, `due_overdue_by` for one task):
a task of a form stage with a due_after is overdue when it is not finished
(pending, or locked: open in a person's hands) and it arrived at the stage
(created_at) more than due_after seconds ago.

This differs from the waiting-time limit (Stage.max_wait, services.waiting) on
purpose: max_wait bounds the wait before someone picks a task up (pending
only), due_after is a deadline for the decision, so opening the task does not
stop its clock, and a task in someone's hands is shown overdue too.

The deadline counts from arrival even for a task scheduled for later (a
run-at time), where max_wait's clock starts when the task became due: that
start is only known for a task never tried (attempts 0, services.waiting.
wait_start), and a person opening a form task is an attempt, so the same rule
here would move a deadline back to the arrival the moment someone opened the
task, and forward again when they closed it. A deadline must not move while
a person holds the task; give a scheduled form stage a due_after that covers
the delay.

The worker's upkeep runs `tasks_due_sweep` under the expiry sweep's advisory
lock (LockKey.SWEEP, one worker at a time), one bounded batch per stage and
call, the candidates locked FOR UPDATE SKIP LOCKED:

- Each newly overdue task gets one `overdue` event (pending or locked).
- With an on_overdue type, a PENDING one is, in the same transaction,
  completed (reason "overdue", a conditional UPDATE with status pending in its
  WHERE) and the on_overdue type is sent on through the stage's transitions
  (services.routing, services.waiting.send_on): escalation to a manager's
  stage is another transition. A task LOCKED by a person only gets the event
  (details "deferred": true); it is acted on at the first sweep after it is
  handed back (a `released`, `lock_expired` or `force_released` event after
  its last `overdue` event) and still pending, and that act writes an
  `overdue` event of its own. A person who decides first wins: a completed
  task is never escalated.
- A refused send (no route, a schema refusing the payload) is logged and said
  in the event's details; the task stays pending and overdue, and is not
  tried again until it is handed back by someone once more (or the stage is
  fixed and a person acts).

Paused stages are not swept (a pause stops a stage's flow, and escalation is
flow); their tasks still show as overdue.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import BooleanField, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from tasks_app.models import LIVE, Stage, Task, TaskEvent
from tasks_app.services.events import event_record
from tasks_app.services.waiting import (
    claim_order_locked,
    complete_sent_on,
    not_flagged,
    overdue_q,
    send_on,
    sweep_stages,
)

# The actor of the sweep's events, as "wait limit" for the waiting-time limit.
DUE_ACTOR = "due time"
# Tasks acted on per stage per sweep: one transaction each, a few queries per task when it sends.
BATCH_SIZE = 200
# The events that hand a person's task back to pending: a deferred escalation is due after one of them.
HANDED_BACK = (TaskEvent.Kind.RELEASED, TaskEvent.Kind.LOCK_EXPIRED, TaskEvent.Kind.FORCE_RELEASED)
# The overview and /metrics count at most this many overdue tasks per stage (as selectors.overview.LIVE_CAP).
COUNT_CAP = 50_000


def due_q(*, due_after: int, now: datetime) -> Q:
    """Tasks of a stage with this due_after that are overdue at `now` (add the stage filter)."""
    return Q(status__in=LIVE, created_at__lt=now - timedelta(seconds=due_after))


def due_overdue_by(task: Task, now: datetime) -> timedelta | None:
    """How long past its due time `task` is at `now`, if it is overdue (its stage's due_after); else None."""
    due = task.due_at()
    if due is None or task.status not in LIVE:
        return None
    late = now - due
    return late if late > timedelta(0) else None


def stage_due_overdue(stage: Stage, *, now: datetime | None = None) -> QuerySet[Task]:
    """The stage's tasks past their due time (none without a due_after), through the stage's live tasks."""
    if stage.due_after is None:
        return Task.objects.none()
    return Task.objects.filter(stage=stage).filter(due_q(due_after=stage.due_after, now=now or timezone.now()))


def overdue_counts(stages: Iterable[Stage], *, now: datetime | None = None) -> dict[int, int]:
    """Per stage with a due_after or a max_wait: its live tasks overdue by either rule, counted up to COUNT_CAP.

    What My work, the overview and /metrics call overdue: past due_after (this module) or past max_wait
    (services.waiting), a task overdue by both counted once. Stages with neither are left out.
    """
    now = now or timezone.now()
    out: dict[int, int] = {}
    for stage in stages:
        rules = [due_q(due_after=stage.due_after, now=now)] if stage.due_after is not None else []
        rules += [overdue_q(max_wait=stage.max_wait, now=now)] if stage.max_wait is not None else []
        if not rules:
            continue
        either = rules[0] if len(rules) == 1 else rules[0] | rules[1]
        # Through the claim index (the stage's live tasks, status and created_at included: an index-only scan),
        # unordered; capped like the live counts.
        out[stage.pk] = Task.objects.filter(stage=stage).filter(either).order_by().values("id")[:COUNT_CAP].count()
    return out


def _handed_back_since_flagged() -> RawSQL:
    """Pending, and handed back (released, lock expired, force-released) after its last `overdue` event.

    A task flagged while a person held it (its escalation deferred), or whose escalation was refused and
    that someone opened and handed back since. Probed per candidate through taskevent_task_idx (task_id, id).
    """
    task, event = Task._meta.db_table, TaskEvent._meta.db_table
    kinds = ", ".join(["%s"] * len(HANDED_BACK))
    sql = (
        f"({task}.status = %s AND EXISTS (SELECT 1 FROM {event} r WHERE r.task_id = {task}.id AND r.kind IN ({kinds})"
        f" AND r.id > (SELECT max(o.id) FROM {event} o WHERE o.task_id = {task}.id AND o.kind = %s) LIMIT 1 OFFSET 0))"
    )
    params = [str(Task.Status.PENDING), *(str(k) for k in HANDED_BACK), str(TaskEvent.Kind.OVERDUE)]
    return RawSQL(sql, params, output_field=BooleanField())


def due_candidates(stage: Stage, *, now: datetime, limit: int) -> QuerySet[Task]:
    """Up to `limit` overdue tasks of `stage` to act on, locked for the sweep (rows others hold skipped).

    Not yet flagged; with an on_overdue, also the pending ones handed back since they were flagged. In the
    claim's order (priority DESC, id: task_claim_idx), the most urgent first.
    """
    assert stage.due_after is not None
    todo = Q(not_flagged(TaskEvent.Kind.OVERDUE))
    if stage.on_overdue:
        todo |= Q(_handed_back_since_flagged())
    fields = ("id", "stage_id", "type", "payload", "priority", "created_at", "status", "locked_by")
    return claim_order_locked(stage_due_overdue(stage, now=now).filter(todo), fields, limit=limit)


@dataclass
class DueSweep:
    """What one sweep did."""

    flagged: int = 0  # overdue events written
    escalated: int = 0  # completed (reason "overdue") and sent on as on_overdue
    deferred: int = 0  # flagged while a person held them: acted on once handed back
    backlog: bool = False  # some stage had a full batch: sweep again soon


def tasks_due_sweep(*, now: datetime | None = None, batch_size: int = BATCH_SIZE) -> DueSweep | None:
    """Flag overdue tasks and escalate the pending ones, a batch per form stage with a due_after.

    None if another worker is sweeping. Each stage's batch is one transaction under the sweep's advisory lock.
    """
    now = now or timezone.now()
    result = DueSweep()

    def batch(stage: Stage) -> int:
        tasks = list(due_candidates(stage, now=now, limit=batch_size))
        for task in tasks:
            _act(stage, task, now, result)
        return len(tasks)

    stages = Stage.objects.filter(due_after__isnull=False, kind=Stage.Kind.FORM, is_paused=False).order_by("id")
    backlog = sweep_stages(stages, batch, batch_size=batch_size)
    if backlog is None:
        return None
    result.backlog = backlog
    return result


def _act(stage: Stage, task: Task, now: datetime, result: DueSweep) -> None:
    """One overdue task (row locked by the caller): its event, and with on_overdue, if pending, its escalation."""
    assert stage.due_after is not None
    late = round((now - task.created_at).total_seconds() - stage.due_after, 3)
    details: dict[str, Any] = {"late": late, "due_after": stage.due_after, "on_overdue": stage.on_overdue or None}
    sent: list[int] | None = None
    if stage.on_overdue and task.status == Task.Status.PENDING:
        sent, error = send_on(stage, task, now, task_type=stage.on_overdue, actor=DUE_ACTOR)
        if error:
            details["error"] = error
    elif stage.on_overdue:  # open in someone's hands: they may still decide; escalated once handed back
        details |= {"deferred": True, "held_by": task.locked_by}
        result.deferred += 1
    event_record(task_id=task.pk, kind=TaskEvent.Kind.OVERDUE, at=now, actor=DUE_ACTOR, details=details)
    result.flagged += 1
    if sent is None:
        return
    complete_sent_on(
        task,
        now,
        actor=DUE_ACTOR,
        details={"reason": "overdue", "due_after": stage.due_after, "on_overdue": stage.on_overdue, "sent": sent},
    )
    result.escalated += 1
