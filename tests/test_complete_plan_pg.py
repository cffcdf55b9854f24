"""Completion and the lock-holder check reach their rows by primary key, whatever the statistics say.

With the status check usable as an index condition, the planner picked its path
from how rare `locked` looked: with few locked rows in fresh statistics it walked
task_lock_expiry_idx over every locked row, with statistics that saw none (all
completed, or an emptied table) task_status_stage_idx; in production it was also
task_claim_idx over a stage's pending rows. All grow with the backlog.
These tests seed a backlog of 20,000 pending and locked tasks at four stages,
give the planner fresh or stale statistics, and look at the plans (EXPLAIN,
nothing runs) of the completion statement, as the server plans it for these
values (custom) and as a prepared statement may plan it for any (generic), and
of an UPDATE over `_held()`'s clause (the heartbeat's and the sending
completion's statement).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services.complete import PG_COMPLETE_SQL, Completion, _held, tasks_complete_batch
from tests.support.plans import explain, explain_generic

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

TASK = Task._meta.db_table
BACKLOG = 20_000
STAGES = 4
HANDFUL = 5  # locked tasks completed (or extended) at once

# STATUS_EXPR is a SQL expression of i: the share of locked rows is the scenario's.
SEED_SQL = f"""
INSERT INTO {TASK} (stage_id, type, payload, status, created_at, updated_at, available_at, attempts,
                    lock_token, locked_by, locked_at, locked_until, completed_at, last_error)
SELECT (%(stages)s::bigint[])[1 + i %% {STAGES}], 'order', '{{}}'::jsonb, s.status,
       %(now)s, %(now)s, %(now)s, 1,
       CASE WHEN s.status = 'locked' THEN md5(i::text) ELSE '' END,
       CASE WHEN s.status = 'locked' THEN 'w1' ELSE '' END,
       CASE WHEN s.status = 'locked' THEN %(now)s END,
       CASE WHEN s.status = 'locked' THEN %(now)s::timestamptz + interval '5 minutes' END,
       CASE WHEN s.status = 'completed' THEN %(now)s END,
       ''
FROM generate_series(1, %(n)s) AS i, LATERAL (SELECT STATUS_EXPR AS status) AS s
"""
ONE_IN_201_LOCKED = "CASE WHEN i %% 201 = 0 THEN 'locked' ELSE 'pending' END"

# Turn the rows seeded as `status` into the fresh backlog's mix (one in 201 locked), in place.
RESHAPE_SQL = f"""
UPDATE {TASK} SET
    status = CASE WHEN mod(id, 201) = 0 THEN 'locked' ELSE 'pending' END,
    lock_token = CASE WHEN mod(id, 201) = 0 THEN md5(id::text) ELSE '' END,
    locked_by = CASE WHEN mod(id, 201) = 0 THEN 'w1' ELSE '' END,
    locked_at = CASE WHEN mod(id, 201) = 0 THEN updated_at END,
    locked_until = CASE WHEN mod(id, 201) = 0 THEN updated_at + interval '5 minutes' END,
    completed_at = NULL
"""


def seed(stages: list[Stage], status: str) -> None:
    with connection.cursor() as cur:
        cur.execute(
            SEED_SQL.replace("STATUS_EXPR", status),
            {"stages": [s.pk for s in stages], "now": timezone.now(), "n": BACKLOG},
        )


def analyze() -> None:
    with connection.cursor() as cur:
        cur.execute(f"ANALYZE {TASK}")


def fresh() -> None:
    """Statistics taken of the backlog as it is: most tasks pending, one in 201 locked."""
    stages = make_stages()
    seed(stages, ONE_IN_201_LOCKED)
    analyze()


def stale_all_completed() -> None:
    """Statistics taken when every task was completed (locked looks absent), then the backlog arrived."""
    stages = make_stages()
    seed(stages, "'completed'")
    analyze()
    with connection.cursor() as cur:
        cur.execute(RESHAPE_SQL)


def stale_all_locked() -> None:
    """Statistics taken when every task was locked (locked looks like the whole table), then most went pending."""
    stages = make_stages()
    seed(stages, "'locked'")
    analyze()
    with connection.cursor() as cur:
        cur.execute(RESHAPE_SQL)


def analyzed_empty() -> None:
    """Statistics taken when the table held no live row (as after a prune), then the backlog arrived.

    The table keeps its pages (here: of rows deleted), so the planner scales "no rows per page"
    to the table's size: it expects next to no rows at all, whatever their status.
    """
    stages = make_stages()
    seed(stages, "'completed'")
    with connection.cursor() as cur:
        cur.execute(f"DELETE FROM {TASK}")
    analyze()
    seed(stages, ONE_IN_201_LOCKED)


SCENARIOS = [fresh, stale_all_completed, stale_all_locked, analyzed_empty]


def make_stages() -> list[Stage]:
    return [
        Stage.objects.create(slug=f"plan-{n}", name=f"Plan {n}", handler="tests.handlers.noop") for n in range(STAGES)
    ]


def locked_handful() -> list[tuple[int, str]]:
    """(id, token) of a few locked tasks of one stage, as a worker that claimed them holds them."""
    stage = Stage.objects.get(slug="plan-1")
    rows = Task.objects.filter(stage=stage, status=Task.Status.LOCKED).order_by("id")
    return list(rows.values_list("id", "lock_token")[:HANDFUL])


# -- reading plans ----------------------------------------------------------------------


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def task_indexes() -> tuple[str, set[str]]:
    """The task table's primary key index and all its other indexes."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname, i.indisprimary FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = %s::regclass",
            [TASK],
        )
        rows = cur.fetchall()
    [pkey] = [name for name, primary in rows if primary]
    return pkey, {name for name, primary in rows if not primary}


