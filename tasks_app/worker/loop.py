"""The worker behind `manage.py run_worker`: claim, run, complete, in batches.

One coordinator (the main thread) does all the bookkeeping and every
database write of the lifecycle: it claims batches, hands tasks to handler
slots (threads), extends the locks of the tasks it holds (heartbeats),
abandons handlers that overrun `max_run_time`, and records results, many
completions per transaction. Delivery is at-least-once: if the process dies
between a handler and the commit of its completion, the task runs again
after its lock expires, so handlers must be idempotent.

At concurrency 1 the coordinator runs the handlers of stages without a
max_run_time itself, a batch in a row (run_inline): handing each batch to a
slot thread and its outcomes back cost two thread wake-ups per batch, for no
parallelism. While it is inside such a handler a heartbeat thread (Keeper)
extends the held locks and keeps the registry heartbeat; `guard` makes the
two take turns. Stages with a max_run_time still go to the slot, because
abandoning an overrunning handler needs a thread to abandon.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.db.models import Q

from tasks_app import services
from tasks_app.limits import clamp_lock_timeout
from tasks_app.logcontext import log_context
from tasks_app.models import Stage, Task, Transition
from tasks_app.services.claim import ClaimedRow, task_claim_rows
from tasks_app.services.complete import tasks_extend_locks_reporting
from tasks_app.services.counters import counters_fold_in_turn
from tasks_app.services.due import DueSweep, tasks_due_sweep
from tasks_app.services.flow_limits import throttle_pause
from tasks_app.services.join import JoinPass, tasks_join_sweep
from tasks_app.services.notifications import Drain, notifications_drain
from tasks_app.services.pipeline import tasks_complete_and_claim
from tasks_app.services.reminders import RemindPass, tasks_remind
from tasks_app.services.retention import PERIODIC_PAUSE, PruneResult, tasks_prune_periodic
from tasks_app.services.waiting import WaitSweep, tasks_wait_sweep
from tasks_app.worker.handlers import Handler, HandlerImportError, HandlerTask, Outcome, resolve_handler
from tasks_app.worker.listener import Listener
from tasks_app.worker.pacing import (
    NAP_SLICE,
    Backoff,
    Cadence,
    Keeper,
    TextOut,
    close_broken_connection,
    close_connection,
    nap,
    say,
)
from tasks_app.worker.slots import Job, Result, SlotPool, run_job

logger = logging.getLogger("tasks_app.worker")

STAGE_REFRESH = 1.0  # seconds between re-reads of the stages (pauses, new handlers)
FLUSH_AFTER = 0.5  # longest a finished task waits for its batch's commit
HEARTBEAT_CHECK = 0.25  # seconds between looks for locks that need extending
CONNECTION_CHECK = 1.0  # seconds between close_old_connections() calls
PRUNE_JITTER = 0.1  # workers started together spread their prunes over ±10% of TASKS_PRUNE_INTERVAL
# The history fold into the per-stage counters and hourly roll-ups (services.counters), off the page views:
# every FOLD_INTERVAL s (±20%) each worker tries, and one at a time folds (the others skip their turn);
# at most FOLD_ROWS events a bite, and the next bite after FOLD_PAUSE while a backlog lasts.
FOLD_INTERVAL = 10.0
FOLD_JITTER = 0.2
FOLD_ROWS = 5_000
FOLD_PAUSE = 0.5
# The waiting-time limit's sweep (services.waiting): as often as the expiry sweep, sooner while a backlog lasts.
WAIT_PAUSE = 0.5
# Join stages (services.join): every worker passes over them this often, at once when an idle worker is
# notified of an arrival there, and after JOIN_PAUSE while ready groups are left over.
JOIN_INTERVAL = 1.0
JOIN_PAUSE = 0.1
# The notification outbox (services.notifications): drained this often (one worker at a time), sooner while
# a backlog lasts. Mail and webhooks go out here, never in a claim or a completion.
NOTIFY_INTERVAL = 5.0
NOTIFY_PAUSE = 0.5
# Form tasks' due times and reminders (services.due, services.reminders): as often as the expiry sweep,
# sooner while a backlog lasts; their reminders go out at the outbox's next drain.
PEOPLE_PAUSE = 0.5


def default_worker_id() -> str:
    """host:pid plus a random suffix, so that every start has its own id."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


@dataclass
class Stats:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0

    @property
    def processed(self) -> int:
        return self.done + self.failed + self.released + self.lost


