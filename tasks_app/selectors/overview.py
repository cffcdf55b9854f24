"""Tasks per stage and status, cheap on millions of rows: the overview, /metrics and /api/health/ read these.

Pending and locked are counted exactly (they are the small, indexed part of
the table: the claim index's partial predicate, which INCLUDEs status,
attempts and created_at; the locked count is an index-only scan, the pending
one reads available_at from each row too, for the scheduled count and the
oldest due task, as the claim does); the overview caps each stage's count at
LIVE_CAP on PostgreSQL, so a backlog of millions costs what LIVE_CAP index
entries (and their rows) cost, and shows "50,000+".
Completed and failed come from one GROUP BY (a 1% block sample on big
PostgreSQL tables, shown as estimates) cached for FINISHED_TTL seconds;
throughput reads the last hour through the completed_at index, cached for
THROUGHPUT_TTL seconds. Each cached figure says when it was computed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Min, Q, QuerySet
from django.db.models.functions import TruncMinute
from django.utils import timezone

from tasks_app.models import LIVE, CounterCursor, Stage, StageCounter, StageGate, Task
from tasks_app.services.counters import CURSOR_PK, EXPIRED_FAILED
from tasks_app.services.flow_limits import stage_rate, window_start
from tasks_app.services.waiting import WAIT_START_SQL, scheduled_q, wait_start

FINISHED_TTL = 60
THROUGHPUT_TTL = 15
# The overview counts at most this many pending (and locked) tasks per stage: at 1M live tasks at
# one stage the uncapped count read the whole live part of the claim index on every poll.
LIVE_CAP = 50_000

# Above this many rows (PostgreSQL's own estimate), completed and failed counts
# are estimated from a block sample instead of counted: the exact GROUP BY
# costs ~0.4 s at a million rows, the sample a few milliseconds. The sample is
# 1% of the table but at most SAMPLE_PAGES pages (~20,000 rows): a fixed 1% read
# 4,600 random pages (~0.75 s cold) at 10M rows.
ESTIMATE_ABOVE = 200_000
SAMPLE_PERCENT = 1.0
SAMPLE_PAGES = 1000


def _table_estimate() -> tuple[int, int]:
    """(rows, pages) of the task table from pg_class; (0, 0) on SQLite."""
    if connection.vendor != "postgresql":
        return 0, 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint, relpages FROM pg_class WHERE oid = %s::regclass", [Task._meta.db_table]
        )
        row = cursor.fetchone()
    return (max(int(row[0]), 0), max(int(row[1]), 0)) if row else (0, 0)


def _sampled_finished(percent: float) -> dict[int, dict[str, int]]:
    """Completed and failed per stage, scaled up from a block sample of `percent` of the table (PostgreSQL)."""
    out: dict[int, dict[str, int]] = defaultdict(dict)
    table = connection.ops.quote_name(Task._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT stage_id, status, count(*) FROM {table} TABLESAMPLE SYSTEM (%s)"
            " WHERE status IN ('completed', 'failed') GROUP BY 1, 2",
            [percent],
        )
        for stage_id, status, n in cursor.fetchall():
            out[stage_id][status] = round(n * 100 / percent)
    return dict(out)


def _counted_finished() -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = defaultdict(dict)
    rows = (
        Task.objects.filter(status__in=[Task.Status.COMPLETED, Task.Status.FAILED])
        .values_list("stage_id", "status")
        .annotate(n=Count("id"))
    )
    for stage_id, status, n in rows:
        out[stage_id][status] = n
    return dict(out)


Finished = tuple[dict[int, dict[str, int]], bool, datetime]


def finished_snapshot() -> Finished:
    """Completed and failed tasks per stage, whether they are estimates, and when they were counted
    (cached FINISHED_TTL seconds)."""

    def compute() -> Finished:
        at = timezone.now()
        rows_estimate, pages = _table_estimate()
        if rows_estimate > ESTIMATE_ABOVE:
            return _sampled_finished(min(SAMPLE_PERCENT, 100 * SAMPLE_PAGES / max(pages, 1))), True, at
        return _counted_finished(), False, at

    return cast(Finished, cache.get_or_set("tasks_app:overview:finished:v2", compute, FINISHED_TTL))


def finished_counts() -> tuple[dict[int, dict[str, int]], bool]:
    """Completed and failed tasks per stage, and whether they are estimates (cached FINISHED_TTL seconds)."""
    counts, estimated, _ = finished_snapshot()
    return counts, estimated


def live_tasks() -> QuerySet[Task]:
    """Pending and locked tasks: the claim index's partial predicate, so counting them is cheap at any size."""
    return Task.objects.filter(status__in=LIVE)


