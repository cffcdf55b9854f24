"""Read-only pages: the task list, a task's detail, the workers."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from tasks_app.filters import TaskFilter
from tasks_app.jsonpreview import json_raw
from tasks_app.models import Stage, Task, WorkerProcess
from tasks_app.services.forms import may_work_on

PAGE_SIZE = 50
HISTORY_LIMIT = 50  # events shown on a task's page (a task retried forever has an endless history)
SORTS: dict[str, tuple[str, ...]] = {
    "-id": ("-id",),
    "id": ("id",),
    "-created_at": ("-created_at", "-id"),
    "created_at": ("created_at", "id"),
    "-updated_at": ("-updated_at", "-id"),
    "updated_at": ("updated_at", "id"),
}


def filtered_tasks(params: QueryDict) -> tuple[TaskFilter, QuerySet[Task]]:
    """The task list's filters (from its query string), shared by the list page and the bulk actions."""
    task_filter = TaskFilter(params, queryset=Task.objects.select_related("stage", "source_stage"))
    # Invalid filters show their errors and no rows, never all rows.
    qs = task_filter.qs if task_filter.is_valid() else Task.objects.none()
    q = params.get("q", "").strip()
    if q:
        # Free text over type and payload (a scan: narrow with other filters first on big tables).
        # Stored JSON text escapes quotes (and, on SQLite, non-ASCII letters): match those forms too.
        forms = {q, json.dumps(q)[1:-1], json.dumps(q, ensure_ascii=False)[1:-1]}
        text_match = Q()
        for form in forms:
            text_match |= Q(payload_text__icontains=form)
        qs = qs.annotate(payload_text=Cast("payload", TextField())).filter(Q(type__icontains=q) | text_match)
    return task_filter, qs


def keyset_page(qs: QuerySet[Task], sort: str, cursor: str) -> tuple[list[Task], str | None]:
    """One page after `cursor` ("value|id"), by index order: no OFFSET, no COUNT(*)."""
    fields = SORTS[sort]
    qs = qs.order_by(*fields)
    if cursor:
        raw_value, _, raw_id = cursor.rpartition("|")
        try:
            last_id = int(raw_id)
        except ValueError:
            last_id = None
        if last_id is not None:
            field = fields[0].lstrip("-")
            op = "lt" if fields[0].startswith("-") else "gt"
            if field == "id":
                qs = qs.filter(**{f"id__{op}": last_id})
            else:
                value = parse_datetime(raw_value)
                if value is not None:
                    qs = qs.filter(Q(**{f"{field}__{op}": value}) | Q(**{field: value, f"id__{op}": last_id}))
    rows = list(qs[: PAGE_SIZE + 1])
    next_cursor = None
    if len(rows) > PAGE_SIZE:
        last = rows[PAGE_SIZE - 1]
        field = fields[0].lstrip("-")
        value: Any = getattr(last, field)
        next_cursor = f"{value.isoformat() if isinstance(value, datetime) else value}|{last.pk}"
    return rows[:PAGE_SIZE], next_cursor


def _list_context(request: HttpRequest) -> dict[str, Any]:
    task_filter, qs = filtered_tasks(request.GET)
    sort = request.GET.get("sort", "-id")
    if sort not in SORTS:
        sort = "-id"
    tasks, next_cursor = keyset_page(qs, sort, request.GET.get("cursor", ""))
    return {
        "filter": task_filter,
        "tasks": tasks,
        "next_cursor": next_cursor,
        "sort": sort,
        "q": request.GET.get("q", ""),
        "stages": Stage.objects.order_by("slug"),
        "can_change": request.user.has_perm("tasks_app.change_task"),
        "can_add": request.user.has_perm("tasks_app.add_task"),
        "query": request.GET.urlencode(),
    }


@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
def task_list(request: HttpRequest) -> HttpResponse:
    return render(request, "tasks_app/task_list.html", _list_context(request))


@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
def task_rows(request: HttpRequest) -> HttpResponse:
    """The table body alone, for the list's auto-refresh (same filters, same page)."""
    return render(request, "tasks_app/_task_rows.html", _list_context(request))


@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
def task_detail(request: HttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(Task.objects.select_related("stage", "source_stage", "parent__stage"), pk=task_id)
    events = list(task.events.order_by("-id")[:HISTORY_LIMIT])[::-1]
    ctx = {
        "task": task,
        "events": events,
        "earlier_events": task.events.count() - len(events) if len(events) == HISTORY_LIMIT else 0,
        "children": list(task.children.select_related("stage").order_by("id")[:100]),
        "now": timezone.now(),
        "can_change": request.user.has_perm("tasks_app.change_task"),
        "can_add": request.user.has_perm("tasks_app.add_task"),
    }
    return render(request, "tasks_app/task_detail.html", ctx)


@login_required
def task_payload(request: HttpRequest, task_id: int) -> HttpResponse:
    """The whole payload as JSON (the pages show only its head); never HTML, so nothing in it runs.

    For people who may view tasks, and for those who work on the task's form stage (its page shows the payload).
    """
    task = get_object_or_404(Task.objects.select_related("stage").only("payload", "stage"), pk=task_id)
    if not (request.user.has_perm("tasks_app.view_task") or may_work_on(request.user, task.stage)):
        raise PermissionDenied
    response = HttpResponse(json_raw(task.payload), content_type="application/json")
    disposition = "attachment" if request.GET.get("download") else "inline"
    response["Content-Disposition"] = f'{disposition}; filename="task-{task_id}-payload.json"'
    return response


@login_required
@permission_required("tasks_app.view_workerprocess", raise_exception=True)
def workers(request: HttpRequest) -> HttpResponse:
    rows = list(WorkerProcess.objects.order_by("-last_heartbeat")[:200])
    now = timezone.now()
    ctx = {"workers": [(w, w.is_alive(now)) for w in rows]}
    return render(request, "tasks_app/workers.html", ctx)
