"""Concurrency on PostgreSQL: worker processes, row locks, SKIP LOCKED, lock expiry, the claim plan.

These tests use committed data (transaction=True) so that worker subprocesses
and extra connections see it; they are deselected on SQLite.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent, WorkerProcess
from tasks_app.services import TaskLockLost, task_claim, task_complete, task_create
from tasks_app.services.claim import PG_CLAIM_SQL, claim_params
from tests.support.processes import finish, start_worker, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

Workers = list[subprocess.Popen[str]]


def make_stage(slug: str, *, handler: str = "tests.handlers.noop", lock_timeout: int = 300) -> Stage:
    return Stage.objects.create(
        slug=slug, name=slug.title(), kind=Stage.Kind.SCRIPT, handler=handler, lock_timeout=lock_timeout
    )


def bulk_tasks(stage: Stage, count: int) -> list[int]:
    """Insert `count` pending tasks (no history: setup only); returns their ids in order."""
    now = timezone.now()
    Task.objects.bulk_create(
        [
            Task(stage=stage, type="bulk", payload={"n": i}, created_at=now, updated_at=now, available_at=now)
            for i in range(count)
        ],
        batch_size=1000,
    )
    return list(Task.objects.filter(stage=stage).order_by("id").values_list("id", flat=True))


# -- 1. several worker processes drain one stage ---------------------------------------------


def test_four_workers_complete_every_task_exactly_once(workers: Workers) -> None:
    stage = make_stage("drain")
    worker_ids = [f"drainer-{n}" for n in range(4)]
    # All four up and polling before the tasks exist, so that they really compete (started with the tasks
    # there, with --once, the first process up could drain all 2,000 before the others had booted).
    for wid in worker_ids:
        workers.append(
            start_worker("--stage", "drain", "--batch-size", "10", "--poll-interval", "0.1", "--worker-id", wid)
        )
    assert wait_for(lambda: WorkerProcess.objects.filter(worker_id__in=worker_ids).count() == 4, timeout=60)
    ids = bulk_tasks(stage, 2000)
    assert wait_for(
        lambda: not Task.objects.filter(stage=stage).exclude(status=Task.Status.COMPLETED).exists(), timeout=120
    )
    for p in workers:
        p.send_signal(signal.SIGTERM)
    outputs = [finish(p, timeout=60) for p in workers]
    for p, out in zip(workers, outputs, strict=True):
        assert p.returncode == 0, out

    assert Task.objects.filter(stage=stage).exclude(status=Task.Status.COMPLETED).count() == 0
    per_task = dict(
        TaskEvent.objects.filter(kind=TaskEvent.Kind.COMPLETED)
        .values("task_id")
        .annotate(n=Count("id"))
        .values_list("task_id", "n")
    )
    # A task handed to two workers (a claim race) would show up as 2 completed events.
    assert set(per_task) == set(ids)
    assert {n for n in per_task.values()} == {1}
    # The same race seen from the claims: every task was claimed once, in one attempt.
    assert not Task.objects.filter(stage=stage).exclude(attempts=1).exists()
    # No claim ended any other way (an expired lock, a release), and each completion carries its one claim.
    assert not TaskEvent.objects.exclude(kind__in=[TaskEvent.Kind.CREATED, TaskEvent.Kind.COMPLETED]).exists()
    ends = TaskEvent.objects.filter(kind=TaskEvent.Kind.COMPLETED).values_list("actor", "details")
    assert all((d["attempt"], d["worker"], d["reclaimed_from"]) == (1, actor, None) for actor, d in ends)

    actors = set(TaskEvent.objects.filter(kind=TaskEvent.Kind.COMPLETED).values_list("actor", flat=True))
    assert actors <= set(worker_ids)
    # The work was shared, not drained by whichever process started first.
    assert len(actors) > 1, actors


# -- 2. a row locked elsewhere is skipped, not waited for ------------------------------------


def test_claim_skips_a_row_locked_by_another_connection() -> None:
    stage = make_stage("skip")
    first, second, third = (task_create(stage=stage, type="t", payload={"n": n}) for n in range(3))
    s = connection.settings_dict
    other = psycopg.connect(
        dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"] or None, host=s["HOST"], port=s["PORT"] or None
    )
    try:
        with other.cursor() as cur:
            # autocommit is off: this opens a transaction that holds the row lock.
            cur.execute(
                "SELECT id FROM tasks_app_task WHERE stage_id = %s AND status = 'pending' "
                "ORDER BY id LIMIT 1 FOR UPDATE",
                [stage.pk],
            )
            row = cur.fetchone()
            assert row is not None and row[0] == first.pk

        started = time.monotonic()
        claimed = task_claim(stage=stage, worker_id="w", limit=1)
        # SKIP LOCKED: the claim neither blocks on the locked row nor returns it.
        assert [t.pk for t in claimed] == [second.pk]
        assert time.monotonic() - started < 5
        assert Task.objects.get(pk=first.pk).status == Task.Status.PENDING
        assert Task.objects.get(pk=second.pk).locked_by == "w"

        other.rollback()  # releases the row lock
        claimed = task_claim(stage=stage, worker_id="w", limit=1)
        assert [t.pk for t in claimed] == [first.pk]
        assert Task.objects.get(pk=third.pk).status == Task.Status.PENDING
    finally:
        other.close()  # an open transaction here would block the flush after the test


# -- 3. concurrent claimers in threads -------------------------------------------------------


def test_concurrent_claimers_never_get_the_same_task() -> None:
    stage = make_stage("race")
    ids = bulk_tasks(stage, 500)
    threads_n = 8
    claimed: list[list[int]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def claimer(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            while True:
                got = task_claim(stage=stage, worker_id=f"thread-{n}", limit=3)
                if not got:
                    break
                claimed[n].extend(t.pk for t in got)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    all_claimed = [pk for part in claimed for pk in part]
    # Two claimers handed the same row would show up as a duplicate here ...
    assert len(all_claimed) == len(set(all_claimed))
    # ... and a row skipped by everyone (locked, then never claimed) as a gap.
    assert set(all_claimed) == set(ids)
    # The database agrees: one attempt per task, held by the thread that returned it.
    owner = {pk: f"thread-{n}" for n, part in enumerate(claimed) for pk in part}
    rows = Task.objects.filter(stage=stage).values_list("id", "status", "attempts", "locked_by")
    assert all(status == Task.Status.LOCKED and attempts == 1 and by == owner[pk] for pk, status, attempts, by in rows)
    # A claim writes no history (the rows hold the claims), and none took a lock over.
    assert not TaskEvent.objects.exclude(kind=TaskEvent.Kind.CREATED).exists()
    assert set(Task.objects.filter(stage=stage).values_list("reclaimed_from", flat=True)) == {""}
    # The threads really overlapped (otherwise this test proves little).
    assert sum(1 for part in claimed if part) > 1


# -- 4. a worker killed mid-task -------------------------------------------------------------


def test_worker_killed_mid_task_loses_nothing(workers: Workers) -> None:
    stage = make_stage("slow", handler="tests.handlers.sleep", lock_timeout=2)
    task = task_create(stage=stage, type="t", payload={"seconds": 30})
    killed = start_worker("--stage", "slow", "--poll-interval", "0.2", "--worker-id", "doomed")
    workers.append(killed)
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=Task.Status.LOCKED).exists(), timeout=30)
    killed.send_signal(signal.SIGKILL)  # no chance to finish, release or unclaim
    finish(killed, timeout=30)
    assert killed.returncode == -signal.SIGKILL

    task.refresh_from_db()
    assert task.status == Task.Status.LOCKED
    assert task.locked_by == "doomed"
    assert task.attempts == 1
    assert not TaskEvent.objects.filter(task=task).exclude(kind="created").exists()  # the claim is on the row

    Task.objects.filter(pk=task.pk).update(payload={"seconds": 0})
    # Nothing can take the task over until the dead worker's lock has passed.
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, locked_until__lt=timezone.now()).exists(), timeout=10)
    second = start_worker("--stage", "slow", "--once", "--worker-id", "rescuer")
    workers.append(second)
    out = finish(second, timeout=60)
    assert second.returncode == 0, out

    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED
    assert task.attempts == 2
    completed = list(TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.COMPLETED))
    assert len(completed) == 1 and completed[0].actor == "rescuer"
    assert (completed[0].details["attempt"], completed[0].details["worker"]) == (2, "rescuer")
    # The history names the worker whose attempt was lost: one lock_expired event ends its claim.
    # The rescuer's claim writes it when it takes the expired lock over (and its completion
    # says reclaimed_from); a worker starts with an expiry sweep, though, which may get there
    # first, reset the task to pending and write it instead.
    [lost] = TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.LOCK_EXPIRED)
    assert (lost.details["attempt"], lost.details["worker"]) == (1, "doomed")
    assert lost.details["claimed_at"] is not None and lost.id < completed[0].id
    if lost.details["now"] == "reclaimed":
        assert lost.actor == "rescuer" and completed[0].details["reclaimed_from"] == "doomed"
    else:
        assert (lost.actor, lost.details["now"]) == ("expiry sweep", "pending")
        assert completed[0].details["reclaimed_from"] is None


# -- 5. lock expiry between two claimers -----------------------------------------------------


def test_expired_lock_passes_to_the_next_claimer_and_the_old_token_stops_working() -> None:
    stage = make_stage("expiry", lock_timeout=300)
    task = task_create(stage=stage, type="t", payload={})
    t0 = timezone.now()
    (a,) = task_claim(stage=stage, worker_id="A", limit=1, lock_timeout=1, now=t0)
    assert a.pk == task.pk
    # Still A's while the lock runs.
    assert task_claim(stage=stage, worker_id="B", limit=1, now=t0 + timedelta(milliseconds=500)) == []

    later = t0 + timedelta(seconds=5)
    (b,) = task_claim(stage=stage, worker_id="B", limit=1, now=later)
    assert b.pk == task.pk and b.lock_token != a.lock_token
    # B's claim ends A's: one lock_expired event with A's claim, and B's claim names A.
    reclaim = TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.LOCK_EXPIRED, actor="B").get()
    assert (reclaim.details["worker"], reclaim.details["attempt"], reclaim.details["now"]) == ("A", 1, "reclaimed")
    assert Task.objects.get(pk=task.pk).reclaimed_from == "A"

    before = Task.objects.filter(pk=task.pk).values().get()
    events_before = TaskEvent.objects.filter(task=task).count()
    with pytest.raises(TaskLockLost):
        task_complete(task_id=task.pk, lock_token=a.lock_token, now=later + timedelta(seconds=1))
    # A's late completion changed nothing: B still holds the task.
    assert Task.objects.filter(pk=task.pk).values().get() == before
    assert TaskEvent.objects.filter(task=task).count() == events_before

    task_complete(task_id=task.pk, lock_token=b.lock_token, now=later + timedelta(seconds=2))
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED and task.attempts == 2
    completed = list(TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.COMPLETED))
    assert len(completed) == 1 and completed[0].actor == "B"
    assert (completed[0].details["attempt"], completed[0].details["reclaimed_from"]) == (2, "A")
    with pytest.raises(TaskLockLost):
        task_complete(task_id=task.pk, lock_token=a.lock_token)
    assert TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.COMPLETED).count() == 1


# -- 6. the claim query uses the partial index -----------------------------------------------

BULK_INSERT_SQL = """
INSERT INTO tasks_app_task (
    stage_id, type, payload, status, created_at, updated_at, available_at, attempts,
    lock_token, locked_by, locked_at, locked_until, completed_at, last_error
)
SELECT
    (ARRAY[%(s1)s, %(s2)s, %(s3)s]::bigint[])[1 + i %% 3],
    'bulk', '{}'::jsonb,
    CASE i %% 100 WHEN 0 THEN 'pending' WHEN 1 THEN 'locked' ELSE 'completed' END,
    now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',
    CASE i %% 100 WHEN 0 THEN 0 ELSE 1 END,
    CASE i %% 100 WHEN 1 THEN md5(i::text) ELSE '' END,
    CASE i %% 100 WHEN 1 THEN 'bulk-worker' ELSE '' END,
    CASE i %% 100 WHEN 1 THEN now() ELSE NULL END,
    CASE i %% 100 WHEN 1 THEN now() + interval '1 hour' ELSE NULL END,
    CASE WHEN i %% 100 > 1 THEN now() - interval '1 day' ELSE NULL END,
    ''
