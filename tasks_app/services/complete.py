"""Completing claimed tasks and extending their locks, one task or a whole batch.

A batch is one transaction: one conditional UPDATE for all the tasks (each
row must still be locked with *its* token), one INSERT for the successors
and one for the history. A task whose token no longer matches (its lock
expired and another worker claimed it) is simply not in the UPDATE's
RETURNING: it is reported as lost and nothing is sent for it.

A task whose cancel was requested while it was locked (services.cancel) ends
here as `cancelled` instead of completed, and nothing it sends is created:
the same UPDATE decides it from the row it locks (CASE on cancel_requested),
so a request committed between a handler's return and this statement is
obeyed whoever completes (the worker, the API, pipelined or not).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from tasks_app.limits import clamp_lock_timeout
from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services.dedupe import deduplicated_events, tasks_insert
from tasks_app.services.errors import NoRouteError, TaskLockLost
from tasks_app.services.events import completed_details, details_sql, event_time_sql
from tasks_app.services.fanout import mark_fanouts
from tasks_app.services.lifecycle import lock_lost
from tasks_app.services.notify import notify_stages
from tasks_app.services.pg import execute_prepared
from tasks_app.services.routing import SendLike, as_send, run_at, successor_tasks, validate_task_input
from tasks_app.services.schemas import validate_sent

TASK = connection.ops.quote_name(Task._meta.db_table)
TASK_EVENT = connection.ops.quote_name(TaskEvent._meta.db_table)


@dataclass
class Completion:
    task_id: int
    lock_token: str
    send: Sequence[SendLike] = ()  # (type, payload) pairs or routing.Sends (priority, run-at)
    details: dict[str, Any] | None = None  # more for the completed event (a script's output), never its own keys


@dataclass
class BatchResult:
    completed: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)  # a cancel was requested: ended cancelled, sent nothing
    successors: list[Task] = field(default_factory=list)
    # Each completed task's sends, in order: created tasks, and live ones a send was folded into
    # (`deduplicated` True, services.dedupe), whose parent_id is their own sender's.
    sent: dict[int, list[Task]] = field(default_factory=dict)


# "Still locked", written so that no index can serve it: `status || ''` is an expression, not the
# column. As a plain `status = 'locked'` it was an index condition (task_status_stage_idx) and the
# proof that let the partial indexes on pending/locked rows (task_claim_idx, task_lock_expiry_idx)
# be walked; whenever the statistics made `locked` look rare, the planner walked one of those over
# a stage's backlog instead of looking the few ids up in the primary key, a cost that grew with the
# backlog. Now the primary key is the only index that leads to the rows (tests/test_complete_plan_pg.py).
STILL_LOCKED = "status || '' = 'locked'"


def _held(items: Sequence[tuple[int, str]]) -> tuple[str, list[Any]]:
    """WHERE clause matching rows still locked with the given (id, token) pairs.

    `id IN (...)` leads the planner to the rows by primary key (the only index
    the clause can use: see STILL_LOCKED); the row-value IN then checks each
    row against its own token.
    """
    ids = ", ".join(["%s"] * len(items))
    pairs = ", ".join(["(%s, %s)"] * len(items))
    sql = f"id IN ({ids}) AND {STILL_LOCKED} AND (id, lock_token) IN (VALUES {pairs})"
    params: list[Any] = [task_id for task_id, _ in items]
    for task_id, token in items:
        params += [task_id, token]
    return sql, params


def _as_datetime(value: Any) -> datetime | None:
    """A timestamp read with raw SQL: SQLite gives naive UTC (or text), PostgreSQL aware."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _routes(stage_ids: Iterable[int]) -> dict[int, list[Transition]]:
    routes: dict[int, list[Transition]] = {sid: [] for sid in stage_ids}
    for t in Transition.objects.filter(source_id__in=routes.keys()).order_by("id"):
        routes[t.source_id].append(t)
    return routes


def _no_route(stage_id: int, task_type: str, transitions: list[Transition]) -> NoRouteError:
    slug = Stage.objects.filter(pk=stage_id).values_list("slug", flat=True).first() or str(stage_id)
    accepted = sorted({t.task_type or "*" for t in transitions})
    return NoRouteError(stage_slug=slug, task_type=task_type, accepted=accepted)


# The completed event's details (services.events.completed_details), as the SQL writes them:
# this statement runs only when nothing is sent. The claim's facts come from the row as the claim left it.
COMPLETED_DETAILS_SQL = details_sql(
    completed_details,
    attempt="attempts",
    worker="locked_by",
    claimed_at=event_time_sql("locked_at"),
    reclaimed_from="NULLIF(reclaimed_from, '')",
    duration="extract(epoch FROM %(now)s::timestamptz - locked_at)::float8",
    sent="'[]'::jsonb",
)

