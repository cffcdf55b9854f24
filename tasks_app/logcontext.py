"""Fields that every log line carries while they are set: task id, stage, worker id.

`with log_context(task_id=..., stage=..., worker_id=...):` sets them for the
code inside, in this thread only (they live in a contextvar, and each thread
and each asyncio task has its own context); ContextFilter, on the console
handler (settings.LOGGING), copies them onto each record, so the JSON
formatter (TASKS_LOG_FORMAT=json) writes them as keys. A value passed with
`extra=` on the logging call wins over the context's.

JsonLines makes a command's status lines (stdout) JSON too, in the same shape,
when TASKS_LOG_FORMAT=json: then every line a worker prints is JSON.
"""

from __future__ import annotations

import contextvars
import copy
import io
import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from django.conf import settings

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


def json_formatter() -> logging.Formatter:
    """The formatter of settings.LOGGING's "json" entry (one definition of the line's shape).

    Built by logging.config's own configurator, which resolves the entry's
    "()" factory exactly as it did for the console handler at start-up: no
    second importer of dotted paths (handler paths have theirs, with an
    allow-list, in tasks_app.handler_modules).
    """
    spec = copy.deepcopy(settings.LOGGING["formatters"]["json"])  # configure_formatter pops "()" from it
    formatter = logging.config.DictConfigurator(settings.LOGGING).configure_formatter(spec)
    assert isinstance(formatter, logging.Formatter), formatter
    return formatter


class JsonLines(io.TextIOBase):
    """A text stream that writes each write() as one JSON log line on `stream`.

    For a command's self.stdout/self.stderr: Django's OutputWrapper writes one
    whole message per call, so a message of several lines (system check
    output) stays one record. No lock: a signal handler writes here too, and a
    lock it interrupted would never be released.
    """

    def __init__(self, stream: IO[str], *, logger: str, level: int = logging.INFO) -> None:
        super().__init__()
        self._stream = stream
        self._logger = logging.getLogger(logger)
        self._level = level
        self._formatter = json_formatter()
        self._context = ContextFilter()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        message = text.rstrip("\n")
        if message.strip():
            record = self._logger.makeRecord(self._logger.name, self._level, "(stdout)", 0, message, (), None)
            self._context.filter(record)
            self._stream.write(self._formatter.format(record) + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