def live_counts(cap: int | None = None, *, now: datetime | None = None) -> dict[int, dict[str, Any]]:
    """Per stage: pending and locked counts (exact); "retrying": the pending tasks that were claimed before
    (waiting to retry after an error or an expired lock); "scheduled": the pending tasks held back for a
    run-at time (the list's ?scheduled= rule, services.waiting.scheduled_q: never tried, available_at after
    `now`); and "oldest_pending": when the longest wait of a due pending task began (services.waiting's
    wait start: a task never tried waits from the later of its arrival and its run-at time, a retry from its
    arrival), None if no pending task is due. A task not due yet waits for nobody: it is not "oldest".

    With `cap` (PostgreSQL), each stage's pending and locked tasks are counted up to `cap` in the claim
    index's order; "capped" lists the statuses that reached it.
    """
    now = now or timezone.now()
    if cap is not None and connection.vendor == "postgresql":
        return _capped_live_counts(cap, now)
    out: dict[int, dict[str, Any]] = defaultdict(dict)
    due = Q(status=Task.Status.PENDING, available_at__lte=now)
    rows = (
        live_tasks()
        .values_list("stage_id", "status")
        .annotate(
            n=Count("id"),
            oldest=Min(wait_start(), filter=due),
            retrying=Count("id", filter=Q(attempts__gt=0)),
            scheduled=Count("id", filter=scheduled_q(now)),
        )
    )
    for stage_id, status, n, oldest, retrying, scheduled in rows:
        out[stage_id][status] = n
        if status == Task.Status.PENDING:
            out[stage_id].update(oldest_pending=oldest, retrying=retrying, scheduled=scheduled)
    return dict(out)


# live_counts() with a cap, stage by stage: each LATERAL reads at most `cap` entries of task_claim_idx, in its
# order (priority DESC, id: any other order makes the planner walk the primary key or sort the backlog).
# The index INCLUDEs status, attempts and created_at; available_at (scheduled, due, the wait's start) is read
# from the row, as the claim reads it: an index scan, no longer index-only (300,000 pending tasks at one stage,
# cap 50,000, cached: 38-55 ms against 41-42 ms index-only; mostly the aggregate and JIT). tests/
# test_overview_live.py holds it to the uncapped count below the cap; WAIT_START is services.waiting's
# WAIT_START_SQL, the FILTERs its scheduled and due rules.
CAPPED_LIVE_SQL = """
SELECT s.id, p.n, p.retrying, p.oldest, p.scheduled, l.n
FROM {stage} s
CROSS JOIN LATERAL (
    SELECT count(*) AS n, count(*) FILTER (WHERE x.attempts > 0) AS retrying,
           count(*) FILTER (WHERE x.attempts = 0 AND x.available_at > %(now)s) AS scheduled,
           min(WAIT_START) FILTER (WHERE x.available_at <= %(now)s) AS oldest
    FROM (SELECT t.attempts, t.created_at, t.available_at FROM {task} t WHERE t.stage_id = s.id
          AND t.status = 'pending' ORDER BY t.priority DESC, t.id LIMIT %(cap)s) x
) p
CROSS JOIN LATERAL (
    SELECT count(*) AS n
    FROM (SELECT 1 FROM {task} t WHERE t.stage_id = s.id AND t.status = 'locked' ORDER BY t.id LIMIT %(cap)s) y
) l
WHERE p.n > 0 OR l.n > 0
""".replace("WAIT_START", WAIT_START_SQL.format(t="x"))


def _capped_live_counts(cap: int, now: datetime) -> dict[int, dict[str, Any]]:
    sql = CAPPED_LIVE_SQL.format(
        stage=connection.ops.quote_name(Stage._meta.db_table),
        task=connection.ops.quote_name(Task._meta.db_table),
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, {"cap": cap, "now": now})
        rows = cursor.fetchall()
    out: dict[int, dict[str, Any]] = {}
    for stage_id, pending, retrying, oldest, scheduled, locked in rows:
        counts: dict[str, Any] = {"capped": [s for s, n in (("pending", pending), ("locked", locked)) if n >= cap]}
        if pending:
            counts.update(pending=pending, oldest_pending=oldest, retrying=retrying, scheduled=scheduled)
        if locked:
            counts["locked"] = locked
        out[stage_id] = counts
    return out


def live_snapshot() -> tuple[dict[int, dict[str, Any]], datetime]:
    """The overview's live counts (capped at LIVE_CAP) and when they were counted: now, not cached (one
    index-only statement; a poll every few seconds per open page)."""
    return live_counts(cap=LIVE_CAP), timezone.now()


