"""A batch's completions and the next claim in one round trip (services.pipeline), on PostgreSQL.

The call itself (what it writes, and that it is one transaction), then real
worker processes whose pipelined round trip is lost on the way (a proxy
between them and the server cuts it) or meets a server restart: every task
ends completed exactly once, none is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import timedelta
from typing import Any

import pytest
from django.db import DatabaseError, connection
from django.db.models import Count
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import Completion, ItemOutcome, tasks_complete_each
from tasks_app.services.claim import ClaimedRow, task_claim_rows
from tasks_app.services.pipeline import tasks_complete_and_claim
from tests.support.pgserver import restart_postgres
from tests.support.processes import finish, start_worker, wait_for
from tests.support.proxy import Fault, PipelineProxy

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

S = Task.Status
E = TaskEvent.Kind
Workers = list[subprocess.Popen[str]]


def make_stage(slug: str, **fields: Any) -> Stage:
    fields.setdefault("handler", "tests.handlers.noop")
    return Stage.objects.create(slug=slug, name=slug.title(), kind=Stage.Kind.SCRIPT, **fields)


def bulk_tasks(stage: Stage, count: int, payload: dict[str, Any] | None = None) -> list[int]:
    """`count` pending tasks (no history: setup only); their ids in order."""
    now = timezone.now() - timedelta(seconds=1)
    Task.objects.bulk_create(
        Task(stage=stage, type="bulk", payload=dict(payload or {}), created_at=now, updated_at=now, available_at=now)
        for _ in range(count)
    )
    return list(Task.objects.filter(stage=stage).order_by("id").values_list("id", flat=True))


def completions_per_task(stage: Stage) -> dict[int, int]:
    return dict(
        TaskEvent.objects.filter(task__stage=stage, kind=E.COMPLETED)
        .values("task_id")
        .annotate(n=Count("id"))
        .values_list("task_id", "n")
    )


def history(stage: Stage) -> list[tuple[int, str, str, dict[str, Any]]]:
    """Every event of the stage's tasks as (the task's place in the stage, kind, actor, details)."""
    place = {pk: n for n, pk in enumerate(Task.objects.filter(stage=stage).order_by("id").values_list("id", flat=True))}
    events = TaskEvent.objects.filter(task__stage=stage).order_by("task_id", "id")
    return [(place[e.task_id], e.kind, e.actor, e.details) for e in events]


# -- the call ------------------------------------------------------------------------------------


def held_batch(stage: Stage, now: Any) -> tuple[list[ClaimedRow], list[Completion]]:
    """Claim 3 of the stage's 6 tasks as "w" and complete them, the second with a stale token."""
    rows = task_claim_rows(stage=stage, worker_id="w", limit=3, lock_timeout=60, now=now)
    items = [Completion(r.pk, r.lock_token) for r in rows]
    items[1] = Completion(rows[1].pk, "stale")  # our lock of this one was lost (another token now)
    return rows, items


def test_pipelined_call_completes_the_held_reports_the_lost_and_claims_the_next_batch() -> None:
    stage = make_stage("piped")
    ids = bulk_tasks(stage, 6)
    now = timezone.now()
    rows, items = held_batch(stage, now)
    told: list[ItemOutcome] = []

    outcomes, claimed = tasks_complete_and_claim(
        items=items,
        stage=stage,
        worker_id="w",
        limit=3,
        lock_timeout=60,
        now=now + timedelta(seconds=1),
        each=told.append,
    )

    assert [(o.task_id, o.status) for o in outcomes] == [
        (ids[0], "completed"),
        (ids[1], "lock_lost"),
        (ids[2], "completed"),
    ]
    assert told == outcomes  # each outcome handed over once written
    # The next three, claimed as task_claim_rows claims them.
    assert [r.pk for r in claimed] == ids[3:]
    assert all(r.locked_by == "w" and r.attempts == 1 and len(r.lock_token) == 32 for r in claimed)
    stored = dict(Task.objects.filter(stage=stage).values_list("id", "status"))
    assert stored == {ids[0]: S.COMPLETED, ids[1]: S.LOCKED, ids[2]: S.COMPLETED, **dict.fromkeys(ids[3:], S.LOCKED)}
    tokens = dict(Task.objects.filter(pk__in=ids[3:]).values_list("id", "lock_token"))
    assert tokens == {r.pk: r.lock_token for r in claimed}


