"""The top bar's lookup box: one text, and the page it names."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.views.decorators.http import require_GET

from tasks_app.models import Task
from tasks_app.selectors.tasks import lookup_kind


@login_required
@permission_required("tasks_app.view_task", raise_exception=True)
@require_GET
def task_lookup(request: HttpRequest) -> HttpResponse:
    """`123` or `#123`: that task's page; `key:value`, `key=value`: the list with that payload filter; else free text.

    Always a redirect (nothing changes): the list's URL carries the filter, so it shows in the
    form and can be shared. A missing id goes back to the list with a message and searches nothing else.
    """
    list_url = reverse("tasks_app:task-list")
    kind, value = lookup_kind(request.GET.get("q", ""))
    if kind == "id":
        if value is not None and Task.objects.filter(pk=value).exists():
            return HttpResponseRedirect(reverse("tasks_app:task-detail", args=[value]))
        shown = value if value is not None else request.GET.get("q", "").strip().lstrip("#").strip()
        messages.warning(
            request, f"No task #{shown}. To find a value in payloads, type key:value, like order_id:{shown}."
        )
        return HttpResponseRedirect(list_url)
    if kind == "payload":
        return HttpResponseRedirect(f"{list_url}?{urlencode({'payload': value})}")
    if kind == "text":
        return HttpResponseRedirect(f"{list_url}?{urlencode({'q': value})}")
    return HttpResponseRedirect(list_url)
