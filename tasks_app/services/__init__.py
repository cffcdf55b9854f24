"""The task lifecycle. Nothing outside this package writes Task.status."""

from __future__ import annotations

from tasks_app.services.claim import MAX_CLAIM_BATCH, task_claim
from tasks_app.services.errors import NoRouteError, TaskError, TaskLockLost, TaskStateError
from tasks_app.services.lifecycle import (
    retry_delay,
    task_complete,
    task_extend_lock,
    task_fail,
    task_release,
    task_unclaim,
    tasks_expire_locks,
)
from tasks_app.services.operator import (
    task_duplicate,
    task_edit_payload,
    task_force_release,
    task_mark_completed,
    task_retry,
)
from tasks_app.services.routing import (
    matching_transitions,
    task_create,
    task_send,
    tasks_send_many,
    validate_task_input,
)

__all__ = [
    "MAX_CLAIM_BATCH",
    "NoRouteError",
    "TaskError",
    "TaskLockLost",
    "TaskStateError",
    "matching_transitions",
    "retry_delay",
    "task_claim",
    "task_complete",
    "task_create",
    "task_duplicate",
    "task_edit_payload",
    "task_extend_lock",
    "task_fail",
    "task_force_release",
    "task_mark_completed",
    "task_release",
    "task_retry",
    "task_send",
    "task_unclaim",
    "tasks_expire_locks",
    "tasks_send_many",
    "validate_task_input",
]
