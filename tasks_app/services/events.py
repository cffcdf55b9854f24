"""Writing a task's history, and the vocabulary of what it says.

Callers are always inside the transaction that changes the task, so history
and state commit (or roll back) together.

The `claimed` and `completed` events are also written by the hot path's SQL
(services.claim and services.complete on PostgreSQL). Their details are
defined once, here, by claimed_details and completed_details: the SQL
spelling is built from the same keys by details_sql, which refuses any other
set, and tests/test_lifecycle_rules.py compares an event from each path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import connection

from tasks_app.models import TaskEvent

# How a person (not a worker) appears as an actor and as a lock holder (locked_by).
PERSON_PREFIX = "user:"


def actor_for(user: Any) -> str:
    """The actor name of a person: "user:<username>" (workers appear under their worker id)."""
    return f"{PERSON_PREFIX}{user.get_username()}"


def person_named(actor: str) -> str:
    """The username in an actor_for() name; other actors (a worker id) unchanged."""
    return actor.removeprefix(PERSON_PREFIX)


def event_time(at: datetime) -> str:
    """A time as event details hold it: ISO 8601, as Python writes it.

    The SQL paths take it as a parameter: PostgreSQL's own JSON spelling of a
    timestamp drops the fraction's trailing zeros (".12" for ".120000").
    """
    return at.isoformat()


def claimed_details(
    *, attempt: int, locked_until: datetime, reclaimed_from: str | None, **extra: Any
) -> dict[str, Any]:
    """Details of a `claimed` event: the attempt, the lock deadline, and who held the expired lock it took over.

    `extra` adds keys of one kind of claim (a form open says form=True).
    """
    return {"attempt": attempt, "locked_until": event_time(locked_until), "reclaimed_from": reclaimed_from, **extra}


def completed_details(*, attempt: int, duration: float | None, sent: list[int]) -> dict[str, Any]:
    """Details of a `completed` event: the attempt, seconds since the claim, the ids of the tasks it sent."""
    return {"attempt": attempt, "duration": duration, "sent": sent}


def detail_keys(builder: Callable[..., dict[str, Any]]) -> list[str]:
    """The keys a details builder always writes: its keyword-only parameters, in order."""
    params = inspect.signature(builder).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def details_sql(builder: Callable[..., dict[str, Any]], **expressions: str) -> str:
    """PostgreSQL's spelling of `builder`'s details: jsonb_build_object over one SQL expression per key.

    Raises ValueError (at import of the SQL) unless the expressions name exactly the builder's keys.
    """
    keys = detail_keys(builder)
    if sorted(expressions) != sorted(keys):
        raise ValueError(f"{builder.__name__} writes {keys}; the SQL names {sorted(expressions)}")
    return "jsonb_build_object(" + ", ".join(f"'{key}', {expressions[key]}" for key in keys) + ")"


def event_record(
    *, task_id: int, kind: str, at: datetime, actor: str = "", details: dict[str, Any] | None = None
) -> None:
    """Record one history event for a task (inside the caller's transaction)."""
    assert connection.in_atomic_block, "events must be written with the change they describe"
    TaskEvent.objects.create(task_id=task_id, kind=kind, at=at, actor=actor, details=details or {})
