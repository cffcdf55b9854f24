"""Handler slots: the threads that run handlers for one worker process.

Threads, not processes: handlers are mostly I/O (HTTP calls, queries,
files), which release the GIL, and threads share the worker's imports,
database settings and memory. CPU-bound handlers scale with more worker
processes instead (`run_worker` several times, or on several machines).

Work goes to the slots a batch at a time, not a task at a time: a claimed
batch is cut into at most one chunk per slot, each handed over with one
queue put, and a slot hands its chunk's outcomes back together, when the
chunk is done. Handing over each task and each outcome separately (a
condition variable and a thread switch each way) was a tenth of the
coordinator's time. So that a finished task still waits no longer than
`report_after` for its commit when a later handler of its chunk runs long,
a slot also hands back what it has once the first of it is that old, between
handlers, and the coordinator takes it from a busy slot (overdue()).

A slot whose handler overran the stage's max_run_time is *retired*: the
coordinator releases its task and starts a fresh slot, which takes over the
chunk's unstarted tasks (retire() queues them again) while the old thread
finishes (or hangs) on its own and takes no more work.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from django.db import close_old_connections, connection

from tasks_app.logcontext import log_context
from tasks_app.services import histograms
from tasks_app.worker.handlers import Handler, HandlerTask, Outcome, run_handler

Result = tuple["Job", Outcome]


@dataclass
class Job:
    task_id: int
    lock_token: str
    handler: Handler
    view: HandlerTask
    started_at: float | None = None  # set by the slot that takes it
    finished_at: float | None = None  # set by the slot when the handler returns


def chunks(jobs: list[Job], count: int) -> list[list[Job]]:
    """`jobs` in order, cut into at most `count` runs of nearly equal length (the longer ones first)."""
    count = max(1, min(count, len(jobs)))
    size, extra = divmod(len(jobs), count)
    out, start = [], 0
    for n in range(count):
        end = start + size + (n < extra)
        out.append(jobs[start:end])
        start = end
    return out


def run_job(job: Job, worker_id: str, tidy: Callable[[], None] = close_old_connections) -> Outcome:
    """Run one job (its `started_at` set); every job gets an outcome, so the coordinator never waits on a dead thread.

    Shared by the slots and the coordinator's inline runs (loop.Worker.run_inline):
    the same log context, error handling and histogram either way. `tidy` is
    run_handler's connection upkeep after the call.
    """
    stage = job.view.stage
    try:
        # Log lines of the handler (and of the code it calls) carry the task, stage and worker.
        with log_context(task_id=job.task_id, stage=stage, worker_id=worker_id):
            outcome = run_handler(job.handler, job.view, tidy=tidy)
    except BaseException as exc:  # run_handler's own cleanup failing (the database gone): retry the task
        outcome = Outcome.from_exception(exc, permanent=False)
    seconds = time.monotonic() - (job.started_at or 0.0)
    histograms.observe("handler", worker_id=worker_id, stage=stage, seconds=seconds)
    return outcome


class Slot(threading.Thread):
    def __init__(
        self,
        work: queue.Queue[list[Job] | None],
        results: queue.Queue[list[Result]],
        name: str,
        worker_id: str,
        report_after: float,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.worker_id = worker_id
        self.work = work
        self.results = results
        self.report_after = report_after
        self.retired = False
        self.current: Job | None = None
        # Guarded by `lock`, shared with the coordinator: the chunk's jobs not started yet,
        # and finished outcomes not handed back yet (with when the first of them finished).
        self.lock = threading.Lock()
        self.queued: deque[Job] = deque()
        self.outbox: list[Result] = []
        self.outbox_since = 0.0

    def run(self) -> None:
        try:
            while not self.retired:
                chunk = self.work.get()
                if chunk is None:
                    return
                with self.lock:
                    self.queued.extend(chunk)
                while (job := self._next()) is not None:
                    outcome = self._run(job)
                    self._finished(job, outcome)
        finally:
            connection.close()

    def _next(self) -> Job | None:
        with self.lock:
            if self.retired or not self.queued:
                return None
            job = self.current = self.queued.popleft()
            job.started_at = time.monotonic()
            return job

    def _finished(self, job: Job, outcome: Outcome) -> None:
        now = job.finished_at = time.monotonic()
        with self.lock:
            self.current = None
            if self.retired:
                # Abandoned: the coordinator released the task (and ignores this outcome) and took the rest.
                self.results.put([(job, outcome)])
                return
            if not self.outbox:
                self.outbox_since = now
            self.outbox.append((job, outcome))
            if not self.queued or now - self.outbox_since >= self.report_after:
                self._report()

    def _report(self) -> None:
        """Hand back the outbox in one put (the caller holds the lock)."""
        if self.outbox:
            self.results.put(self.outbox)
            self.outbox = []

    def _run(self, job: Job) -> Outcome:
        return run_job(job, self.worker_id)


class SlotPool:
    def __init__(self, size: int, worker_id: str, report_after: float = 0.5) -> None:
        self.size = size
        self.worker_id = worker_id
        self.report_after = report_after
        self.work: queue.Queue[list[Job] | None] = queue.Queue()
        self.results: queue.Queue[list[Result]] = queue.Queue()
        self._count = 0
        self.slots = [self._start() for _ in range(size)]

    def _start(self) -> Slot:
        self._count += 1
        name = f"{self.worker_id}-slot-{self._count}"
        slot = Slot(self.work, self.results, name=name, worker_id=self.worker_id, report_after=self.report_after)
        slot.start()
        return slot

    def submit(self, jobs: list[Job]) -> None:
        """Queue a batch: at most one chunk per slot, one put each."""
        if jobs:
            for chunk in chunks(jobs, self.size):
                self.work.put(chunk)

    def retire(self, task_id: int) -> None:
        """Give up on the slot running `task_id`, start a replacement and queue the rest of its chunk again."""
        for i, slot in enumerate(self.slots):
            if slot.current is not None and slot.current.task_id == task_id:
                with slot.lock:
                    if slot.current is None or slot.current.task_id != task_id:
                        return  # it finished meanwhile: its outcome comes back as any other
                    slot.retired = True
                    rest = list(slot.queued)
                    slot.queued.clear()
                    slot._report()  # what it finished before the overrunning handler
                self.slots[i] = self._start()
                if rest:
                    self.work.put(rest)
                return

    def take_unstarted(self) -> list[Job]:
        """Remove and return the jobs no handler has started yet, queued or in a slot's chunk (shutdown)."""
        jobs: list[Job] = []
        while True:
            try:
                chunk = self.work.get_nowait()
            except queue.Empty:
                break
            if chunk is not None:
                jobs.extend(chunk)
        for slot in self.slots:
            with slot.lock:
                jobs.extend(slot.queued)
                slot.queued.clear()
                if slot.current is None:
                    slot._report()  # nothing left to run: what it finished goes back now
        return jobs

    def idle(self) -> bool:
        """True when every submitted chunk has been taken by a slot."""
        return self.work.empty()

    def running(self) -> list[Job]:
        return [job for slot in self.slots if (job := slot.current) is not None]

    def get(self, timeout: float) -> list[Result] | None:
        """One slot's handed-back outcomes, waiting up to `timeout` s for them (None if none came)."""
        try:
            return self.results.get(timeout=timeout) if timeout > 0 else self.results.get_nowait()
        except queue.Empty:
            return None

    def overdue(self, now: float) -> list[Result]:
        """Take the outcomes that busy slots have held for `report_after` s or longer."""
        taken: list[Result] = []
        for slot in self.slots:
            if slot.outbox and now - slot.outbox_since >= self.report_after:  # unlocked peek, checked again below
                with slot.lock:
                    if slot.outbox and now - slot.outbox_since >= self.report_after:
                        taken += slot.outbox
                        slot.outbox = []
        return taken

    def stop(self, wait: float = 5.0) -> None:
        for _slot in self.slots:
            self.work.put(None)
        for slot in self.slots:
            slot.join(timeout=wait)
