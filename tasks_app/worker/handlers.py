"""Running a handler in the worker: the call and how it ended.

What a handler sees (HandlerTask) and which handlers may run live in
tasks_app.services.handlers; the names are re-exported here because handlers
import PermanentFailure from tasks_app.worker (README).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import close_old_connections

from tasks_app.services.errors import NoRouteError
from tasks_app.services.handlers import (
    Handler,
    HandlerImportError,
    HandlerTask,
    PermanentFailure,
    call_handler,
    checked_send,
    resolve_handler,
)
from tasks_app.services.routing import Send

__all__ = [
    "PERMANENT",
    "Handler",
    "HandlerImportError",
    "HandlerTask",
    "Outcome",
    "PermanentFailure",
    "checked_send",
    "resolve_handler",
    "run_handler",
]


@dataclass
class Outcome:
    """How a handler run ended: ok (complete and send), retry (release with backoff) or fail (no retry)."""

    kind: str
    sent: list[Send] = field(default_factory=list)
    error: str = ""
    traceback: str = ""
    output: str | None = None  # a script file's print output (services.scripts), for the history

    def details(self) -> dict[str, str] | None:
        """What the outcome adds to its history event: the script's output, if it printed anything."""
        return {"output": self.output} if self.output else None

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


def run_handler(handler: Handler, view: HandlerTask, *, tidy: Callable[[], None] = close_old_connections) -> Outcome:
    """Call a handler; whatever it raises becomes an Outcome (the worker never dies from a task).

    SystemExit, KeyboardInterrupt and the like come out of call_handler as
    HandlerAborted: the task is released for a retry with the error recorded.
    `tidy` looks after this thread's database connection afterwards: a slot
    thread's by Django's rules (close_old_connections); the coordinator's, when
    it runs handlers itself, only if the handler broke it (see the worker loop).
    """
    if view.cancel_requested:
        # Requested before its handler started (at the claim, or reported by a heartbeat while the task waited
        # for a slot): not run. The completion of a requested task ends it cancelled and sends nothing.
        return Outcome("ok")
    try:
        call_handler(handler, view)
    except Exception as exc:
        failed = Outcome.from_exception(exc, permanent=isinstance(exc, PERMANENT))
        failed.output = view.output
        return failed
    finally:
        # A handler that used the database in this thread must not leave a
        # broken or stale connection for the next one.
        tidy()
    return Outcome("ok", sent=view.sent, output=view.output)
