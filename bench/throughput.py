#!/usr/bin/env python3
"""Worker throughput on PostgreSQL, against a raw-SQL baseline, in one run.

    make bench                                   # starts a throwaway PostgreSQL
    python bench/throughput.py --tasks 20000     # with DATABASE_URL=postgres://...

For each number of worker processes W and batch size B it drains N tasks
(small JSON payload) from one script stage whose handler does nothing, and
reports tasks/s. The baseline drains an identical table (same columns,
indexes and constraints, created with LIKE ... INCLUDING ALL) with W plain
psycopg processes doing, per batch, one
`UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT B) RETURNING`
and one completing UPDATE, no Django and no history. Then a two-stage
pipeline (the first handler sends each task to the second stage) gives
end-to-end tasks/s. Workers are started and idle before the tasks are
committed, so process start-up is not timed; a worker's peak memory is its
maximum resident set size, read when it exits.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
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
HISTORY_FACTOR = 4

RAW_CLAIM = """
UPDATE bench_raw SET status = 'locked', lock_token = md5(random()::text), locked_by = %(worker)s,
       locked_at = now(), locked_until = now() + interval '5 minutes', attempts = attempts + 1,
       updated_at = now()
WHERE id IN (
    SELECT id FROM bench_raw
    WHERE stage_id = %(stage)s
      AND ((status = 'pending' AND available_at <= now()) OR (status = 'locked' AND locked_until < now()))
    ORDER BY id LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED)
RETURNING id
"""

RAW_COMPLETE = """
UPDATE bench_raw SET status = 'completed', completed_at = now(), updated_at = now(),
       lock_token = '', locked_until = NULL
WHERE id = ANY(%(ids)s) AND status = 'locked'
"""


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
            ids = [r[0] for r in conn.execute(RAW_CLAIM, {"worker": worker, "stage": stage, "batch": batch})]
            if not ids:
                break
            conn.execute(RAW_COMPLETE, {"ids": ids})
            done += len(ids)
    counts.put(done)


def run_raw(url: str, *, stage: int, n: int, workers: int, batch: int) -> float:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE bench_raw RESTART IDENTITY")
        conn.execute(INSERT_HISTORY.format(table="bench_raw"), {"stage": stage, "n": n * HISTORY_FACTOR})
        conn.execute("VACUUM ANALYZE bench_raw")
        conn.execute(INSERT_TASKS.format(table="bench_raw"), {"stage": stage, "n": n})
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(workers + 1)
    counts: mp.Queue = ctx.Queue()
    procs = [
        ctx.Process(target=raw_worker, args=(url, stage, batch, f"raw-{i}", ready, counts)) for i in range(workers)
    ]
    for p in procs:
        p.start()
    ready.wait()
    start = time.perf_counter()
    total = sum(counts.get() for _ in procs)
    elapsed = time.perf_counter() - start
    for p in procs:
        p.join()
    assert total == n, f"raw baseline drained {total} of {n}"
    return n / elapsed


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
    url: str, *, first: int, last: int, slugs: list[str], n: int, workers: int, batch: int
) -> tuple[float, int]:
    """Drain n tasks committed at stage `first` until n are completed at stage `last`."""
    from django.db import connection

    from tasks_app.models import WorkerProcess

    with connection.cursor() as cur:
        cur.execute("TRUNCATE tasks_app_task, tasks_app_taskevent, tasks_app_workerprocess RESTART IDENTITY CASCADE")
        cur.execute(INSERT_HISTORY.format(table="tasks_app_task"), {"stage": first, "n": n * HISTORY_FACTOR})
        cur.execute("VACUUM ANALYZE tasks_app_task")
    procs = start_workers(url, slugs, workers, batch)
    deadline = time.monotonic() + 60
    while WorkerProcess.objects.count() < workers:  # every worker up and idle
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    time.sleep(0.3)
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
        cur.execute("SELECT count(*) FROM tasks_app_task WHERE stage_id = %s AND status = 'completed'", [last])
        completed = cur.fetchone()[0] - (n * HISTORY_FACTOR if last == first else 0)
    assert completed == n, f"engine completed {completed} of {n}"
    return n / elapsed, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--batches", default="1,10,100")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        print("bench: DATABASE_URL must point at PostgreSQL (or run `make bench`)", file=sys.stderr)
        return 2
    workers_list = [int(w) for w in args.workers.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    n = args.tasks

    bench_url = create_bench_database(url)
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "workflowsite.settings")
    os.environ.setdefault("TASKS_HANDLER_MODULES", "bench.handlers")  # its stages' handlers (and its workers')
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from tasks_app.models import Stage, Transition

    call_command("migrate", verbosity=0)
    noop = Stage.objects.create(slug="bench-noop", name="noop", handler="bench.handlers.noop")
    first = Stage.objects.create(slug="bench-a", name="first", handler="bench.handlers.forward")
    second = Stage.objects.create(slug="bench-b", name="second", handler="bench.handlers.noop")
    Transition.objects.create(source=first, target=second, task_type="")
    with connection.cursor() as cur:
        cur.execute("CREATE TABLE bench_raw (LIKE tasks_app_task INCLUDING ALL)")
    connection.close()

    print(
        f"# {n} tasks per run; PostgreSQL at {urlparse(bench_url).hostname}:{urlparse(bench_url).port}; "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| workers | batch | engine tasks/s | raw SQL tasks/s | engine / raw | worker peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    ratios: dict[int, list[float]] = {}
    for batch in batches:
        for workers in workers_list:
            raw = run_raw(bench_url, stage=noop.pk, n=n, workers=workers, batch=batch)
            ours, peak = run_engine(
                bench_url, first=noop.pk, last=noop.pk, slugs=["bench-noop"], n=n, workers=workers, batch=batch
            )
            ratios.setdefault(batch, []).append(ours / raw)
            print(f"| {workers} | {batch} | {ours:,.0f} | {raw:,.0f} | {ours / raw:.0%} | {peak} MiB |", flush=True)

    print("\nTwo-stage pipeline (first handler sends each task to the second stage), end to end:\n")
    print("| workers | batch | tasks/s (end to end) | worker peak RSS |")
    print("|---:|---:|---:|---:|")
    for workers in workers_list:
        rate, peak = run_engine(
            bench_url, first=first.pk, last=second.pk, slugs=["bench-a", "bench-b"], n=n, workers=workers, batch=100
        )
        print(f"| {workers} | 100 | {rate:,.0f} | {peak} MiB |", flush=True)

    print()
    for batch, target in ((100, 0.25), (1, 0.50)):
        if batch in ratios:
            worst = min(ratios[batch])
            verdict = "meets" if worst >= target else "MISSES"
            print(f"batch {batch}: worst engine/raw ratio {worst:.0%} {verdict} the {target:.0%} target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
