"""The scheduler loop behind `manage.py run_scheduler` and run_worker's scheduler thread.

Every `interval` seconds it runs the job stages that are due
(services.jobs.jobs_run_due). Any number of schedulers may run side by side:
the unique JobRun row per (stage, due time) decides which one runs a due time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection

from tasks_app.models import JobRun
from tasks_app.services.jobs import jobs_run_due

logger = logging.getLogger("tasks_app.scheduler")

DEFAULT_INTERVAL = 1.0  # seconds between looks for due jobs, unless TASKS_SCHEDULER_INTERVAL says otherwise
MAX_BACKOFF = 30.0  # longest pause after database errors
SLEEP_SLICE = 0.25  # a stop request is noticed within this many seconds


def run_summary(run: JobRun) -> str:
    """One line about a finished run, for people."""
    line = f"job {run.stage.slug} @ {run.due_at:%Y-%m-%d %H:%M:%S}: {run.status}"
    if run.status == JobRun.Status.FAILED:
        return f"{line}: {run.error.splitlines()[0] if run.error else 'no error recorded'}"
    line += f", {run.tasks_processed} task(s) processed, {run.tasks_sent} sent"
    if run.missed:
        line += f" ({run.missed} earlier due time(s) folded in)"
    return line


@dataclass
class Scheduler:
    worker_id: str
    interval: float | None = None
    stdout: IO[str] | None = None
    # Shown in pg_stat_activity for this thread's own connection (run_worker's scheduler thread).
    application_name: str = ""

    # Set from a signal handler or another thread: a plain flag, since an Event's
    # lock taken inside a signal handler can deadlock the thread it interrupted.
    stop_requested: bool = field(default=False, init=False)
    runs: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.interval is None:
            self.interval = float(getattr(settings, "TASKS_SCHEDULER_INTERVAL", DEFAULT_INTERVAL))

    def tick(self, now: datetime | None = None) -> list[JobRun]:
        """Run every job that is due now; returns the runs this scheduler ran."""
        if not connection.in_atomic_block:
            close_old_connections()
        runs = jobs_run_due(worker_id=self.worker_id, now=now)
        self.runs += len(runs)
        for run in runs:
            self._say(run_summary(run))
        return runs

    def run(self) -> None:
        """Tick every `interval` s until stop_requested; errors are logged and retried after a backoff."""
        self._say(f"scheduler {self.worker_id} started (every {self.interval:g}s)")
        backoff = 0.0
        while not self.stop_requested:
            try:
                self.tick()
                backoff = 0.0
            except Exception as exc:
                # The database went away (or something unforeseen): never die, try again later.
                backoff = min(MAX_BACKOFF, max(0.5, backoff * 2))
                if isinstance(exc, DatabaseError):
                    logger.error("scheduler: database error (%s); retrying in %.1fs", exc, backoff)
                else:
                    logger.exception("scheduler: unexpected error; retrying in %.1fs", backoff)
                self._close_connection()
            self._sleep(max(backoff, self.interval or DEFAULT_INTERVAL))
        self._say(f"scheduler {self.worker_id} stopped ({self.runs} run(s))")

    def start_thread(self) -> threading.Thread:
        """Run the loop in a background thread (it has its own database connection, closed at its end)."""
        thread = threading.Thread(target=self._thread_main, name="scheduler", daemon=True)
        thread.start()
        return thread

    def _thread_main(self) -> None:
        try:
            if self.application_name and connection.vendor == "postgresql":
                # This thread's own connection (Django keeps one per thread): give it
                # its own name instead of the worker's, which is on the shared settings.
                options = {**connection.settings_dict.get("OPTIONS", {}), "application_name": self.application_name}
                connection.settings_dict = {**connection.settings_dict, "OPTIONS": options}
            self.run()
        finally:
            self._close_connection()

    def _close_connection(self) -> None:
        try:
            connection.close()
        except DatabaseError:
            pass

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, SLEEP_SLICE))

    def _say(self, line: str) -> None:
        logger.debug(line)
        if self.stdout is not None:
            self.stdout.write(line + "\n")
            self.stdout.flush()
