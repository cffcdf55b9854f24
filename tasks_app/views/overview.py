"""The workflow overview (home page): the graph, counts, ages, throughput, workers.

Counts stay cheap on millions of rows: pending and locked are counted exactly
(they are the small, indexed part of the table); completed and failed come
from one GROUP BY (a 1% block sample on big PostgreSQL tables, shown as
estimates) cached for FINISHED_TTL seconds; throughput reads the last hour
through the completed_at index, cached for THROUGHPUT_TTL seconds.
"""

from __future__ import annotations

from collections import defaultdict, deque
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required, permission_required
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Min
from django.db.models.functions import TruncMinute
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from tasks_app.models import Stage, Task, Transition, WorkerProcess

FINISHED_TTL = 60
THROUGHPUT_TTL = 15
BOX_W, BOX_H, COL_W, ROW_H, PAD = 250, 112, 330, 140, 20


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
        cursor.execute("SELECT reltuples::bigint, relpages FROM pg_class WHERE oid = 'tasks_app_task'::regclass")
        row = cursor.fetchone()
    return (max(int(row[0]), 0), max(int(row[1]), 0)) if row else (0, 0)


def finished_counts() -> tuple[dict[int, dict[str, int]], bool]:
    """Completed and failed tasks per stage, and whether they are estimates."""

    def compute() -> tuple[dict[int, dict[str, int]], bool]:
        out: dict[int, dict[str, int]] = defaultdict(dict)
        rows_estimate, pages = _table_estimate()
        if rows_estimate > ESTIMATE_ABOVE:
            percent = min(SAMPLE_PERCENT, 100 * SAMPLE_PAGES / max(pages, 1))
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT stage_id, status, count(*) FROM tasks_app_task TABLESAMPLE SYSTEM (%s)"
                    " WHERE status IN ('completed', 'failed') GROUP BY 1, 2",
                    [percent],
                )
                for stage_id, status, n in cursor.fetchall():
                    out[stage_id][status] = round(n * 100 / percent)
            return dict(out), True
        rows = (
            Task.objects.filter(status__in=[Task.Status.COMPLETED, Task.Status.FAILED])
            .values_list("stage_id", "status")
            .annotate(n=Count("id"))
        )
        for stage_id, status, n in rows:
            out[stage_id][status] = n
        return dict(out), False

    return cache.get_or_set("tasks_app:overview:finished", compute, FINISHED_TTL)


def live_counts() -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = defaultdict(dict)
    rows = (
        Task.objects.filter(status__in=[Task.Status.PENDING, Task.Status.LOCKED])
        .values_list("stage_id", "status")
        .annotate(n=Count("id"), oldest=Min("created_at"))
    )
    for stage_id, status, n, oldest in rows:
        out[stage_id][status] = n
        if status == Task.Status.PENDING:
            out[stage_id]["oldest_pending"] = oldest
    return dict(out)


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

    return cache.get_or_set("tasks_app:overview:throughput", compute, THROUGHPUT_TTL)


def layout(stages: list[Stage], transitions: list[Transition]) -> dict[int, tuple[int, int]]:
    """Stage id -> (x, y): columns by distance from the stages nothing sends to."""
    incoming = {t.target_id for t in transitions if t.target_id != t.source_id}
    depth: dict[int, int] = {}
    queue = deque(s.pk for s in stages if s.pk not in incoming) or deque([stages[0].pk])
    for sid in queue:
        depth[sid] = 0
    outgoing: dict[int, list[int]] = defaultdict(list)
    for t in transitions:
        outgoing[t.source_id].append(t.target_id)
    while queue:
        sid = queue.popleft()
        for target in outgoing[sid]:
            if target not in depth:  # first reach wins: cycles can't loop
                depth[target] = depth[sid] + 1
                queue.append(target)
    for s in stages:
        depth.setdefault(s.pk, 0)
    rows: dict[int, int] = defaultdict(int)
    pos = {}
    for s in stages:
        d = depth[s.pk]
        pos[s.pk] = (PAD + d * COL_W, PAD + rows[d] * ROW_H)
        rows[d] += 1
    return pos


def sparkline(series: list[int], width: int = BOX_W - 20, height: int = 18) -> str:
    peak = max(series) or 1
    step = width / (len(series) - 1)
    return " ".join(f"{i * step:.1f},{height - (n / peak) * height:.1f}" for i, n in enumerate(series))


@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
def overview(request: HttpRequest) -> HttpResponse:
    stages = list(Stage.objects.order_by("id"))
    transitions = list(Transition.objects.order_by("id"))
    pos = layout(stages, transitions) if stages else {}
    live = live_counts()
    finished, estimated = finished_counts()
    per_hour, per_minute = throughput()
    now = timezone.now()
    boxes = []
    for s in stages:
        x, y = pos[s.pk]
        counts = {**finished.get(s.pk, {}), **live.get(s.pk, {})}
        oldest = counts.get("oldest_pending")
        boxes.append(
            {
                "stage": s,
                "x": x,
                "y": y,
                "counts": [(status, counts.get(status, 0)) for status in Task.Status.values],
                "oldest_age": (now - oldest) if oldest else None,
                "per_hour": per_hour.get(s.pk, 0),
                "spark": sparkline(per_minute.get(s.pk, [0] * 60)),
            }
        )
    arrows = []
    for t in transitions:
        if t.source_id not in pos or t.target_id not in pos:
            continue
        (sx, sy), (tx, ty) = pos[t.source_id], pos[t.target_id]
        x1, y1, x2, y2 = sx + BOX_W, sy + BOX_H / 2, tx, ty + BOX_H / 2
        if tx <= sx:  # same column or backwards: go round below
            x1, y1, x2, y2 = sx + BOX_W / 2, sy + BOX_H, tx + BOX_W / 2, ty + BOX_H
        arrows.append({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": t.task_type or "*",
                       "lx": (x1 + x2) / 2, "ly": (y1 + y2) / 2 - 6})  # fmt: skip
    width = max((b["x"] for b in boxes), default=0) + BOX_W + PAD
    height = max((b["y"] for b in boxes), default=0) + BOX_H + PAD * 2
    cutoff = now - timedelta(seconds=settings.TASKS_WORKER_DEAD_AFTER)
    workers = WorkerProcess.objects.filter(stopped_at__isnull=True, last_heartbeat__gte=cutoff).order_by("worker_id")
    ctx = {
        "boxes": boxes,
        "arrows": arrows,
        "width": width,
        "height": height,
        "box_w": BOX_W,
        "box_h": BOX_H,
        "workers": list(workers[:50]),
        "finished_ttl": FINISHED_TTL,
        "estimated": estimated,
    }
    return render(request, "tasks_app/overview.html", ctx)
