from __future__ import annotations

from django.urls import path

from tasks_app.views import actions, assign, decision_links, lookup, overview, pages, stages, work

app_name = "tasks_app"

urlpatterns = [
    path("overview/", overview.overview, name="overview"),
    path("overview/counts.json", overview.counts_json, name="overview-counts"),
    path("tasks/", pages.task_list, name="task-list"),
    path("tasks/new/", actions.task_create, name="task-create"),
    path("tasks/bulk/", actions.task_bulk, name="task-bulk"),
    path("tasks/bulk/count/", actions.task_bulk_count, name="task-bulk-count"),
    path("tasks/rows/", pages.task_rows, name="task-rows"),
    path("tasks/lookup/", lookup.task_lookup, name="task-lookup"),
    path("tasks/<int:task_id>/", pages.task_detail, name="task-detail"),
    path("tasks/<int:task_id>/payload.json", pages.task_payload, name="task-payload"),
    path("tasks/<int:task_id>/edit/", actions.task_edit_payload, name="task-edit"),
    path("tasks/<int:task_id>/duplicate/", actions.task_duplicate, name="task-duplicate"),
    path("tasks/<int:task_id>/cancel/", actions.task_cancel, name="task-cancel"),  # before task-action
    path("tasks/<int:task_id>/assign/", assign.task_assign_view, name="task-assign"),  # before task-action
    path("tasks/<int:task_id>/<str:action>/", actions.task_action, name="task-action"),
    path("workers/", pages.workers, name="workers"),
    path("stages/<slug:slug>/", stages.stage_detail, name="stage-detail"),
    path("stages/<slug:slug>/pause/", stages.stage_pause, {"action": "pause"}, name="stage-pause"),
    path("stages/<slug:slug>/resume/", stages.stage_pause, {"action": "resume"}, name="stage-resume"),
    path("stages/<slug:slug>/run/", stages.stage_run_now, name="stage-run"),
    path("work/", work.my_work, name="my-work"),
    path("work/<int:task_id>/", work.work_task, name="work-task"),
    path("work/<int:task_id>/open/", work.work_open, name="work-open"),
    path("work/<int:task_id>/submit/", work.work_submit, name="work-submit"),
    path("work/<int:task_id>/cancel/", work.work_cancel, name="work-cancel"),
    path("work/decide/<str:token>/", decision_links.decide, name="decision-link"),
]
