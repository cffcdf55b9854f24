"""Writing a task's history. Callers are always inside the transaction that
changes the task, so history and state commit (or roll back) together."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection

from tasks_app.models import TaskEvent


def event_record(
    *, task_id: int, kind: str, at: datetime, actor: str = "", details: dict[str, Any] | None = None
) -> None:
    """Record one history event for a task (inside the caller's transaction)."""
    assert connection.in_atomic_block, "events must be written with the change they describe"
    TaskEvent.objects.create(task_id=task_id, kind=kind, at=at, actor=actor, details=details or {})
