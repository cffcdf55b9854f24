"""Hourly roll-ups of the history: what happened at each stage and on each transition, per hour.

The counters' fold (services.counters.counters_fold) calls rollups_fold() with the
range of events it is folding, inside its transaction and under its cursor lock,
so each event is rolled up exactly once however many processes fold at a time,
and the roll-ups move with the cursor or not at all. The workflow's figures and
history charts (selectors.figures) read only these rows: a page view never
scans the task table or the history for them.

What an event adds to its stage's hour (the hour of the event's `at`, UTC):

- completed: `completed` and `marked_completed` events; `ended` too when the
  completion sent nothing (the workflow ended there for that task).
- failed: `failed` events, and `lock_expired` ones whose sweep failed the task.
- retried: attempts that ended and left the task to go again: a release after
  an error, an expired lock that did not fail the task, a person's retry or
  force-release. A release whose handler never started (a shutdown, a form
  closed without deciding) is no attempt and counts nowhere.
- errors: attempts that ended in an error: a release after an error, a
  `failed` event, an expired lock (the worker went silent or ran out of time).
- wait (histogram): pending at the stage until first claimed or opened, read
  from the event that ends the task's first attempt (its claimed_at minus the
  task's created_at). Retries' waits are backoff, a policy, and not counted.
- work (histogram): claimed (or opened) until completed, for each `completed`
  event (its claimed_at to its at).
- stage_seconds: each completed task's time at the stage, created to
  completed, summed (the form-stage share of the figures).
- slowest: the RECORDS_PER_HOUR finished tasks (completed or failed) of the
  hour with the longest time at the stage.

A `created` event of a task sent along a transition adds 1 to that
transition's hour (TransitionHour). The transition is found by the task's
source stage, stage and type; when both a typed and an any-type transition
lead there, the typed one is credited.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from django.db import connection
from django.db.models import BooleanField, Case, FloatField, Func, Q, Value, When
from django.db.models.fields.json import KT

from tasks_app.models import StageHour, TaskEvent, Transition, TransitionHour
from tasks_app.services.events import CLAIMED_AT

K = TaskEvent.Kind

# Upper bounds (seconds) of the wait and work histograms' buckets; one more bucket holds longer times.
# Fixed, so buckets of any hours add up, and a percentile is read from the sums (percentile()).
BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
    3600, 7200, 21600, 43200, 86400, 259200, 604800,
)  # fmt: skip
N_BUCKETS = len(BUCKETS) + 1

# How many of an hour's slowest tasks a StageHour keeps: a window's slowest N are among its hours' N each.
RECORDS_PER_HOUR = 5

# Roll-ups older than this are deleted by the fold: the charts show 7 days, the figures at most 7 days,
# and a day more covers the hour the 7-day window starts in and clocks that disagree.
RETENTION = timedelta(days=8)

ENDS_AN_ATTEMPT = [K.COMPLETED, K.FAILED, K.RELEASED, K.LOCK_EXPIRED, K.MARKED_COMPLETED, K.FORCE_RELEASED]
KINDS = [*ENDS_AN_ATTEMPT, K.RETRIED, K.CREATED]


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a duration: the first whose upper bound is at least it (negative: the first)."""
    return bisect_left(BUCKETS, seconds)


@dataclass(frozen=True)
class Percentile:
    seconds: float
    over: bool = False  # in the open last bucket: the time is at least `seconds`


def percentile(buckets: Sequence[int], q: float) -> Percentile | None:
    """The q-quantile (0 < q <= 1) of a histogram, interpolated linearly inside its bucket (as Prometheus's
    histogram_quantile does); None for an empty histogram. Exact to the bucket: the true value lies in it."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            lower = BUCKETS[i - 1] if i > 0 else 0.0
            if i >= len(BUCKETS):
                return Percentile(lower, over=True)
            return Percentile(lower + (BUCKETS[i] - lower) * (rank - seen) / n)
        seen += n
    return Percentile(BUCKETS[-1], over=True)  # unreachable while q <= 1


def add_buckets(into: list[int], more: Iterable[int]) -> list[int]:
    """Add a histogram into another (either may be shorter: a row written before a bucket was added)."""
    more = list(more)
    size = max(len(into), len(more), N_BUCKETS)
    into.extend([0] * (size - len(into)))
    for i, n in enumerate(more):
        into[i] += n
    return into


@dataclass
class HourTotals:
    """One stage's hour as the fold adds it up before writing it."""

    completed: int = 0
    failed: int = 0
    retried: int = 0
    errors: int = 0
    ended: int = 0
    wait: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    work: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    stage_seconds: float = 0.0
    slowest: list[tuple[int, float, str]] = field(default_factory=list)


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class Epoch(Func):
    """Seconds since 1970 (UTC) of a timestamp column or of ISO 8601 text (an event's claimed_at), as a float.

    Read as a number, not a datetime: psycopg's time-zone-aware loader and
    Django's SQLite converter cost more per row than the roll-up itself.
    SQLite's julianday() keeps milliseconds (the histograms' finest bucket is
    10 ms).
    """

    output_field = FloatField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="EXTRACT(EPOCH FROM (%(expressions)s)::timestamptz)::float8")

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="((julianday(%(expressions)s) - 2440587.5) * 86400.0)")


