"""Errors raised by the lifecycle services.

Bad input (payload, type) raises django.core.exceptions.ValidationError so
forms, the API and commands can show field messages; these are for states.
"""

from __future__ import annotations


class TaskError(Exception):
    """Base class for lifecycle errors; the message is meant for people."""


class TaskLockLost(TaskError):
    """The task is not locked with the given token (completed, expired and reclaimed, or gone)."""


class TaskStateError(TaskError):
    """The action is not allowed in the task's current state, or the task does not exist."""


class NoRouteError(TaskError):
    """No transition of the stage accepts the task type; nothing was created."""

    def __init__(self, *, stage_slug: str, task_type: str, accepted: list[str]) -> None:
        self.stage_slug = stage_slug
        self.task_type = task_type
        self.accepted = accepted
        if not accepted:
            hint = "it has no outgoing transitions"
        else:
            hint = "its transitions accept: " + ", ".join(accepted)
        super().__init__(f"Stage '{stage_slug}' has no transition for task type '{task_type}' ({hint}).")