FROM generate_series(1, %(n)s) AS i
"""


def test_claim_query_plan_uses_the_partial_index() -> None:
    stages = [make_stage(f"plan-{n}") for n in range(3)]
    with connection.cursor() as cur:
        # 50,000 tasks, 98% completed: the shape of a long-lived table.
        cur.execute(BULK_INSERT_SQL, {"s1": stages[0].pk, "s2": stages[1].pk, "s3": stages[2].pk, "n": 50_000})
        cur.execute("ANALYZE tasks_app_task")

    def snapshot() -> tuple[object, ...]:
        return (
            sorted(Task.objects.values_list("status").annotate(n=Count("id"))),
            Task.objects.filter(locked_by="explainer").count(),
            sorted(Task.objects.values_list("stage_id", "attempts").annotate(n=Count("id"))),
            TaskEvent.objects.count(),
        )

    before = snapshot()
    assert dict(before[0]) == {"pending": 500, "locked": 500, "completed": 49_000}

    # The params task_claim builds.
    now = timezone.now()
    params = claim_params(stage=stages[1], worker_id="explainer", limit=10, now=now, until=now + timedelta(seconds=60))
    with connection.cursor() as cur:
        cur.execute("EXPLAIN " + PG_CLAIM_SQL, params)
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert "task_claim_idx" in plan, plan
    # Plain EXPLAIN plans the data-modifying CTEs without running them.
    assert snapshot() == before
