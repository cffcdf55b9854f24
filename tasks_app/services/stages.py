"""What deleting a stage does: one policy, called by the API (DELETE /api/stages/<slug>/) and the admin;
and pausing or resuming one from its page (stage_set_paused).

A stage with pending or locked tasks is not deleted: those tasks would be
lost half-way (a worker holding one would complete a task that no longer
exists). Pause the stage and let them finish, or move them, first. A stage
whose tasks are all finished (completed, failed or cancelled) goes with them
and their history, its transitions (both ways), job runs, hook receipts and
counters; tasks elsewhere that it sent keep existing, without a source stage.
"""

from __future__ import annotations

import logging

from django.contrib.admin.models import CHANGE, LogEntry
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils import timezone

from tasks_app.models import FINISHED, LIVE, Stage, Task
from tasks_app.services.errors import TaskStateError
from tasks_app.services.notify import notify_stages

logger = logging.getLogger("tasks_app")


def _refusal(stage: Stage) -> str:
    return f"Stage '{stage.slug}' still has pending or locked tasks; pause it and let them finish (or move them) first."


def stage_delete_refusal(stage: Stage) -> str:
    """Why the stage can't be deleted now (it has pending or locked tasks), or "" if it can: for confirmation pages."""
    return _refusal(stage) if Task.objects.filter(stage=stage, status__in=LIVE).exists() else ""


def stage_delete(*, stage: Stage) -> int:
    """Delete a stage and its finished tasks (with their history); returns how many tasks went with it.

    Raises TaskStateError, deleting nothing, while the stage has pending or locked tasks.

    1. Lock the stage's live tasks, so none is claimed or completed half-way, and refuse if there is one.
    2. Delete only the finished tasks: a task created at the stage meanwhile is still there, so
    3. deleting the stage hits Task.stage's PROTECT (or the foreign key) and everything rolls back.
    """
    try:
        with transaction.atomic():
            if list(Task.objects.select_for_update().filter(stage=stage, status__in=LIVE).values_list("id")[:1]):
                raise TaskStateError(_refusal(stage))
            deleted, per_model = Task.objects.filter(stage=stage, status__in=FINISHED).delete()
            stage.delete()
    except (ProtectedError, IntegrityError) as exc:  # a task arrived after step 1
        raise TaskStateError(_refusal(stage)) from exc
    return per_model.get(Task._meta.label, 0)


def stage_set_paused(*, stage: Stage, paused: bool, user_id: int | None, actor: str) -> bool:
    """Pause or resume a stage (the stage page's buttons); False, writing nothing, if it already was.

    Stages have no history of their own: the change goes to the admin's log of the
    stage (its "History" page, LogEntry, as an edit there would) and the tasks_app log.
    """
    verb = "Paused" if paused else "Resumed"
    with transaction.atomic():  # the change and its log entry, or neither
        updated = Stage.objects.filter(pk=stage.pk, is_paused=not paused).update(
            is_paused=paused, updated_at=timezone.now()
        )
        if not updated:
            return False
        stage.is_paused = paused
        if user_id is not None:
            LogEntry.objects.log_actions(
                user_id=user_id,
                queryset=[stage],
                action_flag=CHANGE,
                change_message=f"{verb} from the stage page.",
                single_object=True,
            )
    logger.info("stage %s: %s by %s", stage.slug, verb.lower(), actor)
    if not paused:
        notify_stages([stage.pk])  # listening workers claim its waiting tasks now, not at their next poll
    return True
