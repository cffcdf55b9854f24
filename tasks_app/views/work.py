"""My work: the tasks waiting at form stages, and the form a person fills to send one on.

Open, submit and cancel are POSTs (CSRF-protected) that call the form
services; the task page itself only reads. Who may work on a stage is
decided by services.form_stages (groups on the stage).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from tasks_app.forms.schema import button_label, form_fields, schema_form
from tasks_app.models import Task
from tasks_app.selectors.work import (
    WorkPage,
    assigned_to,
    form_stages_for,
    may_work_on,
    mine,
    payload_schema,
    search_problem,
    waiting,
    work_page,
    work_queue,
)
from tasks_app.services import TaskError
from tasks_app.services.assign import assignment_refusals
from tasks_app.services.due import overdue_counts
from tasks_app.services.events import actor_for, person_named
from tasks_app.services.form_stages import (
    TaskHeldError,
    form_task_cancel,
    form_task_open,
    form_task_submit,
    outgoing_types,
)
from tasks_app.services.schemas import schema_for
from tasks_app.templatetags.people import when


@login_required
def my_work(request: HttpRequest) -> HttpResponse:
    """The live tasks of the person's form stages: theirs first, then the queue by age, searched and paged."""
    stages = list(form_stages_for(request.user).order_by("slug"))
    q = request.GET.get("q", "").strip()
    errors = []
    if problem := search_problem(q):
        errors.append(problem)
    who = actor_for(request.user)
    page, open_tasks, assigned = WorkPage([], None, None), [], []
    if not errors:
        queue = work_queue(stages, q)
        try:
            page = work_page(
                waiting(queue, who, request.user.pk),
                after=request.GET.get("after", ""),
                before=request.GET.get("before", ""),
            )
        except ValueError as exc:
            errors.append(str(exc))
        open_tasks = mine(queue, who)
        assigned = assigned_to(queue, who, request.user.pk)  # assign (issue 16): shown first
        assignment_refusals(page.tasks, request.user)
    ctx = {
        "stages": stages,
        "q": q,
        "errors": errors,
        "mine": _with_schemas(open_tasks),
        "assigned": _with_schemas(assigned),
        "waiting": _with_schemas(page.tasks),
        "page": page,
        "paged": bool(request.GET.get("after") or request.GET.get("before")),
        # Past max_wait or due_after (services.due), at the person's stages, whatever the search.
        "overdue_count": sum(overdue_counts(stages).values()),
    }
    return render(request, "tasks_app/work_list.html", ctx, status=400 if errors else 200)


def _with_schemas(tasks: list[Task]) -> list[tuple[Task, dict[str, Any]]]:
    """Each task with the schema that titles its payload (one transitions query per stage, not per row)."""
    outgoing: dict[tuple[int, str], list[str]] = {}
    rows = []
    for task in tasks:
        key = (task.stage_id, task.type)
        if key not in outgoing:
            outgoing[key] = outgoing_types(task.stage, task.type)
        rows.append((task, payload_schema(task, outgoing[key])))
    return rows


def _task_for(request: HttpRequest, task_id: int) -> Task:
    task = get_object_or_404(Task.objects.select_related("stage", "source_stage"), pk=task_id)
    if not may_work_on(request.user, task.stage):
        raise PermissionDenied("You may not work on the tasks of this stage.")
    return task


def _buttons(task: Task, data: Any = None, submitted: str = "") -> list[dict[str, Any]]:
    """One form per outgoing type, with the fields of the stage's schema for that type."""
    buttons = []
    for type in outgoing_types(task.stage, task.type):
        schema = schema_for(task.stage.schemas, type)
        form = schema_form(
            schema,
            data=data if type == submitted else None,
            payload=task.payload,
            prefix=f"f-{type}",
        )
        # A schema's "title" names the button ("Approve"); else the type does.
        label = button_label(schema, type)
        buttons.append({"type": type, "label": label, "form": form})
    return buttons


