"""Handler slots: the threads that run handlers for one worker process.

Threads, not processes: handlers are mostly I/O (HTTP calls, queries,
files), which release the GIL, and threads share the worker's imports,
database settings and memory. CPU-bound handlers scale with more worker
processes instead (`run_worker` several times, or on several machines).
A slot whose handler overran the stage's max_run_time is *retired*: the
coordinator releases its task and starts a fresh slot; the old thread
finishes (or hangs) on its own and takes no more work.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from django.db import connection

from tasks_app.logcontext import log_context
from tasks_app.services import histograms
from tasks_app.worker.handlers import Handler, HandlerTask, Outcome, run_handler


@dataclass
class Job:
    task_id: int
    lock_token: str
    handler: Handler
    view: HandlerTask
    started_at: float | None = None  # set by the slot that takes it


class Slot(threading.Thread):
    def __init__(
        self, work: queue.Queue[Job | None], results: queue.Queue[tuple[Job, Outcome]], name: str, worker_id: str
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.worker_id = worker_id
        self.work = work
        self.results = results
        self.retired = False
        self.current: Job | None = None

    def run(self) -> None:
        try:
            while not self.retired:
                job = self.work.get()
                if job is None:
                    return
                job.started_at = time.monotonic()
                self.current = job
                outcome = self._run(job)
                self.current = None
                self.results.put((job, outcome))
        finally:
            connection.close()

    def _run(self, job: Job) -> Outcome:
        """Run one job; every job gets an outcome, so the coordinator never waits on a dead thread."""
        stage = job.view.stage
        try:
            # Log lines of the handler (and of the code it calls) carry the task, stage and worker.
            with log_context(task_id=job.task_id, stage=stage, worker_id=self.worker_id):
                outcome = run_handler(job.handler, job.view)
        except BaseException as exc:  # run_handler's own cleanup failing (the database gone): retry the task
            outcome = Outcome.from_exception(exc, permanent=False)
        seconds = time.monotonic() - (job.started_at or 0.0)
        histograms.observe("handler", worker_id=self.worker_id, stage=stage, seconds=seconds)
        return outcome


class SlotPool:
    def __init__(self, size: int, worker_id: str) -> None:
        self.size = size
        self.worker_id = worker_id
        self.work: queue.Queue[Job | None] = queue.Queue()
        self.results: queue.Queue[tuple[Job, Outcome]] = queue.Queue()
        self._count = 0
        self.slots = [self._start() for _ in range(size)]

    def _start(self) -> Slot:
        self._count += 1
        slot = Slot(self.work, self.results, name=f"{self.worker_id}-slot-{self._count}", worker_id=self.worker_id)
        slot.start()
        return slot

    def submit(self, job: Job) -> None:
        self.work.put(job)

    def retire(self, task_id: int) -> None:
        """Give up on the slot running `task_id` and start a replacement."""
        for i, slot in enumerate(self.slots):
            if slot.current is not None and slot.current.task_id == task_id:
                slot.retired = True
                self.slots[i] = self._start()
                return

    def take_unstarted(self) -> list[Job]:
        """Remove and return the jobs no slot has taken yet (shutdown)."""
        jobs: list[Job] = []
        while True:
            try:
                job = self.work.get_nowait()
            except queue.Empty:
                return jobs
            if job is not None:
                jobs.append(job)

    def idle(self) -> bool:
        """True when every submitted job has been taken by a slot."""
        return self.work.empty()

    def running(self) -> list[Job]:
        return [job for slot in self.slots if (job := slot.current) is not None]

    def get(self, timeout: float) -> tuple[Job, Outcome] | None:
        try:
            return self.results.get(timeout=timeout) if timeout > 0 else self.results.get_nowait()
        except queue.Empty:
            return None

    def stop(self, wait: float = 5.0) -> None:
        for _slot in self.slots:
            self.work.put(None)
        for slot in self.slots:
            slot.join(timeout=wait)
