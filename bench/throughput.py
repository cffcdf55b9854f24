#!/usr/bin/env python3
"""Worker throughput on PostgreSQL, against PgQueuer and a raw-SQL loop, in one run.

    make bench                                   # a throwaway *durable* PostgreSQL (fsync, synchronous_commit on)
    python bench/throughput.py --tasks 10000     # with DATABASE_URL=postgres://...

For each number of worker processes W and batch size B three systems drain N
no-op jobs (small JSON payload) from the same database, on top of --history
finished ones (80,000 by default: a long-lived queue is mostly history):

- ours: W `run_worker` processes on one script stage whose handler does nothing;
- PgQueuer (requirements-bench.txt): W processes running its own QueueManager
  with a no-op entrypoint and `batch_size=B` (and its default batch size, when
  B does not include it), over asyncpg, its fastest driver (--pgqueuer-driver
  psycopg for psycopg's async one, the driver ours uses);
- raw: W plain psycopg processes doing, per batch, one
  `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT B) RETURNING`
  claim and one completing `UPDATE ... FROM unnest(ids, tokens)` that reaches
  each row by primary key, fenced by its lock token and status (no Django, no
  history), on an identical copy of the task table (LIKE ... INCLUDING ALL).

Every worker is started and idle before the jobs are committed in bulk, so
process start-up is not timed; time runs from that commit to the last
completion (ours: the last `completed_at`; PgQueuer: the last log row; raw:
the last worker's return), and each run checks that every job ran exactly
once. Then a two-stage pipeline (the first handler sends each task to the
second stage) gives end-to-end tasks/s, and the same pipeline with dedupe
keys on its second stage (issue 15) beside a plain one, run for run. A worker's peak memory is its maximum
resident set size, read when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "workflow_bench"

INSERT_TASKS = """
INSERT INTO {table} (stage_id, type, payload, status, created_at, updated_at, available_at,
                     attempts, lock_token, locked_by, last_error, idempotency_key)
SELECT %(stage)s, 'order', jsonb_build_object('n', i, 'customer_id', i %% 1000, 'sku', 'SKU-' || i),
       'pending', now(), now(), now(), 0, '', '', '', ''
FROM generate_series(1, %(n)s) AS i
"""

# Finished tasks from "earlier days", inserted (and analysed) before each run's
# pending tasks: a long-lived task table is mostly history, and the planner
# then takes the claim's partial index, as it does in production. On an
# all-pending, freshly analysed table both the baseline and the engine would
# instead walk the primary key past every row completed so far.
INSERT_HISTORY = """
INSERT INTO {table} (stage_id, type, payload, status, created_at, updated_at, available_at,
                     attempts, lock_token, locked_by, last_error, idempotency_key, completed_at)
SELECT %(stage)s, 'order', '{{}}'::jsonb, 'completed', now() - interval '1 day', now() - interval '1 day',
       now() - interval '1 day', 1, '', 'earlier', '', '', now() - interval '1 day'
FROM generate_series(1, %(n)s) AS i
"""
DEFAULT_HISTORY = 80_000

# In the engine's claim order (priority DESC, id), which the copied task_claim_idx serves (stage, priority DESC,
# id) since issue 15: with ORDER BY id alone each claim sorted the stage's whole backlog (47 tasks/s at batch 1).
RAW_CLAIM = """
UPDATE bench_raw SET status = 'locked', lock_token = md5(random()::text), locked_by = %(worker)s,
       locked_at = now(), locked_until = now() + interval '5 minutes', attempts = attempts + 1,
       updated_at = now()
WHERE id IN (
    SELECT id FROM bench_raw
    WHERE stage_id = %(stage)s
      AND ((status = 'pending' AND available_at <= now()) OR (status = 'locked' AND locked_until < now()))
    ORDER BY priority DESC, id LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED)
