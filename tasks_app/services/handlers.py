"""The contract for user code: which code a stage may name, and what that code sees.

Script handlers, job handlers and hook transforms are all named by a stage's
`handler`, a dotted path. The worker, the job runner, the hook view and the
workflow loader resolve it here and nowhere else, so one rule decides what
may run: only callables defined in the modules TASKS_HANDLER_MODULES lists
(tasks_app.handler_modules; it sits below the models because Stage.handler's
validator uses it). Saving refuses other paths; resolving at run time checks
again, so a stored path the list no longer allows runs nothing.

User code may raise anything, SystemExit and KeyboardInterrupt included:
`call_handler` turns what is not an Exception into HandlerAborted, so the
caller records it like any other error and its thread lives on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasks_app.handler_modules import ERROR_CODE as HANDLER_ERROR_CODE
from tasks_app.handler_modules import SETTING, HandlerPathError, load_handler, module_allowed
from tasks_app.models import Stage, Transition
from tasks_app.services.errors import NoRouteError
from tasks_app.services.routing import Send, matching_transitions, validate_task_input
from tasks_app.services.schemas import validate_sent

__all__ = [
    "HANDLER_ERROR_CODE",
    "SETTING",
    "HandlerAborted",
    "HandlerImportError",
    "HandlerTask",
    "PermanentFailure",
    "call_handler",
    "checked_send",
    "module_allowed",
    "resolve_handler",
    "stage_handler_problems",
]

Handler = Callable[..., Any]


class PermanentFailure(Exception):
    """Raise from a handler to fail the task at once, without retries (e.g. a payload it can't read)."""


class HandlerImportError(Exception):
    """The stage's handler is missing, not allowed, unimportable or not callable."""


class HandlerAborted(Exception):
    """User code raised a BaseException that is not an Exception (SystemExit, KeyboardInterrupt, ...)."""


# -- resolving ---------------------------------------------------------------------------------------


def resolve_handler(stage: Stage, cache: dict[str, Handler] | None = None) -> Handler:
    """The stage's handler, if TASKS_HANDLER_MODULES allows it; HandlerImportError says why not.

    `cache` (path -> callable) spares a worker the checks for every task;
    the allow-list is a setting, so it cannot change under a running process.
    """
    path = stage.handler.strip()
    if not path:
        raise HandlerImportError(f"Stage '{stage.slug}' has no handler configured.")
    if cache is not None and path in cache:
        return cache[path]
    try:
        handler = load_handler(path)
    except HandlerPathError as exc:
        raise HandlerImportError(f"Handler '{path}' of stage '{stage.slug}' {exc.reason}.") from exc
    if cache is not None:
        cache[path] = handler
    return handler


def stage_handler_problems(kind: str, handler: str) -> list[str]:
    """For workflow files: whether a stage of `kind` wants a handler, and whether the one named may run."""
    path = handler.strip()
    if not path:
        needs = kind in (Stage.Kind.SCRIPT, Stage.Kind.JOB)
        return [f"handler: a {kind} stage needs one (the dotted path of a callable)"] if needs else []
    if kind == Stage.Kind.FORM:
        return [f"handler: form stages are worked by people and run no handler; leave it empty (got '{path}')"]
    try:
        load_handler(path)
    except HandlerPathError as exc:
        return [f"handler {exc}"]
    return []


def call_handler(handler: Handler, *args: Any) -> Any:
    """Call user code; a BaseException that is not an Exception comes out as HandlerAborted (chained)."""
    try:
        return handler(*args)
    except Exception:
        raise
    except BaseException as exc:
        raise HandlerAborted(f"the handler raised {type(exc).__name__}: {exc}") from exc


# -- what a script handler sees ---------------------------------------------------------------------


@dataclass
class HandlerTask:
    """What a handler sees: a copy of the task's data and `send()` for successors."""

    id: int
    type: str
    payload: dict[str, Any]
    stage: str
    attempts: int
    created_at: datetime
    parent_id: int | None
    _stage: Stage = field(repr=False)
    _routes: list[Transition] | None = field(default=None, repr=False)
    sent: list[Send] = field(default_factory=list, repr=False)

    def send(self, type: str, payload: dict[str, Any] | None = None) -> None:
        """Queue a successor of `type`; it is created when this task completes, in the same transaction."""
        self.sent.append(checked_send(self._stage, self._routes, type, payload))


def checked_send(stage: Stage, routes: list[Transition] | None, type: str, payload: dict[str, Any] | None) -> Send:
    """A handler's send, checked now rather than at commit: input, route and the stage's schema.

    Failing inside the handler points at the line that sent it, instead of
    failing the completion after the handler did all its work. `routes` are
    the stage's transitions if the caller has them (None: read them).
    """
    payload = {} if payload is None else payload
    validate_task_input(type=type, payload=payload)
    if routes is None:
        matching_transitions(stage=stage, type=type)
    elif not any(t.accepts(type) for t in routes):
        accepted = sorted({t.task_type or "*" for t in routes})
        raise NoRouteError(stage_slug=stage.slug, task_type=type, accepted=accepted)
    validate_sent(stage, type, payload)
    return type, copy.deepcopy(payload)