# What the overview and the stage page show of the per-stage counters (services.counters: folded from
# the history, so they outlive pruning): name -> the event kinds it adds up (as /metrics does).
ATTEMPT_COUNTERS: dict[str, tuple[str, ...]] = {
    "released": ("released", "force_released"),  # attempts handed back to pending (errors mostly)
    "lock_expired": ("lock_expired",),  # attempts whose worker went silent
    "failed": ("failed", EXPIRED_FAILED),  # tasks that failed for good
    "retried": ("retried",),  # failed or completed tasks a person sent back
    "completed": ("completed", "marked_completed"),
}


def attempt_counters(stage_ids: list[int] | None = None) -> dict[int, dict[str, int]]:
    """Per stage: released, lock_expired, failed, retried and completed counts since the stage began
    (one read of the small counter table, as of the last fold: counters_as_of)."""
    kinds = {kind: name for name, group in ATTEMPT_COUNTERS.items() for kind in group}
    qs = StageCounter.objects.filter(kind__in=kinds)
    if stage_ids is not None:
        qs = qs.filter(stage_id__in=stage_ids)
    out: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ATTEMPT_COUNTERS, 0))
    for stage_id, kind, value in qs.values_list("stage_id", "kind", "value"):
        out[stage_id][kinds[kind]] += value
    return dict(out)


def counters_as_of() -> datetime | None:
    """When the per-stage counters were last brought up to date (the last fold), None if never."""
    return CounterCursor.objects.filter(pk=CURSOR_PK).values_list("updated_at", flat=True).first()


def live_totals() -> dict[str, int]:
    """Pending and locked tasks over all stages (exact): what /api/health/ reports."""
    counts = dict(live_tasks().values_list("status").annotate(n=Count("id")))
    return {status: counts.get(status, 0) for status in LIVE}


def throughput() -> tuple[dict[int, int], dict[int, list[int]]]:
    """Completions per stage in the last hour, and per minute (60 buckets, oldest first)."""

    def compute() -> tuple[dict[int, int], dict[int, list[int]]]:
        now = timezone.now().replace(second=0, microsecond=0)
        start = now - timedelta(minutes=59)
        per_minute: dict[int, list[int]] = defaultdict(lambda: [0] * 60)
        rows = (
            Task.objects.filter(completed_at__gte=start, status=Task.Status.COMPLETED)
            .annotate(minute=TruncMinute("completed_at"))
            .values_list("stage_id", "minute")
            .annotate(n=Count("id"))
        )
        for stage_id, minute, n in rows:
            index = int((minute - start).total_seconds() // 60)
            if 0 <= index < 60:
                per_minute[stage_id][index] += n
        per_minute = dict(per_minute)
        return {sid: sum(series) for sid, series in per_minute.items()}, per_minute

    Result = tuple[dict[int, int], dict[int, list[int]]]
    return cast(Result, cache.get_or_set("tasks_app:overview:throughput", compute, THROUGHPUT_TTL))


# -- flow control (issue 15: Stage.max_concurrency, Stage.rate_limit; services.flow_limits) --------------

# A stage counts as throttled for this long after a claim there was throttled (StageGate.throttled_at),
# as well as whenever its cap is full (or its window used up) while tasks wait.
THROTTLED_RECENT = timedelta(seconds=10)
RATE_UNITS = {1: "s", 60: "min", 3600: "h"}


def flow_states(stages: Sequence[Stage], live: Mapping[int, Mapping[str, Any]], now: datetime) -> dict[int, FlowState]:
    """For each stage with a cap or a rate limit: how full it is and whether claims there are held back.

    One read of the gate rows of those stages (none when no stage has a control); `live` is live_counts().
    """
    gated = [s for s in stages if s.max_concurrency is not None or s.rate_limit]
    if not gated:
        return {}
    gates = {g.stage_id: g for g in StageGate.objects.filter(stage_id__in=[s.pk for s in gated])}
    out = {}
    for s in gated:
        counts = live.get(s.pk, {})
        locked, waiting = counts.get("locked", 0), counts.get("pending", 0) > 0
        gate = gates.get(s.pk)
        parts, full = [], False
        if s.max_concurrency is not None:
            parts.append(f"{locked:,}/{s.max_concurrency:,} running")
            full = locked >= s.max_concurrency
        rate = stage_rate(s)
        if rate is not None:
            n, period = rate
            parts.append(f"{n:,}/{RATE_UNITS[period]}")
            used = gate.window_count if gate and gate.window_start == window_start(now, period) else 0
            full = full or used >= n
        recently = bool(gate and gate.throttled_at and now - gate.throttled_at <= THROTTLED_RECENT)
        throttled = recently or (full and waiting)
        if throttled:
            parts.append("throttled")
        out[s.pk] = FlowState(locked=locked, cap=s.max_concurrency, throttled=throttled, text=" · ".join(parts))
    return out


@dataclass(frozen=True, slots=True)
class FlowState:
    locked: int
    cap: int | None
    throttled: bool
    text: str  # "3/3 running · 10/s · throttled"
