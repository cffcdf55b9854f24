"""The worker: `manage.py run_worker` builds a Worker and calls run()."""

from __future__ import annotations

from tasks_app.worker.handlers import HandlerImportError, HandlerTask, Outcome, PermanentFailure, resolve_handler
from tasks_app.worker.loop import Stats, Worker, default_worker_id

__all__ = [
    "HandlerImportError",
    "HandlerTask",
    "Outcome",
    "PermanentFailure",
    "Stats",
    "Worker",
    "default_worker_id",
    "resolve_handler",
]
