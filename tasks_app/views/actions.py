"""Buttons on the monitoring pages: POST, CSRF-protected, permission-checked,
each calling a service and redirecting back with a message (post/redirect/get)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    JsonResponse,
    QueryDict,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from tasks_app import services
from tasks_app.filter_chips import Chip, active_chips, chosen_tasks, matching_tasks
from tasks_app.jsonpreview import editable_json
from tasks_app.limits import MAX_PRIORITY, MIN_PRIORITY, NUL
from tasks_app.models import Stage, Task
from tasks_app.selectors.tasks import errors_text, filtered_tasks, task_search
from tasks_app.services.cancel import task_cancel as cancel_service
from tasks_app.services.dedupe import DedupeConflict
from tasks_app.services.events import actor_for
from tasks_app.services.routing import priority_problem, schedule_problem
from tasks_app.values import parse_db_int

SINGLE_ACTIONS: dict[str, tuple[str, Callable[..., Any]]] = {
    "retry": ("Retried", services.task_retry),
    "release": ("Released", services.task_force_release),
    "complete": ("Marked completed", services.task_mark_completed),
}


def back(request: HttpRequest, default: str) -> HttpResponseRedirect:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return HttpResponseRedirect(target)
    return HttpResponseRedirect(default)


@login_required
@permission_required("tasks_app.change_task", raise_exception=True)
@require_POST
def task_action(request: HttpRequest, task_id: int, action: str) -> HttpResponse:
    if action not in SINGLE_ACTIONS:
        return HttpResponse("Unknown action", status=404)
    verb, service = SINGLE_ACTIONS[action]
    try:
        if service(task_id=task_id, actor=actor_for(request.user)) == Task.Status.CANCELLED:
            # A release after a cancel request ends the task cancelled (services.operator.task_force_release).
            messages.success(request, f"Cancelled task {task_id}: a cancel was requested, so releasing it ended it.")
        else:
            messages.success(request, f"{verb} task {task_id}.")
    except services.TaskError as exc:
        # A lost race (a worker got there first) is a message, not an error page.
        messages.warning(request, str(exc))
        if not Task.objects.filter(pk=task_id).exists():
            return back(request, reverse("tasks_app:task-list"))
    return back(request, reverse("tasks_app:task-detail", args=[task_id]))


@login_required
@permission_required("tasks_app.change_task", raise_exception=True)
@require_POST
def task_cancel(request: HttpRequest, task_id: int) -> HttpResponse:
    """The task page's Cancel: at once when pending or failed, a cancel request when locked; a reason is required."""
    detail = reverse("tasks_app:task-detail", args=[task_id])
    reason = request.POST.get("reason", "").strip()
    if not reason or NUL in reason:
        messages.warning(request, "Say why you cancel it: a reason is required. Nothing was changed.")
        return back(request, detail)
    try:
        result = cancel_service(
            task_id=task_id, actor=actor_for(request.user), reason=reason, cascade=request.POST.get("cascade") == "1"
        )
    except services.TaskError as exc:
        messages.warning(request, str(exc))
        if not Task.objects.filter(pk=task_id).exists():
            return back(request, reverse("tasks_app:task-list"))
        return back(request, detail)
    if result.outcome == "requested":
        text = f"Requested the cancel of task {task_id}: it ends cancelled when its worker's handler returns."
    else:
        text = f"Cancelled task {task_id}."
    if result.cascaded:
        text += f" Also cancelled {len(result.cascaded)} pending descendant(s)."
    messages.success(request, text)
    return back(request, detail)


@login_required
@permission_required("tasks_app.add_task", raise_exception=True)
@require_POST
def task_duplicate(request: HttpRequest, task_id: int) -> HttpResponse:
    try:
        copy = services.task_duplicate(task_id=task_id, actor=actor_for(request.user))
    except services.TaskError as exc:
        messages.warning(request, str(exc))
        return back(request, reverse("tasks_app:task-list"))
    messages.success(request, f"Created task {copy.pk}, a copy of task {task_id}.")
    return redirect("tasks_app:task-detail", copy.pk)


