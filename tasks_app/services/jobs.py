"""Job stages: run a stage's handler at the due times of its cron schedule.

A scheduler (run_scheduler, or the thread inside run_worker) asks every job
stage for its latest due time. Before anything runs it inserts the JobRun row
for (stage, due_at); the unique constraint on that pair lets exactly one
scheduler's INSERT commit, on PostgreSQL and on SQLite alike, so each due
time runs once however many schedulers are up. "Due" means later than the
stage's latest run (or its creation), so after downtime the job runs once,
for the latest due time, with `missed` counting the earlier ticks folded in.

A run claims the tasks waiting at the job stage (only job runs take them:
workers serve script stages only) and gives them to the handler as one batch.
Then, in one transaction, it completes them, sends what the handler sent and
marks the run succeeded. If the handler fails, the tasks go back to pending.

A script file's run (services.scripts, an Abstra job) completes only the tasks
the script completed (task.complete(), `with task:`); the others go back to
pending at once, their attempt not counted, in the same transaction. Its print
output goes into the completed events (or the failed run's error).

A cancel requested while the run holds a task (services.cancel) ends that task
cancelled; if it was requested for every task the run holds, the run's sends
(made for those tasks) are dropped too, and their cancelled events list them.
"""

from __future__ import annotations

import logging
import traceback
import zoneinfo
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from croniter import croniter
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from tasks_app.limits import clamp_lock_timeout
from tasks_app.models import JobRun, Stage, Task
from tasks_app.services.claim import MAX_CLAIM_BATCH, task_claim
from tasks_app.services.complete import Completion, tasks_complete_batch
from tasks_app.services.errors import TaskLockLost, TaskStateError
from tasks_app.services.handlers import JobContext, JobTask, call_handler, resolve_handler
from tasks_app.services.lifecycle import task_release, task_unclaim
from tasks_app.services.routing import tasks_send_many

logger = logging.getLogger("tasks_app.jobs")

# Missed ticks are counted up to this many: a week of "* * * * *" is 10,080
# iterations of croniter, for a number nobody needs exactly.
MAX_MISSED = 1000
# Default of TASKS_JOB_MAX_TASKS: tasks one run claims at most; the rest wait for the next run.
DEFAULT_MAX_TASKS = 10_000

# A job handler is called with a JobContext (services.handlers, the contract for user code).
JobHandler = Callable[[JobContext], Any]


# -- when a job is due ----------------------------------------------------------------------------


def _ticks_before(schedule: str, moment: datetime) -> croniter:
    """A croniter whose get_prev() walks back through the due times before `moment`, newest first.

    The schedule is read in TIME_ZONE ("0 3 * * *" is 03:00 local time, DST included).
    """
    return croniter(schedule, timezone.localtime(moment, zoneinfo.ZoneInfo(settings.TIME_ZONE)))


def _ticks_between(schedule: str, after: datetime, before: datetime) -> int:
    """How many due times fall strictly between `after` and `before` (at most MAX_MISSED)."""
    if not schedule:
        return 0
    ticks = _ticks_before(schedule, before)  # get_prev() is strictly before its start
    count = 0
    while count < MAX_MISSED and ticks.get_prev(datetime) > after:
        count += 1
    return count


def _baseline(stage: Stage) -> datetime:
    """The moment the job is covered up to: its latest run's due time, or its creation."""
    latest = JobRun.objects.filter(stage=stage).order_by("-due_at").values_list("due_at", flat=True).first()
    return max(latest, stage.created_at) if latest else stage.created_at


