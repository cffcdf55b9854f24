"""Claiming a batch of tasks for a worker.

A claim is one short transaction that commits before any handler runs. On
PostgreSQL it is one statement: a MATERIALIZED CTE picks claimable ids in
index order with FOR UPDATE SKIP LOCKED (the fence stops the planner from
inlining it into the UPDATE and locking rows it then skips) and the UPDATE locks
them. A claim writes no history of its own: the event that ends it carries
its facts (services.events.attempt_details), read from the row the claim set
(attempts, locked_by, locked_at, and reclaimed_from: whose expired lock it
took over, '' if none). Only taking over an expired lock writes an event, the
`lock_expired` that ends the previous holder's claim. SQLite has
no row locks but serialises writers; with BEGIN IMMEDIATE (settings) the whole
transaction holds the write lock, so reading the candidates and updating them
is atomic.

A stage with a concurrency cap or a rate limit claims through its gate row
instead (services.flow_limits): a short transaction that locks the gate, counts,
then runs this same claim statement with a smaller LIMIT. Stages with neither
never touch the gate.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from tasks_app.limits import clamp_lock_timeout
from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import histograms
from tasks_app.services.events import details_sql, event_time_sql, lock_expired_details
from tasks_app.services.flow_limits import GATE, GATES_SEEN, after_gate_locked, gate_enter, gate_leave, gated
from tasks_app.services.pg import execute_prepared

MAX_CLAIM_BATCH = 1000
TASK = connection.ops.quote_name(Task._meta.db_table)
TASK_EVENT = connection.ops.quote_name(TaskEvent._meta.db_table)

# Lock tokens: 16 random bytes, 32 hex characters (Task.lock_token holds 64).
LOCK_TOKEN_BYTES = 16
LOCK_TOKEN_CHARS = 2 * LOCK_TOKEN_BYTES


def new_lock_tokens(count: int = 1) -> bytes:
    """The random bytes of `count` fresh lock tokens, LOCK_TOKEN_BYTES each, end to end.

    The one source of lock tokens; a token is the hex of its slice
    (lock_token). A claim's SQL gives its n-th row the n-th slice, one random
    read for the whole batch (bytea: slicing a long text walks it from the
    start, which made big claims slow); a person opening a form task takes
    lock_token(new_lock_tokens(1), 0).
    """
    return secrets.token_bytes(LOCK_TOKEN_BYTES * count)


def lock_token(block: bytes, n: int) -> str:
    """The n-th (from 0) lock token of a new_lock_tokens() block, as the claim's SQL spells it (lowercase hex)."""
    return block[n * LOCK_TOKEN_BYTES : (n + 1) * LOCK_TOKEN_BYTES].hex()


# Shared by both backends and by the EXPLAIN test: the claimable predicate
# and the order (CLAIM_ORDER) that the partial index task_claim_idx serves. The ORM's
# spelling is TaskQuerySet.claimable (a form open uses it);
# tests/test_lifecycle_rules.py holds the two to the same rows on both databases.
# No separate "status IN (...)": PostgreSQL proves the index predicate from the
# OR itself, and a redundant status filter makes it underestimate the matching
# rows and pick a backlog-sized sort instead of the index (see the EXPLAIN test).
# An expired lock whose task has used up its attempts is left for the expiry
# sweep, which fails it, so a reclaim never runs a task beyond max_attempts; so
# is one whose cancel was requested (services.cancel): the sweep cancels it, and
# a reclaim would run its handler again. (Pending tasks never carry the flag:
# every way back to pending ends a requested task cancelled instead.)
CLAIMABLE_WHERE = """
    stage_id = %(stage_id)s
    AND ((status = 'pending' AND available_at <= %(now)s)
         OR (status = 'locked' AND locked_until < %(now)s AND NOT cancel_requested
             AND (CAST(%(max_attempts)s AS integer) IS NULL OR attempts < CAST(%(max_attempts)s AS integer))))
"""

