"""Read-only pages: the task list, a task's detail, the workers."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.db.models import prefetch_related_objects
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from tasks_app.jsonpreview import json_raw
from tasks_app.models import Stage, Task
from tasks_app.selectors.history import task_timeline
from tasks_app.selectors.tasks import SORTS, Page, decode_cursor, errors_text, keyset_page, task_search
from tasks_app.selectors.work import may_work_on
from tasks_app.selectors.workers import recent_workers
from tasks_app.services.assign import assign_choices
from tasks_app.services.join import task_group

HISTORY_LIMIT = 50  # events shown on a task's page (a task retried forever has an endless history)


def _list_context(request: HttpRequest) -> dict[str, Any]:
    """The list's context; its "errors" (field -> messages) make the page a 400 that lists no task."""
    search = task_search(request.GET)
    errors = search.errors
    sort = request.GET.get("sort", "-id")
    if sort not in SORTS:
        sort = "-id"
    cursor = None
    try:
        cursor = decode_cursor(sort, request.GET.get("cursor", ""))
    except ValueError as exc:
        errors["cursor"] = [str(exc)]
    page = Page([], None, None) if errors else keyset_page(search.qs, sort, cursor, search.statuses)
    prefetch_related_objects(page.tasks, "assignee")  # the rows' assignee chips: one query for the page
    return {
        "filter": search.filter,
        "errors": errors,
        "tasks": page.tasks,
        "next_cursor": page.next_cursor,
        "previous_cursor": page.previous_cursor,
        "searched": search.searched,
        "task_id": search.task_id,
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
    task = get_object_or_404(
        Task.objects.select_related("stage", "source_stage", "parent__stage", "assignee"), pk=task_id
    )
    timeline = task_timeline(task, limit=HISTORY_LIMIT)
    ctx = {
        "task": task,
        "events": timeline.entries,
        "earlier_events": timeline.earlier,
        "children": list(task.children.select_related("stage").order_by("id")[:100]),
        "now": timezone.now(),
        "can_change": request.user.has_perm("tasks_app.change_task"),
        "can_add": request.user.has_perm("tasks_app.add_task"),
        # A person's task waiting at a form stage: its decision page, for those who may decide it.
        "work_link": task.stage.kind == Stage.Kind.FORM
        and task.status in (Task.Status.PENDING, Task.Status.LOCKED)
        and may_work_on(request.user, task.stage),
        # An arrival waiting at a join stage: its group, "3/5 arrived" (services.join).
        "join_group": task_group(task),
        # Assign (issue 16): the Assignee form's choices, for task editors on a live form task.
        "assignees": assign_choices(request.user, task),
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
    rows = recent_workers()
    now = timezone.now()
    ctx = {"workers": [(w, w.is_alive(now)) for w in rows]}
    return render(request, "tasks_app/workers.html", ctx)
