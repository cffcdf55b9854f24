"""Writing a task's history, and the vocabulary of what it says.

Callers are always inside the transaction that changes the task, so history
and state commit (or roll back) together.

A claim writes no event of its own (an INSERT per claimed task was a sixth of
a worker's batch). The event that ends the claim (completed, failed,
released, lock_expired, or a person's force_released / marked_completed of a
locked task) carries its facts instead: attempt_details (the attempt, the
worker, when it claimed, whose expired lock it took over). The claim's time
and the lock it took over are on the task row until then (locked_at,
reclaimed_from). An event ends a claim exactly when its details have
CLAIMED_AT: the task page derives "claimed by X at T" from it
(selectors.history.task_timeline) and /metrics counts claims by it
(services.counters).

The `completed` and `lock_expired` events are also written by the hot path's
SQL (services.complete, and services.claim when a claim takes over an expired
lock, on PostgreSQL). Their details are defined once, here, by
completed_details and lock_expired_details: the SQL spelling is built from
the same keys by details_sql, which refuses any other set, and
tests/test_lifecycle_rules.py compares an event from each path.
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


def event_time_sql(column: str) -> str:
    """PostgreSQL's spelling of event_time() for a timestamptz column: the same text, to the character.

    Python's isoformat() writes six fraction digits, or none for a whole second,
    and "+00:00" (Django reads timestamps back in UTC).
    """
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (
        f"(to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS')"
        f" || CASE WHEN date_trunc('second', {column}) = {column} THEN '' ELSE to_char({utc}, '.US') END"
        " || '+00:00')"
    )


# The key that marks an event as the end of a claim (attempt_details writes it, maybe as null).
CLAIMED_AT = "claimed_at"
# The task columns a claim's facts are read from (claim_facts).
CLAIM_COLUMNS = ("attempts", "locked_by", "locked_at", "reclaimed_from")


def attempt_details(
    *, attempt: int, worker: str, claimed_at: datetime | None, reclaimed_from: str | None
) -> dict[str, Any]:
    """The facts of a claim, carried by the event that ends it: the attempt it was, who held the lock,
    when they claimed it, and whose expired lock the claim took over (None: the task was pending).

    Read from the task row as the claim left it: attempts, locked_by, locked_at, reclaimed_from.
    """
    return {
        "attempt": attempt,
        "worker": worker,
        CLAIMED_AT: event_time(claimed_at) if claimed_at is not None else None,
        "reclaimed_from": reclaimed_from or None,
    }


def completed_details(
    *,
    attempt: int,
    worker: str,
    claimed_at: datetime | None,
    reclaimed_from: str | None,
    duration: float | None,
    sent: list[int],
) -> dict[str, Any]:
    """Details of a `completed` event: the claim's facts, seconds since the claim, the ids of the tasks it sent."""
    claim = attempt_details(attempt=attempt, worker=worker, claimed_at=claimed_at, reclaimed_from=reclaimed_from)
    return {**claim, "duration": duration, "sent": sent}


def lock_expired_details(
    *, attempt: int, worker: str, claimed_at: datetime | None, reclaimed_from: str | None, now: str
) -> dict[str, Any]:
    """Details of a `lock_expired` event: the facts of the claim whose lock ran out, and what the task is `now`.

    `now`: "pending" or "failed" (the expiry sweep, failed at max attempts) or
    "cancelled" (the expiry sweep, a cancel was requested: services.cancel) or
    "reclaimed" (a claim took the expired lock over; the new holder's outcome
    names this worker in its reclaimed_from).
    """
    claim = attempt_details(attempt=attempt, worker=worker, claimed_at=claimed_at, reclaimed_from=reclaimed_from)
    return {**claim, "now": now}


def released_details(
    *,
    attempt: int,
    worker: str,
    claimed_at: datetime | None,
    reclaimed_from: str | None,
    error: str,
    traceback: str,
    retry_at: datetime,
) -> dict[str, Any]:
    """Details of a `released` event after a failed attempt: the claim's facts, the error, when it is retried."""
    claim = attempt_details(attempt=attempt, worker=worker, claimed_at=claimed_at, reclaimed_from=reclaimed_from)
    return {**claim, "error": error, "traceback": traceback, "retry_at": event_time(retry_at)}


def unclaimed_details(
    *, attempt: int, worker: str, claimed_at: datetime | None, reclaimed_from: str | None, reason: str
) -> dict[str, Any]:
    """Details of a `released` event that hands back a claim whose handler never started (attempt not counted)."""
    claim = attempt_details(attempt=attempt, worker=worker, claimed_at=claimed_at, reclaimed_from=reclaimed_from)
    return {**claim, "reason": reason}


def failed_details(
    *,
    attempt: int,
    worker: str,
    claimed_at: datetime | None,
    reclaimed_from: str | None,
    error: str,
    traceback: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """Details of a `failed` event: the claim's facts, the error, and (at max attempts) the reason."""
    claim = attempt_details(attempt=attempt, worker=worker, claimed_at=claimed_at, reclaimed_from=reclaimed_from)
    details = {**claim, "error": error, "traceback": traceback}
    if reason is not None:
        details["reason"] = reason
    return details


def by_person_details(*, previous_status: str, claim: dict[str, Any] | None) -> dict[str, Any]:
    """Details of a person's state change (retried, force_released, marked_completed): the status before,
    and, if the task was locked, the facts of the claim it ended (`claim`: claim_facts of the row)."""
    return {"previous_status": previous_status, **(attempt_details(**claim) if claim is not None else {})}


def claim_facts(row: Any) -> dict[str, Any]:
    """The claim a locked task row holds (a Task or a values() dict of CLAIM_COLUMNS), as the keyword
    arguments of the details builders: attempt, worker, claimed_at, reclaimed_from."""
    values = row if isinstance(row, dict) else {name: getattr(row, name) for name in CLAIM_COLUMNS}
    return {
        "attempt": values["attempts"],
        "worker": values["locked_by"],
        "claimed_at": values["locked_at"],
        "reclaimed_from": values["reclaimed_from"],
    }


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
