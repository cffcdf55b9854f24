"""Fields that every log line carries while they are set: task id, stage, worker id.

`with log_context(task_id=..., stage=..., worker_id=...):` sets them for the
code inside, in this thread only (they live in a contextvar, and each thread
and each asyncio task has its own context); ContextFilter, on the console
handler (settings.LOGGING), copies them onto each record, so the JSON
formatter (TASKS_LOG_FORMAT=json) writes them as keys. A value passed with
`extra=` on the logging call wins over the context's.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_fields: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("tasks_app_log_fields")


def current() -> dict[str, Any]:
    """The fields set in this context (a copy)."""
    return dict(_fields.get({}))


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` (None values are left out) to every log record made inside the block."""
    token = _fields.set({**_fields.get({}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _fields.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current log context onto each record (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields.get({}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True
