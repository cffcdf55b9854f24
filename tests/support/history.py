"""Reading a task's history in tests: the claim facts the event that ends a claim carries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tasks_app.models import TaskEvent
from tasks_app.services.events import attempt_details, detail_keys


def claim_of(event: TaskEvent) -> dict[str, Any]:
    """The claim facts (services.events.attempt_details) in an event's details."""
    return {key: event.details[key] for key in detail_keys(attempt_details)}


def claim(attempt: int, worker: str, claimed_at: datetime | None, reclaimed_from: str | None = None) -> dict[str, Any]:
    """What claim_of() reads from the event that ends that claim."""
    return attempt_details(attempt=attempt, worker=worker, claimed_at=claimed_at, reclaimed_from=reclaimed_from)
