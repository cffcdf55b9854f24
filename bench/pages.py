#!/usr/bin/env python3
"""Server time of every monitoring page at 10,000 and 1,000,000 tasks (PostgreSQL).

    make bench-pages                         # starts a throwaway PostgreSQL
    python bench/pages.py --sizes 10000,1000000

Seeds tasks with `manage.py seed_tasks` (tasks and their history), folds that
history into the counters and hourly roll-ups as the workers' upkeep would,
then renders each page in-process with Django's test client (middleware,
queries, templates: the server's whole share of a request) several times and
prints the median and worst, in milliseconds. The overview is timed cold (its
cached completed/failed counts just expired) and warm (what every
auto-refresh within the cache lifetime costs). Next/previous pages follow the
links the first page renders; a lookup is timed with its redirect followed.
Last, the list page's HTML size for 50 rows of 2 KB payloads.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import statistics
import sys
import time
from typing import Any
from urllib.parse import urljoin

from benchdb import fresh_database  # bench/ is sys.path[0] when a script here runs

BENCH_DB = "workflow_bench_pages"
TARGET_MS = 300
TARGET_HTML_KB = 200
SORTS = ("-id", "id", "-created_at", "created_at", "-updated_at", "updated_at")


def rel_link(body: str, rel: str, base: str) -> str | None:
    """The target of the first <a rel="next|prev"> in the page at `base`."""
    for match in re.finditer(r"<a\b([^>]*)>", body):
        attrs = match.group(1)
        if re.search(rf'\brel="{rel}"', attrs):
            href = re.search(r'\bhref="([^"]*)"', attrs)
            if href:
                return urljoin(base, html.unescape(href.group(1)))
    return None


def big_payload(n: int) -> dict[str, Any]:
    """About 2 KB of JSON shaped like an order with notes."""
    lines = [{"sku": f"SKU-{n}-{k}", "qty": k % 4 + 1, "note": "handle with care " * 3} for k in range(21)]
    return {"order_id": 900_000_000 + n, "customer": f"big-{n}@example.com", "items": lines}


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
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from tasks_app.models import Stage, Task
    from tasks_app.services import counters

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_superuser("bench", password="bench-pw-1")
    client = Client()
    client.force_login(user)

    def timed(path: str, *, cold: bool = False, follow: bool = False) -> tuple[float, float, Any]:
        samples = []
        response: Any = None
        for _ in range(args.repeat):
            if cold:
                cache.clear()
            start = time.perf_counter()
            response = client.get(path, follow=follow)
            samples.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        return statistics.median(samples), max(samples), response

    def first_page(path: str) -> str:
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        return response.content.decode()

    seeded = 0
    rows: list[tuple[int, str, float, float]] = []
    for size in [int(s) for s in args.sizes.split(",")]:
        print(f"seeding up to {size:,} tasks ...", flush=True)
        call_command("seed_tasks", count=size - seeded, stdout=open(os.devnull, "w"))
        seeded = size
        start = time.perf_counter()
        folded = 0
        cursor_row = counters.CounterCursor.objects.filter(pk=counters.CURSOR_PK)
        while True:  # the workers' upkeep folds the history as it is written; here all of it at once
            before = list(cursor_row.values_list("last_event_id", flat=True))
            folded += counters.counters_fold(max_rows=50_000, now=timezone.now() + _settle())
            if list(cursor_row.values_list("last_event_id", flat=True)) == before:
                break
        print(f"  folded {folded:,} history events in {time.perf_counter() - start:.1f} s", flush=True)
        with connection.cursor() as cursor:  # what autovacuum does soon after: statistics and the visibility map
            cursor.execute("VACUUM ANALYZE")
        stages = {s.slug: s for s in Stage.objects.all()}
        first = min(stages.values(), key=lambda s: s.pk)
        middle = Task.objects.filter(pk__gte=size // 2).order_by("id").values_list("id", flat=True).first()
        form = next((s for s in stages.values() if s.kind == "form"), None)
        pending_form = (
            Task.objects.filter(stage=form, status="pending").order_by("id").values_list("id", flat=True).first()
            if form
            else None
        )
        sample = Task.objects.filter(pk=middle or 0).values_list("payload", flat=True).first() or {}
        pages: list[tuple[str, str, bool, bool]] = [
            ("overview, cold counts", "/overview/", True, False),
            ("overview, cached counts", "/overview/", False, False),
            ("overview, 7 d figures", "/overview/?window=7d", False, False),
            ("overview, live counts (JSON)", "/overview/counts.json", False, False),
        ]
        for slug, stage in sorted(stages.items(), key=lambda kv: kv[1].pk):
            pages.append((f"stage page, {slug} ({stage.kind})", f"/stages/{slug}/", False, False))
        pages.append((f"stage page, {first.slug}, 7 d", f"/stages/{first.slug}/?window=7d", False, False))
        filters = [("", "all"), ("&status=completed", "completed"), (f"&stage={first.slug}", first.slug)]
        for sort in SORTS:
            for extra, label in filters:
                path = f"/tasks/?sort={sort}{extra}"
                pages.append((f"task list, sort {sort}, {label}", path, False, False))
                nxt = rel_link(first_page(path), "next", path)
                if nxt:
                    pages.append((f"  next page, sort {sort}, {label}", nxt, False, False))
                    prev = rel_link(first_page(nxt), "prev", nxt)
                    if prev:
                        pages.append((f"  previous page, sort {sort}, {label}", prev, False, False))
        pages += [
            ("task list, stage+status (pending)", f"/tasks/?stage={first.slug}&status=pending", False, False),
            ("task list, failed", "/tasks/?status=failed", False, False),
            ("task list, auto-refresh rows", "/tasks/rows/", False, False),
            ("lookup #id", f"/tasks/lookup/?q=%23{middle}", False, True),
            ("lookup bare id", f"/tasks/lookup/?q={middle}", False, True),
            ("lookup order_id:N", f"/tasks/lookup/?q=order_id:{sample.get('order_id', middle)}", False, True),
            ("lookup customer:email", f"/tasks/lookup/?q=customer:{sample.get('customer', 'x@y')}", False, True),
            ("lookup customer_id=N", f"/tasks/lookup/?q=customer_id={sample.get('customer_id', 1)}", False, True),
            ("lookup free text (ConnectionError)", "/tasks/lookup/?q=ConnectionError", False, True),
            ("lookup free text (no match)", "/tasks/lookup/?q=zebra-no-such-thing", False, True),
            ("task detail", f"/tasks/{middle}/", False, False),
            ("workers", "/workers/", False, False),
            ("my work", "/work/", False, False),
        ]
        work = first_page("/work/")
        nxt = rel_link(work, "next", "/work/")
        if nxt:
            pages.append(("  my work, next page", nxt, False, False))
        if pending_form:
            pages.append(("decision page", f"/work/{pending_form}/", False, False))
        for name, path, cold, follow in pages:
            try:
                median, worst, _ = timed(path, cold=cold, follow=follow)
            except AssertionError as exc:
                print(f"  {name:40} FAILED {exc}", flush=True)
                rows.append((size, name, float("nan"), float("nan")))
                continue
            rows.append((size, name, median, worst))
            print(f"  {name:40} median {median:7.1f} ms   worst {worst:7.1f} ms", flush=True)

    # The list's HTML for 50 rows of ~2 KB payloads (the payload column shows a preview, not the payload).
    big = Stage.objects.create(slug="bench-big", name="Big payloads", kind="script")
    Task.objects.bulk_create([Task(stage=big, type="big", payload=big_payload(n)) for n in range(50)])
    payload_kb = sum(len(json.dumps(big_payload(n))) for n in range(50)) / 50 / 1024
    body = client.get("/tasks/?stage=bench-big").content
    size_kb = len(body) / 1024

    print("\n| tasks | page | median ms | worst ms | under 300 ms |")
    print("|---:|---|---:|---:|---|")
    for size, name, median, worst in rows:
        ok = "yes" if median < TARGET_MS else "NO"
        print(f"| {size:,} | {name.strip()} | {median:.1f} | {worst:.1f} | {ok} |")
    print(
        f"\nTask list HTML, 50 rows of {payload_kb:.1f} KB payloads: {size_kb:.1f} KB "
        f"({'under' if size_kb < TARGET_HTML_KB else 'NOT under'} {TARGET_HTML_KB} KB)"
    )
    return 0


def _settle() -> Any:
    """Past the fold's settling window: every seeded event counts as settled."""
    from datetime import timedelta

    from tasks_app.services import counters

    return timedelta(seconds=getattr(counters, "SETTLE_SECONDS", 0) + 1)


if __name__ == "__main__":
    sys.exit(main())