def _flag(q: Q) -> Case:
    return Case(When(q, then=Value(True)), default=Value(False), output_field=BooleanField())


def _events(start: int, upper: int) -> Any:
    """The folded range's events that roll up, with only the facts needed (no error texts or tracebacks)."""
    return (
        TaskEvent.objects.filter(id__gt=start, id__lte=upper, kind__in=KINDS)
        .exclude(kind=K.CREATED, task__source_stage__isnull=True)
        .annotate(
            unclaimed=_flag(Q(kind=K.RELEASED, details__has_key="reason") & ~Q(details__has_key="error")),
            copy=_flag(Q(details__has_key="duplicate_of")),
            sent_any=_flag(Q(details__sent__0__isnull=False)),
            # As text, not JSON: no decoding per row (a fold may read a million of them).
            at_s=Epoch("at"),
            created_s=Epoch("task__created_at"),
            claimed_s=Epoch(KT(f"details__{CLAIMED_AT}")),
            attempt=KT("details__attempt"),
            now_is=KT("details__now"),
        )
        .order_by()
        .values_list(*EventRow._fields)
    )


class EventRow(NamedTuple):
    """One row of _events(), in its columns' order."""

    task_id: int
    kind: str
    task__stage_id: int
    task__source_stage_id: int | None
    task__type: str
    unclaimed: bool
    copy: bool
    sent_any: bool
    at_s: float
    created_s: float
    claimed_s: float | None
    attempt: Any
    now_is: str | None


def _event_rows(start: int, upper: int) -> Iterator[EventRow]:
    """_events() run through a plain cursor: Django's per-row converters cost more than the roll-up itself.

    The columns come in the compiler's order (the fields, then the annotations as
    annotated), which EventRow names.
    """
    query = _events(start, upper).query
    names = [*query.values_select, *query.annotation_select]
    assert names == list(EventRow._fields), names
    sql, params = query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(2000):
            for raw in batch:
                yield EventRow._make(raw)


class _Routes:
    """Transitions by (source, target): the one a sent task of a type took."""

    def __init__(self) -> None:
        self.by_pair: dict[tuple[int, int], list[Transition]] = {}
        for t in Transition.objects.order_by("id"):
            self.by_pair.setdefault((t.source_id, t.target_id), []).append(t)

    def taken(self, source: int, target: int, task_type: str) -> int | None:
        candidates = self.by_pair.get((source, target), [])
        typed = [t for t in candidates if t.task_type == task_type]
        wild = [t for t in candidates if t.task_type == ""]
        chosen = typed or wild
        return chosen[0].pk if chosen else None


def rollups_fold(*, start: int, upper: int, now: datetime) -> None:
    """Roll the events in (start, upper] up into StageHour and TransitionHour; delete hours past RETENTION.

    The caller (counters_fold) holds the cursor row lock in its transaction: no
    other fold writes these rows meanwhile, so a read-add-write is safe.
    """
    assert connection.in_atomic_block
    cutoff = hour_of(now - RETENTION)
    first_hour = cutoff.timestamp()
    stages: dict[tuple[int, datetime], HourTotals] = {}
    transitions: dict[tuple[int, datetime], int] = {}
    hours: dict[float, datetime] = {}
    routes: _Routes | None = None
    for row in _event_rows(start, upper):
        hour_s = row.at_s // 3600 * 3600
        if hour_s < first_hour:
            continue
        hour = hours.get(hour_s) or hours.setdefault(hour_s, datetime.fromtimestamp(hour_s, UTC))
        if row.kind == K.CREATED:
            if row.copy or row.task__source_stage_id is None:
                continue  # a person's duplicate took no transition (and _events() leaves out tasks nobody sent)
            routes = routes or _Routes()
            transition_id = routes.taken(row.task__source_stage_id, row.task__stage_id, row.task__type)
            if transition_id is not None:
                transitions[(transition_id, hour)] = transitions.get((transition_id, hour), 0) + 1
            continue
        _add_event(stages.setdefault((row.task__stage_id, hour), HourTotals()), row)
    _write_stage_hours(stages)
    _write_transition_hours(transitions)
    StageHour.objects.filter(hour__lt=cutoff).delete()
    TransitionHour.objects.filter(hour__lt=cutoff).delete()