def due_time(stage: Stage, now: datetime | None = None) -> tuple[datetime, int] | None:
    """The job's latest due time <= now and how many earlier ones it folds in; None if not due.

    Due means later than the latest run (whatever its status: a failed run is
    not retried before the next due time) or, before the first run, than the
    stage's creation, so a new nightly job does not fire at once for last night.
    """
    now = now or timezone.now()
    # get_prev() excludes its start and looks at whole seconds: start one second
    # past `now` so that a tick at exactly `now` counts as due.
    ticks = _ticks_before(stage.schedule, now.replace(microsecond=0) + timedelta(seconds=1))
    due_at = ticks.get_prev(datetime)
    baseline = _baseline(stage)
    if due_at <= baseline:
        return None
    return due_at, _ticks_between(stage.schedule, baseline, due_at)


# -- starting and running one run -----------------------------------------------------------------


def job_run_start(*, stage: Stage, due_at: datetime, worker_id: str) -> JobRun | None:
    """Insert the run row for (stage, due_at); None if that due time (or a later one) already has a run.

    `missed` is counted here, under the lock, from the latest run the lock lets us see.
    """
    try:
        with transaction.atomic():  # a savepoint inside a caller's transaction: the IntegrityError stays here
            # Starts of one stage take turns (FOR NO KEY UPDATE on PostgreSQL, which
            # doesn't block inserting tasks at the stage; SQLite's BEGIN IMMEDIATE
            # serialises them anyway). Without it, a scheduler whose clock read fell
            # just before a tick could still start the earlier due time after another
            # scheduler started the later one, running a catch-up twice.
            Stage.objects.select_for_update(no_key=True).filter(pk=stage.pk).values_list("pk", flat=True).first()
            if JobRun.objects.filter(stage=stage, due_at__gte=due_at).exists():
                return None
            missed = _ticks_between(stage.schedule, _baseline(stage), due_at)
            return JobRun.objects.create(stage=stage, due_at=due_at, missed=missed, worker_id=worker_id)
    except IntegrityError:
        # The unique (stage, due_at) row is the guarantee: another scheduler inserted it first.
        return None


def _claim_waiting(stage: Stage, worker_id: str) -> list[Task]:
    """Claim the tasks waiting at the job stage, oldest first, up to TASKS_JOB_MAX_TASKS."""
    cap = int(getattr(settings, "TASKS_JOB_MAX_TASKS", DEFAULT_MAX_TASKS))
    claimed: list[Task] = []
    while len(claimed) < cap:
        limit = min(MAX_CLAIM_BATCH, cap - len(claimed))
        batch = task_claim(stage=stage, worker_id=worker_id, limit=limit)
        claimed += batch
        if len(batch) < limit:
            return claimed
    logger.warning("job %s: claimed the maximum of %d tasks; the rest wait for the next run", stage.slug, cap)
    return claimed


def _context(run: JobRun, claimed: list[Task]) -> JobContext:
    stage = run.stage
    return JobContext(
        stage=stage.slug,
        due_at=run.due_at,
        missed=run.missed,
        run_id=run.pk,
        tasks=[JobTask(t.pk, t.type, t.payload, t.created_at, t.attempts, t.parent_id) for t in claimed],
        _stage=stage,
        _routes=list(stage.outgoing.order_by("id")),
    )


# Why a run's sends were dropped (in its tasks' cancelled events).
RUN_CANCELLED = "a cancel was requested for every task the run held, so the run's sends were dropped"


def _cancel_flags(claimed: list[Task]) -> dict[int, bool]:
    """Whether a cancel was requested, for each claimed task the run still holds (its lock, its token).

    Read under the row locks, which the completion then keeps: a request can't land between.
    """
    if not claimed:
        return {}
    tokens = {t.pk: t.lock_token for t in claimed}
    rows = (
        Task.objects.select_for_update(of=("self",))
        .filter(pk__in=list(tokens), status=Task.Status.LOCKED)
        .values_list("id", "lock_token", "cancel_requested")
    )
    return {task_id: bool(requested) for task_id, token, requested in rows if tokens[task_id] == token}