# Expired locks only (a capped stage's claim takes these over even when its cap is full: services.flow_limits):
# through task_locked_idx (every locked task, a few thousand at most); `stage_id + 0` keeps the planner off
# task_claim_idx, whose stage range holds the whole backlog.
RECLAIMABLE_WHERE = """
    status = 'locked' AND stage_id + 0 = %(stage_id)s AND locked_until < %(now)s AND NOT cancel_requested
    AND (CAST(%(max_attempts)s AS integer) IS NULL OR attempts < CAST(%(max_attempts)s AS integer))
"""

# Highest priority first, then oldest: task_claim_idx's keys after stage_id (stage_id, priority DESC, id).
# A steady stream of higher-priority tasks starves lower ones (no ageing: README, "Priority").
CLAIM_ORDER = "priority DESC, id"

# Columns the claim sets to values Python already knows; the rest are read back.
SET_BY_CLAIM = ("status", "locked_by", "locked_at", "locked_until", "updated_at", "completed_at")
# Timestamps come back as epoch seconds: Django's timezone-aware timestamp
# loader costs more than the rest of a claimed row put together.
EPOCH_COLUMNS = ("created_at", "available_at")
RETURNED_FIELDS = [f for f in Task._meta.concrete_fields if f.attname not in SET_BY_CLAIM]
RETURNED = ", ".join(
    f"extract(epoch FROM t.{f.column})::float8 AS {f.column}" if f.column in EPOCH_COLUMNS else f"t.{f.column}"
    for f in RETURNED_FIELDS
)

# Who held the lock a claim takes over ('' when the task was pending): the claim's reclaimed_from.
# In an UPDATE's SET (both databases) the columns are the row's values before the update.
RECLAIMED_FROM_SET = "reclaimed_from = CASE WHEN status = 'locked' THEN locked_by ELSE '' END"

# The lock_expired event of the claim an expired lock belonged to (services.events.lock_expired_details),
# from the picked row's values before the claim.
RECLAIM_DETAILS_SQL = details_sql(
    lock_expired_details,
    attempt="old_attempts",
    worker="old_locked_by",
    claimed_at=event_time_sql("old_locked_at"),
    reclaimed_from="NULLIF(old_reclaimed_from, '')",
    now="'reclaimed'::text",
)

PG_CLAIM_SQL = f"""
WITH picked AS MATERIALIZED (
    SELECT id, status AS old_status, locked_by AS old_locked_by, locked_at AS old_locked_at,
           attempts AS old_attempts, reclaimed_from AS old_reclaimed_from
    FROM {TASK}
    WHERE {CLAIMABLE_WHERE}
    ORDER BY {CLAIM_ORDER}
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), numbered AS (
    -- Row n takes the n-th token of new_lock_tokens(limit) (lock_token(block, n - 1)); any order will do.
    SELECT id, row_number() OVER () AS n FROM picked
), claimed AS (
    UPDATE {TASK} AS t
    SET status = 'locked',
        lock_token = encode(substring(%(tokens)s::bytea FROM ((n - 1) * {LOCK_TOKEN_BYTES} + 1)::integer
                                      FOR {LOCK_TOKEN_BYTES}), 'hex'),
        locked_by = %(worker_id)s,
        locked_at = %(now)s,
        locked_until = %(until)s,
        attempts = t.attempts + 1,
        updated_at = %(now)s,
        {RECLAIMED_FROM_SET}
    FROM numbered
    WHERE t.id = numbered.id
    RETURNING {RETURNED}
), expired AS (
    -- Only a claim that takes over an expired lock writes history (usually no row at all):
    -- the lock_expired event that ends the previous holder's claim, in this same statement.
    INSERT INTO {TASK_EVENT} (task_id, kind, at, actor, details)
    SELECT id, 'lock_expired', %(now)s, %(worker_id)s, {RECLAIM_DETAILS_SQL}
    FROM picked
    WHERE old_status = 'locked'
)
SELECT * FROM claimed ORDER BY {CLAIM_ORDER}
"""