@dataclass(eq=False)
class Held:
    """A task this worker holds the lock of."""

    task: ClaimedRow  # a light row, not a model: the worker reads only its fields
    lock_timeout: int
    extended_at: float  # monotonic time of the claim or the last heartbeat
    outcome: Outcome | None = None
    finished_at: float = 0.0
    view: HandlerTask | None = None  # what its handler sees; a heartbeat sets its cancel_requested


@dataclass
class Cadences:
    """The coordinator's clocks: each periodic thing it does, with its own interval."""

    heartbeat: Cadence  # look for held locks that need extending
    connections: Cadence  # close_old_connections()
    expiry: Cadence  # the expiry sweep (TASKS_EXPIRE_INTERVAL)
    prune: Cadence  # retention (TASKS_PRUNE_INTERVAL; sooner while a backlog lasts)
    fold: Cadence  # the counters' fold (FOLD_INTERVAL; sooner while a backlog lasts)
    waits: Cadence  # overdue tasks (TASKS_EXPIRE_INTERVAL; sooner while a backlog lasts)
    joins: Cadence  # join stages' passes (JOIN_INTERVAL; at once on an arrival's notification)
    people: Cadence  # form tasks' due times and reminders (TASKS_EXPIRE_INTERVAL; sooner while a backlog lasts)
    outbox: Cadence  # the notification outbox's drain (NOTIFY_INTERVAL; sooner while a backlog lasts)
    registry: Cadence  # the registry heartbeat (TASKS_WORKER_HEARTBEAT)
    progress: Cadence | None  # the progress line; None when off

    @classmethod
    def from_settings(cls, *, progress_interval: float, now: float) -> Cadences:
        """Due at the first step, except the progress line, which has nothing to say yet."""
        return cls(
            heartbeat=Cadence(HEARTBEAT_CHECK),
            connections=Cadence(CONNECTION_CHECK),
            expiry=Cadence(float(settings.TASKS_EXPIRE_INTERVAL)),
            prune=Cadence(float(settings.TASKS_PRUNE_INTERVAL), jitter=PRUNE_JITTER),
            fold=Cadence(FOLD_INTERVAL, jitter=FOLD_JITTER),
            waits=Cadence(float(settings.TASKS_EXPIRE_INTERVAL)),
            joins=Cadence(JOIN_INTERVAL),
            people=Cadence(float(settings.TASKS_EXPIRE_INTERVAL)),
            outbox=Cadence(NOTIFY_INTERVAL),
            registry=Cadence(float(settings.TASKS_WORKER_HEARTBEAT)),
            progress=Cadence(progress_interval, next_at=now + progress_interval) if progress_interval > 0 else None,
        )


@dataclass
class ServedStages:
    """The script stages a worker serves and their transitions, re-read every STAGE_REFRESH s.

    With them, in the same query, the join stages (services.join): every worker passes over every join
    stage that is not paused, whatever its --stage, and never claims there.
    """

    slugs: Sequence[str]
    cadence: Cadence = field(default_factory=lambda: Cadence(STAGE_REFRESH))
    stages: list[Stage] = field(default_factory=list)
    joins: list[Stage] = field(default_factory=list)
    routes: dict[int, list[Transition]] = field(default_factory=dict)
    rotation: int = 0

    def current(self) -> list[Stage]:
        if self.cadence.tick(time.monotonic()):
            served = Q(kind=Stage.Kind.SCRIPT, slug__in=self.slugs) if self.slugs else Q(kind=Stage.Kind.SCRIPT)
            every = list(Stage.objects.filter(served | Q(kind=Stage.Kind.JOIN), is_paused=False).order_by("id"))
            self.stages = [s for s in every if s.kind == Stage.Kind.SCRIPT]
            self.joins = [s for s in every if s.kind == Stage.Kind.JOIN]
            self.routes = {s.pk: [] for s in self.stages}
            for t in Transition.objects.filter(source__in=self.stages).order_by("id"):
                self.routes[t.source_id].append(t)
        return self.stages

    def in_turn(self) -> list[Stage]:
        """The current stages, starting one further along at every call: no stage always claims first."""
        stages = self.current()
        if not stages:
            return []
        self.rotation = (self.rotation + 1) % len(stages)
        return stages[self.rotation :] + stages[: self.rotation]


@dataclass
class RateMeter:
    """Tasks done per second between two readings."""

    at: float = field(default_factory=time.monotonic)
    done: int = 0

    def reading(self, now: float, done: int) -> float:
        rate = (done - self.done) / max(now - self.at, 1e-9)
        self.at, self.done = now, done
        return rate


Chore = tuple[Cadence, Callable[[], object]]
Written = Callable[[services.ItemOutcome], None]  # told each completion's outcome once it is committed


