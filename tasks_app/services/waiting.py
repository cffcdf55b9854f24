"""The waiting-time limit (Stage.max_wait, Stage.on_timeout): overdue tasks, and the sweep that acts on them.

The rule, in one place (`overdue_q` for queries, `overdue_by` for one task;
tests/test_max_wait.py holds the two to the same tasks on both databases):
a task is overdue when it is pending, due (available_at has passed), and its
wait began more than max_wait seconds ago. The wait begins when the task
first became due (`wait_start`): for a task never tried (attempts 0) the later
of its arrival (created_at) and its run-at time (available_at); for a retry,
its arrival.

- A run-at time in the future is a decision, not a wait: a task scheduled two
  hours ahead at a stage with a max_wait of one hour is overdue an hour after
  it became due, not at once.
- Otherwise the clock never restarts: the backoff of a retry, a release, a
  worker handing a task back or a person closing a form without deciding all
  count toward the limit (a person can't reset it by opening and closing the
  task: a hand-back that doesn't count the attempt, services.lifecycle's
  task_unclaim, leaves available_at as it was, so a never-tried task's wait
  still begins when it first became due).
- A task that is not due yet (scheduled for later, or waiting out a retry's
  backoff) is not overdue until it is due.
- Locked tasks (a worker or a person on them) are never overdue.

The worker's upkeep runs `tasks_wait_sweep` under the expiry sweep's advisory
lock (one worker at a time), one bounded batch per stage and call. Each
overdue task is acted on once: it gets a `wait_exceeded` event; if its stage
names an on_timeout type, in the same transaction it is completed (with the
reason) and that type is sent on through the stage's transitions
(services.routing, as any completion's sends), so escalation is an ordinary
transition. A task that already has its `wait_exceeded` event is never looked
at again, so the sweep does not rescan those that stay overdue (no
on_timeout, or a send that was refused: its event says why). Paused stages
are not swept (a pause stops a stage's flow, and escalation is flow); their
tasks still show as overdue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import BooleanField, Case, DateTimeField, F, Q, QuerySet, When
from django.db.models.expressions import RawSQL
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services.errors import NoRouteError, TaskStateError
from tasks_app.services.events import event_record
from tasks_app.services.locks import LockKey, advisory_xact_lock
from tasks_app.services.routing import tasks_send_many

logger = logging.getLogger("tasks_app")

# The actor of the sweep's events, as "expiry sweep" for expired locks.
WAIT_ACTOR = "wait limit"
# Tasks acted on per stage per sweep: one transaction each, a few queries per task when it sends.
BATCH_SIZE = 200


# When a task's wait began (the module's docstring), as SQL over a row alias ({t}) and as an expression; the
# overview's oldest pending task (selectors.overview.live_counts) is the earliest wait_start of a due one.
WAIT_START_SQL = (
    "CASE WHEN {t}.attempts = 0 AND {t}.available_at > {t}.created_at THEN {t}.available_at ELSE {t}.created_at END"
)


def wait_start() -> Case:
    """When a task's wait began: the later of arrival and run-at time for a task never tried, else arrival."""
    never_tried_later = Q(attempts=0, available_at__gt=F("created_at"))
    return Case(When(never_tried_later, then=F("available_at")), default=F("created_at"), output_field=DateTimeField())


def task_wait_start(task: Task) -> datetime:
    """wait_start() for one task."""
    return max(task.created_at, task.available_at) if task.attempts == 0 else task.created_at


def scheduled_q(now: datetime) -> Q:
    """Held back for a run-at time at `now`: pending, never tried, available_at ahead (the list's ?scheduled=
    filter; a retry waiting out its backoff is "retrying", not scheduled)."""
    return Q(status=Task.Status.PENDING, attempts=0, available_at__gt=now)


def overdue_q(*, max_wait: int, now: datetime) -> Q:
    """Tasks of a stage with this max_wait that are overdue at `now` (add the stage filter).

    wait_start() < cut, spelled on plain columns (the sweep's scan of task_claim_idx filters each entry with no
    expression): arrival before the cut, and for a task never tried its run-at time too.
    """
    cut = now - timedelta(seconds=max_wait)
    began = Q(attempts__gt=0) | Q(available_at__lt=cut)
    return Q(status=Task.Status.PENDING, created_at__lt=cut, available_at__lte=now) & began


