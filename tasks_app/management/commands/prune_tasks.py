"""Delete old finished tasks and their history: prune_tasks --older-than 30d.

The rules (which tasks, how old, lineage, batches) are in
tasks_app.services.retention; this command parses the flags and reports.
"""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from tasks_app.management.commands._args import positive_int
from tasks_app.services.retention import PRUNABLE, PruneBatch, PruneResult, tasks_prune

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
AGE = re.compile(r"(\d+)\s*([smhdw]?)", re.IGNORECASE)


def age(raw: str) -> timedelta:
    """30d, 12h, 90m, 45s, 2w; a bare number is days."""
    found = AGE.fullmatch(raw.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"expected an age like 30d, 12h, 90m, 45s or 2w, got {raw!r}")
    if len(found[1]) > 12:
        raise argparse.ArgumentTypeError(f"too long ago: {raw!r}")
    number, unit = int(found[1]), (found[2] or "d").lower()
    if number == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {raw!r} (that would prune every finished task)")
    try:
        delta = timedelta(**{UNITS[unit]: number})
        timezone.now() - delta  # the cutoff must be a date
    except OverflowError:
        raise argparse.ArgumentTypeError(f"too long ago: {raw!r}") from None
    return delta


def prunable_status(raw: str) -> str:
    if raw in PRUNABLE:
        return raw
    if raw in ("pending", "locked"):
        raise argparse.ArgumentTypeError(f"{raw} tasks are never pruned (they are work still to be done)")
    raise argparse.ArgumentTypeError(f"expected completed, failed or cancelled, got {raw!r}")


class Command(BaseCommand):
    help = (
        "Delete completed, failed and cancelled tasks older than --older-than, with their history, in batches: "
        "prune_tasks --older-than 30d [--status completed --status failed --status cancelled] [--batch-size 10000] "
        "[--dry-run]. "
        "Pending and locked tasks are never deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=age,
            required=True,
            metavar="AGE",
            help="Finished longer ago than this: 30d, 12h, 90m, 45s, 2w (a bare number is days). "
            "Completed tasks count from completed_at, failed and cancelled ones from updated_at.",
        )
        parser.add_argument(
            "--status",
            type=prunable_status,
            action="append",
            metavar="STATUS",
            help="completed, failed or cancelled; repeat for several (default: all three).",
        )
        parser.add_argument(
            "--batch-size", type=positive_int, default=10_000, help="Tasks deleted per transaction (default 10000)."
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run: bool = options["dry_run"]
        verb = "would delete" if dry_run else "deleted"
        # On a terminal each batch overwrites the last one's line; in a log, one line per batch.
        tty = self.stdout.isatty()

        def progress(batch: PruneBatch, total: PruneResult) -> None:
            self.stdout.write(
                f"batch {batch.number}: {verb} {batch.tasks:,} {batch.status} tasks, {batch.events:,} events "
                f"in {batch.seconds:.2f}s ({total.tasks:,} tasks so far)",
                ending="\r" if tty else "\n",
            )
            self.stdout.flush()

        result = tasks_prune(
            older_than=options["older_than"],
            statuses=options["status"] or PRUNABLE,
            batch_size=options["batch_size"],
            dry_run=dry_run,
            progress=progress,
        )
        if tty and result.batches:
            self.stdout.write("")
        self.stdout.write(
            f"{'dry run: ' if dry_run else ''}{verb} {result.tasks:,} tasks and {result.events:,} events "
            f"in {result.batches:,} batch{'es' if result.batches != 1 else ''}; "
            f"{result.unlinked:,} surviving tasks {'would lose' if dry_run else 'lost'} their parent link; "
            f"{result.job_runs:,} job runs {verb}"
        )
