"""Run job stages at the due times of their cron schedules (run_worker does the same in a thread)."""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import connection

from tasks_app.management.commands._args import positive_float
from tasks_app.management.commands._output import JsonOutputCommand
from tasks_app.models import JobRun, Stage
from tasks_app.services.jobs import job_run_now
from tasks_app.worker import default_worker_id
from tasks_app.worker.scheduler import Scheduler, run_summary


class Command(JsonOutputCommand):
    output_logger = "tasks_app.scheduler"
    help = (
        "Run job stages when their cron schedule is due, until stopped (SIGTERM/SIGINT let a running job finish). "
        "Several schedulers may run at once: each due time runs once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval",
            type=positive_float,
            default=None,
            help="Seconds between looks for due jobs (default TASKS_SCHEDULER_INTERVAL, or 1).",
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--once", action="store_true", help="Run the jobs that are due now, then exit.")
        mode.add_argument(
            "--run-now",
            metavar="SLUG",
            default=None,
            help="Run this job stage now, whatever its schedule, then exit (non-zero if the run fails).",
        )
        parser.add_argument(
            "--worker-id", default=None, help="Name shown in job runs and task locks (default host:pid:random)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        worker_id = options["worker_id"] or default_worker_id()
        if not worker_id.strip():
            raise CommandError("--worker-id must not be empty")
        stage = self._job_stage(options["run_now"]) if options["run_now"] else None
        if connection.vendor == "postgresql":
            # Shows the scheduler in pg_stat_activity, on this connection and on reconnects.
            connection.settings_dict.setdefault("OPTIONS", {})["application_name"] = worker_id[:63]
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('application_name', %s, false)", [worker_id[:63]])
        scheduler = Scheduler(worker_id=worker_id, interval=options["interval"], stdout=self.stdout)
        if stage is not None:
            self._run_now(stage, worker_id)
        elif options["once"]:
            if not scheduler.tick():
                self.stdout.write("no job due")
        else:
            self._install_signals(scheduler)
            scheduler.run()

    def _job_stage(self, slug: str) -> Stage:
        stage = Stage.objects.filter(slug=slug).first()
        if stage is None:
            raise CommandError(f"unknown stage: {slug}")
        if stage.kind != Stage.Kind.JOB:
            raise CommandError(f"not a job stage: {slug} is a {stage.kind} stage")
        if stage.is_paused:
            # A paused stage hands out no tasks: the run would see none of them.
            raise CommandError(f"job stage {slug} is paused; resume it first")
        return stage

    def _run_now(self, stage: Stage, worker_id: str) -> None:
        run = job_run_now(stage=stage, worker_id=worker_id)
        if run is None:
            raise CommandError(f"job {stage.slug} already has a run for this second; try again")
        self.stdout.write(run_summary(run))
        if run.status != JobRun.Status.SUCCEEDED:
            raise CommandError(f"job {stage.slug} {run.status}")

    def _install_signals(self, scheduler: Scheduler) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            if scheduler.stop_requested:
                # Second signal: leave now; the run stays "running" and its task locks expire.
                os._exit(128 + signum)
            self.stdout.write(f"signal {signum}: stopping after the running job, if any")
            scheduler.stop_requested = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
