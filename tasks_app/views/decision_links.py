"""One-click decisions from the mail (issue 16): the confirmation page a link opens, and its POST.

GET /work/decide/<token>/ (login required: an anonymous person is sent to the
login page and back) checks the link and shows what it will do, with a
CSRF-protected form; it never changes anything. The POST decides (services.
decision_links) and goes back to My work with a message. A link that can't be
used gets a page saying why, with the status the service gives (400 changed, 403
someone else's, 404 task gone, 409 no longer decidable, 410 expired or used).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from tasks_app.selectors.work import payload_schema
from tasks_app.services.decision_links import LinkRefused, decision_link_check, decision_link_use
from tasks_app.services.form_stages import outgoing_types

TEMPLATE = "tasks_app/decision_confirm.html"


@login_required
@require_http_methods(["GET", "POST"])
def decide(request: HttpRequest, token: str) -> HttpResponse:
    if request.method == "POST":
        return _decide(request, token)
    try:
        checked = decision_link_check(token=token, user=request.user)
    except LinkRefused as exc:
        return render(request, TEMPLATE, {"refusal": str(exc)}, status=exc.status)
    task = checked.task
    ctx = {
        "task": task,
        "button": checked.button,
        "schema": payload_schema(task, outgoing_types(task.stage, task.type)),
        "token": token,
    }
    return render(request, TEMPLATE, ctx)


def _decide(request: HttpRequest, token: str) -> HttpResponse:
    try:
        decided = decision_link_use(token=token, user=request.user)
    except LinkRefused as exc:
        return render(request, TEMPLATE, {"refusal": str(exc)}, status=exc.status)
    task, label = decided.task, decided.button.label
    if decided.cancelled:
        messages.warning(request, f"Task {task.pk} was cancelled before your decision: nothing was sent.")
    else:
        sent = ", ".join(f"{t.stage.slug} (task {t.pk})" for t in decided.successors) or "no stage"
        messages.success(request, f"Task {task.pk}: {label.lower()}, sent to {sent}.")
    return redirect("tasks_app:my-work")
