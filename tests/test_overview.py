"""The overview's counts: exact where cheap, cached, and estimated on big PostgreSQL tables."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tasks_app.models import Stage
from tasks_app.selectors import overview
from tasks_app.services import task_claim, task_complete, task_create, task_fail


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    cache.clear()
    yield
    cache.clear()


def test_overview_counts_each_status_per_stage_and_links_to_the_filtered_list(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    for _ in range(2):
        task_create(stage=world["review"], type="order", payload={})
    [claimed] = task_claim(stage=world["review"], worker_id="w1")
    task_complete(task_id=claimed.pk, lock_token=claimed.lock_token, send=[("declined", {})])
    html = admin_client.get("/overview/").content.decode()
    assert 'data-stage="review"' in html
    assert "/tasks/?stage=review&amp;status=completed" in html
    live = overview.live_counts()[world["review"].pk]
    assert live["pending"] == 1 and "oldest_pending" in live
    finished, estimated = overview.finished_counts()
    assert finished[world["review"].pk] == {"completed": 1} and estimated is False
    per_hour, per_minute = overview.throughput()
    assert per_hour[world["review"].pk] == 1 and sum(per_minute[world["review"].pk]) == 1


def test_finished_counts_are_cached_between_refreshes(world: dict[str, Stage]) -> None:
    task = task_create(stage=world["ship"], type="t", payload={})
    [claimed] = task_claim(stage=world["ship"], worker_id="w1")
    task_complete(task_id=claimed.pk, lock_token=claimed.lock_token)
    first, _ = overview.finished_counts()
    task_create(stage=world["ship"], type="t", payload={})
    [again] = task_claim(stage=world["ship"], worker_id="w1")
    task_complete(task_id=again.pk, lock_token=again.lock_token)
    # Within the cache lifetime the (possibly expensive) GROUP BY is not run again.
    assert overview.finished_counts()[0] == first
    cache.clear()
    assert overview.finished_counts()[0][world["ship"].pk]["completed"] == 2
    assert task.pk


@pytest.mark.postgres
def test_big_tables_get_sampled_estimates_marked_as_such(
    admin_client: Client, world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overview, "ESTIMATE_ABOVE", -1)  # treat this small table as a big one
    task_create(stage=world["ship"], type="t", payload={})
    finished, estimated = overview.finished_counts()
    assert estimated is True
    assert "are estimates" in admin_client.get("/overview/").content.decode()


@pytest.mark.postgres
def test_a_full_sample_gives_the_exact_counts(world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overview, "ESTIMATE_ABOVE", -1)
    monkeypatch.setattr(overview, "SAMPLE_PERCENT", 100.0)  # every block: the scaling must give back the counts
    monkeypatch.setattr(overview, "SAMPLE_PAGES", 10**9)
    for _ in range(3):
        task_create(stage=world["ship"], type="t", payload={})
    done = task_claim(stage=world["ship"], worker_id="w", limit=3)
    for task in done[:2]:
        task_complete(task_id=task.pk, lock_token=task.lock_token)
    task_fail(task_id=done[2].pk, lock_token=done[2].lock_token, error="x")
    finished, estimated = overview.finished_counts()
    assert estimated is True
    assert finished[world["ship"].pk] == {"completed": 2, "failed": 1}


@pytest.mark.postgres
def test_the_sample_reads_at_most_sample_pages_on_a_huge_table(
    world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(overview, "_table_estimate", lambda: (10_000_000, 460_000))
    with CaptureQueriesContext(connection) as ctx:
        overview.finished_counts()
    [sample] = [q["sql"] for q in ctx.captured_queries if "TABLESAMPLE" in q["sql"]]
    percent = float(sample.split("TABLESAMPLE SYSTEM (")[1].split(")")[0])
    assert percent == pytest.approx(100 * overview.SAMPLE_PAGES / 460_000)
    assert percent < overview.SAMPLE_PERCENT