RETURNING id, lock_token
"""

# The completion shape the engine's is meant to have (issue 13): each row reached by its primary key from
# unnest(ids, tokens), fenced by its lock token, with a status check written so that no index can serve it
# (`status || ''`): the planner can only take the primary key, whatever the statistics say about 'locked'.
RAW_COMPLETE = """
UPDATE bench_raw AS t SET status = 'completed', completed_at = now(), updated_at = now(),
       lock_token = '', locked_until = NULL
FROM unnest(%(ids)s::bigint[], %(tokens)s::text[]) AS d(id, token)
WHERE t.id = d.id AND t.lock_token = d.token AND t.status || '' = 'locked'
"""

# PgQueuer deletes a finished job from its queue table and writes a row to its log: its history is log rows.
PGQ_HISTORY = """
INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint, aggregated)
SELECT now() - interval '1 day', -i, 'successful', 0, 'noop', true
FROM generate_series(1, %(n)s) AS i
"""
PGQ_ENQUEUE = """
INSERT INTO pgqueuer (priority, entrypoint, payload, status)
SELECT 0, 'noop', convert_to(json_build_object('n', i, 'customer_id', i %% 1000, 'sku', 'SKU-' || i)::text, 'UTF8'),
       'queued'
FROM generate_series(1, %(n)s) AS i
"""


class PROFILE:  # noqa: N801 - a switch the run functions read: reset pg_stat_statements as the clock starts
    on = False


def with_db(url: str, name: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path=f"/{name}"))


def create_bench_database(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    return with_db(url, BENCH_DB)


# -- raw-SQL baseline ----------------------------------------------------------
def raw_worker(url: str, stage: int, batch: int, worker: str, ready: Barrier, counts: mp.Queue) -> None:
    import psycopg

    done = 0
    with psycopg.connect(url, autocommit=True) as conn:
        ready.wait()
        while True:
            rows = conn.execute(RAW_CLAIM, {"worker": worker, "stage": stage, "batch": batch}).fetchall()
            if not rows:
                break
            ids, tokens = [r[0] for r in rows], [r[1] for r in rows]
            done += conn.execute(RAW_COMPLETE, {"ids": ids, "tokens": tokens}).rowcount
    counts.put(done)


def run_raw(url: str, *, stage: int, n: int, history: int, workers: int, batch: int) -> float:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE bench_raw RESTART IDENTITY")
        conn.execute(INSERT_HISTORY.format(table="bench_raw"), {"stage": stage, "n": history})
        conn.execute("VACUUM ANALYZE bench_raw")
        conn.execute(INSERT_TASKS.format(table="bench_raw"), {"stage": stage, "n": n})
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(workers + 1)
    counts: mp.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=raw_worker, args=(url, stage, batch, f"raw-{i}", ready, counts), daemon=True)
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    if PROFILE.on:
        profile_reset(url)
    ready.wait()
    start = time.perf_counter()
    total = sum(counts.get() for _ in procs)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed' AND locked_by <> 'earlier'),"
            " count(*) FILTER (WHERE status <> 'completed') FROM bench_raw"
        ).fetchone()
    assert row is not None
    assert total == n and row[0] == n and row[1] == 0, f"raw loop: {total} completions, {row[0]} of {n} completed"
    return n / elapsed


# -- PgQueuer ------------------------------------------------------------------
def pgqueuer_default_batch() -> int:
    from pgqueuer.qm import QueueManager

    return int(inspect.signature(QueueManager.run).parameters["batch_size"].default)


def pgqueuer_worker(url: str, driver: str, batch: int, ready: Event, results: mp.Queue) -> None:
    """One PgQueuer consumer process: its QueueManager, a no-op entrypoint, until SIGTERM."""
    calls = asyncio.run(_pgqueuer_consume(url, driver, batch, ready))
    results.put(calls)


@contextlib.asynccontextmanager
async def pgqueuer_queries(url: str, driver: str) -> AsyncIterator[Any]:
    """PgQueuer's Queries over one connection of `driver` (asyncpg, its first driver, or psycopg's async one)."""
    from pgqueuer import Queries

    if driver == "asyncpg":
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            yield Queries.from_asyncpg_connection(conn)
        finally:
            await conn.close()
    else:
        import psycopg

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
            yield Queries.from_psycopg_connection(aconn)


async def _pgqueuer_consume(url: str, driver: str, batch: int, ready: Event) -> int:
    from pgqueuer import Job, QueueManager

    calls = 0
    async with pgqueuer_queries(url, driver) as queries:
        qm = QueueManager(queries)

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            nonlocal calls
            calls += 1

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
        ready.set()  # run() first checks the schema, then LISTENs and polls: idle before the jobs come
        await qm.run(batch_size=batch)
    return calls


def install_pgqueuer(url: str) -> None:
    async def install() -> None:
        async with pgqueuer_queries(url, "psycopg") as queries:
            await queries.install()

    asyncio.run(install())


def run_pgqueuer(url: str, *, driver: str, n: int, history: int, workers: int, batch: int) -> float:
    """Drain n jobs enqueued in one statement; returns jobs/s."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics RESTART IDENTITY")
        conn.execute(PGQ_HISTORY, {"n": history})
        conn.execute("VACUUM ANALYZE pgqueuer, pgqueuer_log")
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    readies = [ctx.Event() for _ in range(workers)]
    # Daemonic: should the bench fail half-way, its consumers (which run until SIGTERM) go with it.
    procs = [
        ctx.Process(target=pgqueuer_worker, args=(url, driver, batch, readies[i], results), daemon=True)
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    for ready in readies:
        assert ready.wait(60), "PgQueuer workers did not start"
    time.sleep(0.5)  # past the schema check, listening and idle
    if PROFILE.on:
        profile_reset(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(PGQ_ENQUEUE, {"n": n})
        start = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        while conn.execute("SELECT EXISTS (SELECT 1 FROM pgqueuer)").fetchone()[0]:  # type: ignore[index]
            time.sleep(0.25)
        last = "SELECT max(created) FROM pgqueuer_log WHERE job_id > 0 AND status = 'successful'"
        end = conn.execute(last).fetchone()[0]  # type: ignore[index]
        for p in procs:
            assert p.pid is not None
            os.kill(p.pid, signal.SIGTERM)
        outcome = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join()
        logged = conn.execute(
            # Its log holds a 'picked' row and then the outcome row per job: exactly once is one
            # 'successful' row per job and nothing else.
            "SELECT count(*) FILTER (WHERE status = 'successful'),"
            " count(DISTINCT job_id) FILTER (WHERE status = 'successful'),"
            " count(*) FILTER (WHERE status NOT IN ('successful', 'picked'))"
            " FROM pgqueuer_log WHERE job_id > 0"
        ).fetchone()
    calls = sum(outcome)
    assert logged is not None
    assert calls == n and tuple(logged) == (n, n, 0), f"PgQueuer: {calls} calls, log {tuple(logged)} for {n} jobs"
    return n / (end - start).total_seconds()


# -- the engine ----------------------------------------------------------------
def start_workers(url: str, stages: list[str], workers: int, batch: int) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, DATABASE_URL=url, TASKS_LOG_LEVEL="ERROR")
    args = ["--batch-size", str(batch), "--poll-interval", "0.05", "--progress-interval", "0", "--no-listen"]
    for slug in stages:
        args += ["--stage", slug]
    return [
        subprocess.Popen(
            [sys.executable, "manage.py", "run_worker", *args, "--worker-id", f"bench-{i}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> int:
    """SIGTERM the workers; returns the largest peak RSS among them, in MiB."""
    peak_kib = 0
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        peak_kib = max(peak_kib, usage.ru_maxrss)
    return peak_kib // 1024


def run_engine(
    url: str, *, first: int, last: int, slugs: list[str], n: int, history: int, workers: int, batch: int
) -> tuple[float, int]:
    """Drain n tasks committed at stage `first` until n are completed at stage `last`."""
    from django.db import connection

    from tasks_app.models import WorkerProcess

    with connection.cursor() as cur:
        cur.execute("TRUNCATE tasks_app_task, tasks_app_taskevent, tasks_app_workerprocess RESTART IDENTITY CASCADE")
        cur.execute(INSERT_HISTORY.format(table="tasks_app_task"), {"stage": first, "n": history})
        cur.execute("VACUUM ANALYZE tasks_app_task")
    procs = start_workers(url, slugs, workers, batch)
    deadline = time.monotonic() + 60
    while WorkerProcess.objects.count() < workers:  # every worker up and idle
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    time.sleep(0.3)
    if PROFILE.on:
        profile_reset(url)
    with connection.cursor() as cur:
        cur.execute(INSERT_TASKS.format(table="tasks_app_task"), {"stage": first, "n": n})
        cur.execute("SELECT clock_timestamp()")  # the tasks are committed (autocommit): the clock starts
        start = cur.fetchone()[0]
    while True:
        # Cheap: stops at the first unfinished task it finds in the claim index.
        with connection.cursor() as cur:
            cur.execute(
                "SELECT EXISTS (SELECT 1 FROM tasks_app_task"
                " WHERE stage_id = ANY(%s) AND status IN ('pending', 'locked'))",
                [[first, last]],
            )
            if not cur.fetchone()[0]:
                break
        time.sleep(0.25)  # the end time comes from the rows, so polling can be lazy (and cheap)
    with connection.cursor() as cur:
        cur.execute("SELECT max(completed_at) FROM tasks_app_task WHERE stage_id = %s", [last])
        elapsed = (cur.fetchone()[0] - start).total_seconds()
    peak = stop_workers(procs)
    with connection.cursor() as cur:
        # Exactly once: every new task completed, each with one attempt (a second run would count two).
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE attempts <> 1) FROM tasks_app_task"
            " WHERE stage_id = %s AND status = 'completed' AND locked_by <> 'earlier'",
            [last],
        )
        completed, retried = cur.fetchone()
    assert completed == n and retried == 0, f"engine completed {completed} of {n} ({retried} more than once)"
    return n / elapsed, peak


# -- report ----------------------------------------------------------------------
# Issue 13's targets: (batch, workers, peer, the least ours / peer).
TARGETS = [(10, 4, "PgQueuer", 1.5), (10, 4, "raw", 1.0), (1, 1, "raw", 0.9), (100, 4, "raw", 0.75)]


def server_conditions(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        settings = [
            f"{name}={conn.execute(f'SHOW {name}').fetchone()[0]}"  # type: ignore[index]
            for name in ("fsync", "synchronous_commit", "full_page_writes")
        ]
    return f"PostgreSQL {version} ({', '.join(settings)})"


# -- where the server's time goes (--profile) -------------------------------------
# Statements of the benchmark itself (loading jobs, polling for the end), not of the systems measured.
HARNESS = (
    "generate_series",
    "SELECT EXISTS (SELECT $1 FROM",
    "SELECT EXISTS (SELECT 1 FROM",
    "clock_timestamp",
    "max(created",
    "max(completed_at)",
    "count(*) FILTER",
    "pg_stat_statements",
    'FROM ONLY "public"."tasks_app_stage"',  # the foreign-key check of each job the load inserts
)


@dataclass
class ServerTime:
    """pg_stat_statements over one run: executor time per job, and the statements that took most of it."""

    ms_per_task: float
    top: list[tuple[float, int, float, str]]  # (share of the time, calls, mean ms, query's first words)


def profile_reset(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def profile_read(url: str, n: int) -> ServerTime:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT calls, total_exec_time, query FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    rows = [r for r in rows if not any(h in r[2] for h in HARNESS)]
    total = sum(r[1] for r in rows) or 1e-9
    top = sorted(rows, key=lambda r: -r[1])[:3]
    return ServerTime(
        ms_per_task=total / n,
        top=[(t / total, calls, t / max(calls, 1), " ".join(q.split())[:60]) for calls, t, q in top],
    )


def print_profiles(profiles: dict[tuple[int, int, str], tuple[float, ServerTime]]) -> None:
    print("\nWhere the server's time goes (pg_stat_statements, executor time only: commits' WAL flushes,")
    print("network and the client are the rest of a worker's time per task):\n")
    print(
        "| workers | batch | system | worker ms per task | server exec ms per task | top statements (share, mean ms) |"
    )
    print("|---:|---:|---|---:|---:|---|")
    for (batch, workers, system), (rate, st) in sorted(profiles.items()):
        top = "; ".join(f"{share:.0%} {mean:.2f} ms `{q}`" for share, _, mean, q in st.top)
        print(f"| {workers} | {batch} | {system} | {1000 * workers / rate:.3f} | {st.ms_per_task:.3f} | {top} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, help="finished tasks under each run's")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--batches", default="1,10,100")
    parser.add_argument(
        "--pgqueuer-driver",
        choices=["asyncpg", "psycopg"],
        default="asyncpg",
        help="PgQueuer's driver (default asyncpg, its fastest: over psycopg its LISTEN watcher holds the connection)",
    )
    parser.add_argument("--no-pipeline", action="store_true", help="skip the two-stage pipeline runs")
    parser.add_argument(
        "--no-dedupe", action="store_true", help="skip the pipeline runs with dedupe keys on (issue 15)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="report pg_stat_statements per run (server started with `scripts/with_postgres.py --profile`)",
    )
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        print("bench: DATABASE_URL must point at PostgreSQL (or run `make bench`)", file=sys.stderr)
        return 2
    try:
        workers_list = [int(w) for w in args.workers.split(",")]
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        print("bench: --workers and --batches take comma-separated whole numbers, e.g. 1,2,4", file=sys.stderr)
        return 2
    try:
        pgq_default = pgqueuer_default_batch()
    except ImportError:
        print(
            "bench: PgQueuer is not installed (pip install -r requirements-bench.txt, or run `make bench`)",
            file=sys.stderr,
        )
        return 2
    n, history = args.tasks, args.history

    bench_url = create_bench_database(url)
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "workflowsite.settings")
    os.environ.setdefault("TASKS_HANDLER_MODULES", "bench.handlers")  # its stages' handlers (and its workers')
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from importlib.metadata import version

    from django.core.management import call_command
    from django.db import connection

    from tasks_app.models import Stage, Transition

    call_command("migrate", verbosity=0)
    noop = Stage.objects.create(slug="bench-noop", name="noop", handler="bench.handlers.noop")
    first = Stage.objects.create(slug="bench-a", name="first", handler="bench.handlers.forward")
    second = Stage.objects.create(slug="bench-b", name="second", handler="bench.handlers.noop")
    Transition.objects.create(source=first, target=second, task_type="")
    # The same pipeline with dedupe keys on its second stage (issue 15): every arrival computes its key
    # from the payload and goes through the unique index on live keys (the keys are all distinct here,
    # so every task arrives and the drain is checked complete as the others).
    dedupe_first = Stage.objects.create(slug="bench-da", name="first (dedupe)", handler="bench.handlers.forward")
    dedupe_second = Stage.objects.create(
        slug="bench-db", name="second (dedupe)", handler="bench.handlers.noop", dedupe_on=["/n"]
    )
    Transition.objects.create(source=dedupe_first, target=dedupe_second, task_type="")
    with connection.cursor() as cur:
        cur.execute("CREATE TABLE bench_raw (LIKE tasks_app_task INCLUDING ALL)")
    connection.close()
    install_pgqueuer(bench_url)
    if args.profile:
        import psycopg

        with psycopg.connect(bench_url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    host = urlparse(bench_url)
    print(
        f"# {n:,} no-op tasks per run on {history:,} finished ones; {server_conditions(bench_url)} at "
        f"{host.hostname}:{host.port}; {os.cpu_count()} CPUs; PgQueuer {version('pgqueuer')} "
        f"({args.pgqueuer_driver} {version(args.pgqueuer_driver)} driver, default batch_size {pgq_default}); "
        f"ours and raw on psycopg {version('psycopg')}\n"
    )
    print(
        "| workers | batch | ours tasks/s | PgQueuer tasks/s | raw tasks/s | ours / PgQueuer | ours / raw "
        "| ours peak RSS |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    rates: dict[tuple[int, int, str], float] = {}
    profiles: dict[tuple[int, int, str], tuple[float, ServerTime]] = {}
    for batch in batches:
        for workers in workers_list:
            PROFILE.on = args.profile
            raw = run_raw(bench_url, stage=noop.pk, n=n, history=history, workers=workers, batch=batch)
            if args.profile:
                profiles[(batch, workers, "raw")] = (raw, profile_read(bench_url, n))
            pgq = run_pgqueuer(
                bench_url, driver=args.pgqueuer_driver, n=n, history=history, workers=workers, batch=batch
            )
            if args.profile:
                profiles[(batch, workers, "PgQueuer")] = (pgq, profile_read(bench_url, n))
            ours, peak = run_engine(
                bench_url,
                first=noop.pk,
                last=noop.pk,
                slugs=["bench-noop"],
                n=n,
                history=history,
                workers=workers,
                batch=batch,
            )
            if args.profile:
                profiles[(batch, workers, "ours")] = (ours, profile_read(bench_url, n))
            PROFILE.on = False
            rates.update(
                {(batch, workers, "ours"): ours, (batch, workers, "PgQueuer"): pgq, (batch, workers, "raw"): raw}
            )
            print(
                f"| {workers} | {batch} | {ours:,.0f} | {pgq:,.0f} | {raw:,.0f} | {ours / pgq:.2f}× "
                f"| {ours / raw:.2f}× | {peak} MiB |",
                flush=True,
            )

    if pgq_default not in batches:
        print(f"\nPgQueuer at its default batch_size ({pgq_default}):\n")
        print("| workers | PgQueuer tasks/s |")
        print("|---:|---:|")
        for workers in workers_list:
            pgq = run_pgqueuer(
                bench_url, driver=args.pgqueuer_driver, n=n, history=history, workers=workers, batch=pgq_default
            )
            print(f"| {workers} | {pgq:,.0f} |", flush=True)

    def pipeline(source: Stage, target: Stage, workers: int) -> tuple[float, int]:
        """A two-stage pipeline's end-to-end rate at batch 100 (tasks committed at source, done at target)."""
        slugs = [source.slug, target.slug]
        return run_engine(
            bench_url, first=source.pk, last=target.pk, slugs=slugs, n=n, history=history, workers=workers, batch=100
        )

    if not args.no_pipeline:
        print("\nTwo-stage pipeline (first handler sends each task to the second stage), end to end:\n")
        print("| workers | batch | tasks/s (end to end) | worker peak RSS |")
        print("|---:|---:|---:|---:|")
        for workers in workers_list:
            rate, peak = pipeline(first, second, workers)
            print(f"| {workers} | 100 | {rate:,.0f} | {peak} MiB |", flush=True)

    if not args.no_dedupe:
        print(
            "\nTwo-stage pipeline, batch 100, without and with dedupe keys on the second stage (Stage.dedupe_on"
            " ['/n']: distinct keys), runs alternated:\n"
        )
        print("| workers | plain tasks/s | dedupe tasks/s | dedupe / plain |")
        print("|---:|---:|---:|---:|")
        for workers in workers_list:
            plain_rate, _ = pipeline(first, second, workers)
            dedupe_rate, _ = pipeline(dedupe_first, dedupe_second, workers)
            print(
                f"| {workers} | {plain_rate:,.0f} | {dedupe_rate:,.0f} | {dedupe_rate / plain_rate:.2f}× |", flush=True
            )

    if profiles:
        print_profiles(profiles)
    print()
    for batch, workers, peer, target in TARGETS:
        if (batch, workers, peer) in rates:
            ratio = rates[(batch, workers, "ours")] / rates[(batch, workers, peer)]
            verdict = "meets" if ratio >= target else f"MISSES (by {target - ratio:.2f})"
            print(f"batch {batch}, {workers} workers: ours / {peer} {ratio:.2f}× {verdict} the {target:.2f}× target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