PG_RECLAIM_SQL = PG_CLAIM_SQL.replace(CLAIMABLE_WHERE, RECLAIMABLE_WHERE)

# A capped stage's claim after its gate is locked (services.flow_limits.after_gate_locked): the claim
# statement itself takes at most the free slots, counted in its own snapshot (a later statement than the
# lock, so every claim that held the gate before is counted), through task_locked_idx (RUNNING_SQL).
# Nothing without the gate row (whose lock is what makes the count exact): the row goes only with its
# stage, but a claim must never run unguarded.
CAP_ROOM_SQL = f"""
SELECT greatest(0, least(%(limit)s, %(cap)s - count(*)))::bigint
       * (SELECT count(*) FROM {GATE} WHERE stage_id = %(stage_id)s) FROM (
    SELECT 1 FROM {TASK} WHERE status = 'locked' AND stage_id + 0 = %(stage_id)s LIMIT %(cap)s
) AS running
"""
PG_CAPPED_CLAIM_SQL = PG_CLAIM_SQL.replace("LIMIT %(limit)s", f"LIMIT ({CAP_ROOM_SQL})", 1)

SQLITE_PICK_SQL = f"""
SELECT id, status, locked_by, locked_at, attempts, reclaimed_from FROM {TASK}
WHERE {CLAIMABLE_WHERE}
ORDER BY {CLAIM_ORDER}
LIMIT %(limit)s
"""

# {ids} and {claimable} are filled in per claim; %(tokens)s is a JSON object {"<id>": token}.
SQLITE_CLAIM_SQL = f"""
UPDATE {TASK}
SET status = 'locked',
    lock_token = json_extract(%(tokens)s, '$."' || id || '"'),
    locked_by = %(worker_id)s,
    locked_at = %(now)s,
    locked_until = %(until)s,
    attempts = attempts + 1,
    updated_at = %(now)s,
    {RECLAIMED_FROM_SET}
WHERE id IN ({{ids}}) AND {{claimable}}
RETURNING *
"""


def claim_params(*, stage: Stage, worker_id: str, limit: int, now: datetime, until: datetime) -> dict[str, Any]:
    """Parameters of the claim SQL (shared with the EXPLAIN test)."""
    ops = connection.ops
    return {
        "stage_id": stage.pk,
        "now": ops.adapt_datetimefield_value(now),
        "until": ops.adapt_datetimefield_value(until),
        "limit": limit,
        "max_attempts": stage.max_attempts,
        "worker_id": worker_id,
        "tokens": new_lock_tokens(limit),
    }


@dataclass(slots=True)
class ClaimedRow:
    """A claimed task as the worker needs it: built straight from the claim's rows, no Django model.

    Building a Task per row (from_db, field descriptors, state) was a measurable
    part of a worker's batch; the worker reads only these fields. Values are
    those a fresh query of the task would give (tests/test_claim_rows.py).
    """

    id: int
    stage_id: int
    type: str
    payload: dict[str, Any]
    attempts: int
    lock_token: str
    locked_by: str
    locked_until: datetime
    created_at: datetime
    parent_id: int | None
    stage: Stage
    priority: int = 0
    # The row's flag as claimed (services.cancel), for the handler's task.cancel_requested from the start;
    # heartbeats report a request made later.
    cancel_requested: bool = False

    @property
    def pk(self) -> int:
        return self.id


def task_claim(
    *,
    stage: Stage,
    worker_id: str,
    limit: int = 1,
    lock_timeout: int | None = None,
    now: datetime | None = None,
) -> list[Task]:
    """Lock up to `limit` claimable tasks of `stage` for `worker_id`, highest priority first, then oldest."""
    return _claim(stage=stage, worker_id=worker_id, limit=limit, lock_timeout=lock_timeout, now=now, rows=False)


