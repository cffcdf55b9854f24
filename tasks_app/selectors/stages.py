"""Stage reads: what deleting stages would take with them (the admin's confirmation page; services/stages.py
does it), and the stage page's counts, recent errors and job runs (views/stages.py)."""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from croniter import croniter
from django.conf import settings
from django.db import connection
from django.db.models import Count, Max, Min, Q
from django.db.models.functions import Substr
from django.utils import timezone

from tasks_app.models import FINISHED, LIVE, JobRun, Stage, Task, Transition
from tasks_app.services.waiting import wait_start


def stage_delete_counts(stages: Iterable[Stage]) -> dict[str, int]:
    """Counts of what goes with the stages: finished tasks (with their history) and transitions, either way."""
    ids = [s.pk for s in stages]
    finished = Task.objects.filter(stage_id__in=ids, status__in=FINISHED)
    transitions = Transition.objects.filter(Q(source_id__in=ids) | Q(target_id__in=ids))
    return {
        "finished tasks (with their history)": finished.aggregate(n=Count("id"))["n"],
        "transitions": transitions.count(),
    }


# -- the stage page (views/stages.py) -----------------------------------------------------------

# "Recent" errors come from at most this many tasks: the stage's latest live (pending or locked)
# tasks, through the claim index, and the stage's latest failed tasks, through the failed index.
# Bounded reads whatever the table holds; a stage's older failures drop out of the window. (2,000 and
# 5,000 of every stage's failed tasks cost 295 ms at a million tasks, mostly binding the ids:
# bench/pages.py; these windows 20-80 ms.)
RECENT_LIVE = 1000
RECENT_FAILED = 2000
ERROR_GROUPS = 20
MESSAGE_CHARS = 300  # of an error read per task: its first line is the message the groups are made of
JOB_RUNS = 10


@dataclass(frozen=True)
class ErrorGroup:
    message: str  # the first line of the tasks' last error
    count: int
    statuses: tuple[str, ...]  # the statuses its tasks have now (the link to them filters by these)
    latest_id: int


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def stage_recent_errors(
    stage: Stage, *, live_rows: int = RECENT_LIVE, failed_rows: int = RECENT_FAILED, groups: int = ERROR_GROUPS
) -> list[ErrorGroup]:
    """The stage's recent errors grouped by message (the first line), most frequent first.

    First the two windows' ids, each from a partial index (the claim index: the stage's live tasks; the
    failed index, filtered by stage: the stage's failed tasks), then one GROUP BY over those rows reached
    by primary key.
    The ids go in as a list, not a subquery: with a subquery PostgreSQL joined it to a scan of all the
    stage's tasks (its stage_id index: 140,000 rows of a stage at a million tasks).
    """
    live = Task.objects.filter(stage=stage, status__in=LIVE).order_by("-id").values_list("id", flat=True)
    failed = Task.objects.filter(stage=stage, status=Task.Status.FAILED).order_by("-id").values_list("id", flat=True)
    ids = [*live[:live_rows], *failed[:failed_rows]]
    step = connection.features.max_query_params or len(ids) or 1  # SQLite binds at most 999 parameters
    merged: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), step):
        rows = (
            Task.objects.filter(pk__in=ids[start : start + step], stage=stage)
            .exclude(last_error="")
            .annotate(head=Substr("last_error", 1, MESSAGE_CHARS))
            .values_list("head", "status")
            .annotate(n=Count("id"), latest=Max("id"))
            .order_by()
        )
        for head, status, n, latest in rows:
            group = merged.setdefault(first_line(head), {"count": 0, "statuses": set(), "latest": 0})
            group["count"] += n
            group["statuses"].add(status)
            group["latest"] = max(group["latest"], latest)
    ordered = sorted(merged.items(), key=lambda item: (-item[1]["count"], -item[1]["latest"]))
    return [
        ErrorGroup(message, g["count"], tuple(s for s in Task.Status.values if s in g["statuses"]), g["latest"])
        for message, g in ordered[:groups]
        if message
    ]


def stage_live_counts(stage: Stage) -> dict[str, Any]:
    """Pending and locked tasks at the stage (exact, claim index), how many of them are retries, and when the
    longest wait of a due pending task began (the overview's oldest pending: selectors.overview.live_counts)."""
    out: dict[str, Any] = {"pending": 0, "locked": 0, "retrying": 0, "oldest_pending": None}
    due = Q(status=Task.Status.PENDING, available_at__lte=timezone.now())
    rows = (
        Task.objects.filter(stage=stage, status__in=LIVE)
        .values_list("status")
        .annotate(n=Count("id"), retrying=Count("id", filter=Q(attempts__gt=0)), oldest=Min(wait_start(), filter=due))
        .order_by()
    )
    for status, n, retrying, oldest in rows:
        out[status] = n
        out["retrying"] += retrying if status == Task.Status.PENDING else 0
        if status == Task.Status.PENDING:
            out["oldest_pending"] = oldest
    return out


def next_due(stage: Stage, now: datetime | None = None) -> datetime | None:
    """A job stage's next due time after `now` (its cron schedule read in TIME_ZONE); None without a valid one."""
    if stage.kind != Stage.Kind.JOB or not stage.schedule:
        return None
    local = timezone.localtime(now or timezone.now(), zoneinfo.ZoneInfo(settings.TIME_ZONE))
    try:
        return croniter(stage.schedule, local).get_next(datetime)
    except (ValueError, KeyError):  # croniter's errors: the model validates, raw SQL may not
        return None


def stage_job_runs(stage: Stage, limit: int = JOB_RUNS) -> list[JobRun]:
    """A job stage's latest runs, newest due time first (the unique (stage, due_at) index)."""
    return list(JobRun.objects.filter(stage=stage).order_by("-due_at")[:limit])