def _parse_payload(raw: str) -> tuple[dict[str, Any] | None, str]:
    try:
        payload = json.loads(raw or "{}")
    except (ValueError, RecursionError) as exc:
        return None, f"Payload is not valid JSON: {exc}"
    if not isinstance(payload, dict):
        return None, 'Payload must be a JSON object, like {"customer_id": 12345}.'
    return payload, ""


@login_required
@permission_required("tasks_app.change_task", raise_exception=True)
def task_edit_payload(request: HttpRequest, task_id: int) -> HttpResponse:
    task = get_object_or_404(Task, pk=task_id)
    raw = editable_json(task.payload)  # indented only while that stays small (deep documents explode)
    if raw is None:
        messages.warning(request, f"The payload of task {task_id} is too large to edit in a page.")
        return redirect("tasks_app:task-detail", task_id)
    error = ""
    if request.method == "POST":
        raw = request.POST.get("payload", "")
        payload, error = _parse_payload(raw)
        if payload is not None:
            try:
                services.task_edit_payload(task_id=task_id, payload=payload, actor=actor_for(request.user))
                messages.success(request, f"Saved the payload of task {task_id}.")
                return redirect("tasks_app:task-detail", task_id)
            except ValidationError as exc:
                error = " ".join(exc.messages)
            except services.TaskError as exc:
                error = str(exc)
    status = 400 if error else 200
    return render(request, "tasks_app/task_edit.html", {"task": task, "raw": raw, "error": error}, status=status)


def _parse_schedule(priority: str, run_at: str) -> tuple[int | None, datetime | None, str]:
    """The New task page's priority (blank: the stage's) and "Run at" (blank: now; in the viewer's time zone)."""
    value: int | None = None
    at: datetime | None = None
    if priority.strip():
        try:
            value = int(priority.strip())
        except ValueError:
            return None, None, f"Priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}."
        if problem := priority_problem(value):
            return None, None, f"{problem[0].upper()}{problem[1:]}."
    if run_at.strip():
        try:
            at = datetime.fromisoformat(run_at.strip())
        except ValueError:
            return None, None, "Run at must be a date and time, like 2026-12-24 14:00."
        if timezone.is_naive(at):
            at = timezone.make_aware(at)  # the active time zone: the viewer's
        if problem := schedule_problem(at=at):
            return None, None, f"Run at: {problem.removeprefix('at ')}."
    return value, at, ""


@login_required
@permission_required("tasks_app.add_task", raise_exception=True)
def task_create(request: HttpRequest) -> HttpResponse:
    stages = Stage.objects.order_by("slug")
    values = {"stage": request.GET.get("stage", ""), "type": "", "payload": "{}", "priority": "", "run_at": ""}
    error = ""
    if request.method == "POST":
        values = {k: request.POST.get(k, "") for k in ("stage", "type", "payload", "priority", "run_at")}
        # A NUL can't be looked up on PostgreSQL (DataError): it names no stage anyway.
        stage = Stage.objects.filter(slug=values["stage"]).first() if NUL not in values["stage"] else None
        payload, error = _parse_payload(values["payload"])
        priority, run_at, schedule_error = _parse_schedule(values["priority"], values["run_at"])
        if stage is None:
            error = f"Unknown stage '{values['stage']}'."
        elif schedule_error:
            error = schedule_error
        elif payload is not None:
            try:
                task = services.task_create(
                    stage=stage, type=values["type"], payload=payload, actor=actor_for(request.user),
                    priority=priority, available_at=run_at,
                )  # fmt: skip
                if task.deduplicated:  # dedupe (issue 15): the live task with this payload's key
                    messages.info(
                        request, f"Nothing created: task {task.pk} at {stage.slug} is live with this payload's "
                        "dedupe key (the stage's dedupe_on).",
                    )  # fmt: skip
                else:
                    messages.success(request, f"Created task {task.pk} at {stage.slug}.")
                return redirect("tasks_app:task-detail", task.pk)
            except ValidationError as exc:
                error = " ".join(exc.messages)
    ctx = {"stages": stages, "values": values, "error": error}
    return render(request, "tasks_app/task_create.html", ctx, status=400 if error else 200)


