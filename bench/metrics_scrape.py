#!/usr/bin/env python3
"""Cost of /metrics on a big PostgreSQL database, and of the claim histogram.

    python scripts/with_postgres.py -- python bench/metrics_scrape.py --count 1000000

Seeds --count tasks (with their ~2 events each) with `manage.py seed_tasks`,
then measures, server side, in milliseconds:
- the first fold of the whole history into the counters (bounded folds of
  FOLD_MAX_ROWS events each, until the cursor reaches the newest event);
- a scrape once the counters have caught up: with every cache cold (a fold
  with nothing new, the backlog gauges, live workers, the histograms of
  --workers stopped workers' rows), with only the body expired (what a
  scrape every TASKS_METRICS_CACHE seconds costs), and cached;
- an incremental fold of --new fresh events (what a scrape after a busy
  15 seconds adds);
- a claim of one batch at one stage, and histograms.observe() alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from datetime import timedelta

from benchdb import fresh_database  # bench/ is sys.path[0] when a script here runs

BENCH_DB = "workflow_bench_metrics"
TOKEN = "bench-metrics-token-0123456789"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=10_000, help="fresh events for the incremental fold")
    parser.add_argument("--workers", type=int, default=500, help="WorkerProcess rows with histograms")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    url = fresh_database(BENCH_DB)
    if url is None:
        return 2
    os.environ["TASKS_METRICS_TOKEN"] = TOKEN
    import django

    django.setup()
    from django.core.cache import cache
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from tasks_app.models import CounterCursor, Stage, TaskEvent, WorkerProcess
    from tasks_app.services import counters, histograms, task_claim, tasks_create_bulk
    from tasks_app.views.prometheus import CACHE_KEY

    call_command("migrate", verbosity=0)
    print(f"seeding {args.count:,} tasks ...", flush=True)
    started = time.perf_counter()
    call_command("seed_tasks", count=args.count, stdout=open(os.devnull, "w"))
    events = TaskEvent.objects.count()
    print(f"  {events:,} events, {time.perf_counter() - started:.0f} s", flush=True)
    last_id = TaskEvent.objects.order_by("-id").values_list("id", flat=True)[0]

    # 1. The first fold: from nothing to every seeded event, in bounded steps
    #    (as if SETTLE_SECONDS had passed since the newest seeded event).
    later = timezone.now() + timedelta(seconds=counters.SETTLE_SECONDS + 1)
    steps = []
    while not CounterCursor.objects.filter(last_event_id__gte=last_id).exists():
        t = time.perf_counter()
        counted = counters.counters_fold(now=later)
        steps.append((time.perf_counter() - t, counted))
    total = sum(s for s, _ in steps)
    print(f"first fold: {len(steps)} step(s), {ms(total)} ms in all; per step (ms, events):", flush=True)
    for seconds, counted in steps:
        print(f"  {ms(seconds)} ms  {counted:,} events", flush=True)

    # Registry rows as a long-lived installation has them: every start leaves one.
    stages = list(Stage.objects.values_list("slug", flat=True))
    snapshot = {"version": 1, "buckets": list(histograms.BUCKETS)}
    for name in histograms.HISTOGRAMS:
        snapshot[name] = {slug: {"counts": [3] * (len(histograms.BUCKETS) + 1), "sum": 1.5} for slug in stages}
    now = timezone.now()
    WorkerProcess.objects.bulk_create(
        WorkerProcess(worker_id=f"bench-{i}", host="h", pid=i, last_heartbeat=now, stopped_at=now, metrics=snapshot)
        for i in range(args.workers)
    )

    client = Client()
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def scrape(*, cold: str) -> list[float]:
        samples = []
        for _ in range(args.repeat):
            if cold == "body":
                cache.delete(CACHE_KEY)  # the body expired; stopped workers' histograms still cached
            elif cold == "all":
                cache.clear()  # as after a restart of the web process
            t = time.perf_counter()
            response = client.get("/metrics", headers=auth)
            samples.append(time.perf_counter() - t)
            assert response.status_code == 200, response.status_code
        return samples

    rows = []
    scrapes = [
        ("scrape, every cache cold (process restart)", "all"),
        ("scrape, body computed (counters caught up)", "body"),
        ("scrape, body cached", ""),
    ]
    for label, cold in scrapes:
        samples = scrape(cold=cold)
        rows.append((label, statistics.median(samples), max(samples)))

    # 2. What a scrape parts cost on their own (median of --repeat).
    from tasks_app.selectors.overview import live_counts

    def timed(fn: Callable[[], object]) -> tuple[float, float]:
        samples = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples), max(samples)

    rows.append(("  of which: fold with nothing new", *timed(counters.counters_fold)))
    rows.append(("  of which: pending/locked/oldest (live_counts)", *timed(live_counts)))

    def histograms_cold() -> object:
        cache.clear()
        return histograms.worker_histograms()

    cached = timed(histograms.worker_histograms)
    rows.append((f"  of which: histograms, {args.workers} stopped workers cached", *cached))
    rows.append((f"  of which: histograms, {args.workers} stopped workers summed", *timed(histograms_cold)))

    # 3. An incremental fold of --new fresh events (folded as if SETTLE_SECONDS had passed).
    stage = Stage.objects.create(slug="bench-metrics", name="Bench", handler="bench.handlers.noop")
    tasks_create_bulk(items=[(stage, "order", {"n": i}) for i in range(args.new)])
    later = timezone.now() + timedelta(seconds=counters.SETTLE_SECONDS + 1)
    t = time.perf_counter()
    counted = counters.counters_fold(now=later)
    seconds = time.perf_counter() - t
    rows.append((f"incremental fold of {counted:,} new events", seconds, seconds))

    # 4. The claim and its histogram observation.
    histograms.worker_opened("bench-claimer")
    claims = []
    for _ in range(50):
        t = time.perf_counter()
        task_claim(stage=stage, worker_id="bench-claimer", limit=10)
        claims.append(time.perf_counter() - t)
    rows.append(("claim of 10 tasks (observed)", statistics.median(claims), max(claims)))
    n = 200_000
    observe = histograms.observe
    per_call = timeit.timeit(
        lambda: observe("claim", worker_id="bench-claimer", stage=stage.slug, seconds=0.003), number=n
    )
    per_noop = timeit.timeit(lambda: observe("claim", worker_id="not-here", stage=stage.slug, seconds=0.003), number=n)
    clock = timeit.timeit(time.perf_counter, number=n)
    connection.close()

    print("\n| measure | median ms | worst ms |")
    print("|---|---:|---:|")
    for label, median, worst in rows:
        print(f"| {label} | {ms(median)} | {ms(worst)} |")
    claim = statistics.median(claims)
    overhead = per_call / n + 2 * clock / n
    print(
        f"\nobserve(): {per_call / n * 1e6:.2f} µs per call recorded, {per_noop / n * 1e6:.2f} µs for a worker "
        f"not in this process; with its two perf_counter() calls {overhead * 1e6:.2f} µs = "
        f"{overhead / claim * 100:.3f}% of a median claim ({ms(claim)} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
