"""Who may name code: the TASKS_HANDLER_MODULES allow-list, and importing a handler path under it.

A stage's `handler` is a dotted path that workers, schedulers and the hook
view import and call, and whoever may edit a stage (API, admin, workflow
files) chooses it. So a path counts only when

1. it lies under a prefix of TASKS_HANDLER_MODULES, checked before anything
   is imported (importing a module runs it);
2. it imports and names a callable;
3. the callable's own `__module__` lies under a prefix too, so a re-export
   (`from os import system` in an allowed module) is refused.

The standard library never counts, whatever the setting says.

This module sits below the models (Stage.handler's validator uses it) and
imports nothing of the app; tasks_app.services.handlers builds the contract
the worker, scheduler, hook view and workflow loader use on top of it. It is
the one module that imports code by a dotted name (`import_string`;
tests/test_architecture.py keeps it so), so no path escapes the allow-list.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

SETTING = "TASKS_HANDLER_MODULES"
# The code of a field error from the check below (the workflow loader reports those itself, with the stage's kind).
ERROR_CODE = "handler_not_allowed"


class HandlerPathError(Exception):
    """A handler path that is not allowed, does not import or names no callable; `reason` says which."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"'{path}' {reason}")
        self.path = path
        self.reason = reason


def is_stdlib(name: str) -> bool:
    return name.partition(".")[0] in sys.stdlib_module_names


def allowed_prefixes() -> tuple[str, ...]:
    """The module prefixes handlers may come from (read at each call: tests and settings overrides change it)."""
    return tuple(p for p in getattr(settings, SETTING, ()) if p and not is_stdlib(p))


def module_allowed(name: str) -> bool:
    """True if module `name` is one of the prefixes or inside one (on dotted boundaries: a.b allows a.b.c, not a.bc)."""
    return not is_stdlib(name) and any(name == p or name.startswith(p + ".") for p in allowed_prefixes())


def _allowed_list() -> str:
    return ", ".join(allowed_prefixes()) or "empty: no handler may run"


def load_handler(path: str) -> Callable[..., Any]:
    """The callable `path` names, if the allow-list lets it run; raises HandlerPathError otherwise."""
    parts = path.split(".")
    if len(parts) < 2 or not all(p.isidentifier() and not p.startswith("__") for p in parts):
        raise HandlerPathError(path, "is not a dotted path (module.function)")
    if not module_allowed(path):
        raise HandlerPathError(path, f"is not in a module that {SETTING} allows ({_allowed_list()})")
    try:
        obj = import_string(path)
    except Exception as exc:  # ImportError, or the module itself raising on import
        raise HandlerPathError(path, f"cannot be imported: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise HandlerPathError(path, "is not callable")
    # An instance's __module__ is its class's; an object without one is refused.
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str) or not module_allowed(module):
        raise HandlerPathError(
            path, f"is defined in module '{module}', which {SETTING} does not allow ({_allowed_list()})"
        )
    return obj


def handler_path_problem(path: str) -> str | None:
    """Why `path` may not be a handler ("'x' is not callable"), or None if it may."""
    try:
        load_handler(path)
    except HandlerPathError as exc:
        return str(exc)
    return None


def validate_handler(value: str) -> None:
    """Stage.handler's field validator: every save path (API, admin, workflow files) runs it."""
    problem = handler_path_problem(value.strip())
    if problem is not None:
        raise ValidationError(f"Handler {problem}.", code=ERROR_CODE)