BULK_ACTIONS: dict[str, tuple[str, str, Callable[..., Any]]] = {
    "retry": ("Retried", "tasks_app.change_task", services.task_retry),
    "release": ("Released", "tasks_app.change_task", services.task_force_release),
    "complete": ("Marked completed", "tasks_app.change_task", services.task_mark_completed),
    "duplicate": ("Duplicated", "tasks_app.add_task", services.task_duplicate),
    # Locked tasks get a cancel request (they end cancelled when their handler returns); counted as done.
    "cancel": ("Cancelled (or requested the cancel of)", "tasks_app.change_task", cancel_service),
}
# The confirmation's question per action; {} is the tasks ("587 failed tasks at Check stock").
BULK_QUESTIONS = {
    "retry": "Retry {}?",
    "release": "Release the locks of {}?",
    "complete": "Mark {} as completed?",
    "duplicate": "Duplicate {}?",
    "cancel": "Cancel {}?",
}
# Actions whose confirmation asks for a reason (recorded in each task's history).
BULK_REASONED = {"cancel"}
# One request acts on at most this many tasks; the message says when more remain.
BULK_LIMIT = 5000


def bulk_refused(text: str) -> HttpResponse:
    """A bulk request no page could have sent (a forged or hand-edited form): 400, nothing done."""
    return HttpResponseBadRequest(text, content_type="text/plain; charset=utf-8")


@dataclass
class BulkChoice:
    """The tasks a bulk request names: ids in id order (at most BULK_LIMIT), whether more match, and the filter."""

    ids: list[int]
    more: bool = False
    chips: list[Chip] = field(default_factory=list)
    within: str = ""  # the id range a free-text or payload search read ("#1–#50,000")


def _chosen_by_filter(post: QueryDict, query: str) -> BulkChoice | HttpResponse:
    """The first BULK_LIMIT tasks matching the list's filter; confirmed, only those up to the confirmed last id."""
    params = QueryDict(query)
    search = task_search(params)  # re-run the list's own filters on its query string
    if search.errors:  # acting on "all" of a query that can't run would act on nothing, or guess
        return bulk_refused(f"The list's filter is not valid, so nothing was done.\n{errors_text(search.errors)}")
    qs = search.qs
    try:
        raw_upto = post.get("upto", "")
        upto = parse_db_int(raw_upto, name="The confirmed last id") if isinstance(raw_upto, str) and raw_upto else None
    except ValueError as exc:
        return bulk_refused(f"{exc} Nothing was done.")
    if upto is not None:  # the confirmation counted the tasks up to this id: act on no task created since
        qs = qs.filter(id__lte=upto)
    ids = list(qs.order_by("id").values_list("id", flat=True)[: BULK_LIMIT + 1])
    # Confirmed, "more" is what the question said ("the first 5,000 of more than 5,000"), not tasks since.
    more = len(ids) > BULK_LIMIT or (upto is not None and post.get("more") == "1")
    names = dict(Stage.objects.values_list("slug", "name"))
    chips = active_chips(params, names, search.filter.form.cleaned_data)
    within = search.searched.text if search.searched else ""  # text and payload searches read one id range
    return BulkChoice(ids[:BULK_LIMIT], more, chips, within)


def _chosen_rows(post: QueryDict) -> BulkChoice | HttpResponse:
    """The ticked rows that (still) exist, in id order."""
    try:
        wanted = {parse_db_int(i, name="A selected id") for i in post.getlist("ids")[: BULK_LIMIT + 1]}
    except ValueError as exc:
        return bulk_refused(f"{exc} Nothing was done.")
    ids = sorted(Task.objects.filter(pk__in=wanted).values_list("id", flat=True)) if wanted else []
    return BulkChoice(ids[:BULK_LIMIT], len(ids) > BULK_LIMIT)


def bulk_question(action: str, scope: str, choice: BulkChoice) -> str:
    """The confirmation's question: the action, the exact number of tasks and what chose them, like
    "Retry 587 failed tasks at Check stock?"."""
    if scope == "all":
        tasks = matching_tasks(len(choice.ids), choice.chips, more=choice.more, within=choice.within)
    else:
        tasks = chosen_tasks(choice.ids)
    return BULK_QUESTIONS[action].format(tasks)