def _succeed(run: JobRun, claimed: list[Task], context: JobContext) -> None:
    """Complete the claimed tasks, send the job's tasks and mark the run succeeded: all, or nothing.

    A script's run (context.completed set) completes the tasks it completed and hands the others back.
    A run whose tasks (those it still holds) all had a cancel requested sends nothing: they end cancelled.
    """
    stage = run.stage
    sends = context.sent
    details: dict[str, Any] | None = {"output": context.output} if context.output else None
    with transaction.atomic():
        flags = _cancel_flags(claimed)
        if flags and all(flags.values()):
            # A cancel was requested for every task the run still holds: they all end cancelled, and the
            # run's sends, made for them, are dropped with theirs (services.cancel). Their events say so.
            if sends:
                logger.info(
                    "job %s: every task of run %s was cancelled; its %d send(s) dropped", stage.slug, run.pk, len(sends)
                )
                details = {**(details or {}), "dropped": [send[0] for send in sends], "reason": RUN_CANCELLED}
            sends = []
        if context.completed is not None:
            kept = [t for t in claimed if t.pk not in context.completed]
            claimed = [t for t in claimed if t.pk in context.completed]
            for task in kept:
                try:
                    task_unclaim(
                        task_id=task.pk, lock_token=task.lock_token, reason="the job's script did not complete it"
                    )
                except TaskLockLost:
                    pass  # its lock expired and the sweep already put it back
        completed = 0
        for start in range(0, len(claimed), MAX_CLAIM_BATCH):
            chunk = claimed[start : start + MAX_CLAIM_BATCH]
            result = tasks_complete_batch(items=[Completion(t.pk, t.lock_token, details=details) for t in chunk])
            completed += len(result.completed)
            for task_id in result.lost:
                # Its lock expired during a long run and the expiry sweep put it back:
                # the next run gets it again (at-least-once, as for script stages).
                logger.warning("job %s: lock of task %s lost before completion", stage.slug, task_id)
        created = tasks_send_many(stage=stage, sends=sends, actor=f"job:{stage.slug}") if sends else []
        updated = JobRun.objects.filter(pk=run.pk, status=JobRun.Status.RUNNING).update(
            status=JobRun.Status.SUCCEEDED,
            finished_at=timezone.now(),
            tasks_processed=completed,
            tasks_sent=sum(not t.deduplicated for t in created),  # dedupe: a send folded into a live task isn't
        )
        if updated != 1:  # someone else closed the run: keep the tasks for the next one
            raise TaskStateError(f"Job run {run.pk} is no longer running; nothing was recorded.")


def _fail(run: JobRun, claimed: list[Task], exc: BaseException, output: str | None = None) -> None:
    """Give the claimed tasks back and mark the run failed with the error and traceback (and a script's output)."""
    error = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(exc))
    details = {"output": output} if output else None
    logger.error("job %s @ %s failed: %s", run.stage.slug, run.due_at, error)
    with transaction.atomic():
        for task in claimed:
            # task_release, not task_unclaim: each task's history shows why the run
            # failed, and the attempt counts, so a stage's max_attempts stops a task
            # that breaks every run from blocking the job forever. retry_in=0: the
            # cron schedule already spaces the retries; a backoff would only make
            # the next run skip the task.
            try:
                task_release(
                    task_id=task.pk, lock_token=task.lock_token, error=error, traceback=tb, retry_in=0, details=details
                )
            except TaskLockLost:
                pass  # its lock expired and the sweep already put it back
        printed = f"\n\nOutput:\n{output}" if output else ""
        JobRun.objects.filter(pk=run.pk, status=JobRun.Status.RUNNING).update(
            status=JobRun.Status.FAILED, finished_at=timezone.now(), error=f"{error}\n\n{tb}{printed}"
        )


