"""The task table's indexes are the audited set, and each named query walks the index it is kept for.

docs/scaling.md ("Indexes of the task table") names, for every index, the
queries that need it; Task.Meta.indexes says the same next to each one. Every
claim and completion writes an entry into each full index (neither can be a
HOT update), so an index that no query needs is pure cost: the first test
fails when one is added or dropped without the audit, the second seeds a
table shaped like a long-lived installation's (mostly completed, a few percent
failed, a live backlog, a stage and a type with only a handful of tasks) and
checks, with fresh statistics, that each query's plan uses its index.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, F
from django.db.models.functions import Coalesce
from django.http import QueryDict
from django.utils import timezone

from tasks_app.models import Stage, Task
from tasks_app.selectors.tasks import SORTS, filtered_tasks
from tasks_app.services.retention import PERIODIC_BATCH

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

TASK = Task._meta.db_table

# name -> (columns, partial-index predicate as pg_get_expr prints it, or None)
AUDITED = {
    "tasks_app_task_pkey": (["id"], None),
    # Keys stage_id, priority DESC, id; INCLUDE status, attempts, created_at (the overview's live counts, index-only).
    "task_claim_idx": (["stage_id", "priority", "id", "status", "attempts", "created_at"],
                       "((status)::text = ANY ((ARRAY['pending'::character varying, "
                       "'locked'::character varying])::text[]))"),
    "task_locked_idx": (["id"], "((status)::text = 'locked'::text)"),
    "task_failed_idx": (["id"], "((status)::text = 'failed'::text)"),
    "tasks_app_task_stage_id_a493173f": (["stage_id"], None),
    "task_type_idx": (["type"], None),
    "task_created_idx": (["created_at"], None),
    "task_finished_updated_idx": (["updated_at", "id"], "((status)::text = ANY ((ARRAY['completed'::character varying, "
                                                        "'failed'::character varying, "
                                                        "'cancelled'::character varying])::text[]))"),
    "task_live_updated_idx": (["updated_at", "id"], "((status)::text = ANY ((ARRAY['pending'::character varying, "
                                                    "'locked'::character varying])::text[]))"),
    "task_cancelled_idx": (["id"], "((status)::text = 'cancelled'::text)"),
    "task_completed_at_idx": (["completed_at"], "(completed_at IS NOT NULL)"),
    "task_parent_idx": (["parent_id"], "(parent_id IS NOT NULL)"),
    "task_source_stage_idx": (["source_stage_id"], "(source_stage_id IS NOT NULL)"),
    "task_idempotency_key_per_stage": (["stage_id", "idempotency_key"], "(NOT ((idempotency_key)::text = ''::text))"),
    # Dedupe (issue 15): one live task per (stage, key); tasks without a key have no entry.
    "task_dedupe_live": (["stage_id", "dedupe_key"], "(((status)::text = ANY ((ARRAY['pending'::character varying, "
                                                     "'locked'::character varying])::text[])) AND "
                                                     "(NOT ((dedupe_key)::text = ''::text)))"),
    # Assign (issue 16): a user's assigned tasks; unassigned tasks have no entry.
    "task_assignee_idx": (["assignee_id"], "(assignee_id IS NOT NULL)"),
}  # fmt: skip

STAGE_IDX = "tasks_app_task_stage_id_a493173f"  # Django's, on the foreign key

INDEXES_SQL = """
SELECT c.relname,
       array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n),
       pg_get_expr(i.indpred, i.indrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = %s::regclass
"""


def test_the_task_table_has_exactly_the_audited_indexes() -> None:
    with connection.cursor() as cur:
        cur.execute(INDEXES_SQL, [TASK])
        found = {name: (list(columns), predicate) for name, columns, predicate in cur.fetchall()}
    assert found == AUDITED


# A month of history at five busy stages plus the live part: ~90% completed, 3% failed, 5% pending, 2% locked
# (half of the locks expired); three in four tasks sent by an earlier task of the previous stage.
N = 30_000
SEED_SQL = f"""
INSERT INTO {TASK} (id, stage_id, type, payload, status, created_at, updated_at, available_at, attempts,
                    lock_token, locked_by, locked_at, locked_until, completed_at, last_error, parent_id,
                    source_stage_id)
SELECT i, (%(busy)s::bigint[])[1 + i %% 5], 'order', jsonb_build_object('order_id', i), s.status,
       c.at, c.at + interval '2 seconds', c.at, 1,
       CASE WHEN s.status = 'locked' THEN md5(i::text) ELSE '' END,
       CASE WHEN s.status = 'locked' THEN 'worker-' || i %% 8 ELSE '' END,
       CASE WHEN s.status = 'locked' THEN c.at END,
       CASE WHEN s.status = 'locked' THEN %(now)s::timestamptz + (i %% 2 * 2 - 1) * interval '5 minutes' END,
       CASE WHEN s.status = 'completed' THEN c.at + interval '2 seconds' END,
       CASE WHEN s.status = 'failed' THEN 'boom' ELSE '' END,
       CASE WHEN i %% 4 <> 0 AND i > 5 THEN i - 5 END,
       CASE WHEN i %% 4 <> 0 AND i > 5 THEN (%(busy)s::bigint[])[1 + (i - 5) %% 5] END
FROM generate_series(1, %(n)s) AS i,
     LATERAL (SELECT %(now)s::timestamptz - (%(n)s - i) * interval '86 seconds' AS at) AS c,
     LATERAL (SELECT CASE WHEN i > %(n)s * 0.93 AND i %% 10 < 7 THEN 'pending'
                          WHEN i > %(n)s * 0.93 AND i %% 10 < 9 THEN 'locked'
                          WHEN i %% 100 < 3 THEN 'failed' ELSE 'completed' END AS status) AS s
"""


def seed() -> tuple[list[Stage], Stage, int]:
    """The busy stages, a stage with three tasks (type "rare"), and a task with children."""
    busy = [Stage.objects.create(slug=f"busy-{n}", name=f"busy {n}") for n in range(5)]
    rare = Stage.objects.create(slug="rare", name="rare")
    now = timezone.now()
    with connection.cursor() as cur:
        cur.execute(SEED_SQL, {"busy": [s.pk for s in busy], "now": now, "n": N})
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{TASK}', 'id'), %s)", [N])
    Task.objects.bulk_create(
        Task(stage=rare, type="rare", payload={}, status="completed", completed_at=now) for _ in range(3)
    )
    with connection.cursor() as cur:
        cur.execute(f"REINDEX TABLE {TASK}")  # this data's plans, whatever earlier tests left behind
        cur.execute(f"ANALYZE {TASK}")
    return busy, rare, N - 100


def assigned_few() -> Any:
    """A user with a few live tasks assigned (My work's "Assigned to me": a handful among the table)."""
    user = get_user_model().objects.create_user("assignee")
    live = Task.objects.filter(status=Task.Status.PENDING).order_by("-id").values_list("id", flat=True)[:8]
    Task.objects.filter(pk__in=list(live)).update(assignee=user)
    with connection.cursor() as cur:
        cur.execute(f"ANALYZE {TASK}")
    return user


def indexes_in(sql: str, params: Any) -> set[str]:
    with connection.cursor() as cur:
        cur.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        raw = cur.fetchone()[0]
    plan = json.loads(raw) if isinstance(raw, str) else raw

    def walk(node: dict[str, Any]) -> Iterator[str]:
        if "Index Name" in node:
            yield node["Index Name"]
        for child in node.get("Plans", []):
            yield from walk(child)

    return set(walk(plan[0]["Plan"]))


def list_page(query: str) -> tuple[str, Any]:
    """The task list's first page for a query string (the list page's and the API's filters)."""
    _, qs, errors = filtered_tasks(QueryDict(query))
    assert not errors
    sort = QueryDict(query).get("sort", "-id")
    return qs.order_by(*SORTS[sort])[:51].query.sql_with_params()


def live_page(query: str) -> tuple[str, Any]:
    """A list page of live tasks as selectors.tasks._rows reads it: all of them through their partial index,
    then the top N (task_claim_idx's keys are (stage, priority DESC, id): not the list's id order)."""
    _, qs, errors = filtered_tasks(QueryDict(query))
    assert not errors
    return qs.order_by(Coalesce(F("id"), F("id")).desc())[:51].query.sql_with_params()


def test_each_audited_query_uses_its_index() -> None:
    busy, rare, parent = seed()
    assignee = assigned_few()
    now = timezone.now()
    cutoff = connection.ops.adapt_datetimefield_value(now - timedelta(days=7))
    expired = Task.objects.lock_expired(now).order_by("id").values_list("id", "stage__max_attempts")[:1000]
    throughput = (
        Task.objects.filter(completed_at__gte=now - timedelta(minutes=59), status=Task.Status.COMPLETED)
        .values_list("stage_id")
        .annotate(n=Count("id"))
    )
    queries: dict[str, tuple[str, tuple[str, Any]]] = {
        # services.lifecycle.tasks_expire_locks (its FOR UPDATE SKIP LOCKED left out: EXPLAIN needs no lock)
        "expiry sweep": ("task_locked_idx", expired.query.sql_with_params()),
        "list: status locked": ("task_locked_idx", list_page("status=locked")),
        "list: status failed": ("task_failed_idx", list_page("status=failed")),
        "list: stage + failed": ("task_failed_idx", list_page(f"stage={busy[0].slug}&status=failed")),
        "list: stage + pending": ("task_claim_idx", live_page(f"stage={busy[0].slug}&status=pending")),
        "list: a small stage": (STAGE_IDX, list_page(f"stage={rare.slug}")),
        "list: a rare type": ("task_type_idx", list_page("type=rare")),
        "list: sorted by created": ("task_created_idx", list_page("sort=-created_at")),
        "list: sent by a small stage": ("task_source_stage_idx", list_page(f"source_stage={rare.slug}")),
        "list: a task's children": ("task_parent_idx", list_page(f"parent={parent}")),
        # Assign (issue 16): the list's and the API's ?assignee=<username>, and deleting a user (SET_NULL).
        "list: assigned to a user": ("task_assignee_idx", list_page(f"assignee={assignee.username}")),
        "FK: deleting a user": (
            "task_assignee_idx",
            (f"UPDATE {TASK} SET assignee_id = NULL WHERE assignee_id IN (%s)", (assignee.pk,)),
        ),
        "overview throughput": ("task_completed_at_idx", throughput.query.sql_with_params()),
        # services.retention._select_batch, both statuses
        "retention: completed batch": (
            "task_completed_at_idx",
            (
                f"SELECT id FROM {TASK} WHERE status = %s AND completed_at < %s"
                " ORDER BY completed_at DESC, id DESC LIMIT %s",
                # The worker's batch: on this 30k-row table the command's 10,000 is half of what matches, and a
                # sequential scan plus a sort is then as cheap (CI's planner picked it once); in a real
                # installation's table 10,000 is the same small fraction 1,000 is here.
                ("completed", cutoff, PERIODIC_BATCH),
            ),
        ),
        "retention: failed batch": (
            "task_failed_idx",
            (
                f"SELECT id FROM {TASK} WHERE status = %s AND updated_at < %s ORDER BY id DESC LIMIT %s",
                ("failed", cutoff, 10_000),
            ),
        ),
        # Cancelled tasks (issue 15): as failed ones, through their own partial index.
        "list: status cancelled": ("task_cancelled_idx", list_page("status=cancelled")),
        "retention: cancelled batch": (
            "task_cancelled_idx",
            (
                f"SELECT id FROM {TASK} WHERE status = %s AND updated_at < %s ORDER BY id DESC LIMIT %s",
                ("cancelled", cutoff, 10_000),
            ),
        ),
        # The foreign keys' checks (as PostgreSQL's RI triggers query) when a task or a stage is deleted.
        "FK check: deleting a parent": (
            "task_parent_idx",
            (f"SELECT 1 FROM ONLY {TASK} x WHERE parent_id = %s FOR KEY SHARE OF x", (parent,)),
        ),
        "FK check: deleting a stage": (
            STAGE_IDX,
            (f"SELECT 1 FROM ONLY {TASK} x WHERE stage_id = %s FOR KEY SHARE OF x", (rare.pk,)),
        ),
    }
    wrong = {}
    for name, (index, (sql, params)) in queries.items():
        used = indexes_in(sql, params)
        if index not in used:
            wrong[name] = f"wants {index}, plan uses {sorted(used) or 'no index'}"
    assert wrong == {}
