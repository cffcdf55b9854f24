#!/usr/bin/env python3
"""Claim cost as the task table grows: 10,000 to 10,000,000 rows (PostgreSQL).

    python scripts/with_postgres.py -- python bench/claim_scaling.py
    python bench/claim_scaling.py --sizes 10000,1000000,10000000 --pages --controls   # DATABASE_URL=postgres://...

Creates its own database, loads the demo workflow plus two stages of its own
(`bench-claim`, where it claims, and `bench-idle`, which never has work), and
grows the task table size by size, in increasing order, with server-side
`INSERT ... SELECT ... FROM generate_series` (--chunk rows per statement):

- history: completed tasks (3% failed) spread evenly over the nine stages,
  typed by each stage's outgoing transitions, most successors of an earlier
  task at a source stage (parent and source stage set); each growth step
  spreads its rows over the last 30 days, so time-based queries see a table
  of N tasks made over a month at every size; each task gets a "created"
  event and a "completed" or "failed" one (--no-events: none);
- in flight, fixed whatever the size: at each demo stage 100 pending tasks
  (a quarter waiting for a retry) and 30 locked ones (half of the locks
  expired);
- the backlog: --backlog pending tasks at bench-claim (default 2,000: the
  smallest size, 10,000 rows, must hold it), topped up (untimed) whenever a
  series has claimed half of it, so every claim finds between half and all of
  it, at every size.

Foreign-key triggers are off while the history loads (session_replication_role
= replica: the rows reference only stages and earlier rows of the same
statement); the CHECK constraints still hold every row. A CHECKPOINT after
each chunk keeps pg_wal small. After each growth step: VACUUM ANALYZE. Then,
in a new session, with the engine's own code in this process (the prepared
claim and completion statements, as a worker runs them):

- EXPLAIN (ANALYZE, BUFFERS) of one claim of 1 and of 100 ("fresh": the claim
  index just vacuumed), with the plan the server picks for these parameters
  (custom) and with the plan a prepared statement may switch to after five
  runs (generic); each rolled back (its aborted row versions stay in the
  claim index, so the next EXPLAIN steps over them: compare the first ones);
- claim of 1 task (--samples times) and of 100 tasks (--samples-batch times),
  each followed by the completion of what it claimed (tasks_complete_batch,
  timed too), and an idle poll (a claim of 100 at bench-idle, which has
  history but nothing to claim); how many generic and custom plans the
  session's prepared claim used (pg_prepared_statements); how many times
  autovacuum ran on the task table meanwhile;
- the same EXPLAINs again ("after": the claim index now holds the dead
  entries of the claimed and completed tasks, as between two vacuums);
- with --controls (issue 15), claims of 1 and of 100 at stages with one flow
  control each (bench-prio: a backlog of mixed priorities; bench-cap: a
  concurrency cap; bench-rate: a rate limit; the cap and the rate far above
  what a series claims, so they time what the control costs a claim that goes
  through) beside the same claims with no control, series alternated in five
  rounds so the noise falls on all alike, with each median's ratio to the
  no-control one; and polls of bench-full, capped at one and kept full (a
  claim the cap turns away);
- with --pages, the monitoring pages (bench/pages.py's list, and the list
  filtered by a rarer status, by stage alone and by status alone) with
  Django's test client, --page-repeat times each; then the queries of one
  more request, the slowest shown (and explained into --plans-dir).

Prints the seeding time, table and index sizes and the free disk space per
size (and the server folder's size under scripts/with_postgres.py), then the
tables; --plans-dir keeps every EXPLAIN's JSON. Drops its database at the end
unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchdb import fresh_database  # bench/ is sys.path[0] when a script here runs

BENCH_DB = "workflow_bench_scaling"
BENCH_STAGE = "bench-claim"
IDLE_STAGE = "bench-idle"
# --controls (issue 15): stages that claim with one flow control on each, beside bench-claim (none on).
# The cap and the rate are set far above what a series claims, so they never throttle: the series time
# what the control costs a claim that goes through. bench-full is capped at one and kept full: its
# series times a claim the cap turns away (the poll of a throttled stage).
CONTROL_STAGES = ("bench-prio", "bench-cap", "bench-rate")
FULL_STAGE = "bench-full"
CAP = 10_000
RATE = "1000000/second"
WORKER = "bench-scaling"
SPAN_SECONDS = 30 * 24 * 3600
FAILED_PERCENT = 3  # of the history
IN_FLIGHT_PENDING = 100  # per demo stage
IN_FLIGHT_LOCKED = 30
PAGE_TARGET_MS = 300
SLOW_QUERY_MS = 20  # page queries shown (and explained into --plans-dir) from this long

ERRORS = (
    "TimeoutError: payment gateway did not answer in 30s",
    "ConnectionError: inventory service refused the connection",
    "ValueError: order has no numeric 'amount'",
    "KeyError: 'customer_id'",
)
SKUS = ("book", "lamp", "sofa", "mug", "chair", "desk", "cable", "plant", "rug", "pen")


def sql_text_array(values: list[str] | tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]::text[]"


# The "items" of the orders: 40 variants of 1 to 3 lines, as JSON text.
ITEMS_JSON = tuple(
    json.dumps([{"sku": SKUS[(n * 7 + k * 3) % len(SKUS)], "qty": 1 + (n + k) % 3} for k in range(1 + n % 3)])
    for n in range(40)
)


def payload_sql(i: str, extra: str = "''") -> str:
    """A JSON object like an order, from the integer expression `i` (for SQL run with parameters).

    Made as text and cast: several times cheaper than nested jsonb_build_object calls,
    which were most of the time of an INSERT ... SELECT. `extra` is SQL text: more
    members (", ..."), or ''.
    """
    return (
        f"""('{{"order_id": ' || {i} || ', "customer": "customer-' || ({i} %% 5000) || '@example.com",'"""
        f""" || ' "amount": ' || (5 + ({i} * 7919) %% 1496) || ', "items": '"""
        f" || ({sql_text_array(ITEMS_JSON)})[1 + ({i} * 7) %% {len(ITEMS_JSON)}] || {extra} || '}}')::jsonb"
    )


# One growth step's history: ids lo..hi (explicit; the sequence is moved past them afterwards).
# %(plan)s is a VALUES list (k, stage_id, types, source ks); row i is at stage k = i %% n.
HISTORY_SQL = """
WITH plan (k, stage_id, types, sources) AS (VALUES {plan}),
h1 AS (
    SELECT i, p.k, p.stage_id, p.types, p.sources,
           %(t0)s::timestamptz + (i - %(lo)s) * %(step)s * interval '1 second' AS created,
           (i * 7919) %% 100 < {failed} AS failed,
           0.05 + ((i * 31) %% 1000) / 100.0 AS duration
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
    JOIN plan p ON p.k = i %% {n}
), h2 AS (
    SELECT h1.*, CASE WHEN cardinality(sources) > 0 THEN sources[1 + (i / {n}) %% cardinality(sources)] END AS src_k
    FROM h1
), h3 AS (
    SELECT h2.*, i - ({n} + k - src_k) %% {n} AS parent FROM h2
), h4 AS (
    SELECT h3.*,
           CASE WHEN parent >= %(lo)s AND (parent * 7919) %% 100 >= {failed} AND i %% 4 <> 0 THEN parent END
               AS parent_id
    FROM h3
), tasks AS (
    INSERT INTO tasks_app_task (id, stage_id, type, payload, status, created_at, updated_at, available_at,
                                attempts, lock_token, locked_by, locked_at, locked_until, completed_at,
                                last_error, parent_id, source_stage_id, idempotency_key)
    SELECT i, stage_id, types[1 + (i / {n}) %% cardinality(types)],
           {payload},
           CASE WHEN failed THEN 'failed' ELSE 'completed' END,
           created, created + duration * interval '1 second', created,
           CASE WHEN failed THEN 3 ELSE 1 END, '', 'worker-' || (i %% 8) || ':' || (4100 + i %% 8),
           created + interval '20 milliseconds', NULL,
           CASE WHEN failed THEN NULL ELSE created + duration * interval '1 second' END,
           CASE WHEN failed THEN ({errors})[1 + i %% 4] ELSE '' END,
           parent_id, CASE WHEN parent_id IS NOT NULL THEN ({stage_ids})[src_k + 1] END, ''
    FROM h4
    RETURNING id, status, created_at, updated_at, locked_by, attempts, last_error, parent_id, locked_at
)
{events}
SELECT count(*) FROM tasks
"""

HISTORY_EVENTS_SQL = """
, events AS (
    INSERT INTO tasks_app_taskevent (task_id, kind, at, actor, details)
    SELECT t.id, e.kind, e.at, e.actor, e.details
    FROM tasks t CROSS JOIN LATERAL (VALUES
        ('created', t.created_at, 'seed',
         CASE WHEN t.parent_id IS NULL THEN '{}'::jsonb ELSE ('{"parent": ' || t.parent_id || '}')::jsonb END),
        (CASE WHEN t.status = 'failed' THEN 'failed' ELSE 'completed' END, t.updated_at, t.locked_by,
         CASE WHEN t.status = 'failed'
              THEN ('{"attempt": ' || t.attempts || ', "error": ' || to_jsonb(t.last_error)::text
                    || ', "traceback": "", "reason": "max attempts (3) reached"}')::jsonb
              ELSE ('{"attempt": ' || t.attempts || ', "duration": '
                    || round(extract(epoch FROM t.updated_at - t.locked_at), 3) || ', "sent": []}')::jsonb END)
    ) AS e (kind, at, actor, details)
)
"""

# Pending tasks (created "now"); %(retry)s of every 4 wait for a retry (attempts 1, available later).
PENDING_SQL = """
WITH tasks AS (
    INSERT INTO tasks_app_task (stage_id, type, payload, status, created_at, updated_at, available_at,
                                attempts, lock_token, locked_by, last_error)
    SELECT %(stage)s, %(type)s, {payload}, 'pending', now() - interval '1 minute', now() - interval '1 minute',
           CASE WHEN i %% 4 < %(retry)s THEN now() + interval '10 minutes' ELSE now() - interval '1 minute' END,
           CASE WHEN i %% 4 < %(retry)s THEN 1 ELSE 0 END, '', '',
           CASE WHEN i %% 4 < %(retry)s THEN 'TimeoutError: payment gateway did not answer in 30s' ELSE '' END
    FROM generate_series(1, %(n)s) AS i
    RETURNING id, created_at
)
{events}
SELECT count(*) FROM tasks
"""
CREATED_EVENTS_SQL = """
, events AS (
    INSERT INTO tasks_app_taskevent (task_id, kind, at, actor, details)
    SELECT id, 'created', created_at, 'seed', '{}'::jsonb FROM tasks
)
"""

LOCKED_SQL = """
WITH tasks AS (
    INSERT INTO tasks_app_task (stage_id, type, payload, status, created_at, updated_at, available_at,
                                attempts, lock_token, locked_by, locked_at, locked_until, last_error)
    SELECT %(stage)s, %(type)s, {payload}, 'locked', l.at - interval '5 minutes', l.at,
           l.at - interval '5 minutes', 1, md5(i::text || clock_timestamp()::text), 'worker-' || (i %% 8) || ':4100',
           l.at, l.at + %(timeout)s * interval '1 second', ''
    FROM generate_series(1, %(n)s) AS i,
         -- every other lock expired ten minutes ago
         LATERAL (SELECT now() - CASE WHEN i %% 2 = 0 THEN interval '1 minute'
                                      ELSE (%(timeout)s + 600) * interval '1 second' END AS at) AS l
    RETURNING id, created_at, locked_at, locked_by, locked_until
)
{events}
SELECT count(*) FROM tasks
"""
LOCKED_EVENTS_SQL = """
, events AS (
    INSERT INTO tasks_app_taskevent (task_id, kind, at, actor, details)
    SELECT t.id, e.kind, e.at, e.actor, e.details
    FROM tasks t CROSS JOIN LATERAL (VALUES
        (0, 'created', t.created_at, 'seed', '{}'::jsonb)
    ) AS e (n, kind, at, actor, details)
)
"""


def ms(seconds: float) -> float:
    return seconds * 1000


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    """Median, p95, p99 of samples in seconds, as milliseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return ms(statistics.median(samples)), ms(cuts[94]), ms(cuts[98])


def disk_free(path: str) -> str:
    usage = shutil.disk_usage(path)
    text = f"{usage.free / 2**30:.1f} GiB free on {path}"
    data = os.environ.get("TEST_PG_DATA", "")  # set by scripts/with_postgres.py: the server's folder
    if data and os.path.isdir(data):
        used = sum(f.stat().st_size for f in Path(data).rglob("*") if f.is_file())
        text += f", server folder {used / 2**30:.2f} GiB"
    return text


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        from django.db import connection

        from tasks_app.demo import load_demo
        from tasks_app.models import Stage, Transition

        self.connection = connection
        demo = load_demo(with_orders=False)
        self.stage = Stage.objects.create(slug=BENCH_STAGE, name="Claim benchmark", handler="bench.handlers.noop")
        self.idle = Stage.objects.create(slug=IDLE_STAGE, name="Idle poll benchmark", handler="bench.handlers.noop")
        stages = [*demo.values(), self.stage, self.idle]
        self.demo = list(demo.values())
        types: dict[int, list[str]] = {s.pk: [] for s in stages}
        sources: dict[int, list[int]] = {s.pk: [] for s in stages}
        for t in Transition.objects.order_by("id"):
            if t.task_type and t.task_type not in types[t.source_id]:
                types[t.source_id].append(t.task_type)
            sources[t.target_id].append(t.source_id)
        k_of = {s.pk: k for k, s in enumerate(stages)}
        self.types = {pk: ts or ["order"] for pk, ts in types.items()}
        plan = ", ".join(
            f"({k_of[s.pk]}, {s.pk}::bigint, {sql_text_array(self.types[s.pk])},"
            f" ARRAY[{', '.join(str(k_of[src]) for src in sources[s.pk])}]::int[])"
            for s in stages
        )
        events = "" if args.no_events else HISTORY_EVENTS_SQL
        self.history_sql = HISTORY_SQL.format(
            plan=plan,
            n=len(stages),
            failed=FAILED_PERCENT,
            payload=payload_sql("i", """CASE WHEN parent_id IS NULL THEN '' ELSE ', "checked": true' END"""),
            errors=sql_text_array(ERRORS),
            stage_ids="ARRAY[" + ", ".join(str(st.pk) for st in stages) + "]::bigint[]",
            events=events,
        )
        self.controls: dict[str, Any] = {}
        if args.controls:
            # Made after the history plan: they get backlogs, no history.
            self.controls = {
                slug: Stage.objects.create(slug=slug, name=slug, handler="bench.handlers.noop")
                for slug in CONTROL_STAGES
            }
            Stage.objects.filter(slug="bench-cap").update(max_concurrency=CAP)
            Stage.objects.filter(slug="bench-rate").update(rate_limit=RATE)
            self.full = Stage.objects.create(slug=FULL_STAGE, name=FULL_STAGE, handler="bench.handlers.noop")
            Stage.objects.filter(pk=self.full.pk).update(max_concurrency=1)
            for stage in [*self.controls.values(), self.full]:
                stage.refresh_from_db()
        self.pending_sql = PENDING_SQL.format(
            payload=payload_sql("i"), events="" if args.no_events else CREATED_EVENTS_SQL
        )
        self.locked_sql = LOCKED_SQL.format(
            payload=payload_sql("i"), events="" if args.no_events else LOCKED_EVENTS_SQL
        )

    # -- seeding -------------------------------------------------------------
    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def count_tasks(self) -> int:
        return self.execute("SELECT count(*) FROM tasks_app_task")[0][0]

    def seed_in_flight(self) -> None:
        """Pending and locked tasks at the demo stages: the same whatever the size."""
        for stage in self.demo:
            params = {"stage": stage.pk, "type": self.types[stage.pk][0], "retry": 1, "n": IN_FLIGHT_PENDING}
            self.execute(self.pending_sql, params)
            params = {"stage": stage.pk, "type": self.types[stage.pk][0], "timeout": stage.lock_timeout}
            self.execute(self.locked_sql, {**params, "n": IN_FLIGHT_LOCKED})

    def claim_stages(self) -> list[Any]:
        """The stages that keep a backlog: bench-claim, and with --controls one per flow control."""
        return [self.stage, *self.controls.values()]

    def top_up_backlog(self, stage: Any = None) -> int:
        """Pending tasks at bench-claim (or `stage`) back to --backlog; returns how many it added.

        At bench-prio the backlog's priorities are mixed, -10 to 10 spread over the ids, so a claim
        takes the highest first from every part of the index (as a queue with priorities does)."""
        from tasks_app.models import Task

        stage = stage or self.stage
        have = Task.objects.filter(stage=stage, status=Task.Status.PENDING).count()
        missing = self.args.backlog - have
        if missing > 0:
            self.execute(self.pending_sql, {"stage": stage.pk, "type": "order", "retry": 0, "n": missing})
            if stage.slug == "bench-prio":
                self.execute(
                    "UPDATE tasks_app_task SET priority = ((id * 7919) %% 21) - 10"
                    " WHERE stage_id = %s AND status = 'pending' AND priority = 0",
                    [stage.pk],
                )
        return max(missing, 0)

    def grow(self, size: int) -> dict[str, float]:
        """Add history until the table has `size` rows (the backlog included); returns timings in seconds."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        current = self.count_tasks()
        add = size - current - sum(max(self.args.backlog - self._pending_at(s), 0) for s in self.claim_stages())
        if add > 0:
            first = self.execute("SELECT coalesce(max(id), 0) + 1 FROM tasks_app_task")[0][0]
            now = time.time() - 60  # the newest history ends a minute ago
            step = SPAN_SECONDS / add
            self.execute("SET session_replication_role = replica")  # no FK triggers: see the docstring
            try:
                done = 0
                for lo in range(first, first + add, self.args.chunk):
                    hi = min(lo + self.args.chunk, first + add) - 1
                    t0 = now - SPAN_SECONDS + (lo - first) * step
                    params = {"lo": lo, "hi": hi, "t0": self._iso(t0), "step": step}
                    done += self.execute(self.history_sql, params)[0][0]
                    self.checkpoint()
                    elapsed = time.perf_counter() - started
                    print(f"  history {done:,}/{add:,} rows, {elapsed:.0f} s ({disk_free('/tmp')})", flush=True)
            finally:
                self.execute("SET session_replication_role = DEFAULT")
            self.execute(
                "SELECT setval(pg_get_serial_sequence('tasks_app_task', 'id'), (SELECT max(id) FROM tasks_app_task))"
            )
        timings["history"] = time.perf_counter() - started
        t = time.perf_counter()
        for stage in self.claim_stages():
            self.top_up_backlog(stage)
        timings["backlog"] = time.perf_counter() - t
        t = time.perf_counter()
        self.execute("VACUUM ANALYZE tasks_app_task")
        self.execute("VACUUM ANALYZE tasks_app_taskevent")
        timings["vacuum"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        return timings

    def checkpoint(self) -> None:
        """Lets the server recycle the WAL of the last chunk now (bounds pg_wal while seeding); needs superuser."""
        from django.db import DatabaseError

        try:
            self.execute("CHECKPOINT")
        except DatabaseError:
            pass

    def _pending_at(self, stage: Any) -> int:
        return self.execute(
            "SELECT count(*) FROM tasks_app_task WHERE stage_id = %s AND status = 'pending'", [stage.pk]
        )[0][0]

    @staticmethod
    def _iso(epoch: float) -> str:
        from datetime import UTC, datetime

        return datetime.fromtimestamp(epoch, UTC).isoformat()

    def sizes(self) -> dict[str, Any]:
        rows = self.execute(
            "SELECT pg_total_relation_size('tasks_app_task'), pg_relation_size('tasks_app_task'),"
            " pg_relation_size('task_claim_idx'), pg_total_relation_size('tasks_app_taskevent'),"
            " pg_database_size(current_database()),"
            " (SELECT count(*) FROM tasks_app_taskevent)"
        )[0]
        keys = ("task_total", "task_heap", "claim_idx", "events_total", "database", "events")
        return dict(zip(keys, rows, strict=True))

    # -- measuring -----------------------------------------------------------
    def claim_series(self, batch: int, samples: int, stage: Any = None) -> dict[str, list[float]]:
        """Claim `batch` tasks and complete them, `samples` times; the backlog stays between half and full."""
        from tasks_app.services import Completion, task_claim, tasks_complete_batch

        stage = stage or self.stage
        claims: list[float] = []
        completes: list[float] = []
        self.top_up_backlog(stage)
        consumed = 0
        for _ in range(samples):
            if consumed + batch > self.args.backlog // 2:
                self.top_up_backlog(stage)  # new work arrives (not timed)
                consumed = 0
            t = time.perf_counter()
            tasks = task_claim(stage=stage, worker_id=WORKER, limit=batch)
            claims.append(time.perf_counter() - t)
            assert len(tasks) == batch, f"claimed {len(tasks)} of {batch}"
            items = [Completion(task.pk, task.lock_token) for task in tasks]
            t = time.perf_counter()
            result = tasks_complete_batch(items=items)
            completes.append(time.perf_counter() - t)
            assert len(result.completed) == batch, result
            consumed += batch
        return {"claim": claims, "complete": completes}

    def autovacuums(self) -> int:
        return self.execute("SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'tasks_app_task'")[0][0]

    def idle_series(self, samples: int, stage: Any = None) -> list[float]:
        from tasks_app.services import task_claim

        out = []
        for _ in range(samples):
            t = time.perf_counter()
            assert task_claim(stage=stage or self.idle, worker_id=WORKER, limit=100) == []
            out.append(time.perf_counter() - t)
        return out

    def fill_full_stage(self) -> None:
        """bench-full: a backlog, and its one slot taken (a lock that outlives the series)."""
        from django.utils import timezone

        from tasks_app.models import Task
        from tasks_app.services import task_claim

        self.top_up_backlog(self.full)
        held = Task.objects.filter(stage=self.full, status=Task.Status.LOCKED, locked_until__gt=timezone.now())
        if not held.exists():  # a week's lock: one that expired would be taken over by the polls
            assert len(task_claim(stage=self.full, worker_id="bench-holder", limit=1, lock_timeout=604_800)) == 1

    def explain(self, batch: int, *, generic: bool, label: str) -> dict[str, Any]:
        """EXPLAIN (ANALYZE, BUFFERS) of one claim, rolled back; a summary of the plan."""
        from datetime import timedelta

        from django.db import transaction
        from django.utils import timezone

        from tasks_app.services.claim import PG_CLAIM_SQL, claim_params

        now = timezone.now()
        params = claim_params(
            stage=self.stage,
            worker_id=WORKER,
            limit=batch,
            now=now,
            until=now + timedelta(seconds=self.stage.lock_timeout),
        )
        names: list[str] = []

        def positional(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        prepared = re.sub(r"%\((\w+)\)s", positional, PG_CLAIM_SQL).replace("%%", "%")
        values = [params[name] for name in names]
        args = ", ".join(["%s"] * len(values))
        with transaction.atomic(), self.connection.cursor() as cursor:
            cursor.execute(f"PREPARE bench_claim AS {prepared}")
            try:
                mode = "force_generic_plan" if generic else "force_custom_plan"
                cursor.execute(f"SET LOCAL plan_cache_mode = {mode}")
                cursor.execute(
                    f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE bench_claim({args})",
                    values,
                )
                raw = cursor.fetchone()[0]
            finally:
                cursor.execute("DEALLOCATE bench_claim")
            transaction.set_rollback(True)
        doc = (json.loads(raw) if isinstance(raw, str) else raw)[0]
        if self.args.plans_dir:
            name = f"{self.count_tasks()}-{label}-batch{batch}-{'generic' if generic else 'custom'}.json"
            Path(self.args.plans_dir, name).write_text(json.dumps(doc, indent=1))
        plan = doc["Plan"]
        # The events CTE runs after the main plan has finished: its buffers are not in the top node's.
        extra = [n for n in plan.get("Plans", []) if n.get("Subplan Name") == "CTE events"]
        picked = next(n for n in plan["Plans"] if n.get("Subplan Name") == "CTE picked")
        scan = next(n for n in walk(picked) if "Scan" in n["Node Type"])
        index = scan.get("Index Name") or scan["Node Type"]
        return {
            "hit": sum(n.get("Shared Hit Blocks", 0) for n in [plan, *extra]),
            "read": sum(n.get("Shared Read Blocks", 0) for n in [plan, *extra]),
            "dirtied": sum(n.get("Shared Dirtied Blocks", 0) for n in [plan, *extra]),
            "exec_ms": doc.get("Execution Time", 0.0),
            "pick": f"{index.replace('tasks_app_task_', '')} {scan.get('Shared Hit Blocks', 0)}"
            + (f"+{scan['Shared Read Blocks']}r" if scan.get("Shared Read Blocks") else ""),
            "pick_filtered": scan.get("Rows Removed by Filter", 0),
        }

    def prepared_plans(self) -> tuple[int, int]:
        """Generic and custom plans the session's prepared claim statement has run with so far."""
        rows = self.execute(
            "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0) FROM pg_prepared_statements"
            " WHERE statement LIKE %s AND statement LIKE %s",
            ["%picked AS MATERIALIZED%", "%FOR UPDATE SKIP LOCKED%"],
        )
        return int(rows[0][0]), int(rows[0][1])

    def set_plan_cache_mode(self, mode: str) -> None:
        """`engine`: what a worker's session runs with (services.pg.PLAN_CACHE_MODE, set when it connects)."""
        from tasks_app.services.pg import PLAN_CACHE_MODE

        self.execute(f"SET plan_cache_mode = {PLAN_CACHE_MODE if mode == 'engine' else mode}")


def explain_all(bench: Bench, measured: dict[str, Any], label: str) -> None:
    for batch in (1, 100):
        for generic in (False, True):
            kind = "generic" if generic else "custom"
            e = bench.explain(batch, generic=generic, label=label)
            measured[f"explain-{label}-{batch}-{kind}"] = e
            print(
                f"  EXPLAIN claim of {batch} ({label}, {kind} plan): picking scan {e['pick']} buffers"
                f" ({e['pick_filtered']} rows removed by filter); statement: shared hit {e['hit']},"
                f" read {e['read']}, dirtied {e['dirtied']}; execution {e['exec_ms']:.2f} ms",
                flush=True,
            )


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from walk(child)


# -- the monitoring pages (bench/pages.py's list; its code lives inside its main()) ---------
def page_timer(repeat: int) -> Callable[..., tuple[float, float, list[tuple[float, str]]]]:
    """A function timing a page: median and worst ms, and the queries of one more request (ms, SQL)."""
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user_model = get_user_model()
    user = user_model.objects.filter(username="bench").first() or user_model.objects.create_superuser(
        "bench", password="bench-pw-1"
    )
    client = Client()
    client.force_login(user)

    def timed(path: str, *, cold: bool = False) -> tuple[float, float, list[tuple[float, str]]]:
        samples = []
        for _ in range(repeat):
            if cold:
                cache.clear()
            start = time.perf_counter()
            response = client.get(path)
            samples.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        if cold:
            cache.clear()
        with CaptureQueriesContext(connection) as captured:
            client.get(path)
        queries = [(float(q["time"]) * 1000, q["sql"]) for q in captured.captured_queries]
        return statistics.median(samples), max(samples), queries

    return timed


def explain_text(sql: str) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of a captured read-only query."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


def page_list(bench: Bench, size: int) -> list[tuple[str, str, bool]]:
    from tasks_app.models import Task

    first = bench.demo[0]
    middle = Task.objects.filter(pk__gte=size // 2).order_by("id").values_list("id", flat=True).first()
    return [
        ("overview, cold counts", "/overview/", True),
        ("overview, cached counts", "/overview/", False),
        ("task list, first page", "/tasks/", False),
        ("task list, stage+status (pending)", f"/tasks/?stage={first.slug}&status=pending", False),
        ("task list, stage+status (failed)", f"/tasks/?stage={first.slug}&status=failed", False),
        ("task list, stage only", f"/tasks/?stage={first.slug}", False),
        ("task list, status only (failed)", "/tasks/?status=failed", False),
        ("task list, auto-refresh rows", "/tasks/rows/", False),
        ("task detail", f"/tasks/{middle}/", False),
        ("workers", "/workers/", False),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,1000000,10000000", help="task table sizes, increasing")
    parser.add_argument("--samples", type=int, default=500, help="claims of 1 task per size (default 500)")
    parser.add_argument("--samples-batch", type=int, default=100, help="claims of 100 tasks per size (default 100)")
    parser.add_argument("--backlog", type=int, default=2_000, help="pending tasks at the claimed stage (default 2000)")
    parser.add_argument("--chunk", type=int, default=1_000_000, help="history rows per INSERT statement")
    parser.add_argument("--no-events", action="store_true", help="no task events for the seeded tasks")
    parser.add_argument("--pages", action="store_true", help="also time the monitoring pages at each size")
    parser.add_argument("--page-repeat", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--plans-dir", default="", help="write each EXPLAIN's JSON plan into this folder")
    parser.add_argument(
        "--controls",
        action="store_true",
        help="also claim with each flow control on (mixed priorities, a cap, a rate limit) and at a full capped stage",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes):
        parser.error("--sizes must be increasing")
    if args.plans_dir:
        Path(args.plans_dir).mkdir(parents=True, exist_ok=True)
    backlogs = 1 + (len(CONTROL_STAGES) if args.controls else 0)
    if args.backlog < 200 or args.backlog * backlogs + 1000 > sizes[0]:
        parser.error("--backlog must be at least 200 and leave room for history in the smallest size")
    url = fresh_database(BENCH_DB)
    if url is None:
        return 2
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        server_row = conn.execute("SHOW server_version").fetchone()
        settings_row = conn.execute(
            "SELECT current_setting('shared_buffers'), current_setting('work_mem'), current_setting('fsync')"
        ).fetchone()
    assert server_row is not None and settings_row is not None  # SHOW and a bare SELECT return one row
    server = server_row[0]
    os.environ.setdefault("TASKS_LOG_LEVEL", "ERROR")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    try:
        call_command("migrate", verbosity=0)
        print(
            f"# PostgreSQL {server} (shared_buffers {settings_row[0]}, work_mem {settings_row[1]},"
            f" fsync {settings_row[2]}); {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f};"
            f" {disk_free('/tmp')}\n",
            flush=True,
        )
        bench = Bench(args)
        bench.seed_in_flight()
        results = []
        pages: list[tuple[int, str, float, float]] = []
        for size in sizes:
            print(f"growing to {size:,} tasks ...", flush=True)
            timings = bench.grow(size)
            rows = bench.count_tasks()
            sizes_now = bench.sizes()
            print(
                f"  {rows:,} tasks, {sizes_now['events']:,} events; history {timings['history']:.1f} s,"
                f" backlog {timings['backlog']:.1f} s, VACUUM ANALYZE {timings['vacuum']:.1f} s;"
                f" task table {pretty(sizes_now['task_total'])} (heap {pretty(sizes_now['task_heap'])}),"
                f" claim index {pretty(sizes_now['claim_idx'])}, events {pretty(sizes_now['events_total'])},"
                f" database {pretty(sizes_now['database'])}; {disk_free('/tmp')};"
                f" load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            measured: dict[str, Any] = {"size": size, "rows": rows, "timings": timings, **sizes_now}
            connection.close()  # a new session, as a worker starting: its prepared statements counted from zero
            explain_all(bench, measured, "fresh")  # the claim index just vacuumed
            # Warm up: the prepared statements, the caches.
            bench.claim_series(1, 10)
            bench.claim_series(100, 3)
            autovacuums = bench.autovacuums()
            series_list = [
                ("claim1", 1, args.samples, "engine"),
                ("claim100", 100, args.samples_batch, "engine"),
                ("claim1-auto", 1, args.samples, "auto"),
                ("claim1-custom", 1, args.samples, "force_custom_plan"),
            ]
            for key, batch, samples, mode in series_list:
                bench.set_plan_cache_mode(mode)
                before = bench.prepared_plans()
                series = bench.claim_series(batch, samples)
                after = bench.prepared_plans()
                completes = key.replace("claim", "complete")
                measured[key] = quantiles(series["claim"])
                measured[completes] = quantiles(series["complete"])
                measured[f"{key}-plans"] = (after[0] - before[0], after[1] - before[1])
                print(
                    f"  batch {batch:>3}, plan_cache_mode {mode}: claim median/p95/p99 {fmt3(measured[key])} ms,"
                    f" complete {fmt3(measured[completes])} ms ({samples} samples; the prepared claim ran"
                    f" {after[0] - before[0]} generic, {after[1] - before[1]} custom plans)",
                    flush=True,
                )
            bench.set_plan_cache_mode("engine")
            before = bench.prepared_plans()
            measured["idle"] = quantiles(bench.idle_series(args.samples))
            after = bench.prepared_plans()
            print(
                f"  idle poll (batch 100, nothing to claim): {fmt3(measured['idle'])} ms"
                f" ({after[0] - before[0]} generic, {after[1] - before[1]} custom plans)",
                flush=True,
            )
            time.sleep(1)  # the statistics collector's counters lag a little
            measured["autovacuums"] = bench.autovacuums() - autovacuums
            print(f"  autovacuums of the task table during the series: {measured['autovacuums']}", flush=True)
            bench.top_up_backlog()
            explain_all(bench, measured, "after")  # dead entries of the series' claims in the claim index
            if args.controls:
                control_series(bench, measured, args)
            results.append(measured)
            if args.pages:
                bench.top_up_backlog()
                timed = page_timer(args.page_repeat)
                for name, path, cold in page_list(bench, rows):
                    median, worst, queries = timed(path, cold=cold)
                    pages.append((size, name, median, worst))
                    total = sum(t for t, _ in queries)
                    print(
                        f"  page {name:36} median {median:7.1f} ms   worst {worst:7.1f} ms"
                        f"   ({len(queries)} queries, {total:.1f} ms in SQL on one more request)",
                        flush=True,
                    )
                    for n, (ms_, sql) in enumerate(sorted(queries, reverse=True)[:3]):
                        if ms_ < SLOW_QUERY_MS:
                            break
                        print(f"      {ms_:7.1f} ms  {' '.join(sql.split())[:160]}", flush=True)
                        if args.plans_dir:
                            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                            text = f"{sql}\n\n{explain_text(sql)}\n"
                            Path(args.plans_dir, f"{rows}-page-{slug}-{n}.txt").write_text(text)

        print("\nSeeding (history INSERT ... SELECT, backlog top-up, VACUUM ANALYZE):\n")
        print("| tasks | events | history s | VACUUM ANALYZE s | total s | task table | events table | database |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in results:
            t = m["timings"]
            print(
                f"| {m['rows']:,} | {m['events']:,} | {t['history']:.1f} | {t['vacuum']:.1f} | {t['total']:.1f} |"
                f" {pretty(m['task_total'])} | {pretty(m['events_total'])} | {pretty(m['database'])} |"
            )
        print(f"\nClaim and completion latency, ms (median / p95 / p99; backlog {args.backlog:,} pending):\n")
        print("| tasks | claim 1 | complete 1 | claim 100 | complete 100 | idle poll | task table | claim index |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m in results:
            print(
                f"| {m['rows']:,} | {fmt3(m['claim1'])} | {fmt3(m['complete1'])} | {fmt3(m['claim100'])} |"
                f" {fmt3(m['complete100'])} | {fmt3(m['idle'])} | {pretty(m['task_total'])} |"
                f" {pretty(m['claim_idx'])} |"
            )
        print(
            "\nClaim of 1 by plan_cache_mode, ms (median / p95 / p99), and the plans the session's prepared"
            " claim statement ran with in that series (generic / custom):\n"
        )
        print("| tasks | engine (as a worker runs) | auto | force_custom_plan | claim 100, engine |")
        print("|---:|---|---|---|---|")
        for m in results:
            cells = []
            for key in ("claim1", "claim1-auto", "claim1-custom", "claim100"):
                generic, custom = m[f"{key}-plans"]
                cells.append(f"{fmt3(m[key])} ({generic} / {custom})")
            print(f"| {m['rows']:,} | " + " | ".join(cells) + " |")
        print(
            "\nEXPLAIN (ANALYZE, BUFFERS) of one claim: index of the picking scan and its buffers;"
            " the statement's shared buffers hit / read; execution ms. 'fresh': just after VACUUM;"
            " 'after': after the measured series (their dead entries in the claim index):\n"
        )
        print("| tasks | when | claim 1, custom | claim 1, generic | claim 100, custom | claim 100, generic |")
        print("|---:|---|---|---|---|---|")
        for m in results:
            for label in ("fresh", "after"):
                explains = [m[f"explain-{label}-{b}-{k}"] for b in (1, 100) for k in ("custom", "generic")]
                print(
                    f"| {m['rows']:,} | {label} | "
                    + " | ".join(f"{e['pick']}; {e['hit']} / {e['read']}; {e['exec_ms']:.2f} ms" for e in explains)
                    + " |"
                )
        if args.controls:
            print_controls(results)
        print("Autovacuums of the task table during the series:", end=" ")
        print("; ".join(f"{m['rows']:,}: {m['autovacuums']}" for m in results))
        if pages:
            print("\nMonitoring pages, server time in ms (Django test client):\n")
            print("| tasks | page | median ms | worst ms | under 300 ms |")
            print("|---:|---|---:|---:|---|")
            for size, name, median, worst in pages:
                ok = "yes" if median < PAGE_TARGET_MS else "NO"
                print(f"| {size:,} | {name} | {median:.1f} | {worst:.1f} | {ok} |")
        return 0
    finally:
        connection.close()
        if not args.keep:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def control_series(bench: Bench, measured: dict[str, Any], args: argparse.Namespace) -> None:
    """Claims of 1 and 100 with no control, then with each control on, alternated series by series, so
    the machine's noise falls on all of them alike; and polls of a stage the cap keeps full."""
    stages = {"none": bench.stage, **{slug.removeprefix("bench-"): s for slug, s in bench.controls.items()}}
    samples = {1: args.samples, 100: args.samples_batch}
    claims: dict[tuple[str, int], list[float]] = {(name, b): [] for name in stages for b in samples}
    for stage in stages.values():  # warm up each stage's statements
        bench.claim_series(1, 5, stage)
    rounds = 5
    for _ in range(rounds):
        for batch, n in samples.items():
            for name, stage in stages.items():
                claims[name, batch] += bench.claim_series(batch, max(n // rounds, 1), stage)["claim"]
    for (name, batch), series in claims.items():
        measured[f"control-{name}-{batch}"] = quantiles(series)
        print(f"  control {name:5} claim {batch:>3}: median/p95/p99 {fmt3(measured[f'control-{name}-{batch}'])} ms")
    bench.fill_full_stage()
    measured["control-full"] = quantiles(bench.idle_series(args.samples, bench.full))
    print(f"  poll of a full capped stage (claim of 100, none taken): {fmt3(measured['control-full'])} ms", flush=True)


def print_controls(results: list[dict[str, Any]]) -> None:
    print(
        "\nClaim with flow controls (issue 15), ms (median / p95 / p99), alternated series in one session;"
        " the ratio is the median over the no-control claim's:\n"
    )
    names = ("none", "prio", "cap", "rate")
    print("| tasks | batch | no control | mixed priorities | cap on | rate limit on | full capped stage (poll) |")
    print("|---:|---:|---|---|---|---|---|")
    for m in results:
        for batch in (1, 100):
            base = m[f"control-none-{batch}"][0]
            cells = []
            for name in names:
                q = m[f"control-{name}-{batch}"]
                cells.append(fmt3(q) + ("" if name == "none" else f" (x{q[0] / base:.2f})"))
            full = fmt3(m["control-full"]) if batch == 100 else ""
            print(f"| {m['rows']:,} | {batch} | " + " | ".join(cells) + f" | {full} |")


def fmt3(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def pretty(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


if __name__ == "__main__":
    sys.exit(main())
