"""Fill the database with many realistic tasks and their history: seed_tasks --count N.

For benchmarking the monitoring pages on a big table: a million tasks (and
their ~2 million events) take about a minute on PostgreSQL on 2 cores.

The tasks are a mix like a long-lived installation's: about 90% completed, 6%
pending (a quarter of them waiting for a retry), 2% locked (about half of
those locks expired), 2% failed; created over the last 30 days, a higher id
never older; spread evenly over the stages, typed by the stage's outgoing
transitions ("order" where they name no type); at stages with incoming
transitions, most tasks are the successor of an earlier completed task at a
source stage (parent and source_stage set, its order in the payload). Each
task gets a "created" event, and a "completed", "failed", "claimed" or
"released" one where that fits, so task pages have a history.

The rows come from one random.Random(--seed), the same on both databases, and
are written --batch-size tasks at a time, each chunk in its own transaction:
with COPY on PostgreSQL (then ANALYZE), with bulk_create on SQLite. A thread
makes the next chunk while the database writes the last one (on PostgreSQL
the server is the bottleneck). Stopping it keeps the chunks already written.
The task ids are taken from the table's sequence before the first chunk
(parents and events need them up front), so other writers can go on
inserting meanwhile.

It writes rows directly, bypassing the services (no notifications, no
routing): a tool for benchmarks and demos, not a way to create real work.
"""

from __future__ import annotations

import argparse
import gc
import json
import queue
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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
ITEM_COUNTS = (0, 1, 1, 1, 2, 2, 3)  # how many items an order has, as weights
# The "items" arrays of new orders, as JSON text.
ITEMS_JSON = tuple(
    json.dumps([ITEMS[(n * 7 + k * 3) % len(ITEMS)] for k in range(size)])
    for n in range(len(ITEMS))
    for size in ITEM_COUNTS
)
ERRORS = (
    "TimeoutError: payment gateway did not answer in 30s",
    "ConnectionError: inventory service refused the connection",
    "ValueError: order has no numeric 'amount'",
    "KeyError: 'customer_id'",
)
WORKERS = tuple(f"seed-worker-{n}:{4100 + n}:{n * 4099 % 65536:04x}" for n in range(1, 9))
BAR_WIDTH = 30

CREATED = TaskEvent.Kind.CREATED.value
CLAIMED = TaskEvent.Kind.CLAIMED.value
RELEASED = TaskEvent.Kind.RELEASED.value
COMPLETED = Task.Status.COMPLETED.value
FAILED = Task.Status.FAILED.value
PENDING = Task.Status.PENDING.value
LOCKED = Task.Status.LOCKED.value

