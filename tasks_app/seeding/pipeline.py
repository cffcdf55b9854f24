"""Seeding: which stages, then the chunks made in a thread while the database writes the previous one."""

from __future__ import annotations

import gc
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from tasks_app.demo import STAGES as DEMO_STAGES
from tasks_app.demo import load_demo
from tasks_app.models import Stage
from tasks_app.seeding.generator import EventRow, Generator, StagePlan, TaskRow, stage_plans
from tasks_app.seeding.writers import reserve_task_ids, writer_for

DONE = object()


class UnknownStages(ValueError):
    """Slugs that are neither stages nor demo stages; the message names them and the known ones."""


@dataclass
class SeedResult:
    """What a seed run wrote."""

    plans: list[StagePlan]
    statuses: dict[str, int] = field(default_factory=dict)  # status -> tasks written
    events: int = 0
    analyzed: bool = False  # PostgreSQL: the tables were ANALYZEd afterwards


def seed_stages(slugs: Sequence[str] | None) -> list[Stage]:
    """The stages to seed (default: all), after loading the demo workflow if it is needed; checks before writing.

    The demo is loaded when there are no stages at all, or when a slug asked for is a demo stage not created yet.
    Raises UnknownStages (writing nothing) for slugs that are neither.
    """
    demo = {stage["slug"] for stage in DEMO_STAGES}
    if slugs:
        slugs = list(dict.fromkeys(slugs))
        found = set(Stage.objects.filter(slug__in=slugs).values_list("slug", flat=True))
        unknown = [s for s in slugs if s not in found and s not in demo]
        if unknown:
            known = sorted(set(Stage.objects.values_list("slug", flat=True)) | demo)
            raise UnknownStages(
                f"unknown stage{'s' if len(unknown) > 1 else ''} {', '.join(repr(s) for s in unknown)}"
                f" (known: {', '.join(known)})"
            )
        if len(found) < len(slugs):
            load_demo(with_orders=False)
        return list(Stage.objects.filter(slug__in=slugs).order_by("slug"))
    if not Stage.objects.exists():
        load_demo(with_orders=False)
    return list(Stage.objects.order_by("slug"))


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


def chunks(ids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def seed_tasks(
    stages: Sequence[Stage],
    *,
    count: int,
    batch_size: int,
    seed: int = 0,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> SeedResult:
    """Write `count` tasks and their events at `stages`, `batch_size` tasks per transaction.

    1. Reserve the ids (parents and events need them up front).
    2. A thread makes each chunk's rows while the database writes the previous chunk; `progress(done)`
       is called after each commit. An error (here or in the thread) stops both; written chunks stay.
    3. Finish (ANALYZE on PostgreSQL).
    """
    plans = stage_plans(stages)
    writer = writer_for(connection.vendor)
    generator = Generator(plans, count=count, seed=seed, now=now or timezone.now())
    id_chunks = chunks(reserve_task_ids(count), batch_size)
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
            if progress is not None:
                progress(done)
    finally:
        stop.set()
        producer.join()
        if gc_was_enabled:
            gc.enable()
    writer.finish()
    return SeedResult(
        plans=plans,
        statuses=dict(generator.statuses),
        events=generator.events,
        analyzed=writer.analyzes,
    )
