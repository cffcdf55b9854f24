"""A stage's page (/stages/<slug>/): its settings, schemas, counts and recent errors, its figures for the last
24 h / 7 d (?window=) and hourly charts (selectors.figures), job runs or hook address, and its buttons:
Pause/Resume, and Run now for job stages.

No page view folds the history: the counters, figures and charts are as the workers' upkeep (worker.loop)
or /metrics last folded it, and the page says when.

Reading takes view_task and view_stage; every button is a CSRF-protected POST that takes change_stage and
calls a service (post/redirect/get). The hook's secret is shown only to those who may change the stage.
"""

from __future__ import annotations

import shlex
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from tasks_app.api.hooks import DEFAULT_TYPE
from tasks_app.models import Stage
from tasks_app.selectors.figures import hourly_series, window_named, workflow_figures
from tasks_app.selectors.overview import attempt_counters, counters_as_of, finished_counts, flow_states
from tasks_app.selectors.stages import (
    RECENT_FAILED,
    RECENT_LIVE,
    next_due,
    stage_job_runs,
    stage_live_counts,
    stage_recent_errors,
)
from tasks_app.services.due import stage_due_overdue
from tasks_app.services.events import actor_for
from tasks_app.services.flow_limits import throttled_counts
from tasks_app.services.jobs import job_run_now
from tasks_app.services.join import stage_groups
from tasks_app.services.stages import stage_set_paused
from tasks_app.services.waiting import stage_overdue

JOIN_GROUPS_SHOWN = 100  # a join stage's waiting groups on its page, by first arrival


def hook_curl(url: str, secret: str, task_type: str) -> str:
    """A ready command that sends a task out of a hook stage (quoted for a POSIX shell); the body is an
    empty object, to fill in as the stage's schema (shown on the page) asks."""
    return (
        f"curl -X POST {shlex.quote(url + '?' + urlencode({'type': task_type}))} \\\n"
        f"     -H {shlex.quote('X-Hook-Token: ' + secret)} -H 'Content-Type: application/json' \\\n"
        "     -d '{}'"
    )


def _hook_type(stage: Stage) -> str:
    """The type a ready request names: the one its schemas or routes name, if just one; else the hook's default."""
    named = {k for k in (stage.schemas or {}) if k != "*"}
    named = named or {t for t in stage.outgoing.values_list("task_type", flat=True) if t}
    return named.pop() if len(named) == 1 else DEFAULT_TYPE


def _tasks_url(stage: Stage, **params: Any) -> str:
    return reverse("tasks_app:task-list") + "?" + urlencode({"stage": stage.slug, **params}, doseq=True)


