#!/usr/bin/env python3
"""Server time of the monitoring pages at 10,000 and 1,000,000 tasks (PostgreSQL).

    make bench-pages                         # starts a throwaway PostgreSQL
    python bench/pages.py --sizes 10000,1000000

Seeds tasks with `manage.py seed_tasks`, then renders each page in-process with
Django's test client (middleware, queries, templates: the server's whole share
of a request) several times and prints the median and worst, in milliseconds.
The overview is timed cold (its cached completed/failed counts just expired)
and warm (what every auto-refresh within the cache lifetime costs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from benchdb import fresh_database  # bench/ is sys.path[0] when a script here runs

BENCH_DB = "workflow_bench_pages"
TARGET_MS = 300


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    url = fresh_database(BENCH_DB)
    if url is None:
        return 2
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.cache import cache
    from django.core.management import call_command
    from django.test import Client

    from tasks_app.models import Stage, Task

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_superuser("bench", password="bench-pw-1")
    client = Client()
    client.force_login(user)

    def timed(path: str, *, cold: bool = False) -> tuple[float, float]:
        samples = []
        for _ in range(args.repeat):
            if cold:
                cache.clear()
            start = time.perf_counter()
            response = client.get(path)
            samples.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        return statistics.median(samples), max(samples)

    seeded = 0
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        print(f"seeding up to {size:,} tasks ...", flush=True)
        call_command("seed_tasks", count=size - seeded, stdout=open(os.devnull, "w"))
        seeded = size
        stage = Stage.objects.earliest("id")  # seed_tasks made the stages
        middle = Task.objects.filter(pk__gte=size // 2).order_by("id").values_list("id", flat=True).first()
        pages = [
            ("overview, cold counts", "/overview/", True),
            ("overview, cached counts", "/overview/", False),
            ("task list, first page", "/tasks/", False),
            ("task list, stage+status", f"/tasks/?stage={stage.slug}&status=pending", False),
            ("task list, auto-refresh rows", "/tasks/rows/", False),
            ("task detail", f"/tasks/{middle}/", False),
            ("workers", "/workers/", False),
        ]
        for name, path, cold in pages:
            median, worst = timed(path, cold=cold)
            rows.append((size, name, median, worst))
            print(f"  {name:32} median {median:7.1f} ms   worst {worst:7.1f} ms", flush=True)

    print("\n| tasks | page | median ms | worst ms | under 300 ms |")
    print("|---:|---|---:|---:|---|")
    for size, name, median, worst in rows:
        print(f"| {size:,} | {name} | {median:.1f} | {worst:.1f} | {'yes' if median < TARGET_MS else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
