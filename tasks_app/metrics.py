"""The numbers behind /metrics that outlive a process: per-stage counters and worker histograms.

Counters (tasks created, completed, failed, released, lock-expired, ... per
stage) must be right with any number of web and worker processes on any
number of machines, and keep growing when old tasks and their history are
pruned. So they live in the database: `counters_fold()` adds the history
events written since the last fold (CounterCursor) to StageCounter, one row
per (stage, event kind). Events whose task was deleted before they were
folded are skipped: pruning runs on tasks finished days ago, whose events
were folded long before, so in practice nothing is lost.

Histograms (claim and handler durations) are observed in worker processes:
each worker records into an in-process registry keyed by its worker id and
writes its cumulative snapshot into its WorkerProcess row with every registry
heartbeat; /metrics sums the snapshots of every row, stopped workers' too, so
the sums never go down when a worker exits. Only workers registered in this
process (services.worker_register) are recorded, so claims made through the
API by other clients cost nothing and grow no memory.
"""

from __future__ import annotations

import hashlib
import threading
from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Case, Count, F, JSONField, Max, Min, Q, When
from django.utils import timezone

from tasks_app.models import CounterCursor, StageCounter, TaskEvent, WorkerProcess

# -- histograms (worker side) --------------------------------------------------

# Upper bounds in seconds, shared by every worker and by /metrics.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
HISTOGRAMS = ("claim", "handler")
SNAPSHOT_VERSION = 1

# worker id -> histogram name -> stage slug -> [counts per bucket (+Inf last)..., sum]
Registry = dict[str, dict[str, list[float]]]
_lock = threading.Lock()
_workers: dict[str, Registry] = {}


def _empty() -> list[float]:
    return [0] * (len(BUCKETS) + 1) + [0.0]


def _from_snapshot(snapshot: object) -> Registry:
    """A worker's registry continued from its row's snapshot (a reused worker id keeps counting up)."""
    registry: Registry = {name: {} for name in HISTOGRAMS}
    for name, stages in _histograms_of(snapshot):
        for stage, (counts, total) in stages.items():
            registry[name][stage] = [*counts, total]
    return registry


def worker_opened(worker_id: str, previous: object = None) -> None:
    """Start recording the histograms of a worker running in this process."""
    with _lock:
        _workers[worker_id] = _from_snapshot(previous)


def worker_closed(worker_id: str) -> None:
    """Stop recording a worker (after its last snapshot was written)."""
    with _lock:
        _workers.pop(worker_id, None)


def observe(name: str, *, worker_id: str, stage: str, seconds: float) -> None:
    """Count one duration; a no-op for workers not registered in this process."""
    with _lock:
        registry = _workers.get(worker_id)
        if registry is None:
            return
        values = registry[name].get(stage)
        if values is None:
            values = registry[name][stage] = _empty()
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= seconds.
        values[bisect_left(BUCKETS, seconds)] += 1
        values[-1] += seconds


def snapshot(worker_id: str) -> dict[str, Any] | None:
    """The worker's cumulative histograms as JSON for WorkerProcess.metrics (None if not recorded here)."""
    with _lock:
        registry = _workers.get(worker_id)
        if registry is None:
            return None
        out: dict[str, Any] = {"version": SNAPSHOT_VERSION, "buckets": list(BUCKETS)}
        for name, stages in registry.items():
            out[name] = {
                stage: {"counts": [int(n) for n in values[:-1]], "sum": values[-1]} for stage, values in stages.items()
            }
        return out


def _histograms_of(snapshot: object) -> Iterable[tuple[str, dict[str, tuple[list[int], float]]]]:
    """(name, {stage: (counts, sum)}) from one snapshot; nothing for snapshots with other buckets."""
    if not isinstance(snapshot, dict) or snapshot.get("version") != SNAPSHOT_VERSION:
        return
    if snapshot.get("buckets") != list(BUCKETS):
        return  # written by a version with other bounds: can't be added to these
    size = len(BUCKETS) + 1
    for name in HISTOGRAMS:
        stages = snapshot.get(name) or {}
        yield name, {s: (list(h["counts"]), float(h["sum"])) for s, h in stages.items() if len(h["counts"]) == size}


Merged = dict[str, dict[str, tuple[list[int], float]]]  # histogram name -> stage -> (counts per bucket, sum)


def merge_snapshots(snapshots: Iterable[object], start: Merged | None = None) -> Merged:
    """Sum many workers' snapshots (onto `start`, which is left as it was)."""
    merged: Merged = {name: dict((start or {}).get(name, {})) for name in HISTOGRAMS}
    for snap in snapshots:
        for name, stages in _histograms_of(snap):
            for stage, (counts, total) in stages.items():
                old_counts, old_total = merged[name].get(stage, ([0] * len(counts), 0.0))
                merged[name][stage] = ([a + b for a, b in zip(old_counts, counts, strict=True)], old_total + total)
    return merged


STOPPED_CACHE_TTL = 24 * 3600