def test_pipelined_call_writes_the_history_the_separate_calls_write() -> None:
    piped, apart = make_stage("piped"), make_stage("apart")
    bulk_tasks(piped, 6)
    bulk_tasks(apart, 6)
    now = timezone.now()
    later = now + timedelta(seconds=1)
    _, items = held_batch(piped, now)
    tasks_complete_and_claim(items=items, stage=piped, worker_id="w", limit=3, lock_timeout=60, now=later)
    _, items = held_batch(apart, now)
    list(tasks_complete_each(items=items, now=later))
    task_claim_rows(stage=apart, worker_id="w", limit=3, lock_timeout=60, now=later)

    assert history(piped) == history(apart)
    assert [e[:2] for e in history(piped) if e[1] == E.COMPLETED] == [(0, E.COMPLETED), (2, E.COMPLETED)]  # one lost
    columns = ("status", "attempts", "locked_by", "locked_at", "locked_until", "completed_at")
    assert list(Task.objects.filter(stage=piped).order_by("id").values_list(*columns)) == list(
        Task.objects.filter(stage=apart).order_by("id").values_list(*columns)
    )


def test_a_failing_claim_takes_the_completions_back_with_it() -> None:
    stage = make_stage("atomic")
    ids = bulk_tasks(stage, 6)
    rows, items = held_batch(stage, timezone.now())
    events = TaskEvent.objects.count()
    # A worker id longer than locked_by (200) fails the claim, after the completion ran in the same transaction.
    with pytest.raises(DatabaseError):
        tasks_complete_and_claim(items=items, stage=stage, worker_id="w" * 201, limit=3, lock_timeout=60)

    # One transaction: the completion the claim followed was rolled back with it.
    assert dict(Task.objects.filter(stage=stage).values_list("id", "status")) == {
        **dict.fromkeys(ids[:3], S.LOCKED),
        **dict.fromkeys(ids[3:], S.PENDING),
    }
    assert TaskEvent.objects.count() == events
    # The connection is usable again and the completions, retried, go through.
    outcomes, claimed = tasks_complete_and_claim(items=items, stage=stage, worker_id="w", limit=3, lock_timeout=60)
    assert [o.status for o in outcomes] == ["completed", "lock_lost", "completed"]
    assert [r.pk for r in claimed] == ids[3:]


def test_completions_that_send_take_the_separate_calls_with_the_same_results(world: dict[str, Stage]) -> None:
    review = world["review"]
    bulk_tasks(review, 4)
    rows = task_claim_rows(stage=review, worker_id="w", limit=2, lock_timeout=60)
    items = [Completion(rows[0].pk, rows[0].lock_token, [("declined", {})]), Completion(rows[1].pk, rows[1].lock_token)]
    outcomes, claimed = tasks_complete_and_claim(items=items, stage=review, worker_id="w", limit=2)
    assert [o.status for o in outcomes] == ["completed", "completed"]
    [child] = outcomes[0].successors
    assert child.stage.slug == "notify" and child.parent_id == rows[0].pk
    assert len(claimed) == 2 and not {r.pk for r in claimed} & {r.pk for r in rows}


# -- real workers: a lost round trip, a server restart ---------------------------------------------


def worker_through(proxy: PipelineProxy, worker_id: str, stage: str, *extra: str) -> subprocess.Popen[str]:
    """A run_worker process whose database connections all go through `proxy`."""
    s = connection.settings_dict
    url = f"postgres://{s['USER']}@127.0.0.1:{proxy.port}/{s['NAME']}?sslmode=disable"
    return start_worker(
        "--stage", stage, "--batch-size", "10", "--poll-interval", "0.1", "--progress-interval", "0",
        "--no-listen", "--worker-id", worker_id, *extra,
        env={"DATABASE_URL": url},
    )  # fmt: skip


