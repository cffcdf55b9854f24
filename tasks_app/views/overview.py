"""The workflow overview (home page): the graph of stages, their counts, ages, throughput, and the live workers.

The numbers come from selectors/overview.py (live counts, capped, counted at
each request; cached and possibly sampled finished counts; cached
throughput; the counters the workers' upkeep folds from the history); the
geometry from tasks_app/graph.py; this module puts them together. The page
works without JavaScript; overview.js polls counts_json() every POLL_SECONDS
for the figures and says how old each one is.

No page view folds the history into the counters: the workers' upkeep does
(worker.loop, fold_counters), and /metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from tasks_app import graph
from tasks_app.models import Stage, Transition
from tasks_app.selectors.figures import overview_figures, window_named
from tasks_app.selectors.overview import (
    FINISHED_TTL,
    attempt_counters,
    counters_as_of,
    finished_snapshot,
    flow_states,
    live_snapshot,
    throughput,
)
from tasks_app.selectors.workers import live_workers
from tasks_app.services.due import COUNT_CAP as OVERDUE_CAP
from tasks_app.services.due import overdue_counts
from tasks_app.templatetags.task_extras import human_delta

POLL_SECONDS = 5
NAME_CHAR = 8.6  # px per character of a stage name (15 px bold), generous
SMALL_CHAR = 6.4  # px per character at 11-12 px
INNER_W = graph.BOX_W - 24
STATUSES = ("pending", "locked", "completed", "failed")


def sparkline(series: list[int], width: int = INNER_W, height: int = 18) -> str:
    peak = max(series) or 1
    step = width / (len(series) - 1)
    return " ".join(f"{i * step:.1f},{height - (n / peak) * height:.1f}" for i, n in enumerate(series))


def number(n: int) -> str:
    """1234567 -> '1,234,567'."""
    return f"{n:,}"


def stage_figures(stages: Sequence[Stage], now: datetime) -> dict[str, Any]:
    """Every stage's figures as the page and counts.json show them: numbers, and their display text."""
    live, live_at = live_snapshot()
    finished, estimated, finished_at = finished_snapshot()
    attempts = attempt_counters()
    per_hour, per_minute = throughput()
    flows = flow_states(stages, live, now)  # capped and rate-limited stages only
    overdue = overdue_counts(stages, now=now)  # stages with a due_after or a max_wait only (services.due)
    out: dict[int, dict[str, Any]] = {}
    for s in stages:
        counts = {**finished.get(s.pk, {}), **live.get(s.pk, {})}
        capped = counts.get("capped", [])
        att = attempts.get(s.pk, {})
        oldest = counts.get("oldest_pending")
        n = {status: counts.get(status, 0) for status in STATUSES}
        text = {status: number(v) + ("+" if status in capped else "") for status, v in n.items()}
        if estimated:
            text["completed"], text["failed"] = "≈" + text["completed"], "≈" + text["failed"]
        retrying = counts.get("retrying", 0)
        text["retries"] = (
            f"{number(retrying)}{'+' if 'pending' in capped else ''} retrying · "
            f"{number(att.get('released', 0))} released · {number(att.get('lock_expired', 0))} expired"
        )
        age = f"oldest pending {human_delta(now - oldest)}" if oldest else "nothing waiting"
        text["waiting"] = f"{age} · {number(per_hour.get(s.pk, 0))}/h"
        flow = flows.get(s.pk)
        if flow is not None:
            text["flow"] = flow.text  # "3/3 running · 10/s · throttled"
            if flow.cap is not None:
                text["locked"] = f"{number(n['locked'])}/{number(flow.cap)}"
        if s.pk in overdue:
            text["overdue"] = f"{number(overdue[s.pk])}{'+' if overdue[s.pk] >= OVERDUE_CAP else ''} overdue"
        out[s.pk] = {
            "counts": n,
            "retrying": retrying,
            "attempts": att,
            "text": text,
            "cells": [(status, text[status]) for status in STATUSES],
            "spark": sparkline(per_minute.get(s.pk, [0] * 60)),
            "oldest_age": (now - oldest) if oldest else None,
            "throttled": flow is not None and flow.throttled,
            "overdue": overdue.get(s.pk),  # None: the stage has no due time or waiting-time limit
        }
    return {"stages": out, "live_at": live_at, "finished_at": finished_at, "estimated": estimated}


def drawing_items(drawing: graph.Drawing, stages: Mapping[int, Stage], figures: Mapping[int, Any],
                  stage_notes: Mapping[int, Sequence[str]]) -> dict[str, Any]:  # fmt: skip
    """What the template draws for one drawing: its viewBox, edges, and each box with its stage's figures."""
    boxes = []
    for pk, rect in drawing.boxes.items():
        s = stages[pk]
        name_room = graph.BOX_W - 24
        slug_room = INNER_W - (78 if s.is_paused else 0)
        flow = "flow" in figures[pk].get("text", {})  # its first note line is the live flow-control line
        boxes.append(
            {
                "rect": rect,
                "stage": s,
                "name": graph.fit(s.name or s.slug, name_room, NAME_CHAR),
                "slug_line": graph.fit(f"{s.slug} · {s.kind}", slug_room, SMALL_CHAR),
                "label": f"Stage {s.name or s.slug} ({s.slug}, {s.kind}){', paused' if s.is_paused else ''}",
                "fig": figures[pk],
                "notes": [
                    (graph.BOX_H - 6 + (i + 1) * graph.NOTE_H, graph.fit(line, INNER_W, SMALL_CHAR))
                    for i, line in enumerate(stage_notes.get(pk, ()))
                ],
                "flow": flow,
            }
        )
    return {"view_box": drawing.view_box, "edges": drawing.edges, "boxes": boxes}