def by_primary_key(plan: dict[str, Any]) -> list[str]:
    """What in `plan` reaches the task table other than by a primary-key lookup (empty: nothing)."""
    pkey, others = task_indexes()
    wrong = []
    for node in nodes(plan):
        kind, index = node["Node Type"], node.get("Index Name")
        if index in others:
            wrong.append(f"{kind} using {index}")
        elif index == pkey and "Index Cond" not in node:
            wrong.append(f"{kind} over the whole {pkey}")  # a full walk of the key is no lookup
        elif node.get("Relation Name") == TASK and kind not in (
            "ModifyTable",
            "Index Scan",
            "Index Only Scan",
            "Bitmap Heap Scan",  # fed by a Bitmap Index Scan, checked above
        ):
            wrong.append(f"{kind} on {TASK}")
    return wrong


# -- the tests --------------------------------------------------------------------------


def complete_params(items: list[tuple[int, str]]) -> dict[str, Any]:
    return {"now": timezone.now(), "ids": [i for i, _ in items], "tokens": [t for _, t in items]}


def held_update(items: list[tuple[int, str]]) -> tuple[str, list[Any]]:
    """An UPDATE over _held()'s clause, shaped like the heartbeat's (tasks_extend_locks) and a sending completion's."""
    where, params = _held(items)
    now = timezone.now()
    sql = f"UPDATE {TASK} SET locked_until = %s, updated_at = %s WHERE {where} RETURNING id"
    return sql, [now + timedelta(minutes=5), now, *params]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.__name__)
def test_completion_and_held_reach_their_rows_by_primary_key(scenario: Callable[[], None]) -> None:
    scenario()
    held = locked_handful()
    assert len(held) == HANDFUL
    plans = {
        "completion": explain(PG_COMPLETE_SQL, complete_params(held)),
        "prepared completion (generic plan)": explain_generic(PG_COMPLETE_SQL, complete_params(held)),
        "_held() update": explain(*held_update(held)),
    }
    wrong = {name: by_primary_key(plan) for name, plan in plans.items()}
    assert wrong == dict.fromkeys(plans, []), f"{wrong}\n{json.dumps(plans, indent=1)}"


def test_the_plans_are_read_as_they_should_be() -> None:
    """by_primary_key itself: it names a walk over another index and a sequential scan."""
    stages = make_stages()
    seed(stages, ONE_IN_201_LOCKED)
    analyze()
    pkey, others = task_indexes()
    assert "task_claim_idx" in others and pkey.endswith("_pkey")
    locked = explain(f"SELECT id FROM {TASK} WHERE stage_id = %s AND status = 'locked'", [stages[0].pk])
    locked_walk = by_primary_key(locked)
    assert locked_walk and all(any(index in w for index in others) for w in locked_walk), locked_walk
    assert by_primary_key(explain(f"SELECT * FROM {TASK} WHERE payload = '{{}}'", [])) == [f"Seq Scan on {TASK}"]
    assert by_primary_key(explain(f"SELECT * FROM {TASK} WHERE id = %s", [1])) == []


def test_a_task_listed_twice_completes_if_either_token_is_its_own() -> None:
    """The one-statement completion looks a row's token up by the first place of its id: a batch
    naming a task twice (bulk-complete accepts that) goes the general way, which checks every pair."""
    [stage] = make_stages()[:1]
    seed([stage] * STAGES, ONE_IN_201_LOCKED)
    (task_id, token), (other_id, other_token) = Task.objects.filter(status=Task.Status.LOCKED).values_list(
        "id", "lock_token"
    )[:2]
    result = tasks_complete_batch(
        items=[Completion(task_id, "not-its-token"), Completion(task_id, token), Completion(other_id, other_token)]
    )
    assert sorted(result.completed) == sorted([task_id, other_id]) and result.lost == []
    assert Task.objects.get(pk=task_id).status == Task.Status.COMPLETED
    assert TaskEvent.objects.filter(task_id=task_id, kind=TaskEvent.Kind.COMPLETED).count() == 1