# Rows are tuples in these field orders, ready for the database: times as ISO
# 8601 text, payloads and details as JSON text (formatting them once, in the
# generator, is most of what makes the PostgreSQL path fast).
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
TaskRow = tuple[Any, ...]
EventRow = tuple[int, str, str, str, str]


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
    types: dict[int, set[str]] = {s.pk: set() for s in stages}
    sources: dict[int, set[int]] = {s.pk: set() for s in stages}
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
    """The rows of `count` tasks and their events, chunk by chunk; the same seed gives the same rows."""

    def __init__(self, plans: Sequence[StagePlan], *, count: int, seed: int, now: datetime) -> None:
        self.plans = list(plans)
        self.rng = random.Random(seed)
        self.now = now
        self.step = SPAN / count
        self.created = now - SPAN  # of the next task
        self.done = 0
        self.statuses: Counter[str] = Counter()
        self.events = 0
        # Per stage, a ring of recently completed tasks: (id, completed_at, the order's payload JSON).
        self.recent: dict[int, list[tuple[int, datetime, str]]] = {p.id: [] for p in self.plans}

    def chunk(self, ids: Sequence[int]) -> tuple[list[TaskRow], list[EventRow]]:
        tasks: list[TaskRow] = []
        events: list[EventRow] = []
        add_task, add_event = tasks.append, events.append
        rng, now, plans, recent = self.rng, self.now, self.plans, self.recent
        rand = rng.random  # plans[int(rand() * n)] is several times faster than rng.choice(plans)
        n_plans, n_workers, n_errors, n_items = len(plans), len(WORKERS), len(ERRORS), len(ITEMS_JSON)
        second = timedelta(seconds=1)
        created, step = self.created, self.step
        statuses = dict.fromkeys((COMPLETED, FAILED, PENDING, LOCKED), 0)
        for task_id in ids:
            plan = plans[int(rand() * n_plans)]
            created_at = created.isoformat()
            parent_id = source_id = None
            order = payload = ""
            if plan.sources and rand() < SUCCESSOR_SHARE:
                source = plan.sources[int(rand() * len(plan.sources))]
                ring = recent.get(source)
                if ring:
                    candidate, finished, order = ring[int(rand() * len(ring))]
                    if finished <= created:
                        parent_id, source_id = candidate, source
                        payload = order[:-1] + ', "checked": true}'
            if not payload:
                order = payload = (
                    f'{{"order_id": {task_id}, "customer_id": {task_id % 5000}, '
                    f'"amount": {5 + int(rand() * 1496)}, "items": {ITEMS_JSON[int(rand() * n_items)]}}}'
                )
            add_event((task_id, CREATED, created_at, ACTOR, f'{{"parent": {parent_id}}}' if parent_id else "{}"))
            worker = WORKERS[int(rand() * n_workers)]
            lock_token = locked_by = last_error = ""
            locked_at = locked_until = completed_at = None
            available_at = updated_at = created_at
            r = rand()
            if r < COMPLETED_UPTO:
                status = COMPLETED
                attempts = 1 if rand() < 0.95 else 2 + int(rand() * 2)
                duration = round(0.05 + rand() * 20, 3)
                finished = min(created + duration * second, now)
                completed_at = updated_at = finished.isoformat()
                details = f'{{"attempt": {attempts}, "duration": {duration!r}, "sent": []}}'
                add_event((task_id, COMPLETED, completed_at, worker, details))
                ring = recent[plan.id]
                if len(ring) < RECENT:
                    ring.append((task_id, finished, order))
                else:
                    ring[task_id % RECENT] = (task_id, finished, order)
            elif r < FAILED_UPTO:
                status = FAILED
                attempts = plan.max_attempts or 1 + int(rand() * 3)
                last_error = ERRORS[int(rand() * n_errors)]
                updated_at = min(created + (1 + rand() * 600) * second, now).isoformat()
                failure: dict[str, Any] = {"attempt": attempts, "error": last_error, "traceback": ""}
                if plan.max_attempts:
                    failure["reason"] = f"max attempts ({plan.max_attempts}) reached"
                add_event((task_id, FAILED, updated_at, worker, json.dumps(failure)))
            elif r < PENDING_UPTO:
                status = PENDING
                attempts = 0
                if rand() < RETRIED_SHARE:
                    attempts = 1 + int(rand() * 2)
                    last_error = ERRORS[int(rand() * n_errors)]
                    released = min(created + (1 + rand() * 60) * second, now)
                    updated_at = released.isoformat()
                    available_at = (released + 5 * 2 ** (attempts - 1) * second).isoformat()
                    details = json.dumps(
                        {"attempt": attempts, "error": last_error, "traceback": "", "retry_at": available_at}
                    )
                    add_event((task_id, RELEASED, updated_at, worker, details))
            else:
                status = LOCKED
                attempts = 1 + int(rand() * 2)
                lock_token = f"{rng.getrandbits(128):032x}"
                locked_by = worker
                # Claimed within the last two lock timeouts: about half of these locks have expired.
                claimed = max(created, now - rand() * 2 * plan.lock_timeout * second)
                locked_at = updated_at = claimed.isoformat()
                locked_until = (claimed + plan.lock_timeout * second).isoformat()
                details = json.dumps({"attempt": attempts, "locked_until": locked_until, "reclaimed_from": None})
                add_event((task_id, CLAIMED, locked_at, worker, details))
            statuses[status] += 1
            add_task(
                (
                    task_id,
                    plan.id,
                    plan.types[int(rand() * len(plan.types))],
                    payload,
                    status,
                    created_at,
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
            created += step
        self.created = created
        self.done += len(tasks)
        self.statuses.update(statuses)
        self.events += len(events)
        return tasks, events


# -- writing -------------------------------------------------------------------


def reserve_task_ids(n: int) -> Sequence[int]:
    """Take n ids from the task table's sequence, as a sequence would hand them out to n INSERTs."""
    table = Task._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "WITH ids AS MATERIALIZED ("
                "  SELECT nextval(pg_get_serial_sequence(%s, 'id')) AS id FROM generate_series(1, %s))"
                " SELECT min(id), max(id), count(*),"
                "   CASE WHEN max(id) - min(id) + 1 <> count(*) THEN array_agg(id ORDER BY id) END"
                " FROM ids",
                [table, n],
            )
            first, last, _, scattered = cursor.fetchone()
            # Other sessions taking ids meanwhile leave gaps: then the list it is.
            return range(first, last + 1) if scattered is None else scattered
        # SQLite: AUTOINCREMENT hands out max(sqlite_sequence, max(id)) + 1, so moving
        # sqlite_sequence on reserves the ids in between (the transaction holds the write lock).
        quoted = connection.ops.quote_name(table)
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {quoted}")
        last = cursor.fetchone()[0]
        cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
        row = cursor.fetchone()
        last = max(last, row[0] if row else 0)
        if row:
            cursor.execute("UPDATE sqlite_sequence SET seq = %s WHERE name = %s", [last + n, table])
        else:
            cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, last + n])
        return range(last + 1, last + 1 + n)