# One table scan, no join: the rows are found by primary key (`id = ANY(ids)`, the only index
# condition the clause offers: see STILL_LOCKED), and each row found is checked against its own
# token, looked up by its id's position. (Joined to `unnest(ids, tokens)` instead, the join order
# was left to the same statistics: with STILL_LOCKED's low guess the planner rescanned the pairs
# for every row, 100 x 100 at a batch of 100.) The ids must be distinct, or only the first
# token of an id would count: tasks_complete_batch sends a batch with a repeated id the other way.
# A task whose cancel was requested (services.cancel) ends cancelled here, with no completed_at, and its
# event is `cancelled` (the same details): decided from the row the UPDATE locked, so a request that
# committed just before is seen. The new status comes back with each id.
PG_COMPLETE_SQL = f"""
WITH done AS (
    UPDATE {TASK}
    SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'completed' END,
        completed_at = CASE WHEN cancel_requested THEN NULL ELSE %(now)s::timestamptz END,
        updated_at = %(now)s, lock_token = '', locked_until = NULL
    WHERE id = ANY(%(ids)s::bigint[]) AND {STILL_LOCKED}
      AND lock_token = (%(tokens)s::text[])[array_position(%(ids)s::bigint[], id)]
    RETURNING id, status, locked_by, locked_at, attempts, reclaimed_from
), events AS (
    INSERT INTO {TASK_EVENT} (task_id, kind, at, actor, details)
    SELECT id, status, %(now)s, locked_by, {COMPLETED_DETAILS_SQL}
    FROM done
)
SELECT id, status FROM done
"""


def send_options_apply(
    children: dict[int, list[Task]],
    by_id: dict[int, Completion],
    routes: dict[int, list[Transition]],
    stage_of: dict[int, int],
    now: datetime,
) -> None:
    """Give each successor its send's priority (none given: its sender's, read under the completion's lock)
    and run-at time. Each send made one successor per transition passing its type, in send order."""
    if not children:
        return
    priorities = dict(Task.objects.filter(pk__in=list(children)).values_list("id", "priority"))
    for task_id, kids in children.items():
        made = iter(kids)
        for send in map(as_send, by_id[task_id].send):
            for _ in (t for t in routes[stage_of[task_id]] if t.accepts(send[0])):
                kid = next(made)
                kid.priority = priorities[task_id] if send.priority is None else send.priority
                kid.available_at = run_at(now=now, at=send.at, delay=send.delay)