@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
@require_POST
def task_bulk(request: HttpRequest) -> HttpResponse:
    """An action on the selected rows, or on every task matching the list's current filter.

    1. Unconfirmed (the list's Apply): a page asking "Retry 587 failed tasks at Check stock?", counted now,
       with a Confirm button that posts the same choice again, confirmed. Nothing changes yet.
    2. Confirmed: each task through its service (each writes its history event); a message counts them.
    No action, no rows, or no permission for the action: refused, nothing changed.
    """
    query = request.POST.get("query", "")
    list_url = reverse("tasks_app:task-list") + (f"?{query}" if query else "")
    action = request.POST.get("action", "")
    if action not in BULK_ACTIONS:
        messages.warning(request, "Choose an action.")
        return HttpResponseRedirect(list_url)
    verb, perm, service = BULK_ACTIONS[action]
    if not request.user.has_perm(perm):
        return HttpResponse("Forbidden", status=403)
    scope = "all" if request.POST.get("scope") == "all" else "selected"
    choice = _chosen_by_filter(request.POST, query) if scope == "all" else _chosen_rows(request.POST)
    if isinstance(choice, HttpResponse):
        return choice
    if not choice.ids:
        messages.warning(request, "No tasks match the filter." if scope == "all" else "No tasks selected.")
        return HttpResponseRedirect(list_url)
    if request.POST.get("confirm") != "1":
        ctx = {
            "question": bulk_question(action, scope, choice),
            "action": action,
            "scope": scope,
            "query": query,
            "ids": choice.ids if scope == "selected" else [],
            "upto": choice.ids[-1] if scope == "all" else None,
            "more": choice.more,
            "chips": choice.chips,
            "list_url": list_url,
            "needs_reason": action in BULK_REASONED,
        }
        return render(request, "tasks_app/task_bulk_confirm.html", ctx)
    extra: dict[str, Any] = {}
    if action in BULK_REASONED:
        reason = request.POST.get("reason", "").strip()
        if not reason or NUL in reason:
            messages.warning(request, "A reason is required to cancel tasks. Nothing was changed.")
            return HttpResponseRedirect(list_url)
        extra["reason"] = reason
    done, refused, held, ended_cancelled = 0, 0, 0, 0
    for task_id in choice.ids:
        try:
            outcome = service(task_id=task_id, actor=actor_for(request.user), **extra)
            done += 1
            # A release after a cancel request ends the task cancelled (services.operator.task_force_release).
            ended_cancelled += action == "release" and outcome == Task.Status.CANCELLED
        except services.TaskError as exc:
            refused += 1  # not in a state this action applies to (or a worker got there first)
            held += isinstance(exc, DedupeConflict)  # or a live task holds its dedupe key (issue 15)
    text = f"{verb} {done} task(s)."
    if ended_cancelled:
        text += f" {ended_cancelled} of them ended cancelled: a cancel was requested."
    if refused:
        text += f" {refused} skipped: not in a state this action applies to."
    if held:
        text += f" ({held} of them because a live task at their stage has the same dedupe key.)"
    if choice.more:
        text += f" Stopped after {BULK_LIMIT}; run it again for the rest."
    messages.success(request, text)
    return HttpResponseRedirect(list_url)


@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
@require_GET
def task_bulk_count(request: HttpRequest) -> HttpResponse:
    """How many tasks the list's filter matches, up to the bulk limit: the bulk bar's "all 587 matching"."""
    _, qs, errors = filtered_tasks(request.GET)
    if errors:
        return JsonResponse({"errors": errors}, status=400)
    # Counted over at most BULK_LIMIT + 1 ids (a LIMIT in a subquery that reads no payload), never the whole table.
    count = qs.order_by().values("id")[: BULK_LIMIT + 1].count()
    return JsonResponse({"count": min(count, BULK_LIMIT), "more": count > BULK_LIMIT, "limit": BULK_LIMIT})
