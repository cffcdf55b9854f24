"""The overview's counts: exact where cheap, cached, and estimated on big PostgreSQL tables."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from tasks_app.models import Stage
from tasks_app.services import task_claim, task_complete, task_create
from tasks_app.views import overview


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