@dataclass
class Worker:
    stage_slugs: Sequence[str] = ()
    batch_size: int = 10
    concurrency: int = 1
    lock_timeout: int | None = None
    poll_interval: float | None = None
    worker_id: str = ""
    max_tasks: int | None = None
    listen: bool = True
    progress_interval: float = 10.0
    stdout: TextOut | None = None
    inline: bool = True  # at concurrency 1, run handlers of stages without max_run_time on the coordinator

    stop_requested: bool = field(default=False, init=False)
    stats: Stats = field(default_factory=Stats, init=False)

    def __post_init__(self) -> None:
        self.worker_id = self.worker_id or default_worker_id()
        if self.poll_interval is None:
            self.poll_interval = float(settings.TASKS_POLL_INTERVAL)
        # The tasks, by where they are: every task whose lock we hold; handed to the
        # slots, handler not finished; handler finished, outcome not yet written.
        self.held: dict[int, Held] = {}
        self.in_flight: set[int] = set()
        self.done: list[Held] = []
        self.inline_jobs: deque[Job] = deque()  # in flight, for the coordinator to run itself (run_inline)
        # Held by the coordinator except while it runs a handler itself: the heartbeat
        # thread works only when it can take it, so held, done, stats and the cadences
        # are never touched by both at once.
        self._guard = threading.Lock()
        self._guard.acquire()
        self._keeper: Keeper | None = None
        self.served = ServedStages(self.stage_slugs)
        self.cadences = Cadences.from_settings(progress_interval=self.progress_interval, now=time.monotonic())
        # The upkeep, in order: each chore runs when its cadence is due.
        self.chores: list[Chore] = [
            (self.cadences.expiry, self.expire_locks),
            (self.cadences.prune, self.prune),
            (self.cadences.fold, self.fold_counters),
            (self.cadences.waits, self.sweep_waits),
            (self.cadences.joins, self.join_groups),
            (self.cadences.people, self.remind_and_escalate),
            (self.cadences.outbox, self.send_notifications),
            (self.cadences.registry, self.report_in),
        ]
        if self.cadences.progress is not None:
            self.chores.append((self.cadences.progress, self.print_progress))
        self.rate = RateMeter()
        self.backoff = Backoff()  # after database errors
        self._handlers: dict[str, Handler] = {}  # resolved handlers, by dotted path
        self._pool: SlotPool | None = None
        self._listener: Listener | None = None
        # Stages whose cap or rate limit throttled our last claim there (services.flow_limits): stage id ->
        # (monotonic time to claim there again, whether the cap did it). Claiming again at once would only
        # be throttled again: a hot loop of gate locks.
        self.throttled: dict[int, tuple[float, bool]] = {}

    # -- stages and claiming ---------------------------------------------
    def stages(self) -> list[Stage]:
        """The script stages served, re-read at most every STAGE_REFRESH s."""
        return self.served.current()

    def _room(self) -> int:
        room = self.batch_size
        if self.max_tasks is not None:
            room = min(room, self.max_tasks - self.stats.processed - len(self.held))
        return max(room, 0)

    def claim(self, completions: Sequence[services.Completion] = (), each: Written | None = None) -> int:
        """Claim up to one batch, visiting the stages in turn; returns how many were claimed.

        With `completions`, the first stage's claim writes them too, in the same
        round trip and transaction (services.pipeline); `each` gets their outcomes.
        If no claim is made (no stage, no room), they are written on their own.
        """
        claimed = 0
        unwritten = list(completions)
        for stage in self.served.in_turn():
            room = self._room() - claimed
            if room <= 0 or self.stop_requested:
                break
            if stage.pk in self.throttled and self.throttled[stage.pk][0] > time.monotonic():
                continue
            timeout = clamp_lock_timeout(self.lock_timeout or stage.lock_timeout)  # heartbeats use it too
            if unwritten:
                _, tasks = tasks_complete_and_claim(
                    items=unwritten, stage=stage, worker_id=self.worker_id, limit=room, lock_timeout=timeout, each=each
                )
                unwritten = []
            else:
                tasks = task_claim_rows(stage=stage, worker_id=self.worker_id, limit=room, lock_timeout=timeout)
            now = time.monotonic()
            pause = throttle_pause(stage.pk)
            if pause is not None:
                self.throttled[stage.pk] = (now + pause.seconds, pause.by_cap)
            else:
                self.throttled.pop(stage.pk, None)
            for task in tasks:
                self.held[task.pk] = Held(task=task, lock_timeout=timeout, extended_at=now)
            claimed += len(tasks)
            self.stats.claimed += len(tasks)
            self.dispatch([self.held[t.pk] for t in tasks])
        self._complete_apart(unwritten, each)
        return claimed

    @staticmethod
    def _complete_apart(items: Sequence[services.Completion], each: Written | None) -> None:
        """Write completions in their own transaction(s), no claim; `each` gets every outcome once written."""
        for outcome in services.tasks_complete_each(items=items) if items else ():
            if each is not None:
                each(outcome)

    # -- running handlers ---------------------------------------------------
    def dispatch(self, held: list[Held]) -> None:
        """Queue claimed tasks for the handler slots, a chunk per slot (they start as slots free up).

        Or, when this worker runs handlers inline, for the coordinator (inline_ok()).
        """
        assert self._pool is not None
        jobs = []
        for h in held:
            task = h.task
            try:
                handler = resolve_handler(task.stage, self._handlers)
            except HandlerImportError as exc:
                self._finish(task.pk, Outcome.from_exception(exc, permanent=True))
                continue
            view = HandlerTask(
                id=task.pk,
                type=task.type,
                payload=task.payload,  # a private copy: it was just read from the database
                stage=task.stage.slug,
                attempts=task.attempts,
                created_at=task.created_at,
                parent_id=task.parent_id,
                _stage=task.stage,
                _routes=self.served.routes.get(task.stage_id),
                cancel_requested=task.cancel_requested,  # as claimed; a heartbeat reports a later request
            )
            h.view = view
            self.in_flight.add(task.pk)
            job = Job(task_id=task.pk, lock_token=task.lock_token, handler=handler, view=view)
            if self.inline_ok(task.stage):
                self.inline_jobs.append(job)
            else:
                jobs.append(job)
        self._pool.submit(jobs)

    def inline_ok(self, stage: Stage) -> bool:
        """May the coordinator run this stage's handlers itself? At concurrency 1, without a max_run_time."""
        return self.inline and self.concurrency == 1 and not stage.max_run_time

    def run_inline(self) -> None:
        """Run the queued inline jobs here, in claim order, each as a slot would (slots.run_job).

        Returns early, leaving the rest queued, when a stop is requested (the
        turn hands the rest back) and when a finished outcome has waited
        FLUSH_AFTER, so that the turn writes it, as with slots.
        """
        self._start_keeper()
        oldest = min((h.finished_at for h in self.done), default=None)
        while self.inline_jobs and not self.stop_requested:
            if oldest is not None and time.monotonic() - oldest >= FLUSH_AFTER:
                return
            job = self.inline_jobs.popleft()
            if job.task_id not in self.in_flight:
                continue  # its lock was lost while it waited (heartbeat): don't run it
            job.started_at = time.monotonic()
            self._guard.release()  # the heartbeat thread may act while the handler runs
            try:
                outcome = run_job(job, self.worker_id, tidy=close_broken_connection)
                job.finished_at = time.monotonic()
            finally:
                self._guard.acquire()
            self._take([(job, outcome)])
            if oldest is None and self.done:
                oldest = job.finished_at

    def _start_keeper(self) -> None:
        if self._keeper is None:
            self._keeper = Keeper(
                self._beat,
                self._guard,
                HEARTBEAT_CHECK,
                name=f"{self.worker_id}-heartbeat",
                application_name=f"{self.worker_id[:53]} heartbeat",
            )
            self._keeper.start()

    def _beat(self) -> None:
        """The heartbeat thread's turn (while the coordinator is inside a handler): locks, then the registry."""
        with log_context(worker_id=self.worker_id):
            self.heartbeat()
            self.cadences.registry.run(time.monotonic(), self.report_in)

    def _finish(self, task_id: int, outcome: Outcome, finished_at: float | None = None) -> None:
        held = self.held[task_id]
        held.outcome = outcome
        held.finished_at = finished_at or time.monotonic()  # when its handler returned, if it ran
        self.in_flight.discard(task_id)
        self.done.append(held)

    def collect(self, timeout: float) -> None:
        """Take finished handler runs (waiting up to `timeout` for the first), and those slots hold too long."""
        assert self._pool is not None
        results = self._pool.get(timeout)
        while results is not None:
            self._take(results)
            results = self._pool.get(0)
        self._take(self._pool.overdue(time.monotonic()))

    def _take(self, results: list[Result]) -> None:
        for job, outcome in results:
            held = self.held.get(job.task_id)
            # Ignore results of abandoned runs (the task was released, maybe re-claimed).
            if held is not None and held.task.lock_token == job.lock_token and job.task_id in self.in_flight:
                self._finish(job.task_id, outcome, job.finished_at)

    # -- recording outcomes -------------------------------------------------
    def _pool_busy(self) -> bool:
        """Do tasks in flight wait on the slots (not only on run_inline)?"""
        queued_inline = sum(1 for job in self.inline_jobs if job.task_id in self.in_flight)
        return len(self.in_flight) > queued_inline

    def claim_wanted(self) -> bool:
        """Would the next batch be claimed now: every queued task taken, a slot about to be free?"""
        assert self._pool is not None
        return self._pool.idle() and len(self.in_flight) < self.concurrency

    def flush_due(self) -> bool:
        """Write finished outcomes now: a full batch, stopping, FLUSH_AFTER passed, or a claim due.

        Not merely because the queue ran dry while every slot is still busy: the
        outcomes wait (FLUSH_AFTER at most) for the claim that follows when a
        slot frees up, so both go in one round trip (record(claim=True)).
        """
        if not self.done:
            return False
        if self.stop_requested or len(self.done) >= self.batch_size or self.claim_wanted():
            return True
        # The oldest, not the first: slots hand their outcomes back a chunk at a time, in no set order.
        return time.monotonic() - min(h.finished_at for h in self.done) >= FLUSH_AFTER

    def record(self, *, claim: bool = False) -> None:
        """Write every finished outcome: completions in one batch, failures one by one.

        With `claim`, the completions and the next claim share one round trip
        and one transaction (claim()); if it fails, nothing is claimed and the
        completions are kept for the next try. Each outcome is cleared once
        written, so after a database error only the unwritten ones are kept and
        retried: none is written twice.
        """
        done, self.done = self.done, []
        for h in done:
            if self.throttled.get(h.task.stage_id, (0.0, False))[1]:
                del self.throttled[h.task.stage_id]  # a task of ours there ends: a slot of its cap frees up
        try:
            ok = [h for h in done if h.outcome is not None and h.outcome.kind == "ok"]
            items = [
                services.Completion(h.task.pk, h.task.lock_token, h.outcome.sent, details=h.outcome.details())
                for h in ok
                if h.outcome
            ]
            by_id = {h.task.pk: h for h in ok}

            def written(result: services.ItemOutcome) -> None:
                # A refused item: a transition or a payload schema changed under us (the handler checked
                # its sends against the stage as it was); only the offending task fails, permanently.
                self._completed(result, by_id[result.task_id])

            if claim:
                self.claim(items, written)
            else:
                self._complete_apart(items, written)
            for h in done:
                if h.outcome is not None:
                    self._record_failure(h)
        finally:
            unwritten = [h for h in done if h.outcome is not None]
            self.done = unwritten + self.done
            for h in done:
                if h.outcome is None:
                    self.held.pop(h.task.pk, None)

    def _completed(self, result: services.ItemOutcome, h: Held) -> None:
        if result.status == "refused":
            assert result.error is not None
            printed = h.outcome.output if h.outcome is not None else None
            h.outcome = Outcome.from_exception(result.error, permanent=True)  # written as a failure next
            h.outcome.output = printed
            return
        if result.status == "completed":
            self.stats.done += 1
        elif result.status == "cancelled":
            # A cancel was requested while it ran: the completion ended it cancelled, its sends dropped.
            logger.info(
                "task %s: cancelled as requested; nothing sent", result.task_id, extra={"task_id": result.task_id}
            )
            self.stats.done += 1
        else:
            self._lost([result.task_id])
        h.outcome = None

    def _lost(self, task_ids: Sequence[int]) -> None:
        for task_id in task_ids:
            # Our lock expired and someone else holds the task now; their run counts.
            logger.warning(
                "task %s: lock lost before completion; another worker has it", task_id, extra={"task_id": task_id}
            )
        self.stats.lost += len(task_ids)

    def _record_failure(self, h: Held) -> None:
        outcome = h.outcome
        assert outcome is not None
        task = h.task
        context = {"task_id": task.pk, "stage": task.stage.slug}
        try:
            if outcome.kind == "fail":
                logger.error("task %s failed permanently: %s", task.pk, outcome.error, extra=context)
                services.task_fail(
                    task_id=task.pk,
                    lock_token=task.lock_token,
                    error=outcome.error,
                    traceback=outcome.traceback,
                    details=outcome.details(),
                )
                self.stats.failed += 1
            else:
                logger.warning("task %s: handler raised %s; released for retry", task.pk, outcome.error, extra=context)
                released = services.task_release(
                    task_id=task.pk,
                    lock_token=task.lock_token,
                    error=outcome.error,
                    traceback=outcome.traceback,
                    details=outcome.details(),
                )
                if released.status == Task.Status.FAILED:
                    self.stats.failed += 1
                else:
                    self.stats.released += 1
        except services.TaskLockLost:
            self._lost([task.pk])
        h.outcome = None  # written: never again, even if a later write fails

    # -- heartbeats, run-time limits, upkeep ---------------------------------
    def heartbeat(self) -> None:
        """Extend the locks of held tasks whose lock is half used up."""
        now = time.monotonic()
        if not self.cadences.heartbeat.tick(now):
            return
        due: dict[int, list[Held]] = {}
        for h in self.held.values():
            if now - h.extended_at >= h.lock_timeout / 2:
                due.setdefault(h.lock_timeout, []).append(h)
        for timeout, group in due.items():
            renewal = tasks_extend_locks_reporting(
                items=[(h.task.pk, h.task.lock_token) for h in group], lock_timeout=timeout
            )
            kept, cancels = set(renewal.held), set(renewal.cancel_requested)
            for h in group:
                if h.task.pk in kept:
                    h.extended_at = now
                    if h.task.pk in cancels and h.view is not None:
                        h.view.cancel_requested = True  # the handler may look and stop early
                else:
                    self._drop_lost(h.task.pk)

    def _drop_lost(self, task_id: int) -> None:
        self._lost([task_id])
        held = self.held.pop(task_id, None)
        self.in_flight.discard(task_id)
        if held is not None and held in self.done:
            self.done.remove(held)

    def enforce_max_run_time(self) -> None:
        """Abandon handlers running longer than their stage's max_run_time and release their tasks."""
        assert self._pool is not None
        now = time.monotonic()
        for job in self._pool.running():
            h = self.held.get(job.task_id)
            if h is None or job.task_id not in self.in_flight or job.started_at is None:
                continue
            limit = h.task.stage.max_run_time
            if not limit or now - job.started_at <= limit:
                continue
            logger.error(
                "task %s: handler exceeded max_run_time (%ss); abandoned",
                job.task_id,
                limit,
                extra={"task_id": job.task_id, "stage": h.task.stage.slug},
            )
            self._pool.retire(job.task_id)
            self.in_flight.discard(job.task_id)
            self.held.pop(job.task_id, None)
            try:
                released = services.task_release(
                    task_id=job.task_id,
                    lock_token=h.task.lock_token,
                    error=f"Handler exceeded the stage's max_run_time of {limit}s and was abandoned.",
                )
                if released.status == Task.Status.FAILED:
                    self.stats.failed += 1
                else:
                    self.stats.released += 1
            except services.TaskLockLost:
                self.stats.lost += 1

    def unclaim_unstarted(self) -> None:
        """Shutdown: hand back claimed tasks whose handler never started, at once."""
        assert self._pool is not None
        unstarted = list(self.inline_jobs) + self._pool.take_unstarted()
        self.inline_jobs.clear()
        for job in unstarted:
            self.in_flight.discard(job.task_id)
            h = self.held.pop(job.task_id, None)
            if h is None:
                continue
            try:
                services.task_unclaim(task_id=job.task_id, lock_token=h.task.lock_token)
            except services.TaskLockLost:
                pass

    def upkeep(self) -> None:
        """Run the chores whose cadence is due (each marked done first: one that fails waits for its next turn)."""
        now = time.monotonic()
        for cadence, chore in self.chores:
            cadence.run(now, chore)

    def expire_locks(self) -> None:
        """The expiry sweep: tasks whose lock passed go back to pending (one worker sweeps at a time)."""
        count = services.tasks_expire_locks()
        if count:
            logger.info("expired %d lock(s)", count)

    def prune(self) -> PruneResult | None:
        """Retention (TASKS_RETENTION_DAYS): one bounded bite; while a backlog lasts, due again after PERIODIC_PAUSE."""
        pruned = tasks_prune_periodic()
        if pruned is None:
            return None
        if pruned.backlog:
            self.cadences.prune.done(time.monotonic(), after=PERIODIC_PAUSE)
        if pruned.tasks or pruned.job_runs:
            logger.info(
                "pruned %d old task(s) with %d event(s) and %d job run(s)",
                pruned.tasks,
                pruned.events,
                pruned.job_runs,
            )
        return pruned

    def fold_counters(self) -> int | None:
        """Fold new history into the per-stage counters (what the overview and the stage page show)."""
        try:
            moved = counters_fold_in_turn(max_rows=FOLD_ROWS)
        except DatabaseError:
            # Rolled back; the pages show the counters as of the last fold (and say when). Not the
            # worker's database trouble: claims and completions go on.
            logger.warning("could not fold the history into the stage counters", exc_info=True)
            return None
        if moved is not None and moved >= FOLD_ROWS:
            self.cadences.fold.done(time.monotonic(), after=FOLD_PAUSE)  # a backlog: the next bite soon
        return moved

    def sweep_waits(self) -> WaitSweep | None:
        """The waiting-time limit: flag overdue tasks and send on_timeout ones on (one worker at a time)."""
        swept = tasks_wait_sweep()
        if swept is None:
            return None
        if swept.backlog:
            self.cadences.waits.done(time.monotonic(), after=WAIT_PAUSE)
        if swept.flagged:
            logger.info("%d task(s) overdue, %d sent on as their stage's on_timeout", swept.flagged, swept.timed_out)
        return swept

    def remind_and_escalate(self) -> tuple[DueSweep | None, RemindPass | None]:
        """Form tasks: flag the overdue, escalate them as on_overdue, queue reminders (one worker at a time)."""
        swept = tasks_due_sweep()
        reminded = tasks_remind()
        if (swept is not None and swept.backlog) or (reminded is not None and reminded.backlog):
            self.cadences.people.done(time.monotonic(), after=PEOPLE_PAUSE)
        if swept is not None and swept.flagged:
            logger.info("%d form task(s) overdue, %d escalated (on_overdue)", swept.flagged, swept.escalated)
        if reminded is not None and reminded.reminded:
            logger.info("queued reminders for %d form task(s)", reminded.reminded)
        return swept, reminded

    def send_notifications(self) -> Drain | None:
        """Deliver the notification outbox: mails and webhooks about arrivals at form stages (one worker at a time)."""
        drained = notifications_drain()
        if drained is None:
            return None
        if drained.backlog:
            self.cadences.outbox.done(time.monotonic(), after=NOTIFY_PAUSE)
        if drained.sent or drained.failed:
            logger.info(
                "sent %d notification(s) about %d arrival(s); %d failed", drained.sent, drained.rows, drained.failed
            )
        return drained

    def join_groups(self) -> JoinPass | None:
        """Join stages: merge the complete groups and send the timed-out ones on (services.join)."""
        self.served.current()
        if not self.served.joins:
            return None
        joined = tasks_join_sweep(stages=self.served.joins, actor=self.worker_id)
        if joined.backlog:
            self.cadences.joins.done(time.monotonic(), after=JOIN_PAUSE)
        if joined.joined or joined.timed_out:
            logger.info("joined %d group(s), %d timed out", joined.joined, joined.timed_out)
        return joined

    def report_in(self) -> None:
        """The registry heartbeat: counters and held tasks, so the monitor shows this worker alive."""
        services.worker_heartbeat(
            worker_id=self.worker_id,
            done=self.stats.done,
            failed=self.stats.failed,
            released=self.stats.released,
            current=sorted(self.held),
        )

    def print_progress(self) -> None:
        rate = self.rate.reading(time.monotonic(), self.stats.done)
        s = self.stats
        self._say(
            f"{self.worker_id}: {rate:.1f} tasks/s, done {s.done}, failed {s.failed}, "
            f"released {s.released}, claimed {s.claimed}, holding {len(self.held)}"
        )

    # -- the loop -------------------------------------------------------------
    def turn(self, *, claim: bool) -> None:
        """One coordinator turn, in the one order that step() and run_once() share.

        Write finished outcomes (when a batch is due; together with this turn's
        claim, if one follows, in one round trip), extend locks, enforce
        run-time limits, run the upkeep, then hand back unstarted tasks if
        stopping, or else claim (if `claim` and the slots have room), and
        collect finished handler runs, or run the inline ones (once the slots
        have none in flight: at concurrency 1, one handler at a time).
        """
        assert self._pool is not None
        wants_claim = claim and self.claim_wanted()
        claimed = False
        if self.flush_due():
            # A claim would follow in this turn: make it with the write, one round trip for both.
            claimed = wants_claim and not self.stop_requested
            self.record(claim=claimed)
        self.heartbeat()
        self.enforce_max_run_time()
        self.upkeep()
        if self.stop_requested:
            self.unclaim_unstarted()
        elif wants_claim and not claimed:
            self.claim()
        if self.inline_jobs and not self.stop_requested and not self._pool_busy():
            self.run_inline()
        elif self.in_flight:
            self.collect(timeout=0.05)

    def step(self) -> bool:
        """One coordinator step; returns True if any task was claimed, running or finished."""
        self.turn(claim=True)
        return bool(self.held)

    def run_once(self) -> bool:
        """Claim, run and record one batch; True if any task was claimed."""
        self._start_pool()
        claimed = self.stats.claimed
        self.turn(claim=True)
        while self.held:
            self.turn(claim=False)
        return self.stats.claimed > claimed

    def run(self, *, once: bool = False) -> Stats:
        """Work until stopped (or, with once=True, until nothing is claimable and nothing is held)."""
        with log_context(worker_id=self.worker_id):  # every coordinator log line names the worker
            return self._run(once=once)

    def _run(self, *, once: bool) -> Stats:
        self._start_pool()
        if self.listen and connection.vendor == "postgresql":
            self._listener = Listener(self.worker_id)
        services.worker_register(worker_id=self.worker_id, stages=self.stage_slugs, concurrency=self.concurrency)
        self._say(
            f"worker {self.worker_id} started (batch {self.batch_size}, concurrency {self.concurrency}, "
            f"{'listening' if self._listener else 'polling'})"
        )
        try:
            while True:
                self._maybe_close_old_connections()
                try:
                    if self.backoff.seconds:
                        self._release_orphans()
                    busy = self.step()
                    self.backoff.reset()
                except DatabaseError as exc:
                    if self.stop_requested:
                        logger.error("database error while stopping (%s); held locks will expire", exc)
                        break
                    self._database_trouble(exc)
                    continue
                if self.stop_requested and not self.held:
                    break
                if self.max_tasks is not None and self.stats.processed >= self.max_tasks and not self.held:
                    break
                if not busy:
                    if once and not self.throttled:  # throttled is not drained: wait for the cap or window
                        break
                    self._idle()
        finally:
            self._shutdown()
        return self.stats

    def _release_orphans(self) -> None:
        """After database trouble: hand back tasks locked in our name that we don't know we hold.

        A claim can commit while its reply is lost with the connection; worker
        ids are unique per start, so such rows can only be ours, unstarted.
        """
        count = services.tasks_unclaim_orphans(worker_id=self.worker_id, keep=list(self.held))
        if count:
            logger.warning("handed back %d task(s) claimed just before the connection dropped", count)

    def _maybe_close_old_connections(self) -> None:
        # Once a second, not every step: with health checks on, the next query
        # after close_old_connections() pays an extra round trip.
        if not connection.in_atomic_block and self.cadences.connections.tick(time.monotonic()):
            close_old_connections()

    def _database_trouble(self, exc: Exception) -> None:
        pause = self.backoff.failed()
        logger.error("database error (%s); reconnecting in %.1fs", exc, pause)
        close_connection()
        nap(pause)  # the whole pause, stopping or not: what is left to write needs the database back

    def _idle(self) -> None:
        """Wait for work: a notification (PostgreSQL) or the poll interval with jitter."""
        wait = (self.poll_interval or 1.0) * random.uniform(0.8, 1.2)
        # Wake in time for the registry heartbeat and the expiry sweep, so an idle
        # worker with a long poll interval is not shown as dead.
        deadline = min(time.monotonic() + wait, self.cadences.registry.next_at, self.cadences.expiry.next_at)
        if self.served.joins:  # a join's timeout is due within JOIN_INTERVAL, idle or not
            deadline = min(deadline, self.cadences.joins.next_at)
        # And when a throttled stage may be claimed at again (a rate limit's next window).
        now = time.monotonic()
        deadline = min([deadline, *(until for until, _ in self.throttled.values() if until > now)])
        while not self.stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            chunk = min(left, 1.0)
            if self._listener is not None:
                notified = self._listener.wait(chunk)
                if notified:
                    if notified & {s.pk for s in self.served.joins}:
                        self.cadences.joins.next_at = 0.0  # an arrival at a join stage: pass over it now
                    return
                if notified is not None:
                    continue
            time.sleep(min(chunk, NAP_SLICE))

    def _start_pool(self) -> None:
        if self._pool is None:
            self._pool = SlotPool(self.concurrency, self.worker_id, report_after=FLUSH_AFTER)

    def _shutdown(self) -> None:
        try:
            if self.done:
                self.record()
            s = self.stats
            services.worker_stopped(worker_id=self.worker_id, done=s.done, failed=s.failed, released=s.released)
        except DatabaseError:
            logger.exception("could not record the worker's exit")
        if self._keeper is not None:
            self._keeper.stop()
        if self._pool is not None:
            self._pool.stop()
        if self._listener is not None:
            self._listener.close()
        s = self.stats
        self._say(f"worker {self.worker_id} stopped: {s.done} done, {s.failed} failed, {s.released} released")

    def _say(self, line: str) -> None:
        say(logger, self.stdout, line)
