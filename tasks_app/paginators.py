"""A paginator for big tables that never counts them: the admin's task changelist.

Django's admin paginator runs `SELECT COUNT(*)` over the filtered changelist on
every page view, which on a table of millions of tasks reads all of it (4.8 s at
200,000 tasks). This one counts at most CAP rows (a LIMITed subquery: it stops
after CAP + 1 index entries); beyond that it takes PostgreSQL's planner
estimate for the query (EXPLAIN, no rows read) and says it is an estimate.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet

CAP = 10_000  # rows counted exactly; above it, an estimate


def planner_rows(queryset: QuerySet[Any]) -> int | None:
    """PostgreSQL's estimate of the rows `queryset` returns (EXPLAIN: planned, not run); None elsewhere."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    sql, params = queryset.order_by().query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedCountPaginator(Paginator):
    """Counts up to `cap` rows exactly; above that, the planner's estimate (`estimated` is then True).

    On PostgreSQL an estimate above the cap is taken as it is (no rows are read at all); otherwise the
    capped count decides. Elsewhere (SQLite) a count above the cap shows as cap + 1, "about".
    """

    cap = CAP

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.estimated = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return len(queryset)
        estimate = planner_rows(queryset)
        if estimate is not None and estimate > self.cap:
            self.estimated = True
            return estimate
        # A LIMITed subquery: COUNT(*) over at most cap + 1 ids, never over the table.
        counted = queryset.order_by().values("pk")[: self.cap + 1].count()
        if counted > self.cap:
            self.estimated = True
            return max(estimate or 0, counted)
        return counted
