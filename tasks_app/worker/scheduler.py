"""The scheduler loop behind `manage.py run_scheduler` and run_worker's scheduler thread.

Every `interval` seconds it runs the job stages that are due
(services.jobs.jobs_run_due). Any number of schedulers may run side by side:
the unique JobRun row per (stage, due time) decides which one runs a due time.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, connection

from tasks_app.models import JobRun
from tasks_app.services.jobs import jobs_run_due
from tasks_app.worker.pacing import (
    Backoff,
    TextOut,
    close_connection,
    close_old_connections_outside_transactions,
    nap,
    say,
)

# Its own name (not tasks_app.worker.scheduler): run_scheduler's output and log filters use it.
logger = logging.getLogger("tasks_app.scheduler")

DEFAULT_INTERVAL = 1.0  # seconds between looks for due jobs, unless TASKS_SCHEDULER_INTERVAL says otherwise


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
    stdout: TextOut | None = None
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
        close_old_connections_outside_transactions()
        runs = jobs_run_due(worker_id=self.worker_id, now=now)
        self.runs += len(runs)
        for run in runs:
            self._say(run_summary(run))
        return runs

    def run(self) -> None:
        """Tick every `interval` s until stop_requested; errors are logged and retried after a backoff."""
        self._say(f"scheduler {self.worker_id} started (every {self.interval:g}s)")
        backoff = Backoff()
        while not self.stop_requested:
            try:
                self.tick()
                backoff.reset()
            except Exception as exc:
                # The database went away (or something unforeseen): never die, try again later.
                pause = backoff.failed()
                if isinstance(exc, DatabaseError):
                    logger.error("scheduler: database error (%s); retrying in %.1fs", exc, pause)
                else:
                    logger.exception("scheduler: unexpected error; retrying in %.1fs", pause)
                close_connection()
            nap(max(backoff.seconds, self.interval or DEFAULT_INTERVAL), stop=lambda: self.stop_requested)
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
            close_connection()

    def _say(self, line: str) -> None:
        say(logger, self.stdout, line)