def job_run_execute(*, run: JobRun, worker_id: str) -> JobRun:
    """Run a started run's handler on the waiting tasks and record the outcome; never raises.

    1. Resolve the handler (a path that is not allowed or doesn't import fails the run before any
       task is claimed: nothing runs).
    2. Claim the waiting tasks, in batches.
    3. Call the handler with a JobContext.
    4. Succeeded: complete the tasks, send the job's sends, mark the run (one transaction).
       Failed (handler error, bad send, lost route): release the tasks, mark the run failed.
    """
    claimed: list[Task] = []
    context: JobContext | None = None
    try:
        handler = cast(JobHandler, resolve_handler(run.stage))
        claimed = _claim_waiting(run.stage, worker_id)
        context = _context(run, claimed)
        call_handler(handler, context)  # SystemExit and the like come out as HandlerAborted
        _succeed(run, claimed, context)
    except Exception as exc:  # the handler's, or a send refused at commit (route or schema changed)
        try:
            _fail(run, claimed, exc, context.output if context is not None else None)
        except Exception:
            # Database trouble: the run stays "running" and the task locks expire.
            logger.exception("job %s @ %s: could not record the failure", run.stage.slug, run.due_at)
    try:
        run.refresh_from_db()
    except Exception:
        logger.exception("job run %s: could not re-read it", run.pk)
    return run


# -- the scheduler's step --------------------------------------------------------------------------


ABANDON_GRACE = 60  # seconds past the stage's lock timeout before a silent run counts as abandoned


def job_runs_abandon(*, now: datetime | None = None) -> int:
    """Close runs whose scheduler died mid-run: running for longer than their stage's lock timeout.

    By then their tasks' locks have expired and gone back to the queue, so a
    late finish could record nothing anyway (_succeed's update is conditional).
    """
    now = now or timezone.now()
    stale = [
        run.pk
        for run in JobRun.objects.filter(status=JobRun.Status.RUNNING).select_related("stage")
        if run.started_at + timedelta(seconds=clamp_lock_timeout(run.stage.lock_timeout) + ABANDON_GRACE) < now
    ]
    if not stale:
        return 0
    return JobRun.objects.filter(pk__in=stale, status=JobRun.Status.RUNNING).update(
        status=JobRun.Status.FAILED,
        finished_at=now,
        error="Abandoned: no result within the stage's lock timeout (the scheduler stopped during the run?).",
    )


def jobs_run_due(*, worker_id: str, now: datetime | None = None) -> list[JobRun]:
    """Start and run every unpaused job stage that is due at `now`; returns the runs this call ran.

    Database errors propagate (the scheduler loop backs off); a bad schedule only skips its stage.
    """
    now = now or timezone.now()
    job_runs_abandon(now=now)
    runs = []
    stages = Stage.objects.filter(kind=Stage.Kind.JOB, is_paused=False).exclude(schedule="").order_by("id")
    for stage in stages:
        try:
            due = due_time(stage, now)
        except (ValueError, KeyError) as exc:  # croniter's errors; the model validates, raw SQL may not
            logger.error("job %s: cannot read schedule %r: %s", stage.slug, stage.schedule, exc)
            continue
        if due is None:
            continue
        run = job_run_start(stage=stage, due_at=due[0], worker_id=worker_id)
        if run is not None:  # None: another scheduler has this due time
            runs.append(job_run_execute(run=run, worker_id=worker_id))
    return runs


def job_run_now(*, stage: Stage, worker_id: str, now: datetime | None = None) -> JobRun | None:
    """Run a job stage now, whatever its schedule; None if it already has a run for this second.

    The due time is `now` in whole seconds, so the run is still unique per
    (stage, due_at) and becomes the baseline: due times before it are covered.
    """
    if stage.kind != Stage.Kind.JOB:
        raise ValidationError(f"Stage '{stage.slug}' is a {stage.kind} stage, not a job stage.")
    now = (now or timezone.now()).replace(microsecond=0)
    run = job_run_start(stage=stage, due_at=now, worker_id=worker_id)
    return None if run is None else job_run_execute(run=run, worker_id=worker_id)
