"""Every sort of the task list reads a page from an index and stops, on its first, next and previous pages.

Seeds 30,000 tasks shaped like a long-lived installation's (mostly completed, a
few percent failed, a live backlog at the newest end) with one INSERT ... SELECT
generate_series, takes fresh statistics, then runs each page as the list runs
it (selectors.tasks.keyset_page, every statement captured and replayed with the
settings it made) under EXPLAIN ANALYZE, for each sort with no filter, one
status (completed, failed, pending, locked) and one stage. A plan passes when
no statement scans the table whole and none reads more than a tenth of it
except through a partial index of live or failed tasks (a top-N over the
backlog, or over the failed tasks): a page, not the filtered set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app.models import Stage, Task
from tasks_app.selectors.tasks import SORTS, decode_cursor, keyset_page, task_search

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

TASK = Task._meta.db_table
N = 30_000
READ_BOUND = N // 10  # rows a page may read from the table (a whole-set sort reads them all)
SMALL = {"task_claim_idx", "task_locked_idx", "task_failed_idx"}  # partial: the backlog, the failed

# 90% completed, 3% failed, 5% pending and 2% locked (the live ones the newest 7%), five stages; tasks
# are created (and finished) five at a time, so the id breaks ties of the sorts by time.
SEED_SQL = f"""
INSERT INTO {TASK} (id, stage_id, type, payload, status, created_at, updated_at, available_at, attempts,
                    lock_token, locked_by, locked_at, locked_until, completed_at, last_error)
SELECT i, (%(stages)s::bigint[])[1 + i %% 5], 'order', jsonb_build_object('order_id', i), s.status,
       c.at, c.at + CASE WHEN s.status IN ('completed', 'failed') THEN interval '2 seconds' ELSE interval '0' END,
       c.at, 1,
       CASE WHEN s.status = 'locked' THEN md5(i::text) ELSE '' END,
       CASE WHEN s.status = 'locked' THEN 'w1' ELSE '' END,
       CASE WHEN s.status = 'locked' THEN c.at END,
       CASE WHEN s.status = 'locked' THEN %(now)s::timestamptz + interval '5 minutes' END,
       CASE WHEN s.status = 'completed' THEN c.at + interval '2 seconds' END,
       CASE WHEN s.status = 'failed' THEN 'boom' ELSE '' END
FROM generate_series(1, %(n)s) AS i,
     LATERAL (SELECT %(now)s::timestamptz - (%(n)s - i / 5 * 5) * interval '86 seconds' AS at) AS c,
     LATERAL (SELECT CASE WHEN i > %(n)s * 0.93 AND i %% 10 < 7 THEN 'pending'
                          WHEN i > %(n)s * 0.93 THEN 'locked'
                          WHEN i %% 100 < 3 THEN 'failed' ELSE 'completed' END AS status) AS s
"""


@pytest.fixture
def seeded() -> list[Stage]:
    stages = [Stage.objects.create(slug=f"busy-{n}", name=f"Busy {n}") for n in range(5)]
    with connection.cursor() as cur:
        cur.execute(SEED_SQL, {"stages": [s.pk for s in stages], "now": timezone.now(), "n": N})
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{TASK}', 'id'), %s)", [N])
        # Earlier tests' dead index entries (their rows are gone, their index entries not yet vacuumed)
        # can sway the planner off the sort indexes (seen after the race tests of issue 15): rebuild first.
        cur.execute(f"REINDEX TABLE {TASK}")
        cur.execute(f"ANALYZE {TASK}")
    return stages


def nodes(plan: dict[str, Any], under_sort: bool = False) -> Iterator[tuple[dict[str, Any], bool]]:
    yield plan, under_sort
    sorting = under_sort or plan["Node Type"] in ("Sort", "Incremental Sort")
    for child in plan.get("Plans", []):
        yield from nodes(child, sorting)


def faults(sql: str) -> list[str]:
    """What in the statement's plan reads more than a page (empty: nothing)."""
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
        [(doc,)] = cur.fetchall()
    plan = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    wrong = []
    for node, under_sort in nodes(plan):
        if node.get("Relation Name") != TASK:
            continue
        kind = node["Node Type"]
        # A bitmap heap scan is fed by bitmap index scans below it, which name the indexes.
        used = {n.get("Index Name") for n, _ in nodes(node)} - {None}
        read = (
            node["Actual Rows"] + node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
        )
        where = f"{kind} of {', '.join(sorted(used)) or TASK}{' under a sort' if under_sort else ''}"
        if kind == "Seq Scan":
            wrong.append(f"a Seq Scan of {TASK}")
        elif read > READ_BOUND and not used <= SMALL:
            wrong.append(f"{where} read {read} rows")
    return wrong


def replay(statements: list[str]) -> list[str]:
    """The faults of each query among a page's statements, under the settings the page set (SET LOCAL)."""
    found: list[str] = []
    with transaction.atomic():
        for sql in statements:
            if sql.startswith("SET "):
                with connection.cursor() as cur:
                    cur.execute(sql)
            elif sql.startswith("SELECT "):  # not the savepoints around a SET
                found += faults(sql)
    return found


def page_statements(query: str, cursor: str = "") -> tuple[list[str], Any]:
    """The statements one list page runs (as sent to the server), and the page."""
    params = QueryDict(query)
    sort = params.get("sort", "-id")
    search = task_search(params)
    assert not search.errors
    with CaptureQueriesContext(connection) as captured:
        page = keyset_page(search.qs, sort, decode_cursor(sort, cursor), search.statuses)
    return [q["sql"] for q in captured.captured_queries], page


def test_every_sort_reads_a_page_from_an_index_on_first_next_and_previous_pages(seeded: list[Stage]) -> None:
    filters = ["", "status=completed", "status=failed", "status=pending", "status=locked", f"stage={seeded[0].slug}"]
    wrong: dict[str, list[str]] = {}
    for sort in SORTS:
        for extra in filters:
            query = "&".join(p for p in (f"sort={sort}", extra) if p)
            statements, first = page_statements(query)
            assert len(first.tasks) == 50 and first.next_cursor, query
            steps = [("first", statements)]
            statements, second = page_statements(query, first.next_cursor)
            steps.append(("next", statements))
            assert second.previous_cursor, query
            statements, back = page_statements(query, second.previous_cursor)
            steps.append(("previous", statements))
            # The pages are the rows in order, the previous page is the first again.
            assert [t.pk for t in back.tasks] == [t.pk for t in first.tasks], query
            assert not {t.pk for t in first.tasks} & {t.pk for t in second.tasks}, query
            for step, sqls in steps:
                found = replay(sqls)
                if found:
                    wrong[f"{query}, {step} page"] = found
    assert wrong == {}
