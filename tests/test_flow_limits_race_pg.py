"""The concurrency cap and the rate limit under real concurrency: worker processes and an API client at once.

Committed data (transaction=True) so that the worker subprocesses, the API client's thread and the
sampler's own connection see it; deselected on SQLite (one writer at a time there: see test_flow_limits).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from datetime import datetime

import psycopg
import pytest
from django.db import close_old_connections, connection
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services.flow_limits import throttled_counts
from tests.support.processes import finish, start_worker, wait_for
from tests.support.users import make_role_user, token_client

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

Workers = list[subprocess.Popen[str]]
CAP = 3


def make_stage(slug: str, **limits: object) -> Stage:
    return Stage.objects.create(
        slug=slug, name=slug.title(), kind=Stage.Kind.SCRIPT, handler="tests.handlers.sleep", lock_timeout=300, **limits
    )


def bulk_tasks(stage: Stage, count: int, seconds: float) -> None:
    now = timezone.now()
    Task.objects.bulk_create(
        Task(
            stage=stage,
            type="t",
            payload={"n": i, "seconds": seconds},
            created_at=now,
            updated_at=now,
            available_at=now,
        )
        for i in range(count)
    )


def own_connection() -> psycopg.Connection[tuple[object, ...]]:
    s = connection.settings_dict
    return psycopg.connect(
        dbname=s["NAME"],
        user=s["USER"],
        password=s["PASSWORD"] or None,
        host=s["HOST"],
        port=s["PORT"] or None,
        autocommit=True,
    )


class Sampler(threading.Thread):
    """Counts the stage's locked tasks as often as it can, on a connection of its own, until stopped."""

    def __init__(self, stage_id: int) -> None:
        super().__init__(daemon=True)
        self.stage_id = stage_id
        self.samples: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with own_connection() as conn:
            while not self.stopping.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM tasks_app_task WHERE stage_id = %s AND status = 'locked'", [self.stage_id]
                ).fetchone()
                assert row is not None
                self.samples.append(int(row[0]))


class ApiClaimer(threading.Thread):
    """Claims over the REST API (a claim of 2), holds each task as a handler would, completes it; until stopped."""

    def __init__(self, client: APIClient, slug: str) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.slug = slug
        self.claimed = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                response = self.client.post(f"/api/stages/{self.slug}/claim/", {"limit": 2}, format="json")
                if response.status_code != 200:
                    self.errors.append(f"claim: {response.status_code} {response.content[:200]!r}")
                    return
                tasks = response.json()
                self.claimed += len(tasks)
                if not tasks:
                    time.sleep(0.02)
                    continue
                time.sleep(0.03)
                for task in tasks:
                    done = self.client.post(
                        f"/api/tasks/{task['id']}/complete/", {"lock_token": task["lock_token"]}, format="json"
                    )
                    if done.status_code != 200:
                        self.errors.append(f"complete: {done.status_code} {done.content[:200]!r}")
        finally:
            close_old_connections()
            connection.close()


def start_workers(workers: Workers, slug: str, n: int = 4) -> None:
    for i in range(n):
        workers.append(
            start_worker(
                "--stage", slug, "--once", "--batch-size", "4", "--concurrency", "2", "--worker-id", f"{slug}-{i}"
            )
        )


TASKS = 400


def test_four_workers_and_an_api_client_never_hold_more_than_the_cap(workers: Workers) -> None:
    stage = make_stage("capped", max_concurrency=CAP)
    # Enough work (about 4 s at the cap) that every worker is up before it runs out: the workers start
    # one after another, and with 120 tasks the first one up could drain nearly all alone.
    bulk_tasks(stage, TASKS, seconds=0.03)
    api = ApiClaimer(token_client(make_role_user("operator")), stage.slug)
    sampler = Sampler(stage.pk)
    sampler.start()
    api.start()
    start_workers(workers, stage.slug)

    outputs = [finish(p, timeout=240) for p in workers]
    api.stopping.set()
    api.join(timeout=30)
    sampler.stopping.set()
    sampler.join(timeout=30)

    for p, out in zip(workers, outputs, strict=True):
        assert p.returncode == 0, out
    assert api.errors == []
    assert Task.objects.filter(stage=stage).exclude(status=Task.Status.COMPLETED).count() == 0
    # Many samples, never above the cap, and the cap was reached (a cap that held nothing back would pass too).
    assert len(sampler.samples) > 200, len(sampler.samples)
    assert max(sampler.samples) == CAP, Counter(sampler.samples)
    assert Counter(sampler.samples)[CAP] > 10
    # Both kinds of claimer took part, and each task was completed once.
    actors = Counter(TaskEvent.objects.filter(kind=TaskEvent.Kind.COMPLETED).values_list("actor", flat=True))
    assert sum(actors.values()) == TASKS
    assert api.claimed > 0 and sum(1 for a in actors if a.startswith("capped-")) >= 2, actors
    assert throttled_counts().get(stage.pk, 0) > 0


def test_the_rate_limit_holds_per_window_across_workers(workers: Workers) -> None:
    rate = 5
    stage = make_stage("rated", rate_limit=f"{rate}/second")
    bulk_tasks(stage, 22, seconds=0)
    start_workers(workers, stage.slug)
    assert wait_for(lambda: not Task.objects.filter(stage=stage, status=Task.Status.PENDING).exists(), timeout=120)
    outputs = [finish(p, timeout=120) for p in workers]
    for p, out in zip(workers, outputs, strict=True):
        assert p.returncode == 0, out

    claimed_at = [
        datetime.fromisoformat(d["claimed_at"])
        for d in TaskEvent.objects.filter(kind=TaskEvent.Kind.COMPLETED).values_list("details", flat=True)
    ]
    assert len(claimed_at) == 22
    per_second = Counter(int(t.timestamp()) for t in claimed_at)
    # At most `rate` claims in any second of the clock (the fixed window), and some second was full.
    assert max(per_second.values()) == rate, per_second
    # Over the whole run: no more than `rate` per second it spanned (one period's tolerance at each end).
    first, last = min(per_second), max(per_second)
    assert len(claimed_at) <= rate * (last - first + 1)
    assert last - first + 1 >= 22 // rate  # so it was held back: 22 tasks need at least 5 windows
    assert throttled_counts().get(stage.pk, 0) > 0