def columns(model: type[Task] | type[TaskEvent], fields: Sequence[str]) -> str:
    return ", ".join(connection.ops.quote_name(model._meta.get_field(f).column) for f in fields)


NULL = "\\N"
COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
needs_escape = re.compile(r"[\\\t\n\r]").search


def copy_text(value: str) -> str:
    """A string as a field of COPY's text format."""
    return value.translate(COPY_ESCAPES) if needs_escape(value) else value


def task_lines(rows: list[TaskRow]) -> str:
    """Task rows in COPY's text format (several times faster than psycopg's write_row)."""
    text = copy_text
    return "".join(
        [
            f"{task_id}\t{stage_id}\t{text(type_)}\t{text(payload)}\t{status}\t{created}\t{updated}\t{available}"
            f"\t{attempts}\t{text(token)}\t{text(locked_by)}\t{locked_at or NULL}\t{locked_until or NULL}"
            f"\t{completed_at or NULL}\t{text(error)}\t{parent_id or NULL}\t{source_id or NULL}\n"
            for (
                task_id,
                stage_id,
                type_,
                payload,
                status,
                created,
                updated,
                available,
                attempts,
                token,
                locked_by,
                locked_at,
                locked_until,
                completed_at,
                error,
                parent_id,
                source_id,
            ) in rows
        ]
    )


def event_lines(rows: list[EventRow]) -> str:
    text = copy_text
    return "".join(
        [f"{task_id}\t{kind}\t{at}\t{text(actor)}\t{text(details)}\n" for task_id, kind, at, actor, details in rows]
    )


class PostgresWriter:
    """COPY in text format; the text is made in the producer thread."""

    def __init__(self) -> None:
        quote = connection.ops.quote_name
        self.task_sql = f"COPY {quote(Task._meta.db_table)} ({columns(Task, TASK_FIELDS)}) FROM STDIN"
        self.event_sql = f"COPY {quote(TaskEvent._meta.db_table)} ({columns(TaskEvent, EVENT_FIELDS)}) FROM STDIN"

    def prepare(self, tasks: list[TaskRow], events: list[EventRow]) -> tuple[str, str]:
        return task_lines(tasks), event_lines(events)

    def write(self, prepared: tuple[str, str]) -> None:
        task_text, event_text = prepared
        with connection.cursor() as cursor, connection.wrap_database_errors:
            # A seed chunk lost to a crash is harmless: don't wait for the WAL flush.
            cursor.execute("SET LOCAL synchronous_commit = off")
            with cursor.copy(self.task_sql) as copy:
                copy.write(task_text)
            with cursor.copy(self.event_sql) as copy:
                copy.write(event_text)


