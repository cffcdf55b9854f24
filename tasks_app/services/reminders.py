"""Reminders (Stage.remind_after, Stage.remind_max; issue 16): queued by the upkeep while a form task waits.

Task.reminders counts the reminders queued for a task so far. Reminder k + 1
(k = Task.reminders) is due when the task is still PENDING (and due: not
scheduled for later) and arrived (created_at) more than (k + 1) * remind_after
seconds ago, and k < remind_max. The worker's upkeep (`tasks_remind`, under
the expiry sweep's advisory lock, LockKey.SWEEP, one worker at a time; the
candidates locked FOR UPDATE SKIP LOCKED) queues it:

- Task.reminders goes from k to k + 1 in a conditional UPDATE (status pending
  and reminders = k in its WHERE), so a reminder is queued once whatever runs
  at the same time;
- outbox rows (Notification, kind "reminder") to the same people as the
  arrival: services.notifications.task_recipients, the one resolution both use
  (the stage's notify: its groups' members, the payload's addresses, its
  webhook); a stage without notify reminds nobody and is not swept;
- a `reminded` event, all three in one transaction.

Several reminders missed at once (a worker down for a day) are not queued in
a burst: one pass queues at most one per task, the next pass the next.

Reminders stop when the task is taken: a task that is no longer pending
(opened by a person, completed, cancelled) gets none queued, and the drain
(services.notifications) drops the queued reminder rows of a task that is no
longer pending when their turn comes (deleted, with a log line), so nobody is
reminded of a task someone already has. Delivery is the arrival's: the drain,
digests and retries; reminders are grouped apart from arrivals
(Notification.kind), and the mail says it is a reminder.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import QuerySet, prefetch_related_objects
from django.utils import timezone

from tasks_app.models import Notification, Stage, Task, TaskEvent
from tasks_app.services.events import event_record
from tasks_app.services.notifications import stage_members, task_recipients
from tasks_app.services.waiting import claim_order_locked, sweep_stages

REMIND_ACTOR = "reminders"  # the actor of the `reminded` events
BATCH_SIZE = 500  # tasks reminded per stage per pass (one transaction)


def reminder_candidates(stage: Stage, *, queued: int, now: datetime, limit: int) -> QuerySet[Task]:
    """Pending tasks of `stage` with `queued` reminders so far whose next one is due, locked for the pass.

    In the claim's order (priority DESC, id), which task_claim_idx serves: the scan of the stage's live
    tasks stops at `limit` with no sort, the most urgent first.
    """
    assert stage.remind_after is not None
    due = Task.objects.filter(
        stage=stage,
        status=Task.Status.PENDING,
        reminders=queued,
        available_at__lte=now,
        created_at__lt=now - timedelta(seconds=(queued + 1) * stage.remind_after),
    )
    fields = ("id", "stage_id", "payload", "created_at", "status", "reminders", "assignee", "priority")
    return claim_order_locked(due, fields, limit=limit)


@dataclass
class RemindPass:
    """What one pass did."""

    reminded: int = 0  # tasks a reminder was queued for
    rows: int = 0  # outbox rows written
    backlog: bool = False  # some stage had a full batch: remind again soon


def tasks_remind(*, now: datetime | None = None, batch_size: int = BATCH_SIZE) -> RemindPass | None:
    """Queue the due reminders, a batch per notifying form stage with a remind_after; None if another sweeps."""
    now = now or timezone.now()
    result = RemindPass()

    def batch(stage: Stage) -> int:
        room = batch_size
        members: list[str] | None = None
        # The most reminded first: a task queued for here (k -> k + 1) is not met again at k + 1 in this pass.
        for queued in reversed(range(stage.remind_max)):
            tasks = list(reminder_candidates(stage, queued=queued, now=now, limit=room))
            if tasks and members is None:
                members = stage_members(stage)  # read once per stage and pass
            # task_recipients reads task.assignee: one query for the batch, not one per assigned task.
            prefetch_related_objects(tasks, "assignee")
            for task in tasks:
                result.rows += _remind(stage, task, queued, members or [], now)
            result.reminded += len(tasks)
            room -= len(tasks)
            if room <= 0:
                break
        return batch_size - room

    stages = Stage.objects.filter(remind_after__isnull=False, kind=Stage.Kind.FORM, is_paused=False).order_by("id")
    # A stage without notify has nobody to remind: not swept.
    backlog = sweep_stages([s for s in stages if s.notify], batch, batch_size=batch_size)
    if backlog is None:
        return None
    result.backlog = backlog
    return result


def _remind(stage: Stage, task: Task, queued: int, members: list[str], now: datetime) -> int:
    """Queue reminder queued + 1 for `task` (row locked by the caller): the count, the outbox rows, the event."""
    updated = Task.objects.filter(pk=task.pk, status=Task.Status.PENDING, reminders=queued).update(reminders=queued + 1)
    if updated != 1:  # can't happen under the row lock; if it did, this task is simply not reminded now
        return 0
    recipients = task_recipients(stage, task, members)
    Notification.objects.bulk_create(
        [
            Notification(
                task_id=task.pk,
                stage_id=stage.pk,
                channel=channel,
                kind=Notification.Kind.REMINDER,
                recipient=to,
                due_at=now,
                created_at=now,
            )
            for channel, to in recipients
        ]
    )
    event_record(
        task_id=task.pk,
        kind=TaskEvent.Kind.REMINDED,
        at=now,
        actor=REMIND_ACTOR,
        details={"reminder": queued + 1, "remind_max": stage.remind_max, "recipients": len(recipients)},
    )
    return len(recipients)
