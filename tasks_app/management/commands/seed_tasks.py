"""Fill the database with many realistic tasks and their history: seed_tasks --count N.

For benchmarking the monitoring pages on a big table (a million tasks). The
tasks are a mix like a long-lived installation's: about 90% completed, 6%
pending, 2% locked, 2% failed, created over the last 30 days (a higher id is
never older), spread over the stages, some of them successors of an earlier
task (parent and source_stage set). Each task gets a "created" event, and a
"completed", "failed", "claimed" or "released" one where that fits, so task
pages have a history.

Rows are generated in Python from one random.Random(--seed), the same on both
databases, and written --batch-size tasks at a time, each chunk in its own
transaction: with COPY on PostgreSQL (then ANALYZE), with bulk_create on
SQLite. Interrupting it keeps the chunks already written.

It writes rows directly, bypassing the services (no notifications, no
routing): a seeding tool, not a way to create real work.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.utils import timezone

from tasks_app.demo import STAGES as DEMO_STAGES
from tasks_app.demo import load_demo
from tasks_app.management.commands._args import positive_int
from tasks_app.models import Stage, Task, TaskEvent, Transition

SPAN = timedelta(days=30)
DEFAULT_TYPE = "order"
ACTOR = "seed"
# Cumulative shares of the statuses; the rest (2%) are locked.
COMPLETED_UPTO = 0.90
FAILED_UPTO = 0.92
PENDING_UPTO = 0.98
# Share of the tasks at a stage with incoming transitions that are an earlier task's successor.
SUCCESSOR_SHARE = 0.75
# Share of the pending tasks that already had an attempt (attempts >= 1, a "released" event).
RETRIED_SHARE = 0.25
RECENT = 256  # completed tasks per stage remembered as possible parents
ITEMS = ("book", "lamp", "sofa", "mug", "chair", "desk", "cable", "plant", "rug", "pen")
ITEM_COUNTS = (0, 1, 1, 1, 2, 2, 3)
ERRORS = (
    "TimeoutError: payment gateway did not answer in 30s",
    "ConnectionError: inventory service refused the connection",
    "ValueError: order has no numeric 'amount'",
    "KeyError: 'customer_id'",
)
WORKERS = tuple(f"seed-worker-{n}:{4100 + n}:{n * 4099 % 65536:04x}" for n in range(1, 9))
BAR_WIDTH = 30

TASK_FIELDS = (
    "id",
    "stage",
    "type",
    "payload",
    "status",
    "created_at",
    "updated_at",
    "available_at",
    "attempts",
    "lock_token",
    "locked_by",
    "locked_at",
    "locked_until",
    "completed_at",
    "last_error",
    "parent",
    "source_stage",
)
EVENT_FIELDS = ("task", "kind", "at", "actor", "details")
PAYLOAD_AT = TASK_FIELDS.index("payload")
DETAILS_AT = EVENT_FIELDS.index("details")

TaskRow = tuple[Any, ...]
EventRow = tuple[int, str, datetime, str, dict[str, Any]]


def whole_number(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None


@dataclass(frozen=True)
class StagePlan:
    id: int
    slug: str
    types: tuple[str, ...]  # task types of its outgoing transitions, or ("order",)
    sources: tuple[int, ...]  # stages with a transition into it
    lock_timeout: int
    max_attempts: int | None


def stage_plans(stages: Sequence[Stage]) -> list[StagePlan]:
    ids = [s.pk for s in stages]
    types: dict[int, set[str]] = {i: set() for i in ids}
    sources: dict[int, set[int]] = {i: set() for i in ids}
    for source, target, task_type in Transition.objects.values_list("source_id", "target_id", "task_type"):
        if source in types and task_type:
            types[source].add(task_type)
        if target in sources:
            sources[target].add(source)
    return [
        StagePlan(
            id=s.pk,
            slug=s.slug,
            types=tuple(sorted(types[s.pk])) or (DEFAULT_TYPE,),
            sources=tuple(sorted(sources[s.pk])),
            lock_timeout=s.lock_timeout,
            max_attempts=s.max_attempts,
        )
        for s in stages
    ]


class Generator:
    """The rows of `count` tasks, chunk by chunk; the same --seed gives the same rows."""

    def __init__(self, plans: Sequence[StagePlan], *, count: int, seed: int, now: datetime) -> None:
        self.plans = list(plans)
        self.rng = random.Random(seed)
        self.now = now
        self.start = now - SPAN
        self.step = SPAN / count
        self.done = 0
        self.statuses: Counter[str] = Counter()
        self.events = 0
        # Per stage, a ring of recently completed tasks: (id, completed_at, payload).
        self.recent: dict[int, list[tuple[int, datetime, dict[str, Any]]]] = {p.id: [] for p in self.plans}

    def chunk(self, ids: Sequence[int]) -> tuple[list[TaskRow], list[EventRow]]:
        tasks: list[TaskRow] = []
        events: list[EventRow] = []
        rng, now, plans = self.rng, self.now, self.plans
        rand, choice, randint = rng.random, rng.choice, rng.randint
        for task_id in ids:
            plan = choice(plans)
            created = self.start + self.step * self.done
            self.done += 1
            parent_id = source_id = None
            payload: dict[str, Any] | None = None
            if plan.sources and rand() < SUCCESSOR_SHARE:
                source = choice(plan.sources)
                ring = self.recent.get(source)
                if ring:
                    candidate_id, finished, parent_payload = choice(ring)
                    if finished <= created:
                        parent_id, source_id = candidate_id, source
                        payload = {**parent_payload, "checked": True}
            if payload is None:
                payload = {
                    "order_id": task_id,
                    "customer_id": task_id % 5000,
                    "amount": randint(5, 1500),
                    "items": rng.sample(ITEMS, choice(ITEM_COUNTS)),
                }
            created_details: dict[str, Any] = {"parent": parent_id} if parent_id else {}
            events.append((task_id, TaskEvent.Kind.CREATED.value, created, ACTOR, created_details))

            r = rand()
            lock_token = locked_by = last_error = ""
            locked_at = locked_until = completed_at = None
            available_at = updated_at = created
            if r < COMPLETED_UPTO:
                status = Task.Status.COMPLETED.value
                attempts = 1 if rand() < 0.95 else randint(2, 3)
                duration = round(0.05 + rand() * 20, 3)
                completed_at = updated_at = min(created + timedelta(seconds=duration), now)
                events.append(
                    (
                        task_id,
                        TaskEvent.Kind.COMPLETED.value,
                        completed_at,
                        choice(WORKERS),
                        {"attempt": attempts, "duration": duration, "sent": []},
                    )
                )
                ring = self.recent[plan.id]
                entry = (task_id, completed_at, payload)
                if len(ring) < RECENT:
                    ring.append(entry)
                else:
                    ring[task_id % RECENT] = entry
            elif r < FAILED_UPTO:
                status = Task.Status.FAILED.value
                attempts = plan.max_attempts or randint(1, 3)
                last_error = choice(ERRORS)
                updated_at = min(created + timedelta(seconds=1 + rand() * 600), now)
                details: dict[str, Any] = {"attempt": attempts, "error": last_error, "traceback": ""}
                if plan.max_attempts:
                    details["reason"] = f"max attempts ({plan.max_attempts}) reached"
                events.append((task_id, TaskEvent.Kind.FAILED.value, updated_at, choice(WORKERS), details))
            elif r < PENDING_UPTO:
                status = Task.Status.PENDING.value
                attempts = 0
                if rand() < RETRIED_SHARE:
                    attempts = randint(1, 2)
                    last_error = choice(ERRORS)
                    updated_at = min(created + timedelta(seconds=1 + rand() * 60), now)
                    available_at = updated_at + timedelta(seconds=5 * 2 ** (attempts - 1))
                    events.append(
                        (
                            task_id,
                            TaskEvent.Kind.RELEASED.value,
                            updated_at,
                            choice(WORKERS),
                            {
                                "attempt": attempts,
                                "error": last_error,
                                "traceback": "",
                                "retry_at": available_at.isoformat(),
                            },
                        )
                    )
            else:
                status = Task.Status.LOCKED.value
                attempts = randint(1, 2)
                lock_token = f"{rng.getrandbits(128):032x}"
                locked_by = choice(WORKERS)
                # Claimed within the last two lock timeouts: about half the locks have expired.
                locked_at = updated_at = max(created, now - timedelta(seconds=rand() * 2 * plan.lock_timeout))
                locked_until = locked_at + timedelta(seconds=plan.lock_timeout)
                events.append(
                    (
                        task_id,
                        TaskEvent.Kind.CLAIMED.value,
                        locked_at,
                        locked_by,
                        {"attempt": attempts, "locked_until": locked_until.isoformat(), "reclaimed_from": None},
                    )
                )
            self.statuses[status] += 1
            tasks.append(
                (
                    task_id,
                    plan.id,
                    choice(plan.types),
                    payload,
                    status,
                    created,
                    updated_at,
                    available_at,
                    attempts,
                    lock_token,
                    locked_by,
                    locked_at,
                    locked_until,
                    completed_at,
                    last_error,
                    parent_id,
                    source_id,
                )
            )
        self.events += len(events)
        return tasks, events


# -- writing -------------------------------------------------------------------


def reserve_task_ids(n: int) -> list[int]:
    """Ids for the next n tasks (inside the chunk's transaction): parents and events need them up front."""
    table = Task._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [table, n])
            return sorted(row[0] for row in cursor.fetchall())
        # SQLite: the transaction holds the write lock, so nobody takes these meanwhile.
        # AUTOINCREMENT never reuses an id, not even a deleted task's: start past sqlite_sequence too.
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {connection.ops.quote_name(table)}")
        last = cursor.fetchone()[0]
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'")
        if cursor.fetchone():
            cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
            row = cursor.fetchone()
            last = max(last, row[0] if row else 0)
        return list(range(last + 1, last + 1 + n))


