"""What a handler sees, and running one: the part of the worker that runs user code."""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import close_old_connections
from django.utils.module_loading import import_string

from tasks_app import services
from tasks_app.models import Stage, Transition
from tasks_app.services.errors import NoRouteError
from tasks_app.services.routing import Send
from tasks_app.services.schemas import validate_sent

Handler = Callable[["HandlerTask"], Any]


class PermanentFailure(Exception):
    """Raise from a handler to fail the task at once, without retries (e.g. a payload it can't read)."""


class HandlerImportError(Exception):
    """The stage's handler is missing, unimportable or not callable."""


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
    services.validate_task_input(type=type, payload=payload)
    if routes is None:
        services.matching_transitions(stage=stage, type=type)
    elif not any(t.accepts(type) for t in routes):
        accepted = sorted({t.task_type or "*" for t in routes})
        raise NoRouteError(stage_slug=stage.slug, task_type=type, accepted=accepted)
    validate_sent(stage, type, payload)
    return type, copy.deepcopy(payload)


def resolve_handler(stage: Stage, cache: dict[str, Handler]) -> Handler:
    path = stage.handler.strip()
    if not path:
        raise HandlerImportError(f"Stage '{stage.slug}' has no handler configured.")
    if path not in cache:
        try:
            handler = import_string(path)
        except Exception as exc:  # ImportError, or the module itself raising on import
            raise HandlerImportError(
                f"Cannot import handler '{path}' of stage '{stage.slug}': {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(handler):
            raise HandlerImportError(f"Handler '{path}' of stage '{stage.slug}' is not callable.")
        cache[path] = handler
    return cache[path]


@dataclass
class Outcome:
    """How a handler run ended: ok (complete and send), retry (release with backoff) or fail (no retry)."""

    kind: str
    sent: list[Send] = field(default_factory=list)
    error: str = ""
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException, *, permanent: bool) -> Outcome:
        return cls(
            kind="fail" if permanent else "retry",
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )


# A handler that sends an unrouted type or a payload its stage's schema refuses
# would do the same on every retry: fail the task and show why.
PERMANENT = (HandlerImportError, NoRouteError, PermanentFailure, ValidationError)


def run_handler(handler: Handler, view: HandlerTask) -> Outcome:
    """Call a handler; every exception becomes an Outcome (the worker never dies from a task)."""
    try:
        handler(view)
    except Exception as exc:
        return Outcome.from_exception(exc, permanent=isinstance(exc, PERMANENT))
    finally:
        # A handler that used the database in this thread must not leave a
        # broken or stale connection for the next one.
        close_old_connections()
    return Outcome("ok", sent=view.sent)
