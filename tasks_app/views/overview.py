"""The workflow overview (home page): the graph of stages, their counts, ages, throughput, and the live workers.

The numbers come from selectors/overview.py (exact live counts, cached and
possibly sampled finished counts, cached throughput); this module draws them.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from tasks_app.models import Stage, Task, Transition
from tasks_app.selectors.overview import (
    FINISHED_TTL,
    attempt_counters,
    counters_as_of,
    finished_counts,
    live_counts,
    throughput,
)
from tasks_app.selectors.workers import live_workers
from tasks_app.services.counters import counters_fold_now_and_then

BOX_W, BOX_H, COL_W, ROW_H, PAD = 250, 128, 330, 156, 20
# The per-stage counters move on a page view at most this often, by at most this many history events
# (a /metrics scrape folds the rest): the released/expired figures stay current without a scraper.
FOLD_EVERY = 15
FOLD_ROWS = 5_000  # a fold of 20,000 took 0.44 s on a page view at a million tasks (a busy 2-core machine)


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
    counters_fold_now_and_then(every=FOLD_EVERY, max_rows=FOLD_ROWS)
    live = live_counts()
    finished, estimated = finished_counts()
    attempts = attempt_counters()
    per_hour, per_minute = throughput()
    now = timezone.now()
    boxes: list[dict[str, Any]] = []
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
                "retrying": counts.get("retrying", 0),
                "attempts": attempts.get(s.pk, {}),
            }
        )
    arrows = []
    x1: float  # and x2: a box's edge, or its middle when the arrow goes round below
    x2: float
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
    workers = live_workers(now).order_by("worker_id")
    ctx = {
        "boxes": boxes,
        "arrows": arrows,
        "width": width,
        "height": height,
        "box_w": BOX_W,
        "box_h": BOX_H,
        "workers": list(workers[:50]),
        "finished_ttl": FINISHED_TTL,
        "counters_as_of": counters_as_of(),
        "estimated": estimated,
    }
    return render(request, "tasks_app/overview.html", ctx)
