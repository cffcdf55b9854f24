"""Run a worker: claim tasks of script stages, run their handlers, complete them.

Unless --no-scheduler, it also runs due job stages: in a background thread
(with its own database connection), or once before draining with --once.
"""

from __future__ import annotations

import argparse
import os
import signal
from types import FrameType
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import connection

from tasks_app.limits import MAX_CONCURRENCY, MAX_LOCK_TIMEOUT
from tasks_app.management.commands._args import int_up_to, non_negative_float, positive_float, positive_int
from tasks_app.management.commands._output import JsonOutputCommand
from tasks_app.models import Stage
from tasks_app.services import MAX_CLAIM_BATCH
from tasks_app.worker import Worker, default_worker_id
from tasks_app.worker.scheduler import Scheduler


def batch_size(raw: str) -> int:
    value = positive_int(raw)
    if value > MAX_CLAIM_BATCH:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_CLAIM_BATCH}, got {value}")
    return value


class Command(JsonOutputCommand):
    output_logger = "tasks_app.worker"
    help = "Claim and run tasks of script stages until stopped (SIGTERM/SIGINT finish the current task)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stage",
            action="append",
            default=[],
            metavar="SLUG",
            help="Serve this stage (repeatable); default: every script stage.",
        )
        parser.add_argument(
            "--batch-size",
            type=batch_size,
            default=10,
            help=f"Tasks claimed per statement (1-{MAX_CLAIM_BATCH}).",
        )
        parser.add_argument(
            "--lock-timeout",
            type=int_up_to(MAX_LOCK_TIMEOUT),
            default=None,
            help=f"Seconds a claim holds a task (1-{MAX_LOCK_TIMEOUT}); default: the stage's lock_timeout.",
        )
        parser.add_argument(
            "--poll-interval",
            type=positive_float,
            default=None,
            help="Seconds to sleep when idle (default TASKS_POLL_INTERVAL).",
        )
        parser.add_argument(
            "--concurrency",
            type=int_up_to(MAX_CONCURRENCY),
            default=1,
            help=f"Handler slots (threads) in this process, 1-{MAX_CONCURRENCY}; run more processes for CPU-bound "
            "handlers.",
        )
        parser.add_argument(
            "--no-listen",
            action="store_true",
            help="Don't LISTEN for new-work notifications (PgBouncer in transaction mode); poll only.",
        )
        parser.add_argument(
            "--progress-interval",
            type=non_negative_float,
            default=10.0,
            help="Seconds between progress lines (0 = none).",
        )
        parser.add_argument("--once", action="store_true", help="Run the due jobs, drain what is claimable, then exit.")
        parser.add_argument(
            "--no-scheduler",
            action="store_true",
            help="Don't run job stages here (run_scheduler or other workers do); default: a scheduler thread.",
        )
        parser.add_argument("--max-tasks", type=positive_int, default=None, help="Exit after this many tasks.")
        parser.add_argument(
            "--worker-id", default=None, help="Name shown in locks, history and the registry (default host:pid:random)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        slugs = options["stage"]
        if slugs:
            kinds = dict(Stage.objects.filter(slug__in=slugs).values_list("slug", "kind"))
            unknown = [s for s in slugs if s not in kinds]
            if unknown:
                raise CommandError(f"unknown stage(s): {', '.join(unknown)}")
            not_script = [s for s in slugs if kinds[s] != Stage.Kind.SCRIPT]
            if not_script:
                raise CommandError(
                    f"not script stage(s): {', '.join(not_script)}; workers run the handlers of script stages only"
                )
        worker_id = options["worker_id"] or default_worker_id()
        if not worker_id.strip():
            raise CommandError("--worker-id must not be empty")
        if connection.vendor == "postgresql":
            # Shows the worker in pg_stat_activity, on this connection and on reconnects.
            connection.settings_dict.setdefault("OPTIONS", {})["application_name"] = worker_id[:63]
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('application_name', %s, false)", [worker_id[:63]])
        worker = Worker(
            stage_slugs=slugs,
            batch_size=options["batch_size"],
            lock_timeout=options["lock_timeout"],
            poll_interval=options["poll_interval"],
            worker_id=worker_id,
            max_tasks=options["max_tasks"],
            concurrency=options["concurrency"],
            listen=not options["no_listen"],
            progress_interval=options["progress_interval"],
            stdout=self.stdout,
        )

        # Its own id: job runs claim tasks in its name, and the worker hands back any
        # task locked in *its* name that it doesn't hold after database trouble.
        scheduler = None
        if not options["no_scheduler"]:
            scheduler = Scheduler(
                worker_id=f"{worker_id}/scheduler",
                stdout=self.stdout_for("tasks_app.scheduler"),
                application_name=f"{worker_id[:53]} scheduler",
            )

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if worker.stop_requested:
                # Second signal: leave now; held locks expire as usual.
                os._exit(128 + signum)
            self.stdout.write(f"signal {signum}: stopping: running handlers finish, unstarted tasks are handed back")
            worker.stop_requested = True
            if scheduler is not None:
                scheduler.stop_requested = True  # no new job starts; a running one finishes

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if scheduler is not None and options["once"]:
            # Here, before draining, so that what the due jobs send to script stages is drained too.
            scheduler.tick()
            scheduler = None
        thread = scheduler.start_thread() if scheduler is not None else None
        try:
            worker.run(once=options["once"])
        finally:
            if scheduler is not None and thread is not None:
                scheduler.stop_requested = True
                thread.join()  # a running job finishes (a second signal exits at once)