def task_claim_rows(
    *,
    stage: Stage,
    worker_id: str,
    limit: int = 1,
    lock_timeout: int | None = None,
    now: datetime | None = None,
) -> list[ClaimedRow]:
    """task_claim, the same SQL and guarantees, returning ClaimedRows instead of Tasks (the worker's hot path)."""
    return _claim(stage=stage, worker_id=worker_id, limit=limit, lock_timeout=lock_timeout, now=now, rows=True)


def _claim(
    *,
    stage: Stage,
    worker_id: str,
    limit: int,
    lock_timeout: int | None,
    now: datetime | None,
    rows: bool,
) -> list[Any]:
    if not 1 <= limit <= MAX_CLAIM_BATCH:
        raise ValueError(f"limit must be between 1 and {MAX_CLAIM_BATCH}, got {limit}")
    if lock_timeout is not None and lock_timeout < 1:
        raise ValueError(f"lock_timeout must be at least 1 second, got {lock_timeout}")
    if stage.is_paused:
        return []
    now = now or timezone.now()
    # Clamped: a lock_timeout stored before the bounds (or by raw SQL) would overflow the datetime.
    until = now + timedelta(seconds=clamp_lock_timeout(lock_timeout or stage.lock_timeout))
    params = claim_params(stage=stage, worker_id=worker_id, limit=limit, now=now, until=until)
    started = time.perf_counter()
    claimed: list[Any] = []
    done = False  # the one-round-trip capped claim took all it asked for
    if gated(stage) and connection.vendor == "postgresql" and not stage.rate_limit and stage.pk in GATES_SEEN:
        # A cap (no rate limit) at a stage whose gate row exists: lock and claim in one round trip. Cut
        # short (a full cap, expired locks to take over, or no more work), the gated path below decides
        # the rest, as a claim of what is left, and counts a throttled claim.
        cursor = after_gate_locked(stage, PG_CAPPED_CLAIM_SQL, {**params, "cap": stage.max_concurrency})
        if cursor is not None:
            claimed = (
                _pg_rows(cursor, params, stage=stage, until=until)
                if rows
                else _tasks_from_rows(cursor, params, now=now, until=until)
            )
            done = len(claimed) == limit
            if not done:
                limit -= len(claimed)
                params = {**params, "limit": limit, "tokens": new_lock_tokens(limit)}
    if gated(stage):
        if not done:  # a cap or a rate limit: the claim takes the stage's gate row first (services.flow_limits)
            claimed += _gated_claim(stage, params, limit=limit, now=now, until=until, rows=rows)
    elif connection.vendor == "postgresql":
        # One statement, atomic on its own: no BEGIN/COMMIT round trips around it.
        claimed = _claim_statement(params, stage=stage, now=now, until=until, rows=rows)
    else:
        with transaction.atomic():
            claimed = _claim_statement(params, stage=stage, now=now, until=until, rows=rows)
    # Empty claims too: an idle worker's polls are claims. A no-op unless worker_id runs in this process.
    histograms.observe("claim", worker_id=worker_id, stage=stage.slug, seconds=time.perf_counter() - started)
    if not rows:
        for task in claimed:
            task.stage = stage  # saves a query per task in the worker
    return claimed


def _gated_claim(
    stage: Stage, params: dict[str, Any], *, limit: int, now: datetime, until: datetime, rows: bool
) -> list[Any]:
    """A claim of up to `limit` at a capped or rate-limited stage: in a transaction that locks its gate row,
    counts, claims what the gate allows, takes over expired locks at a full cap, and records the claim."""
    with transaction.atomic():
        gate = gate_enter(stage, limit=limit, now=now)
        params["limit"] = gate.allowed
        claimed: list[Any] = []
        if gate.allowed:
            claimed += _claim_statement(params, stage=stage, now=now, until=until, rows=rows)
        cut_short = gate.allowed < limit and len(claimed) == gate.allowed
        reclaim = gate.reclaim_room(len(claimed))
        if reclaim:  # the cap is full, partly of expired locks: take those over (the count stays)
            more = {**params, "limit": reclaim, "tokens": new_lock_tokens(reclaim)}
            claimed += _claim_statement(more, stage=stage, now=now, until=until, rows=rows, reclaim=True)
        gate_leave(gate, claimed=len(claimed), claimable_more=cut_short and _claimable_left(params), now=now)
    return claimed


