"""System checks for the engine's settings, and for stored stages whose handler may not run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.core.checks import Warning as CheckWarning
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection

from tasks_app import limits
from tasks_app.handler_modules import handler_path_problem
from tasks_app.models import Stage


@register()
def check_task_settings(app_configs: Any, **kwargs: Any) -> list[Error]:
    errors = []
    positive = [
        "TASKS_LOCK_TIMEOUT",
        "TASKS_POLL_INTERVAL",
        "TASKS_RETRY_BACKOFF_MAX",
        "TASKS_EXPIRE_INTERVAL",
        "TASKS_WORKER_HEARTBEAT",
        "TASKS_WORKER_DEAD_AFTER",
        "TASKS_HOOK_TOLERANCE",
        "TASKS_SCHEDULER_INTERVAL",
        "TASKS_PRUNE_INTERVAL",
        "TASKS_JOB_MAX_TASKS",
    ]
    for name in positive:
        value = getattr(settings, name)
        if not isinstance(value, int | float) or value <= 0:
            errors.append(Error(f"{name} must be a positive number", id="tasks_app.E001"))
    base = settings.TASKS_RETRY_BACKOFF_BASE
    if not isinstance(base, int | float) or base < 0:
        errors.append(Error("TASKS_RETRY_BACKOFF_BASE must be >= 0", id="tasks_app.E002"))
    jitter = settings.TASKS_RETRY_JITTER
    if not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
        errors.append(Error("TASKS_RETRY_JITTER must be between 0 and 1", id="tasks_app.E003"))
    retention = settings.TASKS_RETENTION_DAYS
    if retention is not None and (not isinstance(retention, int | float) or retention <= 0):
        errors.append(Error("TASKS_RETENTION_DAYS must be unset or a positive number of days", id="tasks_app.E004"))
    # Above these, values overflow datetimes or break recursive code (tasks_app.limits).
    if isinstance(settings.TASKS_LOCK_TIMEOUT, int | float) and settings.TASKS_LOCK_TIMEOUT > limits.MAX_LOCK_TIMEOUT:
        errors.append(Error(f"TASKS_LOCK_TIMEOUT must be at most {limits.MAX_LOCK_TIMEOUT}", id="tasks_app.E005"))
    depth = settings.TASKS_MAX_PAYLOAD_DEPTH
    if not isinstance(depth, int) or not 1 <= depth <= limits.MAX_PAYLOAD_DEPTH:
        message = f"TASKS_MAX_PAYLOAD_DEPTH must be a whole number from 1 to {limits.MAX_PAYLOAD_DEPTH}"
        errors.append(Error(message, id="tasks_app.E005"))
    return errors


@register()
def check_stage_handlers(
    app_configs: Any, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckWarning]:
    """Stored stages whose handler TASKS_HANDLER_MODULES doesn't allow (or that doesn't import).

    Saving refuses such a handler, but the list may have shrunk since, or a
    row been written by hand: those stages fail their tasks at run time.
    """
    if databases is not None and DEFAULT_DB_ALIAS not in databases:
        return []
    try:
        if Stage._meta.db_table not in connection.introspection.table_names():
            return []  # not migrated yet: nothing is stored
        with_handler = Stage.objects.exclude(handler="").exclude(kind=Stage.Kind.FORM)  # forms run no handler
        stored = list(with_handler.order_by("slug").values_list("slug", "handler"))
    except DatabaseError:
        return []  # no database to look at (yet): the settings checks still run
    warnings = []
    for slug, handler in stored:
        problem = handler_path_problem(handler.strip())
        if problem is not None:
            warnings.append(
                CheckWarning(
                    f"Stage '{slug}': handler {problem}.",
                    hint="Nothing runs for this stage until its handler is changed or TASKS_HANDLER_MODULES "
                    "allows it (its tasks fail, its job runs fail, its hook answers 503).",
                    obj=slug,
                    id="tasks_app.W001",
                )
            )
    return warnings
