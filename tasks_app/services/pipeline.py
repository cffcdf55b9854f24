"""Writing a batch's completions and claiming the next batch in one round trip.

A worker that has finished a batch and wants the next one used to pay two
round trips and two commits: the completing UPDATE, then the claim. On
PostgreSQL both statements now go out together in psycopg's pipeline mode,
followed by one Sync: in the extended query protocol the statements before a
Sync run in one implicit transaction, committed at the Sync if both
succeeded and rolled back if either failed. So it is one round trip and one
commit, the completions keep their lock-token fence (the same PG_COMPLETE_SQL
the separate call runs), and a failure leaves nothing half done: the caller
keeps its completions to retry and has claimed nothing. If the connection
drops after the commit but before the reply, the claim's rows are locked in
the worker's name without its knowing; the worker's recovery after database
trouble (tasks_unclaim_orphans) hands them back, and the completions, retried,
find their tokens gone and are reported lost, never completed twice.

Anything else (SQLite, completions that send successors or name a task twice,
a paused stage, a stage with a concurrency cap or a rate limit) takes the separate calls, tasks_complete_each then
task_claim_rows, with the same results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from django.db import connection
from django.utils import timezone

from tasks_app.limits import clamp_lock_timeout
from tasks_app.models import Stage
from tasks_app.services import histograms
from tasks_app.services.claim import (
    MAX_CLAIM_BATCH,
    PG_CLAIM_SQL,
    ClaimedRow,
    claim_params,
    pg_claimed_rows,
    task_claim_rows,
)
from tasks_app.services.complete import (
    PG_COMPLETE_SQL,
    Completion,
    ItemOutcome,
    pg_complete_params,
    tasks_complete_each,
)
from tasks_app.services.flow_limits import gated
from tasks_app.services.pg import execute_pipelined


def one_statement(items: Sequence[Completion]) -> bool:
    """True if PostgreSQL completes these with PG_COMPLETE_SQL alone: nothing sent, no task twice.

    The same test tasks_complete_batch makes before taking its one-statement path.
    """
    plain = not any(item.send or item.details for item in items)  # details: only the batch path writes them
    return bool(items) and plain and len({i.task_id for i in items}) == len(items)


def tasks_complete_and_claim(
    *,
    items: Sequence[Completion],
    stage: Stage,
    worker_id: str,
    limit: int,
    lock_timeout: int | None = None,
    now: datetime | None = None,
    each: Callable[[ItemOutcome], object] | None = None,
) -> tuple[list[ItemOutcome], list[ClaimedRow]]:
    """Complete `items` and claim up to `limit` tasks of `stage`; on PostgreSQL in one round trip.

    Returns one outcome per item (in order, as tasks_complete_each gives them)
    and the claimed rows (as task_claim_rows gives them). `each` is called
    with every outcome once it is committed, so a caller stopped by a database
    error knows which were written. If the pipelined transaction fails,
    nothing of it was written (or, if only its reply was lost, see the module
    docstring) and the error propagates.
    """
    if not 1 <= limit <= MAX_CLAIM_BATCH:
        raise ValueError(f"limit must be between 1 and {MAX_CLAIM_BATCH}, got {limit}")
    if lock_timeout is not None and lock_timeout < 1:
        raise ValueError(f"lock_timeout must be at least 1 second, got {lock_timeout}")
    # A capped or rate-limited stage claims through its gate (services.flow_limits): a transaction of its
    # own after the completions', which also frees their slots first.
    if connection.vendor != "postgresql" or stage.is_paused or gated(stage) or not one_statement(items):
        return _separately(items, stage, worker_id, limit, lock_timeout, now, each)
    now = now or timezone.now()
    # As services.claim computes them; clamped so a stored out-of-bounds timeout can't overflow.
    until = now + timedelta(seconds=clamp_lock_timeout(lock_timeout or stage.lock_timeout))
    claim = claim_params(stage=stage, worker_id=worker_id, limit=limit, now=now, until=until)
    started = time.perf_counter()
    done_cursor, claim_cursor = _pipelined(pg_complete_params(items, now), claim)
    with connection.wrap_database_errors:
        ended = dict(done_cursor.fetchall())  # id -> completed, or cancelled (a cancel was requested)
        claimed = pg_claimed_rows(claim_cursor, claim, stage=stage, until=until)
    # The claim's latency as a worker waits for it: here the whole round trip it shares.
    histograms.observe("claim", worker_id=worker_id, stage=stage.slug, seconds=time.perf_counter() - started)
    outcomes = [ItemOutcome(i.task_id, _ended_as(ended.get(i.task_id))) for i in items]
    if each is not None:
        for outcome in outcomes:
            each(outcome)
    return outcomes, claimed


def _ended_as(status: str | None) -> Literal["completed", "cancelled", "lock_lost"]:
    """An item's outcome from the status PG_COMPLETE_SQL gave its row (None: not updated, the lock was lost)."""
    if status is None:
        return "lock_lost"
    return "cancelled" if status == "cancelled" else "completed"


def _separately(
    items: Sequence[Completion],
    stage: Stage,
    worker_id: str,
    limit: int,
    lock_timeout: int | None,
    now: datetime | None,
    each: Callable[[ItemOutcome], object] | None,
) -> tuple[list[ItemOutcome], list[ClaimedRow]]:
    """The two calls one after the other: the completions' transaction(s), then the claim's."""
    outcomes = []
    for outcome in tasks_complete_each(items=items, now=now) if items else ():
        outcomes.append(outcome)
        if each is not None:
            each(outcome)
    claimed = task_claim_rows(stage=stage, worker_id=worker_id, limit=limit, lock_timeout=lock_timeout, now=now)
    return outcomes, claimed


def _pipelined(complete: dict[str, Any], claim: dict[str, Any]) -> tuple[psycopg.Cursor[Any], psycopg.Cursor[Any]]:
    """Send PG_COMPLETE_SQL and PG_CLAIM_SQL, then one Sync: one round trip, one implicit transaction
    (services.pg.execute_pipelined; inside a Django atomic block, as in tests, they join it)."""
    return execute_pipelined((PG_COMPLETE_SQL, complete), (PG_CLAIM_SQL, claim))