def _claim_statement(
    params: dict[str, Any], *, stage: Stage, now: datetime, until: datetime, rows: bool, reclaim: bool = False
) -> list[Task] | list[ClaimedRow]:
    """The claim itself: PG_CLAIM_SQL (prepared), or SQLite's pick and update (inside the caller's transaction).

    `reclaim`: expired locks only (RECLAIMABLE_WHERE), for a capped stage whose cap is full.
    """
    if connection.vendor != "postgresql":
        return _claim_sqlite(params, stage=stage, now=now, until=until, rows=rows, reclaim=reclaim)
    cursor = execute_prepared(PG_RECLAIM_SQL if reclaim else PG_CLAIM_SQL, params)
    if rows:
        return _pg_rows(cursor, params, stage=stage, until=until)
    return _tasks_from_rows(cursor, params, now=now, until=until)


CLAIMABLE_LEFT_SQL = f"SELECT 1 FROM {TASK} WHERE {CLAIMABLE_WHERE} LIMIT 1"


def _claimable_left(params: dict[str, Any]) -> bool:
    """Whether the stage still has a claimable task (after a claim the gate cut short: was it throttled?)."""
    with connection.cursor() as cursor:
        cursor.execute(CLAIMABLE_LEFT_SQL, params)
        return cursor.fetchone() is not None


# Where ClaimedRow's fields sit in a PostgreSQL claim's RETURNING row.
_PG_INDEX = {f.attname: i for i, f in enumerate(RETURNED_FIELDS)}


def _pg_rows(cursor: Any, params: dict[str, Any], *, stage: Stage, until: datetime) -> list[ClaimedRow]:
    """ClaimedRows from the claim's RETURNING rows (the columns the claim set come from Python, as for Tasks)."""
    i = _PG_INDEX
    id_, stage_id, type_, payload = i["id"], i["stage_id"], i["type"], i["payload"]
    attempts, token, created, parent = i["attempts"], i["lock_token"], i["created_at"], i["parent_id"]
    priority, cancel = i["priority"], i["cancel_requested"]
    worker_id = params["worker_id"]
    out = []
    for row in cursor.fetchall():
        data = row[payload]
        out.append(
            ClaimedRow(
                id=row[id_],
                stage_id=row[stage_id],
                type=row[type_],
                payload=json.loads(data) if isinstance(data, str) else data,  # jsonb comes as text under Django
                attempts=row[attempts],
                lock_token=row[token],
                locked_by=worker_id,
                locked_until=until,
                created_at=datetime.fromtimestamp(row[created], UTC),  # an EPOCH_COLUMN
                parent_id=row[parent],
                stage=stage,
                priority=row[priority],
                cancel_requested=bool(row[cancel]),
            )
        )
    return out


def _tasks_from_rows(cursor: Any, params: dict[str, Any], *, now: datetime, until: datetime) -> list[Task]:
    """Model instances from the claim's RETURNING rows, without RawQuerySet's per-row overhead.

    Columns the claim itself just set come from Python rather than the row:
    converting timestamps is most of the cost of reading a claimed batch.
    """
    known: dict[str, Any] = {
        "status": Task.Status.LOCKED,
        "locked_by": params["worker_id"],
        "locked_at": now,
        "locked_until": until,
        "updated_at": now,
        "completed_at": None,
    }
    columns = [f.attname for f in RETURNED_FIELDS]  # the RETURNING order
    attnames = [f.attname for f in Task._meta.concrete_fields]
    tasks = []
    for row in cursor.fetchall():
        values = dict(known, **dict(zip(columns, row, strict=True)))
        if isinstance(values["payload"], str):  # Django has psycopg hand jsonb over as text
            values["payload"] = json.loads(values["payload"])
        for name in EPOCH_COLUMNS:
            values[name] = datetime.fromtimestamp(values[name], UTC)
        tasks.append(Task.from_db(connection.alias, attnames, [values[name] for name in attnames]))
    return tasks