class OrmWriter:
    """bulk_create; the model instances are made in the producer thread."""

    def prepare(self, tasks: list[TaskRow], events: list[EventRow]) -> tuple[list[Task], list[TaskEvent]]:
        task_attrs = [Task._meta.get_field(f).attname for f in TASK_FIELDS]
        event_attrs = [TaskEvent._meta.get_field(f).attname for f in EVENT_FIELDS]
        payload_at, details_at = TASK_FIELDS.index("payload"), EVENT_FIELDS.index("details")
        loads = json.loads
        return (
            [Task(**{**dict(zip(task_attrs, row, strict=True)), "payload": loads(row[payload_at])}) for row in tasks],
            [
                TaskEvent(**{**dict(zip(event_attrs, row, strict=True)), "details": loads(row[details_at])})
                for row in events
            ],
        )

    def write(self, prepared: tuple[list[Task], list[TaskEvent]]) -> None:
        tasks, events = prepared
        Task.objects.bulk_create(tasks)
        TaskEvent.objects.bulk_create(events)


DONE = object()


def produce(
    generator: Generator,
    id_chunks: Iterator[Sequence[int]],
    prepare: Callable[[list[TaskRow], list[EventRow]], Any],
    out: queue.Queue[Any],
    stop: threading.Event,
) -> None:
    """Make the chunks ahead of the writes (in a thread: the database works meanwhile); then DONE, or the error.

    Gives up as soon as `stop` is set: the main thread stopped taking chunks.
    """

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for ids in id_chunks:
            if not put((len(ids), prepare(*generator.chunk(ids)))):
                return
        put(DONE)
    except BaseException as exc:  # noqa: B036 -- handed to the main thread, which raises it
        put(exc)


# -- the command ---------------------------------------------------------------


def progress_line(done: int, total: int, elapsed: float) -> str:
    filled = BAR_WIDTH * done // total
    rate = done / elapsed if elapsed > 0 else 0.0
    width = len(f"{total:,}")
    return (
        f"seeding {done:>{width},}/{total:,} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
        f"{100 * done // total:3d}% {rate:,.0f} tasks/s"
    )


def chunks(ids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


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
        plans = stage_plans(self.stages(options["stages"]))
        postgres = connection.vendor == "postgresql"
        writer = PostgresWriter() if postgres else OrmWriter()
        generator = Generator(plans, count=count, seed=options["seed"], now=timezone.now())
        tty = self.stdout.isatty()
        started = last_shown = time.monotonic()
        id_chunks = chunks(reserve_task_ids(count), options["batch_size"])
        made: queue.Queue[Any] = queue.Queue(maxsize=2)
        stop = threading.Event()
        producer = threading.Thread(
            target=produce, args=(generator, id_chunks, writer.prepare, made, stop), name="seed_tasks", daemon=True
        )
        # The rows hold no reference cycles; collecting while making millions of them costs a third of the time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        done = 0
        try:
            producer.start()
            while (item := made.get()) is not DONE:
                if isinstance(item, BaseException):
                    raise item
                size, prepared = item
                with transaction.atomic():
                    writer.write(prepared)
                done += size
                now = time.monotonic()
                if tty or done == count or now - last_shown >= 1.0:
                    last_shown = now
                    line = progress_line(done, count, now - started)
                    self.stdout.write(line, ending="\r" if tty and done < count else "\n")
                    self.stdout.flush()
        finally:
            stop.set()
            producer.join()
            if gc_was_enabled:
                gc.enable()
        if postgres:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"ANALYZE {connection.ops.quote_name(Task._meta.db_table)},"
                    f" {connection.ops.quote_name(TaskEvent._meta.db_table)}"
                )
        elapsed = time.monotonic() - started
        mix = ", ".join(f"{generator.statuses[s]:,} {s}" for s in (COMPLETED, FAILED, PENDING, LOCKED))
        self.stdout.write(
            f"seeded {count:,} tasks ({mix}) and {generator.events:,} events"
            f" at {len(plans)} stage{'s' if len(plans) != 1 else ''} ({', '.join(p.slug for p in plans)})"
            f" in {elapsed:.1f}s{' including ANALYZE' if postgres else ''} ({count / elapsed:,.0f} tasks/s)"
        )

    def stages(self, slugs: list[str] | None) -> list[Stage]:
        """The stages to seed, after loading the demo workflow if it is needed; checks before writing."""
        demo = {stage["slug"] for stage in DEMO_STAGES}
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