def drained_exactly_once(stage: Stage, ids: list[int], proc: subprocess.Popen[str], worker_id: str) -> str:
    """Wait for every task to complete, stop the worker, check each completed once by it; its output."""
    done = Task.objects.filter(stage=stage, status=S.COMPLETED)
    # (Stop waiting early if the worker died.)
    assert wait_for(lambda: proc.poll() is not None or done.count() == len(ids), timeout=90)
    assert proc.poll() is None, finish(proc, timeout=10)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, timeout=30)
    assert proc.returncode == 0, out
    per_task = completions_per_task(stage)
    # None lost (a gap), none completed twice (a 2).
    assert set(per_task) == set(ids)
    assert set(per_task.values()) == {1}
    assert set(TaskEvent.objects.filter(task__stage=stage, kind=E.COMPLETED).values_list("actor", flat=True)) == {
        worker_id
    }
    return out


def handed_back_after_the_drop(stage: Stage) -> set[int]:
    """Tasks the worker's recovery handed back: claimed in a transaction whose answer it never got."""
    released = TaskEvent.objects.filter(
        task__stage=stage, kind=E.RELEASED, details__reason__icontains="connection dropped"
    )
    return set(released.values_list("task_id", flat=True))


@pytest.mark.parametrize("fault", ["request", "reply"])
def test_worker_loses_a_pipelined_round_trip_and_completes_every_task_once(workers: Workers, fault: Fault) -> None:
    stage = make_stage("dropped", lock_timeout=30)  # no lock expires: recovery must not wait for one
    ids = bulk_tasks(stage, 200, {"seconds": 0.002})
    s = connection.settings_dict
    proxy = PipelineProxy(s["HOST"], int(s["PORT"]))
    try:
        proc = worker_through(proxy, "dropper", "dropped")
        workers.append(proc)
        assert wait_for(lambda: Task.objects.filter(stage=stage, status=S.COMPLETED).count() >= 30, timeout=30)
        done_before = Task.objects.filter(stage=stage, status=S.COMPLETED).count()
        proxy.arm(fault)
        assert wait_for(lambda: proxy.cut == 1, timeout=30)
        out = drained_exactly_once(stage, ids, proc, "dropper")
    finally:
        proxy.close()
    assert done_before < len(ids)
    assert "database error" in out
    orphans = handed_back_after_the_drop(stage)
    if fault == "reply":
        # The transaction committed but the worker never heard: its claim was handed back (and
        # run later), its completions retried found their tokens gone instead of completing twice.
        assert orphans and "lock lost before completion" in out
        assert all(Task.objects.get(pk=pk).attempts == 1 for pk in orphans)  # handed back unstarted: not counted
    else:
        # Nothing of the lost request was written: no orphans, the completions simply written on the retry.
        assert not orphans and "lock lost" not in out


def test_worker_meets_a_server_restart_mid_pipeline_and_completes_every_task_once(workers: Workers) -> None:
    if not os.environ.get("TEST_PG_BINDIR"):
        pytest.skip("needs the server of scripts/with_postgres.py (TEST_PG_BINDIR, TEST_PG_DATA)")
    stage = make_stage("restarted", lock_timeout=30)
    ids = bulk_tasks(stage, 200, {"seconds": 0.002})
    s = connection.settings_dict
    proxy = PipelineProxy(s["HOST"], int(s["PORT"]))
    try:
        proc = worker_through(proxy, "restarter", "restarted")
        workers.append(proc)
        assert wait_for(lambda: Task.objects.filter(stage=stage, status=S.COMPLETED).count() >= 30, timeout=30)
        # The server has the pipeline and has answered it; the answer is held while the server restarts.
        proxy.arm("hold")
        assert proxy.holding.wait(timeout=30)
        restart_postgres(down_for=1.0)
        proxy.release.set()
        connection.close()  # ours was cut too
        out = drained_exactly_once(stage, ids, proc, "restarter")
    finally:
        proxy.close()
    assert "database error" in out
    assert handed_back_after_the_drop(stage)  # the claim the restart cut off was handed back
