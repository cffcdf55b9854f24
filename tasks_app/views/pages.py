"""Read-only pages: the task list, a task's detail, the workers."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, QueryDict
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from tasks_app.filters import TaskFilter
from tasks_app.jsonpreview import json_raw
from tasks_app.models import Stage, Task, WorkerProcess
from tasks_app.services.form_stages import may_work_on
from tasks_app.values import parse_db_datetime, parse_db_int

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


def filtered_tasks(params: QueryDict) -> tuple[TaskFilter, QuerySet[Task], dict[str, list[str]]]:
    """The task list's filters (from its query string), shared by the list page and the bulk actions.

    Also returns what is wrong with the query string (field -> messages): with
    errors it matches no task, never all of them.
    """
    task_filter = TaskFilter(params, queryset=Task.objects.select_related("stage", "source_stage"))
    errors = {field: list(messages) for field, messages in task_filter.errors.items()}
    q = params.get("q", "").strip()
    if "\x00" in q:  # PostgreSQL text can't hold it: the query would raise, not match nothing
        errors["q"] = ["Text can't contain NUL (\\u0000) characters."]
    if errors:
        return task_filter, Task.objects.none(), errors
    qs = task_filter.qs
    if q:
        # Free text over type and payload (a scan: narrow with other filters first on big tables).
        # Stored JSON text escapes quotes (and, on SQLite, non-ASCII letters): match those forms too.
        forms = {q, json.dumps(q)[1:-1], json.dumps(q, ensure_ascii=False)[1:-1]}
        text_match = Q()
        for form in forms:
            text_match |= Q(payload_text__icontains=form)
        qs = qs.annotate(payload_text=Cast("payload", TextField())).filter(Q(type__icontains=q) | text_match)
    return task_filter, qs, errors


Cursor = tuple[int | datetime, int]


def decode_cursor(sort: str, cursor: str) -> Cursor | None:
    """The (sort value, id) of the row a page ended on, from its Next link's "value|id".

    The one parser of page cursors: anything but what encode_cursor makes (an
    id or a date-time, then an id, each one the databases can compare) is a
    ValueError with a message, never a query that overflows or a silent first page.
    """
    if not cursor:
        return None
    raw_value, sep, raw_id = cursor.rpartition("|")
    if not sep:
        raise ValueError("Not a page cursor: follow the list's Next page link, or leave cursor out.")
    last_id = parse_db_int(raw_id, name="The cursor's id")
    if SORTS[sort][0].lstrip("-") == "id":
        return parse_db_int(raw_value, name="The cursor's id"), last_id
    return parse_db_datetime(raw_value, name="The cursor's date-time"), last_id


def encode_cursor(sort: str, row: Task) -> str:
    value: Any = getattr(row, SORTS[sort][0].lstrip("-"))
    return f"{value.isoformat() if isinstance(value, datetime) else value}|{row.pk}"


def keyset_page(qs: QuerySet[Task], sort: str, after: Cursor | None) -> tuple[list[Task], str | None]:
    """One page after the row `after` names, by index order: no OFFSET, no COUNT(*)."""
    fields = SORTS[sort]
    qs = qs.order_by(*fields)
    if after is not None:
        value, last_id = after
        field = fields[0].lstrip("-")
        op = "lt" if fields[0].startswith("-") else "gt"
        if field == "id":
            qs = qs.filter(**{f"id__{op}": last_id})
        else:
            qs = qs.filter(Q(**{f"{field}__{op}": value}) | Q(**{field: value, f"id__{op}": last_id}))
    rows = list(qs[: PAGE_SIZE + 1])
    next_cursor = encode_cursor(sort, rows[PAGE_SIZE - 1]) if len(rows) > PAGE_SIZE else None
    return rows[:PAGE_SIZE], next_cursor


def _list_context(request: HttpRequest) -> dict[str, Any]:
    """The list's context; its "errors" (field -> messages) make the page a 400 that lists no task."""
    task_filter, qs, errors = filtered_tasks(request.GET)
    sort = request.GET.get("sort", "-id")
    if sort not in SORTS:
        sort = "-id"
    try:
        after = decode_cursor(sort, request.GET.get("cursor", ""))
    except ValueError as exc:
        errors["cursor"] = [str(exc)]
    tasks, next_cursor = ([], None) if errors else keyset_page(qs, sort, after)
    return {
        "filter": task_filter,
        "errors": errors,
        "tasks": tasks,
        "next_cursor": next_cursor,
        "sort": sort,
        "q": request.GET.get("q", ""),
        "stages": Stage.objects.order_by("slug"),
        "can_change": request.user.has_perm("tasks_app.change_task"),
        "can_add": request.user.has_perm("tasks_app.add_task"),
        "query": request.GET.urlencode(),
    }


def errors_text(errors: dict[str, list[str]]) -> str:
    return "\n".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())


@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
def task_list(request: HttpRequest) -> HttpResponse:
    ctx = _list_context(request)
    return render(request, "tasks_app/task_list.html", ctx, status=400 if ctx["errors"] else 200)


@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
def task_rows(request: HttpRequest) -> HttpResponse:
    """The table body alone, for the list's auto-refresh (same filters, same page)."""
    ctx = _list_context(request)
    if ctx["errors"]:  # the refresh keeps the rows it has (it replaces them only on a 200)
        return HttpResponseBadRequest(errors_text(ctx["errors"]), content_type="text/plain; charset=utf-8")
    return render(request, "tasks_app/_task_rows.html", ctx)


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
