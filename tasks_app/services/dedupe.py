"""Inserting arriving tasks, folding a duplicate arrival into the live task with its dedupe key (issue 15).

Every way a task arrives (routing: create, bulk, send; complete: a completion's
successors; operator: duplicate) inserts through tasks_insert. Tasks without a
key take plain bulk_create, as before. When any has a key (its stage's
`dedupe_on`, tasks_app.dedupe_keys), the rows go in with

    INSERT ... ON CONFLICT (stage_id, dedupe_key) WHERE <task_dedupe_live's predicate> DO NOTHING RETURNING ...

so a row whose (stage, key) is held by a pending or locked task is skipped by
the unique partial index task_dedupe_live itself, not by a read that races.
Each skipped row is then looked up among the live tasks. Race: between the two
statements the live task may end (complete, fail, cancel) and another arrival
may take the key; a skipped row found nowhere is inserted again, in a loop,
until each row is either inserted or resolved to a live task. On PostgreSQL an
INSERT that meets an uncommitted conflicting row waits for its transaction, so
a concurrent arrival of the same key is either the one inserted or sees it
(tests/test_dedupe_race_pg.py runs them in parallel processes).

Duplicates inside one batch (two sends of one completion, two bulk items)
collapse to the first before the INSERT. Each deduplicated arrival writes a
`deduplicated` event on the live task it was folded into (who, how, the
type); the caller writes `created` only for the rows actually inserted.
The tasks actually inserted get their notification outbox rows here too
(services.notifications), in the same transaction, and their assignee from
the stage's assignee_from with its `assigned` event (services.assign).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Q, Value
from django.db.models.expressions import DatabaseDefault

from tasks_app.dedupe_keys import dedupe_key
from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services.assign import arrival_assign, arrival_events
from tasks_app.services.errors import TaskStateError
from tasks_app.services.notifications import outbox_write

TASK = connection.ops.quote_name(Task._meta.db_table)
# task_dedupe_live's predicate, as Django writes it in the index: ON CONFLICT must name it to infer the index.
LIVE_KEYED = "\"status\" IN ('pending', 'locked') AND NOT (\"dedupe_key\" = '')"
# Rows per INSERT: SQLite takes at most 32,766 parameters per statement, and a task row has ~25 columns.
CHUNK = 500
# Rounds of insert-then-look-up before giving up (each round means the live task ended in between).
MAX_ROUNDS = 50

_COLUMNS = [f for f in Task._meta.concrete_fields if not f.primary_key]


class DedupeConflict(TaskStateError):
    """A person's action would make a task live next to a live task with its dedupe key: refused, nothing changed."""


def key_for(stage: Stage, payload: dict[str, Any]) -> str:
    """The dedupe key of `payload` arriving at `stage` ('' : the stage dedupes nothing, or a pointer is missing)."""
    return dedupe_key(stage.dedupe_on, payload)