def overdue_by(task: Task, now: datetime) -> tuple[timedelta, int] | None:
    """(how long it has waited, its stage's max_wait in seconds) if `task` is overdue at `now`, else None."""
    limit = task.stage.max_wait
    if limit is None or task.status != Task.Status.PENDING or task.available_at > now:
        return None
    waited = now - task_wait_start(task)
    return (waited, limit) if waited > timedelta(seconds=limit) else None


# The stage fields that name a type the sweeps send an overdue task on as (services.due: on_overdue).
SEND_ON_FIELDS = ("on_timeout", "on_overdue")


def unrouted_send_ons(values: dict[str, Any], task_types: Iterable[str]) -> list[tuple[str, str]]:
    """(field, type) for each on_timeout/on_overdue in `values` naming a type that none of the stage's
    transitions (their task_type: `task_types`, blank passes every type) passes: no overdue task could go on.
    The one rule of the workflow file (services.workflow), the API and the admin."""
    types = set(task_types)
    named = [(name, values.get(name)) for name in SEND_ON_FIELDS]
    return [(name, wanted) for name, wanted in named if isinstance(wanted, str) and wanted and not types & {"", wanted}]


def send_on_route_problems(slug: str, values: dict[str, str], task_types: Iterable[str]) -> dict[str, str]:
    """{field: message} of unrouted_send_ons, for the API and the admin, which read the stage's transitions as
    they will be saved."""
    return {
        name: f"{name} '{wanted}' has no route: no transition out of '{slug}' passes that type. "
        f"Add a transition out of '{slug}' with task type '{wanted}' (or blank) first."
        for name, wanted in unrouted_send_ons(values, task_types)
    }


def stage_overdue(stage: Stage, *, now: datetime | None = None) -> QuerySet[Task]:
    """The stage's overdue tasks (none without a max_wait): through task_claim_idx, the stage's live tasks."""
    if stage.max_wait is None:
        return Task.objects.none()
    return Task.objects.filter(stage=stage).filter(overdue_q(max_wait=stage.max_wait, now=now or timezone.now()))


def not_flagged(kind: str = TaskEvent.Kind.WAIT_EXCEEDED) -> RawSQL:
    """No `kind` event yet (`wait_exceeded` here; services.due: `overdue`): probed per candidate through
    taskevent_task_idx (task_id, id).

    OFFSET 0 keeps it a correlated subplan: as a plain NOT EXISTS PostgreSQL turns
    it into an anti-join, and with no wait_exceeded event in its statistics it
    chose to read the whole history once per sweep (tests/test_max_wait.py,
    the plan test). The probes cost a few index reads per candidate instead.
    """
    task, event = Task._meta.db_table, TaskEvent._meta.db_table
    sql = f"NOT EXISTS (SELECT 1 FROM {event} e WHERE e.task_id = {task}.id AND e.kind = %s LIMIT 1 OFFSET 0)"
    return RawSQL(sql, [str(kind)], output_field=BooleanField())


def wait_candidates(stage: Stage, *, now: datetime, limit: int) -> QuerySet[Task]:
    """Up to `limit` overdue tasks of `stage` not yet acted on, locked for the sweep (rows others hold skipped).

    In the claim's order (priority DESC, id: the most urgent first, then the
    oldest), which is task_claim_idx's: the scan of the stage's live tasks stops
    at `limit`, with no sort, and no other index (all live tasks, all of the
    stage's tasks) serves that order; the EXPLAIN test holds it to that index.
    """
    assert stage.max_wait is not None
    fields = ("id", "stage_id", "type", "payload", "priority", "created_at", "available_at", "attempts", "status")
    return claim_order_locked(stage_overdue(stage, now=now).filter(not_flagged()), fields, limit=limit)


def claim_order_locked(tasks: QuerySet[Task], fields: tuple[str, ...], *, limit: int) -> QuerySet[Task]:
    """Up to `limit` of `tasks` in the claim's order (priority DESC, id), locked for a sweep, rows others hold
    skipped (FOR UPDATE SKIP LOCKED), with only `fields` read (services.due's sweep too)."""
    return tasks.order_by("-priority", "id").select_for_update(skip_locked=True, of=("self",)).only(*fields)[:limit]


@dataclass
class WaitSweep:
    """What one sweep did."""

    flagged: int = 0  # wait_exceeded events written
    timed_out: int = 0  # completed and sent on as on_timeout
    backlog: bool = False  # some stage had a full batch: sweep again soon