def tasks_complete_batch(*, items: Sequence[Completion], now: datetime | None = None) -> BatchResult:
    """Complete many locked tasks and send their successors in one transaction.

    Raises NoRouteError (rolling everything back) if any sent type has no route.
    """
    for item in items:
        for type, payload in item.send:
            validate_task_input(type=type, payload=payload)
    result = BatchResult()
    if not items:
        return result
    now = now or timezone.now()
    by_id = {item.task_id: item for item in items}
    adapt = connection.ops.adapt_datetimefield_value
    plain = not any(item.send or item.details for item in items)
    if connection.vendor == "postgresql" and plain and len(by_id) == len(items):
        # The common case, nothing to send (and each task once): one statement, atomic on its own.
        prepared = execute_prepared(PG_COMPLETE_SQL, pg_complete_params(items, now))
        ended = prepared.fetchall()
        result.completed = sorted(row[0] for row in ended if row[1] != Task.Status.CANCELLED)
        result.cancelled = sorted(row[0] for row in ended if row[1] == Task.Status.CANCELLED)
        done = {row[0] for row in ended}
        result.lost = [item.task_id for item in items if item.task_id not in done]
        return result
    where, params = _held([(item.task_id, item.lock_token) for item in items])
    with transaction.atomic():
        with connection.cursor() as cursor:
            # As PG_COMPLETE_SQL: a requested cancel turns the completion into a cancel, from the locked row.
            cursor.execute(
                f"UPDATE {TASK} SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'completed' END,"
                " completed_at = CASE WHEN cancel_requested THEN NULL ELSE %s END, updated_at = %s,"
                f" lock_token = '', locked_until = NULL WHERE {where}"
                " RETURNING id, stage_id, locked_by, locked_at, attempts, reclaimed_from, status",
                [adapt(now), adapt(now), *params],
            )
            ended = sorted(cursor.fetchall())
        cancelled = {row[0] for row in ended if row[6] == Task.Status.CANCELLED}
        rows = [row[:6] for row in ended]
        to_route = {row[1] for row in rows if by_id[row[0]].send and row[0] not in cancelled}
        routes = _routes(to_route) if to_route else {}
        senders = Stage.objects.in_bulk(to_route) if to_route else {}
        children: dict[int, list[Task]] = {}
        for task_id, stage_id, *_ in rows:
            if task_id in cancelled:
                continue  # its sends are dropped: the cancelled event lists their types
            for type, payload in by_id[task_id].send:
                matching = [t for t in routes[stage_id] if t.accepts(type)]
                if not matching:
                    raise _no_route(stage_id, type, routes[stage_id])
                validate_sent(senders[stage_id], type, payload)
                children.setdefault(task_id, []).extend(
                    successor_tasks(
                        transitions=matching,
                        type=type,
                        payload=payload,
                        source_stage_id=stage_id,
                        parent_id=task_id,
                        now=now,
                    )
                )
        successors = [child for kids in children.values() for child in kids]
        send_options_apply(children, by_id, routes, {row[0]: row[1] for row in rows}, now)
        mark_fanouts(children)  # join stages: which successors were created together (services.fanout)
        arrivals = successors
        if successors:  # dedupe: a successor whose key a live task holds is that task (services.dedupe)
            arrived = iter(tasks_insert(successors))
            children = {task_id: [next(arrived) for _ in kids] for task_id, kids in children.items()}
            successors = [child for kids in children.values() for child in kids]
        events = []
        for task_id, _stage_id, locked_by, locked_at, attempts, reclaimed_from in rows:
            started = _as_datetime(locked_at)
            kids = children.get(task_id, [])
            details = completed_details(
                attempt=attempts,
                worker=locked_by,
                claimed_at=started,
                reclaimed_from=reclaimed_from,
                duration=(now - started).total_seconds() if started else None,
                sent=[k.pk for k in kids],
            )
            details = {**(by_id[task_id].details or {}), **details}
            if any(k.deduplicated for k in kids):
                details["deduplicated"] = [k.pk for k in kids if k.deduplicated]
            if task_id in cancelled and by_id[task_id].send:
                details["dropped"] = [sent[0] for sent in by_id[task_id].send]
            events.append(
                TaskEvent(
                    task_id=task_id,
                    kind=TaskEvent.Kind.CANCELLED if task_id in cancelled else TaskEvent.Kind.COMPLETED,
                    at=now,
                    actor=locked_by,
                    details=details,
                )
            )
            events += [
                TaskEvent(
                    task_id=k.pk, kind=TaskEvent.Kind.CREATED, at=now, actor=locked_by, details={"parent": task_id}
                )
                for k in kids
                if not k.deduplicated
            ]
        if any(k.deduplicated for k in successors):
            holder = {row[0]: row[2] for row in rows}
            events += deduplicated_events(
                arrivals, successors, actor=[holder[k.parent_id or 0] for k in arrivals], now=now, via="complete",
                details=[{"parent": k.parent_id} for k in arrivals],
            )  # fmt: skip
        TaskEvent.objects.bulk_create(events)
        notify_stages({k.stage_id for k in successors if not k.deduplicated})
    result.completed = [row[0] for row in rows if row[0] not in cancelled]
    result.cancelled = sorted(cancelled)
    done = {row[0] for row in rows}
    result.lost = [item.task_id for item in items if item.task_id not in done]
    result.successors = successors
    result.sent = children
    return result


# What one item of a batch can be refused for while the others go through: a send nothing routes,
# or a payload a schema refuses (a transition or a schema changed after the handler checked its sends).
PER_ITEM_REFUSALS = (NoRouteError, ValidationError)


@dataclass
class ItemOutcome:
    """What became of one item of tasks_complete_each; a refused item is still locked, nothing written for it."""

    task_id: int
    status: Literal["completed", "cancelled", "lock_lost", "refused"]
    successors: list[Task] = field(default_factory=list)
    error: NoRouteError | ValidationError | None = None


def _outcomes(items: Sequence[Completion], result: BatchResult) -> Iterator[ItemOutcome]:
    done = set(result.completed)
    cancelled = set(result.cancelled)
    sent = result.sent
    for item in items:
        if item.task_id in done:
            yield ItemOutcome(item.task_id, "completed", sent.get(item.task_id, []))
        elif item.task_id in cancelled:
            yield ItemOutcome(item.task_id, "cancelled")
        else:
            yield ItemOutcome(item.task_id, "lock_lost")