def columns(model: type[Task] | type[TaskEvent], fields: Sequence[str]) -> str:
    return ", ".join(connection.ops.quote_name(model._meta.get_field(f).column) for f in fields)


def write_postgresql(tasks: list[TaskRow], events: list[EventRow]) -> None:
    dumps = json.dumps
    task_sql = f"COPY {Task._meta.db_table} ({columns(Task, TASK_FIELDS)}) FROM STDIN"
    event_sql = f"COPY {TaskEvent._meta.db_table} ({columns(TaskEvent, EVENT_FIELDS)}) FROM STDIN"
    with connection.cursor() as cursor, connection.wrap_database_errors:
        with cursor.copy(task_sql) as copy:
            for row in tasks:
                copy.write_row((*row[:PAYLOAD_AT], dumps(row[PAYLOAD_AT]), *row[PAYLOAD_AT + 1 :]))
        with cursor.copy(event_sql) as copy:
            for row in events:
                copy.write_row((*row[:DETAILS_AT], dumps(row[DETAILS_AT])))


def write_with_orm(tasks: list[TaskRow], events: list[EventRow]) -> None:
    task_attrs = [Task._meta.get_field(f).attname for f in TASK_FIELDS]
    event_attrs = [TaskEvent._meta.get_field(f).attname for f in EVENT_FIELDS]
    Task.objects.bulk_create([Task(**dict(zip(task_attrs, row, strict=True))) for row in tasks])
    TaskEvent.objects.bulk_create([TaskEvent(**dict(zip(event_attrs, row, strict=True))) for row in events])


