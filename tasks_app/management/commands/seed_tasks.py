"""Fill the database with many realistic tasks and their history: seed_tasks --count N.

A benchmark tool: the data and how it is written are tasks_app.seeding's; this
command parses the flags, shows progress and prints a summary.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks_app.demo import DemoUnavailable
from tasks_app.management.commands._args import positive_int
from tasks_app.seeding import UnknownStages, seed_stages, seed_tasks
from tasks_app.seeding.generator import COMPLETED, FAILED, LOCKED, PENDING

BAR_WIDTH = 30


def whole_number(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None


def progress_line(done: int, total: int, elapsed: float) -> str:
    filled = BAR_WIDTH * done // total
    rate = done / elapsed if elapsed > 0 else 0.0
    width = len(f"{total:,}")
    return (
        f"seeding {done:>{width},}/{total:,} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
        f"{100 * done // total:3d}% {rate:,.0f} tasks/s"
    )


class Command(BaseCommand):
    help = (
        "Create N realistic tasks with their history, fast, for benchmarks: "
        "seed_tasks --count 1000000 [--stages SLUG ...]. Loads the demo workflow if there are no stages."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=positive_int, required=True, help="How many tasks to create.")
        parser.add_argument(
            "--stages",
            nargs="+",
            metavar="SLUG",
            help="Only at these stages (default: all). Demo stages that are missing are created.",
        )
        parser.add_argument(
            "--batch-size", type=positive_int, default=10_000, help="Tasks written per transaction (default 10000)."
        )
        parser.add_argument(
            "--seed", type=whole_number, default=0, help="Random seed (default 0): the same seed, the same data."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count: int = options["count"]
        try:
            stages = seed_stages(options["stages"])
        except (UnknownStages, DemoUnavailable) as exc:
            raise CommandError(str(exc)) from None
        tty = self.stdout.isatty()
        started = last_shown = time.monotonic()

        def progress(done: int) -> None:
            nonlocal last_shown
            now = time.monotonic()
            if tty or done == count or now - last_shown >= 1.0:
                last_shown = now
                line = progress_line(done, count, now - started)
                self.stdout.write(line, ending="\r" if tty and done < count else "\n")
                self.stdout.flush()

        result = seed_tasks(
            stages, count=count, batch_size=options["batch_size"], seed=options["seed"], progress=progress
        )
        elapsed = time.monotonic() - started
        mix = ", ".join(f"{result.statuses.get(s, 0):,} {s}" for s in (COMPLETED, FAILED, PENDING, LOCKED))
        plans = result.plans
        self.stdout.write(
            f"seeded {count:,} tasks ({mix}) and {result.events:,} events"
            f" at {len(plans)} stage{'s' if len(plans) != 1 else ''} ({', '.join(p.slug for p in plans)})"
            f" in {elapsed:.1f}s{' including ANALYZE' if result.analyzed else ''} ({count / elapsed:,.0f} tasks/s)"
        )
