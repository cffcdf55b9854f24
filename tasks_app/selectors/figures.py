"""The workflow's own figures and the stages' hourly history, read from the hourly roll-ups only.

services.rollups fills StageHour and TransitionHour as the counters' fold walks
the history; everything here reads those small tables (a row per stage or
transition per hour with any event, 8 days kept), never the task table or
the history, so a page costs the same at a thousand tasks or a billion.

Figures are for a window: "24h" (the current UTC hour and the 23 before it) or
"7d" (the current hour and the 167 before it). The current hour counts what the
fold has reached (the worker folds every few seconds; events settle 30 s on
PostgreSQL first).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Sum
from django.utils import timezone

from tasks_app.models import Stage, StageHour, Transition, TransitionHour
from tasks_app.services.rollups import N_BUCKETS, Percentile, add_buckets, hour_of, percentile

WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7)}
WINDOW_LABELS = {"24h": "last 24 hours", "7d": "last 7 days"}
DEFAULT_WINDOW = "24h"
CHART_HOURS = 7 * 24
SLOWEST = 5


def window_named(value: str | None) -> str:
    """The window a ?window= value names ("24h" when absent); ValueError for anything else."""
    if value in (None, ""):
        return DEFAULT_WINDOW
    if value not in WINDOWS:
        raise ValueError(f"Unknown window {value!r}: use one of {', '.join(WINDOWS)}.")
    return value


def window_start(window: str, now: datetime | None = None) -> datetime:
    """The first hour a window counts."""
    return hour_of(now or timezone.now()) - WINDOWS[window] + timedelta(hours=1)


def format_seconds(value: float | Percentile | None) -> str:
    """A duration for people: 40 ms, 3.2 s, 12 min, 5.5 h, 2.1 d (a percentile in the open last bucket: "> 7 d")."""
    if value is None:
        return "—"
    over = isinstance(value, Percentile) and value.over
    seconds = value.seconds if isinstance(value, Percentile) else float(value)
    if seconds < 1:
        text = f"{seconds * 1000:.0f} ms"
    elif seconds < 60:
        text = f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    elif seconds < 3600:
        text = f"{seconds / 60:.1f} min" if seconds < 600 else f"{seconds / 60:.0f} min"
    elif seconds < 86400:
        text = f"{seconds / 3600:.1f} h"
    else:
        text = f"{seconds / 86400:.1f} d"
    return f"> {text}" if over else text


@dataclass(frozen=True)
class SlowTask:
    task_id: int
    seconds: float  # at its stage, created to completed (or failed)
    outcome: str  # "completed" or "failed"
    stage_id: int


@dataclass
class TransitionShare:
    transition: Transition
    taken: int
    share: float  # of the stage's departures in the window (sends along its transitions plus ends), 0..1


@dataclass
class StageFigures:
    stage: Stage
    completed: int = 0
    failed: int = 0
    retried: int = 0
    errors: int = 0
    ended: int = 0
    wait: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    work: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    stage_seconds: float = 0.0
    slowest: list[SlowTask] = field(default_factory=list)
    shares: list[TransitionShare] = field(default_factory=list)
    ended_share: float | None = None  # completions that sent nothing, of the departures
    time_share: float | None = None  # of all stages' time in the window

    @property
    def wait_p50(self) -> Percentile | None:
        return percentile(self.wait, 0.5)

    @property
    def wait_p95(self) -> Percentile | None:
        return percentile(self.wait, 0.95)

    @property
    def work_p50(self) -> Percentile | None:
        return percentile(self.work, 0.5)

    @property
    def work_p95(self) -> Percentile | None:
        return percentile(self.work, 0.95)

    @property
    def waits(self) -> int:
        return sum(self.wait)

    @property
    def works(self) -> int:
        return sum(self.work)

    @property
    def departures(self) -> int:
        return sum(s.taken for s in self.shares) + self.ended


@dataclass
class WorkflowFigures:
    window: str
    since: datetime
    stages: list[StageFigures]
    form_seconds: float
    all_seconds: float
    slowest: list[SlowTask]

    @property
    def label(self) -> str:
        return WINDOW_LABELS[self.window]

    @property
    def form_share(self) -> float | None:
        """Of the time completed tasks spent at their stages (created to completed), the part at form stages."""
        return self.form_seconds / self.all_seconds if self.all_seconds > 0 else None

    def for_stage(self, stage_id: int) -> StageFigures | None:
        return next((f for f in self.stages if f.stage.pk == stage_id), None)


def workflow_figures(*, window: str = DEFAULT_WINDOW, now: datetime | None = None) -> WorkflowFigures:
    """Every stage's figures for the window, the transitions' shares, the form-stage share, the slowest tasks.

    Three reads: the stages, the window's StageHour rows (at most stages x 168),
    and the window's TransitionHour sums per transition.
    """
    since = window_start(window, now)
    stages = list(Stage.objects.order_by("slug"))
    figures = {s.pk: StageFigures(stage=s) for s in stages}
    for row in StageHour.objects.filter(hour__gte=since).order_by():
        _add_row(figures[row.stage_id], row)
    _add_shares(figures, since)
    all_seconds = sum(f.stage_seconds for f in figures.values())
    for f in figures.values():
        f.time_share = f.stage_seconds / all_seconds if all_seconds > 0 else None
    form_seconds = sum(f.stage_seconds for f in figures.values() if f.stage.kind == Stage.Kind.FORM)
    slowest = heapq.nlargest(SLOWEST, (t for f in figures.values() for t in f.slowest), key=lambda t: t.seconds)
    return WorkflowFigures(window, since, list(figures.values()), form_seconds, all_seconds, slowest)


def _add_row(f: StageFigures, row: StageHour) -> None:
    f.completed += row.completed
    f.failed += row.failed
    f.retried += row.retried
    f.errors += row.errors
    f.ended += row.ended
    add_buckets(f.wait, row.wait_buckets or [])
    add_buckets(f.work, row.work_buckets or [])
    f.stage_seconds += row.stage_seconds
    records = [SlowTask(int(r[0]), float(r[1]), str(r[2]), row.stage_id) for r in row.slowest or []]
    f.slowest = heapq.nlargest(SLOWEST, [*f.slowest, *records], key=lambda t: t.seconds)


def _add_shares(figures: dict[int, StageFigures], since: datetime) -> None:
    """Each transition's share of its source stage's departures (sum to 100% per stage with any)."""
    taken = dict(
        TransitionHour.objects.filter(hour__gte=since)
        .order_by()
        .values_list("transition_id")
        .annotate(n=Sum("taken"))
        .values_list("transition_id", "n")
    )
    for t in Transition.objects.select_related("source", "target").order_by("task_type", "target__slug"):
        f = figures[t.source_id]
        f.shares.append(TransitionShare(t, int(taken.get(t.pk, 0)), 0.0))
    for f in figures.values():
        total = f.departures
        for s in f.shares:
            s.share = s.taken / total if total else 0.0
        f.ended_share = f.ended / total if total and f.shares else None


# -- hourly history (the charts) -------------------------------------------------------------------


@dataclass(frozen=True)
class HourCounts:
    completed: int = 0
    failed: int = 0
    retried: int = 0
    errors: int = 0


@dataclass
class HourlySeries:
    """A stage's (or the workflow's) counts per hour: `hours` hours from `start`, only the hours with events."""

    start: datetime
    hours: int
    by_index: dict[int, HourCounts]
    title: str = ""

    def total(self, name: str) -> int:
        return sum(getattr(c, name) for c in self.by_index.values())

    def hour(self, index: int) -> datetime:
        return self.start + timedelta(hours=index)


def hourly_series(
    *, stage_ids: Iterable[int] | None = None, hours: int = CHART_HOURS, now: datetime | None = None
) -> dict[int, HourlySeries]:
    """Completed, failed, retried and errors per hour for the last `hours` hours (the current one last), per stage
    (stage id -> series; a stage without events in them gets an empty series when asked for by id)."""
    start = hour_of(now or timezone.now()) - timedelta(hours=hours - 1)
    rows = StageHour.objects.filter(hour__gte=start).order_by()
    wanted = list(stage_ids) if stage_ids is not None else None
    if wanted is not None:
        rows = rows.filter(stage_id__in=wanted)
    out = {sid: HourlySeries(start, hours, {}) for sid in wanted or []}
    for sid, hour, completed, failed, retried, errors in rows.values_list(
        "stage_id", "hour", "completed", "failed", "retried", "errors"
    ):
        index = int((hour - start).total_seconds() // 3600)
        out.setdefault(sid, HourlySeries(start, hours, {})).by_index[index] = HourCounts(
            completed, failed, retried, errors
        )
    return out


def total_series(series: Iterable[HourlySeries], *, start: datetime, hours: int = CHART_HOURS) -> HourlySeries:
    """The sum of several stages' series (the whole workflow's hours)."""
    total: dict[int, HourCounts] = {}
    for s in series:
        for i, c in s.by_index.items():
            t = total.get(i, HourCounts())
            total[i] = HourCounts(
                t.completed + c.completed, t.failed + c.failed, t.retried + c.retried, t.errors + c.errors
            )
    return HourlySeries(start, hours, total)


# -- the overview's graph notes (views/overview.py passes them to the graph) -------------------------


def edge_notes(figures: WorkflowFigures) -> dict[int, str]:
    """Transition pk -> its share of its stage's departures ("82%"), for the transitions taken in the window."""
    return {s.transition.pk: f"{s.share:.0%}" for f in figures.stages for s in f.shares if f.departures}


def stage_notes(figures: WorkflowFigures) -> dict[int, list[str]]:
    """Stage pk -> short lines for its box: wait and work medians / p95 in the window."""
    notes: dict[int, list[str]] = {}
    for f in figures.stages:
        lines = []
        if f.waits:
            lines.append(f"wait {format_seconds(f.wait_p50)} · p95 {format_seconds(f.wait_p95)}")
        if f.works:
            lines.append(f"work {format_seconds(f.work_p50)} · p95 {format_seconds(f.work_p95)}")
        if lines:
            notes[f.stage.pk] = lines
    return notes


def overview_figures(*, window: str = DEFAULT_WINDOW, now: datetime | None = None) -> dict[str, Any]:
    """What the overview adds for the figures (its view spreads this into the context; _figures.html draws it):
    the window's figures, each stage's hourly series for its chart, and the graph's notes."""
    figures = workflow_figures(window=window, now=now)
    return {
        "figures": figures,
        "charts": hourly_series(stage_ids=[f.stage.pk for f in figures.stages], now=now),
        "edge_notes": edge_notes(figures),
        "stage_notes": stage_notes(figures),
    }