# -- the command ---------------------------------------------------------------


def progress_line(done: int, total: int, elapsed: float) -> str:
    filled = BAR_WIDTH * done // total
    rate = done / elapsed if elapsed > 0 else 0.0
    width = len(f"{total:,}")
    return (
        f"seeding {done:>{width},}/{total:,} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
        f"{100 * done // total:3d}% {rate:,.0f} tasks/s"
    )


def chunks(count: int, size: int) -> Iterator[int]:
    for start in range(0, count, size):
        yield min(size, count - start)


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
            help="Only these stages (default: all). Missing demo stages are created with the demo workflow.",
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=10_000,
            help="Tasks written per transaction (default 10000).",
        )
        parser.add_argument(
            "--seed", type=whole_number, default=0, help="Random seed: the same seed gives the same data."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count: int = options["count"]
        stages = self.stages(options["stages"])
        plans = stage_plans(stages)
        generator = Generator(plans, count=count, seed=options["seed"], now=timezone.now())
        write = write_postgresql if connection.vendor == "postgresql" else write_with_orm
        tty = self.stdout.isatty()
        started = last_shown = time.monotonic()
        for size in chunks(count, options["batch_size"]):
            with transaction.atomic():
                tasks, events = generator.chunk(reserve_task_ids(size))
                write(tasks, events)
            now = time.monotonic()
            finished = generator.done == count
            if tty or finished or now - last_shown >= 1.0:
                last_shown = now
                line = progress_line(generator.done, count, now - started)
                self.stdout.write(line, ending="\r" if tty and not finished else "\n")
                self.stdout.flush()
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"ANALYZE {Task._meta.db_table}, {TaskEvent._meta.db_table}")
        elapsed = time.monotonic() - started
        mix = ", ".join(f"{generator.statuses[s]:,} {s}" for s in Task.Status.values)
        self.stdout.write(
            f"seeded {count:,} tasks ({mix}) and {generator.events:,} events "
            f"at {len(plans)} stage{'s' if len(plans) != 1 else ''} ({', '.join(p.slug for p in plans)}) "
            f"in {elapsed:.1f}s ({count / elapsed:,.0f} tasks/s)"
        )

    def stages(self, slugs: list[str] | None) -> list[Stage]:
        """The stages to seed, after loading the demo workflow if it is needed; checks before writing."""
        demo = {slug for slug, *_ in DEMO_STAGES}
        if slugs:
            slugs = list(dict.fromkeys(slugs))
            found = set(Stage.objects.filter(slug__in=slugs).values_list("slug", flat=True))
            unknown = [s for s in slugs if s not in found and s not in demo]
            if unknown:
                known = sorted(set(Stage.objects.values_list("slug", flat=True)) | demo)
                raise CommandError(
                    f"unknown stage{'s' if len(unknown) > 1 else ''} {', '.join(repr(s) for s in unknown)}"
                    f" (known: {', '.join(known)})"
                )
            if len(found) < len(slugs):
                load_demo(with_orders=False)
            return list(Stage.objects.filter(slug__in=slugs).order_by("slug"))
        if not Stage.objects.exists():
            load_demo(with_orders=False)
        return list(Stage.objects.order_by("slug"))
