"""System checks for the engine's settings, and for stored stages whose handler may not run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.checks import Warning as CheckWarning
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection

from tasks_app.handler_modules import SCRIPT_SETTING, handler_path_problem, script_dir_problem
from tasks_app.models import Stage
from workflowsite.env import BOUNDS

# The engine's numbers this check holds to their bounds: the ones settings.py read
# them with (workflowsite.env.BOUNDS), so a value set in Python (a settings module
# of one's own, override_settings) that no environment reader saw meets the same rule.
ENGINE_NUMBERS = [
    "TASKS_LOCK_TIMEOUT",
    "TASKS_POLL_INTERVAL",
    "TASKS_RETRY_BACKOFF_BASE",
    "TASKS_RETRY_BACKOFF_MAX",
    "TASKS_RETRY_JITTER",
    "TASKS_MAX_PAYLOAD_BYTES",
    "TASKS_MAX_PAYLOAD_DEPTH",
    "API_MAX_REQUEST_BYTES",
    "TASKS_EXPIRE_INTERVAL",
    "TASKS_WORKER_HEARTBEAT",
    "TASKS_WORKER_DEAD_AFTER",
    "TASKS_NOTIFY_THROTTLE",
    "TASKS_HOOK_TOLERANCE",
    "TASKS_SCHEDULER_INTERVAL",
    "TASKS_JOB_MAX_TASKS",
    "TASKS_PRUNE_INTERVAL",
    "TASKS_METRICS_CACHE",
    "TASKS_DECISION_LINK_MAX_AGE",
]
# The ids are older than the table (SILENCED_SYSTEM_CHECKS may name them): E001 a
# number below its bounds or no number at all, E005 one above its ceiling (where
# values overflow datetimes or break recursive code), and a few settings their own.
OWN_IDS = {
    "TASKS_RETRY_BACKOFF_BASE": "tasks_app.E002",
    "TASKS_RETRY_JITTER": "tasks_app.E003",
    "TASKS_MAX_PAYLOAD_DEPTH": "tasks_app.E005",
}


def _bounds_error(name: str, value: object) -> Error | None:
    bounds = BOUNDS[name]
    if bounds.admits(value):
        return None
    above = isinstance(value, int | float) and not isinstance(value, bool) and value > bounds.maximum
    check_id = OWN_IDS.get(name, "tasks_app.E005" if above else "tasks_app.E001")
    return Error(f"{name} must be {bounds.describe()}, got {value!r}", id=check_id)


def _retention_error(value: object) -> Error | None:
    """Unset (None) keeps tasks forever; the environment's 0 means the same and is stored as None."""
    bounds = BOUNDS["TASKS_RETENTION_DAYS"]
    if value is None or (bounds.admits(value) and value):
        return None
    rule = f"unset or a positive number of days up to {bounds.maximum:g}"
    return Error(f"TASKS_RETENTION_DAYS must be {rule}, got {value!r}", id="tasks_app.E004")


@register()
def check_task_settings(app_configs: Any, **kwargs: Any) -> list[Error]:
    """The engine's numbers within their bounds, wherever the values came from."""
    errors = [_bounds_error(name, getattr(settings, name)) for name in ENGINE_NUMBERS]
    errors.append(_retention_error(settings.TASKS_RETENTION_DAYS))
    return [error for error in errors if error is not None]


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


@register()
def check_script_dirs(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """TASKS_SCRIPT_DIRS held to settings.py's rule wherever the value came from, and each one a directory."""
    messages: list[CheckMessage] = []
    for entry in getattr(settings, SCRIPT_SETTING, ()):
        real = (Path(settings.BASE_DIR) / str(entry)).resolve()
        problem = script_dir_problem(real)
        if problem is not None:
            messages.append(Error(f"{SCRIPT_SETTING}: {entry!r} {problem}", id="tasks_app.E006"))
        elif not real.is_dir():
            messages.append(
                CheckWarning(
                    f"{SCRIPT_SETTING}: {entry!r} is not a directory ({real}); no script file in it can run.",
                    id="tasks_app.W002",
                )
            )
    return messages