def _add_event(totals: HourTotals, row: Any) -> None:
    """What one event (a row of _events) adds to its stage's hour: the module docstring's rules."""
    if row.unclaimed:
        return  # a claim handed back before its handler started: no attempt, no wait measured
    kind, at, created, claimed = row.kind, row.at_s, row.created_s, row.claimed_s
    finished: str | None = None
    if kind in (K.COMPLETED, K.MARKED_COMPLETED):
        totals.completed += 1
        totals.ended += 0 if row.sent_any else 1
        finished = "completed"
        totals.stage_seconds += max(0.0, at - created)
        if kind == K.COMPLETED and claimed is not None:
            totals.work[bucket_of(_ms(at - claimed))] += 1
    elif kind == K.FAILED:
        totals.failed += 1
        totals.errors += 1
        finished = "failed"
    elif kind == K.LOCK_EXPIRED:
        totals.errors += 1
        if row.now_is == "failed":
            totals.failed += 1
            finished = "failed"
        elif row.now_is != "cancelled":  # a cancel was requested (services.cancel): no retry
            totals.retried += 1
    elif kind == K.RELEASED:
        totals.retried += 1
        totals.errors += 1
    elif kind in (K.RETRIED, K.FORCE_RELEASED):
        totals.retried += 1
    if str(row.attempt) == "1" and claimed is not None:
        totals.wait[bucket_of(_ms(claimed - created))] += 1
    if finished is not None:
        record = (row.task_id, max(0.0, _ms(at - created)), finished)
        totals.slowest.append(record)  # cut to RECORDS_PER_HOUR when written, and now and then on the way
        if len(totals.slowest) >= 64 * RECORDS_PER_HOUR:
            totals.slowest = heapq.nlargest(RECORDS_PER_HOUR, totals.slowest, key=lambda r: r[1])


def _ms(seconds: float) -> float:
    """To the millisecond: SQLite's julianday() keeps no more, and its float days land a hair off whole
    seconds (30 s read as 30.00001 would fall in the next bucket)."""
    return round(seconds, 3)


def _merge_slowest(old: Any, new: list[tuple[int, float, str]]) -> list[list[Any]]:
    records = [tuple(r) for r in (old if isinstance(old, list) else [])] + new
    return [list(r) for r in heapq.nlargest(RECORDS_PER_HOUR, records, key=lambda r: r[1])]


def _write_stage_hours(stages: dict[tuple[int, datetime], HourTotals]) -> None:
    if not stages:
        return
    hours = [hour for _, hour in stages]
    existing = {
        (row.stage_id, row.hour): row
        for row in StageHour.objects.filter(
            stage_id__in={s for s, _ in stages}, hour__gte=min(hours), hour__lte=max(hours)
        )
    }
    new, changed = [], []
    for (stage_id, hour), t in stages.items():
        row = existing.get((stage_id, hour))
        if row is None:
            row = StageHour(stage_id=stage_id, hour=hour, wait_buckets=[], work_buckets=[], slowest=[])
            new.append(row)
        else:
            changed.append(row)
        row.completed += t.completed
        row.failed += t.failed
        row.retried += t.retried
        row.errors += t.errors
        row.ended += t.ended
        row.wait_buckets = add_buckets(list(row.wait_buckets or []), t.wait)
        row.work_buckets = add_buckets(list(row.work_buckets or []), t.work)
        row.stage_seconds += t.stage_seconds
        row.slowest = _merge_slowest(row.slowest, t.slowest)
    StageHour.objects.bulk_create(new)
    StageHour.objects.bulk_update(changed, [*STAGE_HOUR_SUMS, "wait_buckets", "work_buckets", "slowest"])


STAGE_HOUR_SUMS = ["completed", "failed", "retried", "errors", "ended", "stage_seconds"]


def _write_transition_hours(transitions: dict[tuple[int, datetime], int]) -> None:
    if not transitions:
        return
    hours = [hour for _, hour in transitions]
    existing = {
        (row.transition_id, row.hour): row
        for row in TransitionHour.objects.filter(
            transition_id__in={t for t, _ in transitions}, hour__gte=min(hours), hour__lte=max(hours)
        )
    }
    new, changed = [], []
    for (transition_id, hour), n in transitions.items():
        row = existing.get((transition_id, hour))
        if row is None:
            new.append(TransitionHour(transition_id=transition_id, hour=hour, taken=n))
        else:
            row.taken += n
            changed.append(row)
    TransitionHour.objects.bulk_create(new)
    TransitionHour.objects.bulk_update(changed, ["taken"])