def _claim_sqlite(
    params: dict[str, Any], *, stage: Stage, now: datetime, until: datetime, rows: bool, reclaim: bool = False
) -> list[Task] | list[ClaimedRow]:
    where = RECLAIMABLE_WHERE if reclaim else CLAIMABLE_WHERE
    with connection.cursor() as cursor:
        cursor.execute(SQLITE_PICK_SQL.replace(CLAIMABLE_WHERE, where), params)
        picked = cursor.fetchall()
    if not picked:
        return []
    # The expired locks this claim takes over: (id, locked_by, locked_at, attempts, reclaimed_from) before it.
    taken_over = [row[0:1] + row[2:] for row in picked if row[1] == Task.Status.LOCKED]
    ids = ",".join(str(int(row[0])) for row in picked)
    tokens = {row[0]: lock_token(params["tokens"], n) for n, row in enumerate(picked)}
    sql = SQLITE_CLAIM_SQL.format(ids=ids, claimable=where)
    sql_params = {**params, "tokens": json.dumps(tokens)}
    claimed: list[Task] | list[ClaimedRow]
    if rows:
        claimed = _sqlite_rows(sql, sql_params, stage=stage, until=until)
    else:
        claimed = sorted(Task.objects.raw(sql, sql_params), key=lambda t: (-t.priority, t.pk))  # CLAIM_ORDER
    if taken_over:  # as PG_CLAIM_SQL's `expired`: the previous holder's claim ends here
        TaskEvent.objects.bulk_create(
            TaskEvent(
                task_id=task_id,
                kind=TaskEvent.Kind.LOCK_EXPIRED,
                at=now,
                actor=params["worker_id"],
                details=lock_expired_details(
                    attempt=attempts,
                    worker=locked_by,
                    claimed_at=_sqlite_datetime(locked_at) if locked_at is not None else None,
                    reclaimed_from=reclaimed_from,
                    now="reclaimed",
                ),
            )
            for task_id, locked_by, locked_at, attempts, reclaimed_from in taken_over
        )
    return claimed


def _sqlite_rows(sql: str, params: dict[str, Any], *, stage: Stage, until: datetime) -> list[ClaimedRow]:
    """ClaimedRows from SQLite's RETURNING * (JSON as text, timestamps as naive UTC text)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [d[0] for d in cursor.description]
        fetched = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    out = [
        ClaimedRow(
            id=r["id"],
            stage_id=r["stage_id"],
            type=r["type"],
            payload=json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"],
            attempts=r["attempts"],
            lock_token=r["lock_token"],
            locked_by=r["locked_by"],
            locked_until=until,
            created_at=_sqlite_datetime(r["created_at"]),
            parent_id=r["parent_id"],
            stage=stage,
            priority=r["priority"],
            cancel_requested=bool(r["cancel_requested"]),
        )
        for r in fetched
    ]
    return sorted(out, key=lambda r: (-r.priority, r.id))  # CLAIM_ORDER


def _sqlite_datetime(value: Any) -> datetime:
    """A DateTimeField value as SQLite's backend stores it (naive text in the connection's time zone), read back."""
    parsed = value if isinstance(value, datetime) else parse_datetime(value)
    if parsed is None:
        raise ValueError(f"not a timestamp: {value!r}")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, connection.timezone)


def pg_claimed_rows(cursor: Any, params: dict[str, Any], *, stage: Stage, until: datetime) -> list[ClaimedRow]:
    """ClaimedRows from a cursor that ran PG_CLAIM_SQL with `params` (services.pipeline sends it pipelined)."""
    return _pg_rows(cursor, params, stage=stage, until=until)
