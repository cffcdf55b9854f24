"""The task page's Assignee form (issue 16): a POST, CSRF-protected, for users with the change-task permission.

Chooses among the active users who may work on the task's stage
(services.assign.eligible_users), or blank to clear; the service refuses a
finished task and anyone else, said as a message (post/redirect/get).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from tasks_app.models import Task
from tasks_app.services import TaskError
from tasks_app.services.assign import MAX_VALUE, task_assign, user_for
from tasks_app.services.events import actor_for


@login_required
@permission_required("tasks_app.change_task", raise_exception=True)
@require_POST
def task_assign_view(request: HttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(Task.objects.select_related("stage"), pk=task_id)
    name = request.POST.get("assignee", "").strip()[:MAX_VALUE]
    try:
        user = user_for(task.stage, name) if name else None
        task_assign(task_id=task.pk, assignee=user, actor=actor_for(request.user))
    except ValidationError as exc:
        messages.warning(request, " ".join(exc.messages))
    except TaskError as exc:
        messages.warning(request, str(exc))
    else:
        messages.success(request, f"Task {task.pk} assigned to {name}." if name else f"Task {task.pk} unassigned.")
    return redirect("tasks_app:task-detail", task_id=task.pk)
