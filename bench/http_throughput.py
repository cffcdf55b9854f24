#!/usr/bin/env python3
"""Draining tasks over HTTP (examples/http_worker.py against gunicorn) versus the in-process worker.

    make bench-http                                  # a throwaway PostgreSQL with production durability
    python bench/http_throughput.py --tasks 20000    # with DATABASE_URL=postgres://...

One gunicorn (production settings: DEBUG off, gthread, 4 workers x 4
threads by default) serves the API on a fresh database. For each number of
client processes P, P example HTTP workers (claim limit 100, one
bulk-complete per batch, a no-op handler) drain N tasks from one script
stage; then P `run_worker` processes (batch 100, the same no-op handler)
drain N identical tasks from the same stage. Both start up and idle before
the tasks are committed, and time runs from that commit to the last
`completed_at`, as in bench/throughput.py (whose in-process measurement
this reuses). Each run starts from the same table: 4 x N finished tasks, as
a long-lived table has, then N pending ones. Every run checks that each task
was completed exactly once.

PostgreSQL should run with fsync and synchronous_commit on (what production
runs): `make bench-http` starts it that way (scripts/with_postgres.py
--durable); this script turns synchronous_commit on for its database in any
case, and prints the server's settings with the figures.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchdb import ROOT, fresh_database  # bench/ is sys.path[0] when a script here runs

BENCH_DB = "workflow_bench_http"
STAGE = "bench-noop"
CLIENT = ROOT / "examples" / "http_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the server -------------------------------------------------------------------------------------


def start_gunicorn(workers: int, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    """gunicorn -c gunicorn.conf.py with production settings on this database; returns it and its base URL."""
    port = free_port()
    env = dict(
        os.environ,
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1",
        SECURE_SSL_REDIRECT="false",  # plain HTTP on the loopback, as behind a TLS-terminating proxy
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS=str(workers),
        GUNICORN_THREADS=str(threads),
        GUNICORN_ACCESS_LOG=os.devnull,
        STATIC_ROOT=tempfile.mkdtemp(prefix="bench-static-"),  # whitenoise warns about a missing folder
        TASKS_LOG_LEVEL="ERROR",
    )
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py"], cwd=ROOT, env=env
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/api/health/", timeout=2) as response:
                if response.status == 200:
                    return proc, base
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("bench: gunicorn did not start")
        time.sleep(0.2)


# -- one HTTP run -------------------------------------------------------------------------------------


def start_clients(base: str, token: str, n: int, limit: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, HTTP_WORKER_URL=base, HTTP_WORKER_TOKEN=token, PYTHONPATH=str(ROOT))
    args = ["--stage", STAGE, "--limit", str(limit), "--handler", "bench.handlers:noop"]
    # Poll every 50 ms when idle, like run_worker's --poll-interval 0.05 in the other half.
    args += ["--poll-interval", "0.05", "--max-idle", "0.05"]
    procs = []
    for i in range(n):
        with open(logs / f"client-{i}.log", "wb") as out:  # a file: nobody reads a pipe while it runs
            procs.append(subprocess.Popen([sys.executable, str(CLIENT), *args], env=env, stdout=out, stderr=out))
    return procs


def wait_started(procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + 60
    while not all(b"started:" in (logs / f"client-{i}.log").read_bytes() for i in range(len(procs))):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit("bench: an HTTP client did not start:\n" + (logs / "client-0.log").read_text())
        time.sleep(0.05)


def run_http(*, stage: int, n: int, clients: int, limit: int, base: str, token: str) -> tuple[float, int]:
    """Drain n tasks with `clients` example HTTP workers; returns tasks/s and their largest peak RSS (MiB)."""
    from django.db import connection
    from throughput import HISTORY_FACTOR, INSERT_HISTORY, INSERT_TASKS

    with connection.cursor() as cur:
        cur.execute("TRUNCATE tasks_app_task, tasks_app_taskevent, tasks_app_workerprocess RESTART IDENTITY CASCADE")
        cur.execute(INSERT_HISTORY.format(table="tasks_app_task"), {"stage": stage, "n": n * HISTORY_FACTOR})
        cur.execute("VACUUM ANALYZE tasks_app_task")
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        logs = Path(tmp)
        procs = start_clients(base, token, clients, limit, logs)
        wait_started(procs, logs)
        time.sleep(0.3)  # each has made its first (empty) claim and is polling
        with connection.cursor() as cur:
            cur.execute(INSERT_TASKS.format(table="tasks_app_task"), {"stage": stage, "n": n})
            cur.execute("SELECT clock_timestamp()")  # committed (autocommit): the clock starts
            start = cur.fetchone()[0]
        wait_drained(stage)
        peak = max(peak_rss_mib(p.pid) for p in procs)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        bad = [p.wait(timeout=60) for p in procs if p.wait(timeout=60) != 0]
        assert not bad, f"HTTP client exit statuses {bad}:\n" + (logs / "client-0.log").read_text()[-3000:]
    with connection.cursor() as cur:
        cur.execute("SELECT max(completed_at) FROM tasks_app_task WHERE stage_id = %s", [stage])
        elapsed = (cur.fetchone()[0] - start).total_seconds()
    return n / elapsed, peak


def peak_rss_mib(pid: int) -> int:
    """The process's peak resident size so far (VmHWM). Not wait4's ru_maxrss: on Linux that also
    counts the memory the child had before exec, i.e. a copy of this (Django-sized) parent."""
    with open(f"/proc/{pid}/status") as status:
        line = next(x for x in status if x.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024


def wait_drained(stage: int) -> None:
    from django.db import connection

    while True:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT EXISTS (SELECT 1 FROM tasks_app_task WHERE stage_id = %s AND status IN ('pending', 'locked'))",
                [stage],
            )
            if not cur.fetchone()[0]:
                return
        time.sleep(0.25)  # the end time comes from the rows, so polling can be lazy


def check_exactly_once(n: int) -> None:
    """Each of the run's n tasks completed, and completed once (history), whoever drained them."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT task_id) FROM tasks_app_taskevent WHERE kind = 'completed'")
        events, tasks = cur.fetchone()
        cur.execute("SELECT count(*) FROM tasks_app_task WHERE status IN ('pending', 'locked', 'failed')")
        [left] = cur.fetchone()
    assert events == tasks == n and left == 0, f"{events} completions of {tasks} tasks, {left} unfinished; want {n}"