def tasks_wait_sweep(*, now: datetime | None = None, batch_size: int = BATCH_SIZE) -> WaitSweep | None:
    """Act on overdue tasks, a batch per stage with a max_wait; None if another worker is sweeping.

    Each stage's batch is one transaction under the sweep's advisory lock.
    """
    now = now or timezone.now()
    result = WaitSweep()

    def batch(stage: Stage) -> int:
        tasks = list(wait_candidates(stage, now=now, limit=batch_size))
        for task in tasks:
            result.timed_out += _act(stage, task, now)
        result.flagged += len(tasks)
        return len(tasks)

    stages = Stage.objects.filter(max_wait__isnull=False, is_paused=False).order_by("id")
    backlog = sweep_stages(stages, batch, batch_size=batch_size)
    if backlog is None:
        return None
    result.backlog = backlog
    return result


def sweep_stages(stages: Iterable[Stage], batch: Callable[[Stage], int], *, batch_size: int) -> bool | None:
    """Run `batch(stage)` (how many tasks it took) for each stage, each in its own transaction under the sweep's
    advisory lock (one worker at a time; services.due and services.reminders sweep so too).

    True if some batch was full (sweep again soon), False if not; None as soon as another worker holds the
    lock (the batches this call committed stay done).
    """
    backlog = False
    for stage in stages:
        with transaction.atomic():
            if not advisory_xact_lock(LockKey.SWEEP):
                return None
            backlog = batch(stage) >= batch_size or backlog
    return backlog


def _act(stage: Stage, task: Task, now: datetime) -> int:
    """One overdue task (locked by the caller): its event, and with on_timeout its completion and send; 1 if sent."""
    assert stage.max_wait is not None
    waited = round((now - task_wait_start(task)).total_seconds(), 3)
    details: dict[str, Any] = {"waited": waited, "max_wait": stage.max_wait, "on_timeout": stage.on_timeout or None}
    sent: list[int] | None = None
    if stage.on_timeout:
        sent, error = send_on(stage, task, now, task_type=stage.on_timeout, actor=WAIT_ACTOR)
        if error:
            details["error"] = error
    event_record(task_id=task.pk, kind=TaskEvent.Kind.WAIT_EXCEEDED, at=now, actor=WAIT_ACTOR, details=details)
    if sent is None:
        return 0
    reason = f"waited {waited:g} s at '{stage.slug}', over its max_wait of {stage.max_wait} s"
    complete_sent_on(
        task, now, actor=WAIT_ACTOR, details={"reason": reason, "on_timeout": stage.on_timeout, "sent": sent}
    )
    return 1


def complete_sent_on(task: Task, now: datetime, *, actor: str, details: dict[str, Any]) -> None:
    """Complete `task` (row locked by the caller, pending) after send_on sent it on; its `completed` event.

    The row is locked (the sweep's SELECT ... FOR UPDATE) and was pending: the WHERE restates it anyway, so a
    task that somehow left pending is never completed twice (the caller's transaction rolls back instead).
    """
    updated = Task.objects.filter(pk=task.pk, status=Task.Status.PENDING).update(
        status=Task.Status.COMPLETED, completed_at=now, updated_at=now
    )
    if updated != 1:  # can't happen under the row lock; if it did, the batch's transaction rolls back
        raise TaskStateError(f"Task {task.pk} is no longer pending; it was not sent on by the {actor}.")
    event_record(task_id=task.pk, kind=TaskEvent.Kind.COMPLETED, at=now, actor=actor, details=details)


def send_on(stage: Stage, task: Task, now: datetime, *, task_type: str, actor: str) -> tuple[list[int] | None, str]:
    """Send `task`'s payload on as `task_type` (on_timeout, on_overdue); (ids sent, '') or (None, why refused)."""
    try:
        with transaction.atomic():  # a savepoint: a refused send leaves the batch's other tasks alone
            created = tasks_send_many(stage=stage, sends=[(task_type, task.payload)], parent=task, actor=actor, now=now)
    except (NoRouteError, ValidationError) as exc:
        why = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        logger.warning(
            "task %s: overdue at %s, but sending it on as %r was refused: %s",
            task.pk,
            stage.slug,
            task_type,
            why,
            extra={"task_id": task.pk, "stage": stage.slug},
        )
        return None, why
    return [t.pk for t in created], ""
