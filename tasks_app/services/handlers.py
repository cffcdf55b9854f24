"""The contract for user code: which code a stage may name, and what that code sees.

Script handlers, job handlers and hook transforms are all named by a stage's
`handler`, a dotted path. The worker, the job runner (scheduler), the hook
view and the workflow loader resolve it here and nowhere else, so one rule
decides what may run: only callables defined in the modules
TASKS_HANDLER_MODULES lists (tasks_app.handler_modules; it sits below the
models because Stage.handler's validator uses it). Saving refuses other
paths; resolving at run time checks again, so a stored path the list no
longer allows runs nothing.

What the code is called with is defined here too:

- a script handler: `handler(task)`, a HandlerTask (the worker);
- a job handler: `handler(job)`, a JobContext (services.jobs);
- a hook transform: `transform(data, query)`, returning a payload or a
  (type, payload) pair (`call_transform`; the hook view).

Handlers and job handlers send successors with `send(type, payload, delay=
| at=, priority=)`, checked at once (`checked_send`): `delay` (seconds) or
`at` (an aware datetime), not both, at most a year ahead; `priority` an
integer -1000..1000, by default the sending task's (a job's sends: the
target stage's). Raising PermanentFailure fails a script task without retries.

A handler ending in ".py" names a script file instead (TASKS_SCRIPT_DIRS,
tasks_app.handler_modules): an Abstra-style stage, run top to bottom with the
task API of tasks_app.abstra (services.scripts), for script and job stages.

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
from tasks_app.handler_modules import SETTING, HandlerPathError, is_script, load_handler, load_script, module_allowed
from tasks_app.models import Stage, Transition
from tasks_app.services.errors import NoRouteError
from tasks_app.services.routing import (
    Send,
    matching_transitions,
    priority_problem,
    schedule_problem,
    validate_task_input,
)
from tasks_app.services.schemas import validate_sent
from tasks_app.services.scripts import ScriptHandler

__all__ = [
    "HANDLER_ERROR_CODE",
    "SETTING",
    "HandlerAborted",
    "HandlerImportError",
    "HandlerTask",
    "JobContext",
    "JobTask",
    "PermanentFailure",
    "call_handler",
    "call_transform",
    "checked_send",
    "module_allowed",
    "resolve_handler",
    "stage_handler_problems",
    "transform_result",
]

Handler = Callable[..., Any]
# The stages a script file (a handler ending in .py: services.scripts) may be the handler of.
SCRIPT_KINDS = (Stage.Kind.SCRIPT, Stage.Kind.JOB)


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
    if is_script(path) and stage.kind not in SCRIPT_KINDS:
        raise HandlerImportError(f"Handler '{path}' of stage '{stage.slug}': a {stage.kind} stage runs no script file.")
    if cache is not None and path in cache:
        return cache[path]
    try:
        if is_script(path):
            # A script file (TASKS_SCRIPT_DIRS), run top to bottom per call (services.scripts), which checks
            # the path again each time: a cached handler stops running once the file is no longer allowed.
            load_script(path)
            handler: Handler = ScriptHandler(path, HandlerImportError)
        else:
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
        # A script file on a hook stage: Stage.clean says so (the loader reports its errors too).
        load_script(path) if is_script(path) else load_handler(path)
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
    # Set by the worker when a heartbeat reports that someone asked to cancel this task: a long handler
    # may look and return early. Whatever it does, the task then ends cancelled and its sends are dropped.
    cancel_requested: bool = False
    # A script file's print output (services.scripts), for the history; None for a callable handler.
    output: str | None = field(default=None, repr=False)

    def send(
        self,
        type: str,
        payload: dict[str, Any] | None = None,
        *,
        delay: float | None = None,
        at: datetime | None = None,
        priority: int | None = None,
    ) -> None:
        """Queue a successor of `type`; it is created when this task completes, in the same transaction.

        delay (seconds from the completion) or at (an aware datetime): not before then. priority: higher
        runs first; by default this task's.
        """
        self.sent.append(checked_send(self._stage, self._routes, type, payload, delay=delay, at=at, priority=priority))


def checked_send(
    stage: Stage,
    routes: list[Transition] | None,
    type: str,
    payload: dict[str, Any] | None,
    *,
    delay: float | None = None,
    at: datetime | None = None,
    priority: int | None = None,
) -> Send:
    """A handler's send, checked now rather than at commit: input, route and the stage's schema.

    Failing inside the handler points at the line that sent it, instead of
    failing the completion after the handler did all its work. `routes` are
    the stage's transitions if the caller has them (None: read them).
    """
    payload = {} if payload is None else payload
    problem = (priority_problem(priority) if priority is not None else None) or schedule_problem(delay=delay, at=at)
    if problem:
        raise ValueError(f"send({type!r}): {problem}")
    validate_task_input(type=type, payload=payload)
    if routes is None:
        matching_transitions(stage=stage, type=type)
    elif not any(t.accepts(type) for t in routes):
        accepted = sorted({t.task_type or "*" for t in routes})
        raise NoRouteError(stage_slug=stage.slug, task_type=type, accepted=accepted)
    validate_sent(stage, type, payload)
    return Send(type, copy.deepcopy(payload), priority=priority, at=at, delay=delay)


# -- what a job handler sees ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobTask:
    """A task waiting at the job stage, as the handler sees it (read-only; edits are not stored)."""

    id: int
    type: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    parent_id: int | None


@dataclass
class JobContext:
    """What a job handler gets: the due time, the waiting tasks and `send()` for new tasks."""

    stage: str
    due_at: datetime
    missed: int
    run_id: int
    tasks: list[JobTask]
    _stage: Stage = field(repr=False)
    _routes: list[Transition] = field(default_factory=list, repr=False)
    sent: list[Send] = field(default_factory=list, repr=False)
    # A script file's run (services.scripts): the ids it completed (the others go back to pending; None, a
    # callable handler: all complete) and its print output.
    completed: set[int] | None = field(default=None, repr=False)
    output: str | None = field(default=None, repr=False)

    def send(
        self,
        type: str,
        payload: dict[str, Any] | None = None,
        *,
        delay: float | None = None,
        at: datetime | None = None,
        priority: int | None = None,
    ) -> None:
        """Queue a task of `type` out of the job stage; created when the run succeeds, in its transaction.

        delay/at and priority as HandlerTask.send (priority by default: the target stage's).
        """
        self.sent.append(checked_send(self._stage, self._routes, type, payload, delay=delay, at=at, priority=priority))


# -- what a hook transform is called with, and what it returns ----------------------------------


def call_transform(
    transform: Handler, data: dict[str, Any], query: dict[str, str], task_type: str
) -> tuple[str, dict[str, Any]]:
    """A hook transform's (type, payload) for a request's body and query; `task_type` if it returns a payload.

    Whatever the transform raises propagates (SystemExit and the like as
    HandlerAborted), and so does a TypeError for a result of the wrong shape:
    the caller treats both as the transform's error.
    """
    return transform_result(call_handler(transform, data, query), task_type)


def transform_result(result: Any, task_type: str) -> tuple[str, dict[str, Any]]:
    """A transform's (type, payload) from what it returned: a payload object, or a (str, object) pair.

    Anything else is the transform's error (TypeError), answered like any other it raises.
    """
    if isinstance(result, dict):
        return task_type, result
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str) and isinstance(result[1], dict):
        return result[0], result[1]
    shape = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
    if isinstance(result, tuple) and len(result) == 2:
        shape = f"({type(result[0]).__name__}, {type(result[1]).__name__})"
    raise TypeError(f"a transform returns a payload object or a (type, payload) pair of (str, dict), not {shape}")
