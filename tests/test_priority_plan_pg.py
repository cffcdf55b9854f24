"""The claim with priorities stays one index scan of task_claim_idx at a million tasks (issue 15).

task_claim_idx's keys are (stage_id, priority DESC, id), the claim's order after
its stage: the picked CTE reads the first claimable entries of its stage in
that order and stops (Limit over LockRows over an Index Scan), never a sort of
the backlog, whatever the mix of priorities. Seeded with generate_series: a
million tasks at three stages, 92 % finished (the shape of a long-lived
table), priorities -10..10 spread over every status; then fresh statistics
(the indexes no claim could use are dropped first, to seed in time).
Checked as the server plans the statement for these values (custom) and as a
prepared statement may plan it for any (generic: the claim is prepared,
services.pg), and run once under EXPLAIN ANALYZE: the buffers it touched are
a handful, not a share of the backlog (a count, not a time).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from tasks_app.models import Stage, Task
from tasks_app.services.claim import PG_CLAIM_SQL, claim_params
from tests.support.plans import explain, explain_generic

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TASK = Task._meta.db_table
ROWS = 1_000_000

SEED_SQL = f"""
INSERT INTO {TASK} (stage_id, type, payload, status, priority, created_at, updated_at, available_at, attempts,
                    lock_token, locked_by, locked_at, locked_until, completed_at, last_error)
SELECT (%(stages)s::bigint[])[1 + i %% 3], 'order', '{{}}'::jsonb, s.status,
       (i::bigint * 7919 %% 21 - 10)::integer,
       %(then)s, %(then)s, %(then)s, CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END,
       CASE WHEN s.status = 'locked' THEN md5(i::text) ELSE '' END,
       CASE WHEN s.status = 'locked' THEN 'w1' ELSE '' END,
       CASE WHEN s.status = 'locked' THEN %(then)s END,
       CASE WHEN s.status = 'locked' THEN %(now)s::timestamptz + interval '1 hour' END,
       CASE WHEN s.status = 'completed' THEN %(then)s END,
       ''
FROM generate_series(1, %(n)s) AS i,
     LATERAL (SELECT CASE WHEN i %% 100 < 6 THEN 'pending' WHEN i %% 100 < 8 THEN 'locked'
                          ELSE 'completed' END AS status) AS s
"""


# Indexes no claim can use (nothing in the claim's WHERE or ORDER BY is in them), dropped for the seed
# so that a million inserts fit the test's time; the seed's transaction rolls the drop back. The ones
# a planner could pick instead of task_claim_idx stay: the primary key (id order) and stage_id's.
UNUSABLE = ["task_type_idx", "task_created_idx", "task_finished_updated_idx", "task_completed_at_idx"]


@pytest.fixture
def stages() -> Iterator[list[Stage]]:
    """The seeded stages, inside a transaction rolled back at the end (the test itself runs outside one).

    Why not the usual test transaction: a rolled-back million rows stay in the table's file as dead
    rows, and ANALYZE writes pg_class.reltuples in place, so every later test on this database would
    plan against a big bloated table. A transactional test ends with Django's flush, a TRUNCATE: a new,
    empty file and no statistics.
    """
    block = transaction.atomic()
    block.__enter__()
    try:
        stages = [Stage.objects.create(slug=f"prio-{n}", name=f"Prio {n}") for n in range(3)]
        now = timezone.now()
        with connection.cursor() as cur:
            for name in UNUSABLE:
                cur.execute(f"DROP INDEX {name}")
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if cur.fetchone()[0]:
                # No foreign-key trigger per row (the rows name the three stages above): their checks took
                # ~10 s. Superuser only; SET LOCAL ends with the transaction.
                cur.execute("SET LOCAL session_replication_role = replica")
            cur.execute(
                SEED_SQL, {"stages": [s.pk for s in stages], "now": now, "then": now - timedelta(days=1), "n": ROWS}
            )
            cur.execute("SET LOCAL session_replication_role = origin")
            cur.execute(f"ANALYZE {TASK}")
        yield stages
    finally:
        transaction.set_rollback(True)
        block.__exit__(None, None, None)


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def picked(plan: dict[str, Any]) -> dict[str, Any]:
    """The CTE that chooses the claimed rows."""
    (node,) = [n for n in nodes(plan) if n.get("Subplan Name") == "CTE picked"]
    return node


def shape(node: dict[str, Any]) -> list[str]:
    return [f"{n['Node Type']}:{n.get('Index Name', '')}" for n in nodes(node)]


def test_the_claim_with_mixed_priorities_is_one_index_scan_at_a_million_tasks(stages: list[Stage]) -> None:
    stage = stages[1]
    now = timezone.now()
    params = claim_params(stage=stage, worker_id="explainer", limit=100, now=now, until=now + timedelta(minutes=1))
    for name, plan in [("custom", explain(PG_CLAIM_SQL, params)), ("generic", explain_generic(PG_CLAIM_SQL, params))]:
        assert shape(picked(plan)) == ["Limit:", "LockRows:", "Index Scan:task_claim_idx"], (name, plan)

    # Run once: the first 100 in the claim's order, read through a handful of index and heap pages.
    ran = explain(PG_CLAIM_SQL, params, "ANALYZE, BUFFERS, FORMAT JSON")
    scan = picked(ran)
    buffers = scan["Shared Hit Blocks"] + scan["Shared Read Blocks"]
    assert scan["Actual Rows"] == 100
    assert buffers < 400, scan  # ~26,700 claimable rows at this stage; reading them would take thousands
    claimed = list(
        Task.objects.filter(stage=stage, locked_by="explainer")
        .order_by("-priority", "id")
        .values_list("priority", "id")
    )
    best = list(  # the first still claimable
        Task.objects.filter(stage=stage, status=Task.Status.PENDING, available_at__lte=now)
        .exclude(locked_by="explainer")
        .order_by("-priority", "id")
        .values_list("priority", "id")[:1]
    )
    assert len(claimed) == 100 and {p for p, _ in claimed} == {10}  # the top priority first
    (p, i), (last_p, last_i) = best[0], claimed[-1]
    assert (-p, i) > (-last_p, last_i)  # nothing left ahead of the last one claimed
