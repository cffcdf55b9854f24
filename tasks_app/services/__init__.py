"""The task lifecycle. Nothing outside this package writes Task.status."""

from __future__ import annotations

from tasks_app.services.claim import MAX_CLAIM_BATCH, task_claim
from tasks_app.services.complete import (
    BatchResult,
    Completion,
    ItemOutcome,
    task_complete,
    task_extend_lock,
    tasks_complete_batch,
    tasks_complete_each,
    tasks_extend_locks,
)
from tasks_app.services.errors import NoRouteError, TaskError, TaskLockLost, TaskStateError
from tasks_app.services.lifecycle import (
    retry_delay,
    task_fail,
    task_release,
    task_unclaim,
    tasks_expire_locks,
    tasks_unclaim_orphans,
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
    task_create_idempotent,
    task_send,
    tasks_create_bulk,
    tasks_send_many,
    validate_task_input,
)
from tasks_app.services.workers import worker_heartbeat, worker_register, worker_stopped

__all__ = [
    "MAX_CLAIM_BATCH",
    "BatchResult",
    "Completion",
    "ItemOutcome",
    "tasks_complete_batch",
    "tasks_complete_each",
    "tasks_extend_locks",
    "worker_heartbeat",
    "worker_register",
    "worker_stopped",
    "NoRouteError",
    "TaskError",
    "TaskLockLost",
    "TaskStateError",
    "matching_transitions",
    "retry_delay",
    "task_claim",
    "task_complete",
    "task_create",
    "task_create_idempotent",
    "tasks_create_bulk",
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
    "tasks_unclaim_orphans",
    "tasks_send_many",
    "validate_task_input",
]
