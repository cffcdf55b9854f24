"""Retention: deleting old finished tasks, their history and old job runs, in bounded batches.

What goes, and what never does:

- Only finished tasks (completed, failed, cancelled) are deleted. Pending
  and locked tasks are work still to be done, however old, and `tasks_prune`
  refuses to be asked.
- A completed task's age is its `completed_at` (served by the partial index
  task_completed_at_idx); a failed task's is its `updated_at`, the time it
  failed. Failed tasks change only by hand (a payload edit or a retry), so an
  operator touching one restarts its clock, which is what we want. A
  cancelled task's age is its `updated_at` too, the time it was cancelled
  (served by the partial index task_cancelled_idx, as failed ones by theirs).
- A finished JobRun goes when it finished before the cutoff, except each job
  stage's latest run: the scheduler counts due times from it, and without it a
  job would run again for a due time it already ran.

Each batch is one short transaction, three statements:

1. DELETE the tasks, restating in the WHERE the state they were selected in
   (status and age). A task retried to pending between the selection and the
   delete no longer matches and stays. On PostgreSQL the DELETE waits for a row
   another transaction is changing and re-checks it; on SQLite the whole batch
   holds the write lock (BEGIN IMMEDIATE).
2. DELETE the history of the tasks actually deleted (RETURNING ids). TaskEvent
   has no database-level foreign key, so nothing else would; and running it
   after the task DELETE means an event committed by a change that the task
   DELETE waited for is seen and deleted too.
3. Clear `parent` in the remaining children of the deleted tasks. Task.parent
   is a real (deferred) foreign key in the database, and Django's SET_NULL
   only happens for ORM deletes, so the batch could not commit without it. We
   clear the link rather than keep a parent while any of its children lives: a
   long-failed child would otherwise pin its ancestors forever, and the child's
   "created" event still names its parent (details.parent).

Batches go newest first, from the cutoff backwards (failed tasks, then
completed ones; see _select_batch), so children are deleted before their
parents and step 3 rewrites only children that stay. Keyset pagination makes
every run, and a dry run, a single pass: a dry run walks exactly the batches
a real run would delete.

On PostgreSQL every batch takes a transaction-scoped advisory lock first, so
two prunes never delete at the same time: the command waits for a worker's
batch, and a worker whose periodic prune finds the lock taken skips its turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from tasks_app.models import FINISHED, JobRun, Task, TaskEvent
from tasks_app.services.locks import LockKey, advisory_xact_lock

logger = logging.getLogger("tasks_app.retention")

TASK = connection.ops.quote_name(Task._meta.db_table)
TASK_EVENT = connection.ops.quote_name(TaskEvent._meta.db_table)
PRUNABLE = FINISHED
# The column that says how long ago a task finished, per status.
# str keys: statuses arrive as plain strings (TextChoices members are equal to them).
AGE_COLUMN: dict[str, str] = {
    Task.Status.COMPLETED: "completed_at",
    Task.Status.FAILED: "updated_at",
    Task.Status.CANCELLED: "updated_at",
}
# Periodic pruning runs in a worker's coordinator thread, which also extends the
# locks of the tasks it holds: it prunes in small batches for at most
# PERIODIC_BUDGET seconds, and comes back after PERIODIC_PAUSE while a backlog lasts.
PERIODIC_BATCH = 1000
PERIODIC_BUDGET = 0.5
PERIODIC_PAUSE = 1.0
JOB_RUN_BATCH = 1000


@dataclass
class PruneResult:
    """What a prune deleted (or, in a dry run, would delete)."""

    tasks: int = 0
    events: int = 0
    batches: int = 0
    unlinked: int = 0  # surviving tasks whose parent was deleted (their parent link cleared)
    job_runs: int = 0
    finished: bool = True  # False when it stopped early, with more possibly left
    busy: bool = False  # stopped (or never started) because another worker is pruning
    dry_run: bool = False

    @property
    def backlog(self) -> bool:
        """Stopped for its time budget with more left (not for another worker, which carries on itself)."""
        return not self.finished and not self.busy


@dataclass(frozen=True)
class PruneBatch:
    """One batch, for progress reports."""

    number: int
    status: str
    tasks: int
    events: int
    unlinked: int
    seconds: float


Progress = Callable[[PruneBatch, PruneResult], None]


# -- SQL helpers ----------------------------------------------------------------


def _ids_sql(ids: Sequence[int]) -> tuple[str, list[Any]]:
    """`<column> <this>` matching any of `ids`, without a parameter per id.

    A batch can hold more ids than SQLite allows parameters, so there the ids
    (integers read from the database, re-checked by int()) are written into the
    statement as in services.claim; PostgreSQL takes one array parameter.
    """
    if connection.vendor == "postgresql":
        return "= ANY(%s)", [list(ids)]
    return f"IN ({','.join(str(int(i)) for i in ids)})", []


def _prunable_sql(statuses: Sequence[str], cutoff: datetime) -> tuple[str, list[Any]]:
    """SQL that is true for a task this prune deletes (any of `statuses`, older than `cutoff`)."""
    at = connection.ops.adapt_datetimefield_value(cutoff)
    terms = [f"(status = %s AND {AGE_COLUMN[s]} < %s)" for s in statuses]
    return f"({' OR '.join(terms)})", [p for s in statuses for p in (s, at)]


def _select_batch(
    *, status: str, cutoff: datetime, after: tuple[Any, ...] | None, limit: int
) -> tuple[list[int], tuple[Any, ...] | None]:
    """The next `limit` prunable task ids of one status after the keyset `after`, newest first.

    Returns the ids and the keyset of the last one. Newest first (from the
    cutoff backwards) deletes children before their parents: a child is
    created when its parent completes and finishes after it, so with failed
    tasks (which never have children) taken before completed ones, a parent's
    prunable children are gone by the time it is deleted, and its link only
    needs clearing in children that stay.
    """
    params: list[Any] = [status, connection.ops.adapt_datetimefield_value(cutoff)]
    if status == Task.Status.COMPLETED:
        # Along task_completed_at_idx (backwards): each batch reads about
        # `limit` index entries however large the backlog.
        sql = f"SELECT id FROM {TASK} WHERE status = %s AND completed_at < %s"
        if after is not None:
            # The plain <= gives the index scan its bound; the OR breaks ties.
            sql += " AND completed_at <= %s AND (completed_at < %s OR id < %s)"
            params += [after[0], after[0], after[1]]
        sql += " ORDER BY completed_at DESC, id DESC LIMIT %s"
    else:
        # Failed (and cancelled) tasks are a few percent of the table and updated_at has no
        # index: by id, backwards along the partial task_failed_idx (task_cancelled_idx).
        sql = f"SELECT id FROM {TASK} WHERE status = %s AND {AGE_COLUMN[status]} < %s"
        if after is not None:
            sql += " AND id < %s"
            params.append(after[0])
        sql += " ORDER BY id DESC LIMIT %s"
    params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return [], after
        if status != Task.Status.COMPLETED:
            return ids, (ids[-1],)
        # The last row's completion time only: loading timezone-aware timestamps
        # costs more than the rest of the query (a quarter of a second per 10,000).
        cursor.execute(f"SELECT completed_at FROM {TASK} WHERE id = %s", [ids[-1]])
        completed_at = cursor.fetchone()[0]
    if isinstance(completed_at, datetime):  # SQLite may hand back its text as it is
        completed_at = connection.ops.adapt_datetimefield_value(completed_at)
    return ids, (completed_at, ids[-1])


def delete_batch(
    *, ids: Sequence[int], status: str, cutoff: datetime, statuses: Sequence[str] = PRUNABLE
) -> tuple[int, int, int]:
    """Delete the tasks among `ids` that are still `status` and older than `cutoff`, with their history.

    Returns (tasks, events, unlinked): unlinked counts the children that lost
    their parent link and stay (not `statuses` older than `cutoff`). Must run
    inside the batch's transaction.
    """
    assert connection.in_atomic_block, "a batch's three statements must commit together"
    if not ids:
        return 0, 0, 0
    match, params = _ids_sql(ids)
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {TASK} WHERE id {match} AND status = %s AND {AGE_COLUMN[status]} < %s RETURNING id",
            [*params, status, connection.ops.adapt_datetimefield_value(cutoff)],
        )
        deleted = [r[0] for r in cursor.fetchall()]
        if not deleted:
            return 0, 0, 0
        match, params = _ids_sql(deleted)
        cursor.execute(f"DELETE FROM {TASK_EVENT} WHERE task_id {match}", params)
        events = cursor.rowcount
        # updated_at stays: losing a parent is not a change of the child's state
        # (and a failed child's age is its updated_at).
        prunable, prunable_params = _prunable_sql(statuses, cutoff)
        cursor.execute(
            f"UPDATE {TASK} SET parent_id = NULL WHERE parent_id {match}"
            f" RETURNING CASE WHEN {prunable} THEN 0 ELSE 1 END",
            [*params, *prunable_params],
        )
        unlinked = sum(row[0] for row in cursor.fetchall())
    return len(deleted), events, unlinked


def _count_batch(ids: Sequence[int], *, statuses: Sequence[str], cutoff: datetime) -> tuple[int, int, int]:
    """What delete_batch would do to `ids` now, changing nothing (dry run)."""
    if not ids:
        return 0, 0, 0
    match, params = _ids_sql(ids)
    prunable, prunable_params = _prunable_sql(statuses, cutoff)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {TASK_EVENT} WHERE task_id {match}", params)
        events = cursor.fetchone()[0]
        cursor.execute(
            f"SELECT count(*) FROM {TASK} WHERE parent_id {match} AND NOT {prunable}",
            [*params, *prunable_params],
        )
        unlinked = cursor.fetchone()[0]
    return len(ids), events, unlinked


def _job_runs_prunable(cutoff: datetime) -> Any:
    latest = JobRun.objects.filter(stage=OuterRef("stage")).order_by("-due_at").values("due_at")[:1]
    return JobRun.objects.filter(
        status__in=[JobRun.Status.SUCCEEDED, JobRun.Status.FAILED],
        finished_at__lt=cutoff,
        due_at__lt=Subquery(latest),
    )


def _prune_job_runs(*, cutoff: datetime, batch_size: int, dry_run: bool) -> int:
    if dry_run:
        return _job_runs_prunable(cutoff).count()
    # Job runs are few (one per due time); batches stay within SQLite's parameter limit.
    batch_size = min(batch_size, JOB_RUN_BATCH)
    total = 0
    while True:
        with transaction.atomic():
            ids = list(_job_runs_prunable(cutoff).order_by("id").values_list("id", flat=True)[:batch_size])
            if ids:
                # Conditional like the task DELETE: a run that became its stage's
                # latest (say, newer ones were deleted by hand) stays.
                total += _job_runs_prunable(cutoff).filter(id__in=ids).delete()[0]
        if len(ids) < batch_size:
            return total


# -- the service ----------------------------------------------------------------


def _check_statuses(statuses: Iterable[str]) -> list[str]:
    """The statuses to prune, in the order they are pruned (failed first: see _select_batch)."""
    chosen = set(statuses)
    refused = sorted(chosen - set(PRUNABLE))
    if refused:
        raise ValueError(
            f"only completed, failed and cancelled tasks can be pruned, not {', '.join(refused)}: "
            "pending and locked tasks are work still to be done"
        )
    if not chosen:
        raise ValueError("no status to prune: give completed, failed, cancelled or several")
    return [s for s in (Task.Status.FAILED, Task.Status.CANCELLED, Task.Status.COMPLETED) if s in chosen]


def tasks_prune(
    *,
    older_than: timedelta,
    statuses: Iterable[str] = PRUNABLE,
    batch_size: int = 10_000,
    dry_run: bool = False,
    progress: Progress | None = None,
    max_seconds: float | None = None,
    lock: Literal["try", "wait"] | None = "wait",
    now: datetime | None = None,
) -> PruneResult:
    """Delete finished tasks older than `older_than`, with their history, batch by batch; returns the counts.

    On PostgreSQL each batch first takes the prune lock, so that two prunes
    never delete the same rows at once (which could deadlock on the parent
    foreign key's checks): with lock="wait" it queues behind the other
    prune's batch, with "try" it stops, busy, if another prune holds it.
    """
    if older_than <= timedelta(0):
        raise ValueError(f"older_than must be more than 0, got {older_than}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chosen = _check_statuses(statuses)
    now = now or timezone.now()
    cutoff = now - older_than
    result = PruneResult(dry_run=dry_run)
    started = time.monotonic()
    for status in chosen:
        after = None
        while True:
            batch_started = time.monotonic()
            with transaction.atomic():
                if lock is not None and not dry_run and not advisory_xact_lock(LockKey.PRUNE, wait=lock == "wait"):
                    result.finished, result.busy = False, True
                    return result
                ids, after = _select_batch(status=status, cutoff=cutoff, after=after, limit=batch_size)
                if dry_run:
                    tasks, events, unlinked = _count_batch(ids, statuses=chosen, cutoff=cutoff)
                else:
                    tasks, events, unlinked = delete_batch(ids=ids, status=status, cutoff=cutoff, statuses=chosen)
            if ids:
                result.batches += 1
                result.tasks += tasks
                result.events += events
                result.unlinked += unlinked
                if progress is not None:
                    batch = PruneBatch(
                        result.batches, status, tasks, events, unlinked, time.monotonic() - batch_started
                    )
                    progress(batch, result)
            if len(ids) < batch_size:
                break
            # Checked after a batch, so that even a tiny budget makes progress.
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                result.finished = False
                return result
    result.job_runs = _prune_job_runs(cutoff=cutoff, batch_size=batch_size, dry_run=dry_run)
    return result


# -- periodic pruning by workers ------------------------------------------------


def tasks_prune_periodic(*, now: datetime | None = None) -> PruneResult | None:
    """A worker's periodic prune: one bite of at most PERIODIC_BUDGET seconds, if TASKS_RETENTION_DAYS is set.

    Returns None when it did not prune: retention is off, or another worker
    held the prune lock from the start (it skips its turn). The worker calls
    it on its own cadence (TASKS_PRUNE_INTERVAL with ±10% jitter, see
    worker.loop), and sooner, after PERIODIC_PAUSE, while `backlog` says more
    is left. That needs no shared "last run" row: a prune's work is the tasks
    that aged past the cutoff since the last one, whichever worker ran it, and
    the advisory lock lets one worker at a time do it.
    """
    days = settings.TASKS_RETENTION_DAYS
    if days is None or days <= 0:
        return None
    result = tasks_prune(
        older_than=timedelta(days=days),
        batch_size=PERIODIC_BATCH,
        max_seconds=PERIODIC_BUDGET,
        lock="try",
        now=now,
    )
    if result.busy and not result.batches:
        return None  # another worker is pruning (and carries on with what is left)
    return result