def tasks_complete_each(*, items: Sequence[Completion], now: datetime | None = None) -> Iterator[ItemOutcome]:
    """Complete a batch in one transaction, or, if an item's send is refused, item by item so only it fails.

    The one policy for a partly refused batch (the worker's flush and the API's bulk-complete). Yields
    one outcome per item, in order, each once it is written: a caller stopped by a database error
    knows which items were written and which were not.
    """
    try:
        result = tasks_complete_batch(items=items, now=now)
    except PER_ITEM_REFUSALS:
        for item in items:
            try:
                one = tasks_complete_batch(items=[item], now=now)  # its own transaction
            except PER_ITEM_REFUSALS as exc:
                yield ItemOutcome(item.task_id, "refused", error=exc)
                continue
            yield from _outcomes([item], one)
        return
    yield from _outcomes(items, result)


def task_complete(
    *, task_id: int, lock_token: str, send: Iterable[SendLike] = (), now: datetime | None = None
) -> list[Task]:
    """Complete a locked task and send its successors, in one transaction.

    A task whose cancel was requested ends cancelled instead, and the answer is [] (nothing sent).
    """
    if not lock_token:
        raise TaskLockLost(f"Task {task_id}: a lock token is required.")
    result = tasks_complete_batch(items=[Completion(task_id, lock_token, list(send))], now=now)
    if result.lost:
        raise lock_lost(task_id)
    return result.successors


@dataclass
class Renewal:
    """What a heartbeat found: the ids still held (extended), and those of them whose cancel was requested."""

    held: list[int] = field(default_factory=list)
    cancel_requested: list[int] = field(default_factory=list)


def tasks_extend_locks_reporting(
    *, items: Sequence[tuple[int, str]], lock_timeout: int, now: datetime | None = None
) -> Renewal:
    """Heartbeat: push the deadline of held locks to now + lock_timeout; reports those held and cancel requests.

    The cancel request comes back from the same UPDATE (RETURNING), so the worker learns it at the
    heartbeat that follows it, with no query of its own.
    """
    if lock_timeout < 1:
        raise ValueError(f"lock_timeout must be at least 1 second, got {lock_timeout}")
    if not items:
        return Renewal()
    now = now or timezone.now()
    until = now + timedelta(seconds=clamp_lock_timeout(lock_timeout))  # stored out of bounds: don't overflow
    adapt = connection.ops.adapt_datetimefield_value
    where, params = _held(items)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {TASK} SET locked_until = %s, updated_at = %s WHERE {where} RETURNING id, cancel_requested",
                [adapt(until), adapt(now), *params],
            )
            rows = sorted(cursor.fetchall())
        extended = [row[0] for row in rows]
        TaskEvent.objects.bulk_create(
            TaskEvent(task_id=i, kind=TaskEvent.Kind.LOCK_EXTENDED, at=now, details={"locked_until": until.isoformat()})
            for i in extended
        )
    return Renewal(held=extended, cancel_requested=[row[0] for row in rows if row[1]])


def tasks_extend_locks(
    *, items: Sequence[tuple[int, str]], lock_timeout: int, now: datetime | None = None
) -> list[int]:
    """Heartbeat: push the deadline of held locks to now + lock_timeout; returns the ids still held."""
    return tasks_extend_locks_reporting(items=items, lock_timeout=lock_timeout, now=now).held


def task_extend_lock_reporting(
    *, task_id: int, lock_token: str, lock_timeout: int | None = None, now: datetime | None = None
) -> tuple[datetime, bool]:
    """Push one held lock's deadline to now + lock_timeout (default: its stage's); returns the new deadline
    and whether a cancel of the task was requested."""
    now = now or timezone.now()
    if lock_timeout is None:
        row = Task.objects.filter(pk=task_id).values("stage__lock_timeout").first()
        lock_timeout = row["stage__lock_timeout"] if row else 1
    renewal = tasks_extend_locks_reporting(items=[(task_id, lock_token)], lock_timeout=lock_timeout, now=now)
    if not renewal.held:
        raise lock_lost(task_id)
    return now + timedelta(seconds=clamp_lock_timeout(lock_timeout)), bool(renewal.cancel_requested)


def task_extend_lock(
    *, task_id: int, lock_token: str, lock_timeout: int | None = None, now: datetime | None = None
) -> datetime:
    """Push one held lock's deadline to now + lock_timeout (default: its stage's); returns the new deadline."""
    return task_extend_lock_reporting(task_id=task_id, lock_token=lock_token, lock_timeout=lock_timeout, now=now)[0]


def pg_complete_params(items: Sequence[Completion], now: datetime) -> dict[str, Any]:
    """Parameters of PG_COMPLETE_SQL for `items` (services.pipeline sends it pipelined with a claim)."""
    return {"now": now, "ids": [i.task_id for i in items], "tokens": [i.lock_token for i in items]}