@login_required
@permission_required(["tasks_app.view_task", "tasks_app.view_stage"], raise_exception=True)
def stage_detail(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        window = window_named(request.GET.get("window"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    stage = get_object_or_404(Stage, slug=slug)
    can_change = request.user.has_perm("tasks_app.change_stage")
    live = stage_live_counts(stage)
    finished, estimated = finished_counts()
    done = finished.get(stage.pk, {})
    counts = [
        (status, n, _tasks_url(stage, status=status))
        for status, n in [
            ("pending", live["pending"]),
            ("locked", live["locked"]),
            ("completed", done.get("completed", 0)),
            ("failed", done.get("failed", 0)),
        ]
    ]
    errors = [
        (group, _tasks_url(stage, status=list(group.statuses), error=group.message))
        for group in stage_recent_errors(stage)
    ]
    hook_url = request.build_absolute_uri(reverse("hook", args=[stage.slug])) if stage.kind == Stage.Kind.HOOK else ""
    ctx = {
        "stage": stage,
        "can_change": can_change,
        "counts": counts,
        "estimated": estimated,
        "live": live,
        "retrying_url": _tasks_url(stage, status="pending", attempts_min=1),
        "oldest_age": timezone.now() - live["oldest_pending"] if live["oldest_pending"] else None,
        # Waiting-time limit: pending past max_wait (services.waiting), through the stage's live tasks.
        "overdue": stage_overdue(stage).count() if stage.max_wait else None,
        # Due time (issue 16): not completed past due_after (services.due), pending or open.
        "due_overdue": stage_due_overdue(stage).count() if stage.due_after else None,
        # Flow control (services.flow_limits): "3/3 running · 10/s · throttled", and the throttled claims.
        "flow": flow_states([stage], {stage.pk: live}, timezone.now()).get(stage.pk),
        "throttled_claims": throttled_counts().get(stage.pk, 0),
        "counters": attempt_counters([stage.pk]).get(stage.pk),
        "counters_as_of": counters_as_of(),
        "errors": errors,
        "recent_live": RECENT_LIVE,
        "recent_failed": RECENT_FAILED,
        "schemas": sorted(stage.schemas.items()) if isinstance(stage.schemas, dict) else [],
        "incoming": list(stage.incoming.select_related("source").order_by("source__slug", "task_type")),
        "outgoing": list(stage.outgoing.select_related("target").order_by("task_type", "target__slug")),
        "groups": list(stage.groups.order_by("name")) if stage.kind == Stage.Kind.FORM else [],
        "next_due": next_due(stage),
        "job_runs": stage_job_runs(stage) if stage.kind == Stage.Kind.JOB else [],
        # Join stages: the waiting groups, "3/5 arrived" (services.join; a bounded read of the arrivals).
        "join_groups": stage_groups(stage)[:JOIN_GROUPS_SHOWN] if stage.kind == Stage.Kind.JOIN else [],
        "join_groups_shown": JOIN_GROUPS_SHOWN,
        "hook_url": hook_url,
        "hook_curl": hook_curl(hook_url, stage.hook_secret, _hook_type(stage)) if hook_url and can_change else "",
        **_figures(stage, window),
    }
    return render(request, "tasks_app/stage_detail.html", ctx)


def _figures(stage: Stage, window: str) -> dict[str, Any]:
    """The stage's figures for the window and its last 7 days per hour, from the hourly roll-ups only."""
    figures = workflow_figures(window=window)
    return {
        "figures": figures,
        "sf": figures.for_stage(stage.pk),
        "chart": hourly_series(stage_ids=[stage.pk])[stage.pk],
        "outcomes_title": f"{stage.name}: completed, retried and failed tasks per hour, last 7 days",
        "errors_title": f"{stage.name}: errors per hour, last 7 days",
    }


@login_required
@permission_required("tasks_app.change_stage", raise_exception=True)
@require_POST
def stage_pause(request: HttpRequest, slug: str, action: str) -> HttpResponse:
    """Pause or resume the stage (action "pause" or "resume"); the admin's log of the stage records it."""
    stage = get_object_or_404(Stage, slug=slug)
    if action not in ("pause", "resume"):
        return HttpResponse("Unknown action", status=404)
    paused = action == "pause"
    changed = stage_set_paused(stage=stage, paused=paused, user_id=request.user.pk, actor=actor_for(request.user))
    state = "paused" if paused else "running"
    if changed:
        messages.success(request, f"Stage {stage.slug} is {state} now.")
    else:  # someone else did it first (or a second click): nothing to do
        messages.warning(request, f"Stage {stage.slug} was already {state}.")
    return redirect("tasks_app:stage-detail", stage.slug)


@login_required
@permission_required("tasks_app.change_stage", raise_exception=True)
@require_POST
def stage_run_now(request: HttpRequest, slug: str) -> HttpResponse:
    """Run a job stage now, whatever its schedule (in this request); its run is recorded as a JobRun."""
    stage = get_object_or_404(Stage, slug=slug)
    if stage.kind != Stage.Kind.JOB:
        messages.warning(request, f"Stage {stage.slug} is a {stage.kind} stage: only job stages run on demand.")
    elif stage.is_paused:
        # A paused stage hands out no tasks: the run would see none of them.
        messages.warning(request, f"Job {stage.slug} is paused; resume it first.")
    else:
        run = job_run_now(stage=stage, worker_id=actor_for(request.user))
        if run is None:
            messages.warning(request, f"Job {stage.slug} already has a run for this second; try again.")
        elif run.status == run.Status.SUCCEEDED:
            messages.success(
                request, f"Ran job {stage.slug}: {run.tasks_processed} task(s) taken, {run.tasks_sent} sent."
            )
        else:
            first = (run.error or run.status).splitlines()[0]
            messages.warning(request, f"Job {stage.slug} {run.status}: {first}")
    return redirect("tasks_app:stage-detail", stage.slug)