def worker_histograms() -> Merged:
    """Every worker's histograms summed, stopped workers' included (so a worker's exit loses nothing).

    Rows accumulate (one per worker start), but a stopped worker's snapshot is
    final: their sum is cached per set of stopped rows, and a scrape reads
    only the running workers' snapshots. One query tells both apart, so a
    worker stopping meanwhile is counted exactly once.
    """
    live_only = Case(When(stopped_at__isnull=True, then=F("metrics")), default=None, output_field=JSONField())
    rows = list(WorkerProcess.objects.annotate(live=live_only).values_list("id", "stopped_at", "live"))
    stopped = sorted((pk, at) for pk, at, _ in rows if at is not None)
    key = "tasks_app:metrics:stopped:" + hashlib.sha256(repr(stopped).encode()).hexdigest()
    base = cache.get(key)
    if base is None:
        ids = [pk for pk, _ in stopped]
        base = merge_snapshots(WorkerProcess.objects.filter(pk__in=ids).values_list("metrics", flat=True).iterator())
        cache.set(key, base, STOPPED_CACHE_TTL)
    return merge_snapshots((live for _, at, live in rows if at is None), start=base)


# -- counters (from the history) ------------------------------------------------

# A pseudo-kind: lock_expired events whose sweep failed the task (max attempts
# reached). The sweep writes no "failed" event for them, yet the task failed.
EXPIRED_FAILED = "lock_expired:failed"

# The most events one fold reads, so the first scrape of a long history stays
# bounded; the next scrape goes on from there.
FOLD_MAX_ROWS = 1_000_000

# PostgreSQL: only events at least this old are folded. Event ids come from a
# sequence when the row is inserted, not when it commits: a transaction that
# took id 100 and commits after another one committed id 101 would be skipped
# for ever by a cursor that had already moved past 101. Folding only up to the
# newest event older than SETTLE_SECONDS leaves that much time for such a
# transaction to commit; every event written by the services commits within
# milliseconds of its `at`. SQLite needs no margin: writers are serialised
# (BEGIN IMMEDIATE) and the fold holds the write lock, so no lower id can
# still appear.
SETTLE_SECONDS = 30.0

CURSOR_PK = 1


def counters_fold(*, now: datetime | None = None, max_rows: int = FOLD_MAX_ROWS) -> int:
    """Add the history events written since the last fold to StageCounter; returns how many were counted.

    The count leaves out events of deleted tasks, so 0 does not always mean the
    cursor stood still; loop on the cursor to catch up.

    1. Lock the cursor row: a concurrent fold waits here, then sees the moved cursor.
    2. Pick the upper id: at most max_rows ids from the first new one, and settled (SETTLE_SECONDS).
    3. Count the events in (cursor, upper] per stage and kind: one GROUP BY, joined to
       tasks for the stage (a task never changes stage; events of deleted tasks drop out).
    4. Add the counts to StageCounter and move the cursor, in the same transaction.
    """
    now = now or timezone.now()
    CounterCursor.objects.get_or_create(pk=CURSOR_PK)
    with transaction.atomic():
        cursor = CounterCursor.objects.select_for_update().get(pk=CURSOR_PK)
        start = cursor.last_event_id
        upper = _fold_upper(start=start, max_rows=max_rows, now=now)
        if upper <= start:
            return 0
        rows = (
            TaskEvent.objects.filter(id__gt=start, id__lte=upper)
            .values_list("task__stage_id", "kind")
            .annotate(n=Count("id"), failed=Count("id", filter=Q(kind="lock_expired", details__now="failed")))
        )
        counts: dict[tuple[int, str], int] = {}
        for stage_id, kind, n, failed in rows:
            counts[(stage_id, kind)] = n
            if failed:
                counts[(stage_id, EXPIRED_FAILED)] = failed
        _add_counts(counts)
        CounterCursor.objects.filter(pk=CURSOR_PK).update(last_event_id=upper, updated_at=now)
    return sum(n for (_, kind), n in counts.items() if kind != EXPIRED_FAILED)


def _fold_upper(*, start: int, max_rows: int, now: datetime) -> int:
    """The highest event id this fold may count (start if none)."""
    # Count max_rows ids from the first event after the cursor, not from the
    # cursor: after a prune (or a first fold of a table whose low ids are
    # gone) the ids just past the cursor may all be deleted.
    first = TaskEvent.objects.filter(id__gt=start).aggregate(first=Min("id"))["first"]
    if first is None:
        return start
    events = TaskEvent.objects.filter(id__gt=start, id__lt=first + max_rows)
    if connection.vendor == "postgresql":
        # max(id) with a filter: a backward walk of the primary key that stops at
        # the first settled event, so it reads only the last few seconds' events.
        events = events.filter(at__lte=now - timedelta(seconds=SETTLE_SECONDS))
    return events.aggregate(upper=Max("id"))["upper"] or start


def _add_counts(counts: dict[tuple[int, str], int]) -> None:
    """Add to StageCounter; the caller holds the cursor lock, so nobody else writes these rows."""
    assert connection.in_atomic_block
    existing = {(c.stage_id, c.kind): c for c in StageCounter.objects.filter(stage_id__in={s for s, _ in counts})}
    changed, new = [], []
    for key, n in counts.items():
        counter = existing.get(key)
        if counter is None:
            new.append(StageCounter(stage_id=key[0], kind=key[1], value=n))
        else:
            counter.value += n
            changed.append(counter)
    StageCounter.objects.bulk_create(new)
    StageCounter.objects.bulk_update(changed, ["value"])


def counter_values() -> dict[tuple[int, str], int]:
    """Every counter: (stage id, kind) -> value."""
    return {(s, k): v for s, k, v in StageCounter.objects.values_list("stage_id", "kind", "value")}