# -- the run ---------------------------------------------------------------------------------------------


def setup() -> tuple[int, str, str]:
    """Migrate, create the stage and a token; returns the stage id, the token and a line on the server."""
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from tasks_app.models import Stage

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)  # the throttle counters' table, if the settings use one
    with connection.cursor() as cur:
        # A database default wins over the server's command line (with_postgres without --durable).
        cur.execute(f"ALTER DATABASE {BENCH_DB} SET synchronous_commit = on")
        cur.execute("SELECT version(), current_setting('fsync'), current_setting('full_page_writes')")
        version, fsync, fpw = cur.fetchone()
    stage = Stage.objects.create(slug=STAGE, name="noop", handler="bench.handlers.noop")
    user = User.objects.create_superuser("bench", "bench@example.com", secrets.token_urlsafe(16))
    token = Token.objects.create(user=user).key
    connection.close()  # the next connection gets synchronous_commit from the database
    server = f"{version.split(' on ')[0]}; fsync {fsync}, synchronous_commit on, full_page_writes {fpw}"
    return stage.pk, token, server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--processes", default="1,2,4", help="Client processes (and run_worker processes) per run.")
    parser.add_argument("--limit", type=int, default=100, help="Claim limit (HTTP) and --batch-size (run_worker).")
    parser.add_argument("--gunicorn-workers", type=int, default=4)
    parser.add_argument("--gunicorn-threads", type=int, default=4)
    args = parser.parse_args()
    if fresh_database(BENCH_DB) is None:
        return 2
    # The no-op handler's module must be allowed, here and in every process this starts.
    os.environ["TASKS_HANDLER_MODULES"] = "bench.handlers"
    stage, token, server = setup()
    from throughput import run_engine

    from tasks_app.models import Stage

    slug = Stage.objects.get(pk=stage).slug
    gunicorn, base = start_gunicorn(args.gunicorn_workers, args.gunicorn_threads)
    n = args.tasks
    try:
        print(
            f"# {n} tasks per run; {server}; gunicorn {args.gunicorn_workers} workers x {args.gunicorn_threads} "
            f"threads; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start\n"
        )
        print("| processes | HTTP tasks/s | in-process tasks/s | HTTP / in-process | HTTP client peak RSS |")
        print("|---:|---:|---:|---:|---:|")
        for p in [int(x) for x in args.processes.split(",")]:
            http, rss = run_http(stage=stage, n=n, clients=p, limit=args.limit, base=base, token=token)
            check_exactly_once(n)
            local, _ = run_engine(
                os.environ["DATABASE_URL"], first=stage, last=stage, slugs=[slug], n=n, workers=p, batch=args.limit
            )
            check_exactly_once(n)
            print(f"| {p} | {http:,.0f} | {local:,.0f} | {http / local:.0%} | {rss} MiB |", flush=True)
        print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    finally:
        gunicorn.send_signal(signal.SIGTERM)
        gunicorn.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