def _insert(rows: Sequence[Task]) -> dict[int, int]:
    """INSERT the rows, skipping those whose (stage, key) a live task holds; {index in rows: new id}."""
    names = ", ".join(connection.ops.quote_name(f.column) for f in _COLUMNS)
    inserted: dict[int, int] = {}
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        params: list[Any] = []
        for task in chunk:
            for f in _COLUMNS:
                value = f.pre_save(task, True)
                if isinstance(value, DatabaseDefault):  # a field with db_default only: its value
                    value = f.db_default.value if isinstance(f.db_default, Value) else f.get_default()
                params.append(f.get_db_prep_save(value, connection))
        one = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
        sql = (
            f"INSERT INTO {TASK} ({names}) VALUES {', '.join([one] * len(chunk))}"
            f" ON CONFLICT (stage_id, dedupe_key) WHERE {LIVE_KEYED} DO NOTHING"
            " RETURNING id, stage_id, dedupe_key"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            returned = cursor.fetchall()
        # Keyed rows are matched by their (stage, key), unique in the chunk; rows without a key (never
        # skipped) by their order, as Django's bulk_create matches RETURNING rows.
        by_key = {(stage_id, key): pk for pk, stage_id, key in returned if key}
        plain = iter(pk for pk, _, key in returned if not key)
        for offset, task in enumerate(chunk):
            pk = by_key.get((task.stage_id, task.dedupe_key)) if task.dedupe_key else next(plain)
            if pk is not None:
                inserted[start + offset] = pk
    return inserted


def _live(keys: set[tuple[int, str]]) -> dict[tuple[int, str], Task]:
    """The live tasks holding these (stage, key) pairs."""
    by_stage: dict[int, list[str]] = {}
    for stage_id, key in keys:
        by_stage.setdefault(stage_id, []).append(key)
    where = Q()
    for stage_id, stage_keys in by_stage.items():
        where |= Q(stage_id=stage_id, dedupe_key__in=stage_keys)
    found = Task.objects.filter(where, status__in=[Task.Status.PENDING, Task.Status.LOCKED]).exclude(dedupe_key="")
    return {(t.stage_id, t.dedupe_key): t for t in found}


def tasks_insert(tasks: Sequence[Task]) -> list[Task]:
    """Insert unsaved tasks (each with its dedupe_key set, '' for none), inside the caller's transaction.

    Returns one task per input, in order: the input itself, now saved, or, for a duplicate arrival, an
    instance of the live task it was folded into with `deduplicated = True`. The caller writes `created`
    for the first kind and deduplicated_events for the second, in that order.
    """
    assert connection.in_atomic_block, "arrivals are inserted with the change that makes them"
    arrival_assign(tasks)  # assign (issue 16): the stage's assignee_from, so the rows go in assigned
    if not any(t.dedupe_key for t in tasks):
        Task.objects.bulk_create(tasks)
        arrival_events(tasks)
        outbox_write(tasks)  # notify on arrival (issue 16): the outbox rows go in with the tasks
        return list(tasks)
    firsts: dict[tuple[int, str], int] = {}  # (stage, key) -> index of its first arrival in this batch
    heads: list[int] = []  # indexes of the rows to insert: no key, or the first of their key
    for i, task in enumerate(tasks):
        if not task.dedupe_key:
            heads.append(i)
        elif (task.stage_id, task.dedupe_key) not in firsts:
            firsts[(task.stage_id, task.dedupe_key)] = i
            heads.append(i)
    result: dict[int, Task] = {}
    todo = heads
    for _ in range(MAX_ROUNDS):
        inserted = _insert([tasks[i] for i in todo])
        for n, i in enumerate(todo):
            if n in inserted:
                tasks[i].pk = inserted[n]
                tasks[i]._state.adding = False
                tasks[i]._state.db = connection.alias
                result[i] = tasks[i]
        skipped = [i for n, i in enumerate(todo) if n not in inserted]
        if not skipped:
            break
        live = _live({(tasks[i].stage_id, tasks[i].dedupe_key) for i in skipped})
        for i in skipped:
            found = live.get((tasks[i].stage_id, tasks[i].dedupe_key))
            if found is not None:
                found.deduplicated = True
                result[i] = found
        todo = [i for i in skipped if i not in result]  # the live task ended in between: insert again
        if not todo:
            break
    else:
        raise RuntimeError(f"dedupe: could not settle {len(todo)} arrivals in {MAX_ROUNDS} rounds")
    out: list[Task] = []
    for i, task in enumerate(tasks):
        if i in result:
            out.append(result[i])
        else:  # a later duplicate inside the batch: the task its first arrival became
            got = copy.copy(result[firsts[(task.stage_id, task.dedupe_key)]])
            got.deduplicated = True
            out.append(got)
    arrival_events(out)
    outbox_write([t for t in out if not t.deduplicated])  # only the tasks created: a duplicate tells nobody
    return out


def deduplicated_events(
    arrivals: Sequence[Task],
    arrived: Sequence[Task],
    *,
    actor: str | Sequence[str],
    now: datetime,
    via: str,
    details: Sequence[dict[str, Any]] | None = None,
) -> list[TaskEvent]:
    """The `deduplicated` events (unsaved) of tasks_insert(arrivals) == arrived: one on the live task per
    duplicate arrival, saying how it came (`via`), its type, whether its payload was the same, and `details[i]`;
    actor `actor` (or `actor[i]`)."""
    return [
        TaskEvent(
            task_id=got.pk,
            kind=TaskEvent.Kind.DEDUPLICATED,
            at=now,
            actor=actor if isinstance(actor, str) else actor[i],
            details={
                "via": via,
                "type": new.type,
                "same_payload": new.payload == got.payload,
                **(details[i] if details is not None else {}),
            },
        )
        for i, (new, got) in enumerate(zip(arrivals, arrived, strict=True))
        if got.deduplicated
    ]