def graph_context(
    stages: list[Stage],
    transitions: list[Transition],
    figures: Mapping[int, Any],
    *,
    edge_notes: Mapping[int, str] | None = None,
    stage_notes: Mapping[int, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """The wide drawing (screens) and the tall one (phones), each with what the template needs.

    edge_notes: Transition pk -> a short text drawn with its label ("82%"); stage_notes: Stage pk -> extra
    lines drawn in its box ("wait p50 12 s · p95 40 s"). The layout keeps them clear of each other.
    """
    nodes = [s.pk for s in stages]
    # A capped or rate-limited stage's box gets a first line of its own: "3/3 running · throttled".
    flows = {s.pk: [figures[s.pk]["text"]["flow"]] for s in stages if "flow" in figures[s.pk].get("text", {})}
    stage_notes = {pk: [*flows.get(pk, []), *(stage_notes or {}).get(pk, ())] for pk in {*flows, *(stage_notes or {})}}
    edges = [graph.EdgeIn(pk=t.pk, source=t.source_id, target=t.target_id, label=t.task_type or "*")
             for t in transitions]  # fmt: skip
    by_pk = {s.pk: s for s in stages}
    notes = stage_notes or {}
    out = []
    for name, draw in (("wide", graph.wide), ("tall", graph.tall)):
        drawing = draw(nodes, edges, edge_notes=edge_notes, stage_notes=notes)
        out.append({"name": name, **drawing_items(drawing, by_pk, figures, notes)})
    return out


def ago(delta: timedelta) -> str:
    """'3 s', '4 min', '2 h': how old a figure is (overview.js ago() has the same steps)."""
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def epoch_ms(at: datetime | None) -> int | None:
    return int(at.timestamp() * 1000) if at else None


@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
def overview(request: HttpRequest) -> HttpResponse:
    stages = list(Stage.objects.order_by("id"))
    transitions = list(Transition.objects.order_by("id"))
    now = timezone.now()
    figures = stage_figures(stages, now)
    as_of = counters_as_of()
    try:  # the workflow's own figures (selectors.figures, from the hourly roll-ups): ?window=24h|7d
        extra = overview_figures(window=window_named(request.GET.get("window")), now=now)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    notes = {"edge_notes": extra["edge_notes"], "stage_notes": extra["stage_notes"]}
    ctx = {
        "graphs": graph_context(stages, transitions, figures["stages"], **notes) if stages else [],
        "figures": extra["figures"],
        "charts": extra["charts"],
        "rows": [(s, figures["stages"][s.pk]) for s in stages],
        "box_w": graph.BOX_W,
        "workers": list(live_workers(now).order_by("worker_id")[:50]),
        "finished_ttl": FINISHED_TTL,
        "poll_seconds": POLL_SECONDS,
        "counters_as_of": as_of,
        "estimated": figures["estimated"],
        "ages": {
            "live": (epoch_ms(figures["live_at"]), ago(now - figures["live_at"])),
            "finished": (epoch_ms(figures["finished_at"]), ago(now - figures["finished_at"])),
            "counters": (epoch_ms(as_of), ago(now - as_of) if as_of else ""),
        },
        "now_ms": epoch_ms(now),
    }
    return render(request, "tasks_app/overview.html", ctx)


@require_GET
@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
def counts_json(request: HttpRequest) -> JsonResponse:
    """The overview's figures for overview.js: per stage slug, the counts and their display text, and when
    each kind of figure was counted (epoch ms)."""
    stages = list(Stage.objects.order_by("id"))
    now = timezone.now()
    figures = stage_figures(stages, now)
    body = {
        "now": epoch_ms(now),
        "poll_seconds": POLL_SECONDS,
        "estimated": figures["estimated"],
        "as_of": {
            "live": epoch_ms(figures["live_at"]),
            "finished": epoch_ms(figures["finished_at"]),
            "counters": epoch_ms(counters_as_of()),
        },
        "stages": {
            s.slug: {
                **figures["stages"][s.pk]["counts"],
                "retrying": figures["stages"][s.pk]["retrying"],
                "throttled": figures["stages"][s.pk]["throttled"],
                "overdue": figures["stages"][s.pk]["overdue"],
                "text": figures["stages"][s.pk]["text"],
            }
            for s in stages
        },
    }
    response = JsonResponse(body)
    response["Cache-Control"] = "no-store"
    return response