def _page(
    request: HttpRequest, task: Task, *, buttons: Any = None, errors: Any = (), status: int = 200
) -> HttpResponse:
    now = timezone.now()
    holds = task.status == Task.Status.LOCKED and task.locked_by == actor_for(request.user)
    held_by_other = task.status == Task.Status.LOCKED and not holds and task.locked_until and task.locked_until >= now
    ctx = {
        "task": task,
        "holds": holds,
        "holder": person_named(task.locked_by) if held_by_other else "",
        "buttons": buttons if buttons is not None else (_buttons(task) if holds else []),
        "errors": errors,
        "now": now,
        "schema": payload_schema(task, outgoing_types(task.stage, task.type)),
    }
    return render(request, "tasks_app/work_task.html", ctx, status=status)


@login_required
def work_task(request: HttpRequest, task_id: int) -> HttpResponse:
    return _page(request, _task_for(request, task_id))


def refusal(exc: TaskError, task_id: int) -> str:
    """What a person is told when a task can't be opened, decided or released: a lock with its full date."""
    if isinstance(exc, TaskHeldError) and exc.locked_until is not None:
        # The service's text says "until 13:22", which hid the date of a lock held for a week.
        return f"Task {task_id} is being worked on by {exc.holder} until {when(exc.locked_until)}."
    return str(exc)


@login_required
@require_POST
def work_open(request: HttpRequest, task_id: int) -> HttpResponse:
    task = _task_for(request, task_id)
    try:
        form_task_open(task=task, user=request.user)
    except TaskHeldError as exc:
        messages.warning(request, refusal(exc, task.pk))
    except TaskError as exc:
        messages.warning(request, str(exc))
        return redirect("tasks_app:my-work")
    return redirect("tasks_app:work-task", task_id=task.pk)


@login_required
@require_POST
def work_submit(request: HttpRequest, task_id: int) -> HttpResponse:
    task = _task_for(request, task_id)
    type = request.POST.get("type", "")
    buttons = _buttons(task, data=request.POST, submitted=type)
    chosen = next((b for b in buttons if b["type"] == type), None)
    if chosen is None:
        return _page(request, task, buttons=buttons, errors=[f"'{type}' is not an outcome of this stage."], status=400)
    form = chosen["form"]
    if not form.is_valid():
        return _page(request, task, buttons=buttons, status=400)
    try:
        successors = form_task_submit(task_id=task.pk, user=request.user, type=type, fields=form_fields(form))
    except ValidationError as exc:
        return _page(request, task, buttons=buttons, errors=exc.messages, status=400)
    except TaskError as exc:
        messages.warning(request, refusal(exc, task.pk))
        return redirect("tasks_app:work-task", task_id=task.pk)
    if not successors and Task.objects.filter(pk=task.pk, status=Task.Status.CANCELLED).exists():
        # A cancel was requested while they held it: the submit ended it cancelled and sent nothing (services.cancel).
        messages.warning(request, f"Task {task.pk} was cancelled (a cancel was requested); nothing was sent.")
        return redirect("tasks_app:my-work")
    sent = ", ".join(f"{t.stage.slug} (task {t.pk})" for t in successors) or "no stage"
    messages.success(request, f"Task {task.pk}: {chosen['label'].lower()}, sent to {sent}.")
    return redirect("tasks_app:my-work")


@login_required
@require_POST
def work_cancel(request: HttpRequest, task_id: int) -> HttpResponse:
    task = _task_for(request, task_id)
    try:
        if form_task_cancel(task_id=task.pk, user=request.user) == Task.Status.CANCELLED:
            messages.info(request, f"Task {task.pk} was cancelled (a cancel was requested while you held it).")
        else:
            messages.info(request, f"Task {task.pk} is back in the queue.")
    except TaskError as exc:
        messages.warning(request, refusal(exc, task.pk))
    return redirect("tasks_app:my-work")
