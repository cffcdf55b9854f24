"""Real worker processes on PostgreSQL: crashes, signals, heartbeats, run-time limits,
LISTEN wake-ups, a server restart, the retry policy, the sweep lock, parallel
handler slots and the worker registry.

Committed data (transaction=True) so that worker subprocesses and extra
connections see it; deselected on SQLite. Waits poll the database with
deadlines; wall-clock bounds are only asserted where timing is the behaviour.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent, Transition, WorkerProcess
from tasks_app.services import task_claim, task_complete, task_create, tasks_expire_locks
from tasks_app.services.locks import LockKey
from tests.support.pgserver import restart_postgres
from tests.support.processes import ROOT, finish, start_worker, subprocess_env, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

Workers = list[subprocess.Popen[str]]

S = Task.Status
E = TaskEvent.Kind


# -- helpers -----------------------------------------------------------------------------------


def make_stage(
    slug: str, *, handler: str = "tests.handlers.noop", kind: str = Stage.Kind.SCRIPT, **fields: Any
) -> Stage:
    return Stage.objects.create(slug=slug, name=slug.title(), kind=kind, handler=handler, **fields)


def bulk_tasks(stage: Stage, count: int, payload: dict[str, Any] | None = None) -> list[int]:
    """Insert `count` pending tasks (no history: setup only); returns their ids in order."""
    now = timezone.now()
    Task.objects.bulk_create(
        [
            Task(
                stage=stage, type="bulk", payload=dict(payload or {}), created_at=now, updated_at=now, available_at=now
            )
            for _ in range(count)
        ]
    )
    return list(Task.objects.filter(stage=stage).order_by("id").values_list("id", flat=True))


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """SIGTERM a worker, wait for it and return its output."""
    proc.send_signal(signal.SIGTERM)
    return finish(proc, timeout)


def start_worker_env(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """start_worker() with extra environment variables (it sets env= itself, so it can't take one)."""
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_worker", *args],
        cwd=ROOT,
        env={**subprocess_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def completions_per_task(stage: Stage) -> dict[int, int]:
    return dict(
        TaskEvent.objects.filter(task__stage=stage, kind=E.COMPLETED)
        .values("task_id")
        .annotate(n=Count("id"))
        .values_list("task_id", "n")
    )


def status_count(stage: Stage, status: str) -> int:
    return Task.objects.filter(stage=stage, status=status).count()


def session_quiet(application_name: str, seconds: float, query_fragment: str = "") -> bool:
    """Has a session of that name been idle for `seconds` (its last statement containing `query_fragment`)?"""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'idle'"
            " AND state_change < now() - make_interval(secs => %s) AND query LIKE %s",
            [application_name, seconds, f"%{query_fragment}%"],
        )
        row = cur.fetchone()
    return bool(row and row[0])


def wait_until_idle(worker_id: str, stage: Stage, quiet: float = 0.5) -> None:
    """Wait until a worker has made its claims and waits for work.

    A canary task, completed, proves it claimed; its database session then
    staying quiet for `quiet` s proves it went on to wait (busy, it queries
    every few milliseconds).
    """
    canary = task_create(stage=stage, type="canary", payload={})
    assert wait_for(lambda: Task.objects.filter(pk=canary.pk, status=S.COMPLETED).exists(), timeout=30)
    assert wait_for(lambda: session_quiet(worker_id, quiet), timeout=30)


def worker_row(worker_id: str) -> WorkerProcess | None:
    return WorkerProcess.objects.filter(worker_id=worker_id).first()


# -- 1. SIGKILL mid-batch --------------------------------------------------------------------


def test_sigkilled_worker_mid_batch_loses_no_task_and_none_completes_twice(workers: Workers) -> None:
    stage = make_stage("killed", handler="tests.handlers.sleep", lock_timeout=2)
    ids = bulk_tasks(stage, 60, {"seconds": 0.2})
    doomed = start_worker(
        "--stage", "killed", "--batch-size", "20", "--concurrency", "2", "--poll-interval", "0.2",
        "--progress-interval", "0", "--worker-id", "doomed",
    )  # fmt: skip
    workers.append(doomed)
    assert wait_for(lambda: status_count(stage, S.COMPLETED) >= 10, timeout=30)
    doomed.send_signal(signal.SIGKILL)  # no chance to finish, record, release or unclaim
    finish(doomed, timeout=30)
    assert doomed.returncode == -signal.SIGKILL

    orphaned = set(Task.objects.filter(stage=stage, status=S.LOCKED).values_list("id", flat=True))
    # The kill came mid-batch: the rest of a 20-task batch was still held (otherwise this proves little).
    assert orphaned
    assert set(Task.objects.filter(pk__in=orphaned).values_list("locked_by", flat=True)) == {"doomed"}
    done_before = set(Task.objects.filter(stage=stage, status=S.COMPLETED).values_list("id", flat=True))

    # Heartbeats stopped with the process: the locks pass within lock_timeout (2 s).
    assert wait_for(
        lambda: not Task.objects.filter(stage=stage, status=S.LOCKED, locked_until__gte=timezone.now()).exists(),
        timeout=10,
    )
    rescuer = start_worker(
        "--stage", "killed", "--once", "--batch-size", "20", "--concurrency", "4", "--progress-interval", "0",
        "--worker-id", "rescuer",
    )  # fmt: skip
    workers.append(rescuer)
    out = finish(rescuer, timeout=90)
    assert rescuer.returncode == 0, out

    assert status_count(stage, S.COMPLETED) == len(ids)
    per_task = completions_per_task(stage)
    # No task lost (a gap) and none completed twice (a count of 2).
    assert set(per_task) == set(ids)
    assert set(per_task.values()) == {1}
    attempts = dict(Task.objects.filter(stage=stage).values_list("id", "attempts"))
    # The orphans ran a second time (at-least-once); nothing else ran twice.
    assert {pk for pk, n in attempts.items() if n == 2} == orphaned
    assert all(n == 1 for pk, n in attempts.items() if pk not in orphaned)
    # What the dead worker had recorded stays its own; the rest went to the rescuer.
    actors = dict(TaskEvent.objects.filter(task__stage=stage, kind=E.COMPLETED).values_list("task_id", "actor"))
    assert {pk for pk, actor in actors.items() if actor == "doomed"} == done_before
    for pk in orphaned:
        # Two claims, each carried by the event that ended it: doomed's lock expired (the sweep or
        # the rescuer's claim wrote it), the rescuer completed it.
        ends = TaskEvent.objects.filter(task_id=pk, details__has_key="claimed_at").order_by("id")
        assert [(e.kind, e.details["worker"], e.details["attempt"]) for e in ends] == [
            (E.LOCK_EXPIRED, "doomed", 1),
            (E.COMPLETED, "rescuer", 2),
        ]


# -- 2. SIGTERM: running handlers finish, unstarted tasks are handed back at once --------------


def test_sigterm_finishes_running_handlers_and_hands_back_unstarted_tasks_at_once(
    workers: Workers, tmp_path: Path
) -> None:
    stage = make_stage("graceful", handler="tests.handlers.sleep_and_mark", lock_timeout=60)
    ids = bulk_tasks(stage, 10, {"seconds": 1.5, "dir": str(tmp_path)})
    proc = start_worker(
        "--stage", "graceful", "--batch-size", "10", "--concurrency", "2", "--poll-interval", "0.2",
        "--progress-interval", "0", "--worker-id", "graceful-w",
    )  # fmt: skip
    workers.append(proc)

    def started() -> set[int]:
        return {int(p.name.split(".")[0]) for p in tmp_path.glob("*.started")}

    assert wait_for(lambda: len(started()) == 2 and status_count(stage, S.LOCKED) == 10, timeout=30)
    running = started()
    proc.send_signal(signal.SIGTERM)
    unstarted = set(ids) - running

    def handed_back() -> bool:
        return Task.objects.filter(pk__in=unstarted, status=S.PENDING).count() == len(unstarted)

    assert wait_for(handed_back, timeout=10, interval=0.02)
    # "At once": handed back while the two running handlers (1.5 s) are still going, not after them.
    # (Race: both started <~0.1 s before the signal, so they hold their locks well past this check.)
    assert Task.objects.filter(pk__in=running, status=S.LOCKED).count() == 2

    out = finish(proc, timeout=30)
    assert proc.returncode == 0, out
    assert "signal 15" in out

    # The handlers that were running were allowed to finish, and their tasks completed.
    assert {int(p.name.split(".")[0]) for p in tmp_path.glob("*.finished")} == running
    assert set(Task.objects.filter(stage=stage, status=S.COMPLETED).values_list("id", flat=True)) == running
    # The unstarted ones never ran, are claimable now and their attempt did not count.
    assert started() == running
    now = timezone.now()
    for task in Task.objects.filter(pk__in=unstarted):
        assert task.status == S.PENDING and task.attempts == 0
        assert task.lock_token == "" and task.locked_by == "" and task.available_at <= now
        [released] = TaskEvent.objects.filter(task=task, kind=E.RELEASED)
        assert "worker stopped" in released.details["reason"] and released.actor == "graceful-w"
    assert len(task_claim(stage=stage, worker_id="next", limit=10)) == len(unstarted)

    row = worker_row("graceful-w")
    assert row is not None and row.stopped_at is not None
    assert row.tasks_done == 2 and row.current_tasks == []


# -- 3. heartbeats keep a long handler's lock; a hung process loses it -------------------------


def test_heartbeats_keep_the_lock_of_a_handler_that_outlives_lock_timeout(workers: Workers) -> None:
    stage = make_stage("long", handler="tests.handlers.sleep", lock_timeout=2)
    task = task_create(stage=stage, type="t", payload={"seconds": 5})
    proc = start_worker(
        "--stage", "long", "--poll-interval", "0.2", "--progress-interval", "0", "--worker-id", "beater"
    )
    workers.append(proc)
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=S.LOCKED).exists(), timeout=30, interval=0.02)
    claimed_at = time.monotonic()

    for check_at in (3.0, 4.5):  # past the 2 s lock_timeout, before the 5 s handler ends
        time.sleep(max(0.0, claimed_at + check_at - time.monotonic()))
        task.refresh_from_db()
        assert task.status == S.LOCKED and task.locked_by == "beater", check_at
        # Without heartbeats the lock would have passed at ~2 s.
        assert task.locked_until is not None and task.locked_until > timezone.now(), check_at
        assert TaskEvent.objects.filter(task=task, kind=E.LOCK_EXTENDED).exists()
        assert task_claim(stage=stage, worker_id="intruder", limit=1) == []

    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=S.COMPLETED).exists(), timeout=15)
    out = stop(proc)
    assert proc.returncode == 0, out
    task.refresh_from_db()
    assert task.attempts == 1
    kinds = list(TaskEvent.objects.filter(task=task).values_list("kind", flat=True))
    assert kinds.count(E.COMPLETED) == 1  # one claim, ended by its completion
    done = TaskEvent.objects.get(task=task, kind=E.COMPLETED)
    assert (done.details["worker"], done.details["attempt"], done.details["reclaimed_from"]) == ("beater", 1, None)
    # One extension per half lock_timeout (~1 s) over 5 s; allow for a loaded machine.
    assert kinds.count(E.LOCK_EXTENDED) >= 3
    assert E.LOCK_EXPIRED not in kinds


def test_hung_worker_loses_its_lock_and_its_late_completion_is_rejected(workers: Workers, tmp_path: Path) -> None:
    stage = make_stage("hang", handler="tests.handlers.sleep_and_mark", lock_timeout=2)
    task = task_create(stage=stage, type="t", payload={"seconds": 2.5, "dir": str(tmp_path)})
    env = {"TASKS_WORKER_HEARTBEAT": "0.3"}
    proc = start_worker_env(
        "--stage", "hang", "--poll-interval", "0.2", "--progress-interval", "0", "--worker-id", "frozen", env=env
    )
    workers.append(proc)
    marker = tmp_path / f"{task.pk}.started"
    assert wait_for(marker.exists, timeout=30, interval=0.02)
    handler_started = time.monotonic()
    proc.send_signal(signal.SIGSTOP)  # a hung process: no heartbeats, no progress
    try:
        # Its last extension gave at most lock_timeout (2 s): then the lock passes.
        assert wait_for(
            lambda: Task.objects.filter(pk=task.pk, status=S.LOCKED, locked_until__lt=timezone.now()).exists(),
            timeout=10,
        )
        [rescued] = task_claim(stage=stage, worker_id="rescuer", limit=1, lock_timeout=60)
        assert rescued.pk == task.pk and rescued.attempts == 2
        # The rescue ends the frozen worker's claim: its lock_expired event, and the row names it.
        ended = TaskEvent.objects.filter(task=task, kind=E.LOCK_EXPIRED, actor="rescuer").get()
        assert (ended.details["worker"], ended.details["now"]) == ("frozen", "reclaimed")
        assert Task.objects.get(pk=task.pk).reclaimed_from == "frozen"
        # Let the frozen handler's 2.5 s pass, so it has a result to record the moment it thaws.
        time.sleep(max(0.0, handler_started + 2.7 - time.monotonic()))
    finally:
        proc.send_signal(signal.SIGCONT)

    # The thawed worker tries to record (or extend) and finds the token replaced: it drops the task.
    assert wait_for(lambda: (r := worker_row("frozen")) is not None and r.current_tasks == [], timeout=10)
    out = stop(proc)
    assert proc.returncode == 0, out
    assert "lock lost" in out
    task.refresh_from_db()
    # Its attempt changed nothing: the rescuer still holds the task with its token.
    assert task.status == S.LOCKED and task.locked_by == "rescuer" and task.lock_token == rescued.lock_token
    assert not TaskEvent.objects.filter(task=task, kind=E.COMPLETED).exists()
    row = worker_row("frozen")
    assert row is not None and row.tasks_done == 0

    task_complete(task_id=task.pk, lock_token=rescued.lock_token)
    completed = list(TaskEvent.objects.filter(task=task, kind=E.COMPLETED))
    assert [e.actor for e in completed] == ["rescuer"]


# -- 4. max_run_time ---------------------------------------------------------------------------


def test_handler_over_max_run_time_is_abandoned_and_the_worker_serves_on(workers: Workers) -> None:
    slow = make_stage("overrun", handler="tests.handlers.sleep", max_run_time=1, lock_timeout=60)
    quick = make_stage("quick")
    task = task_create(stage=slow, type="t", payload={"seconds": 30})
    # A long backoff keeps the released task from being claimed again during the test.
    env = {"TASKS_RETRY_BACKOFF_BASE": "60", "TASKS_RETRY_JITTER": "0"}
    proc = start_worker_env(
        "--stage", "overrun", "--stage", "quick", "--concurrency", "1", "--poll-interval", "0.2",
        "--progress-interval", "0", "--worker-id", "limiter", env=env,
    )  # fmt: skip
    workers.append(proc)
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=S.LOCKED).exists(), timeout=30, interval=0.02)
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=S.PENDING).exists(), timeout=6, interval=0.02)

    task.refresh_from_db()
    assert "max_run_time" in task.last_error
    assert task.attempts == 1 and task.locked_by == "" and task.available_at > timezone.now()
    released = TaskEvent.objects.get(task=task, kind=E.RELEASED)
    assert "max_run_time" in released.details["error"]
    claimed_at = datetime.fromisoformat(released.details["claimed_at"])  # the claim the release ended
    # Abandoned after its 1 s, not after the handler's 30 s.
    assert 1.0 <= (released.at - claimed_at).total_seconds() < 4.0

    # Its only slot is stuck in the abandoned handler: a fresh slot must serve the next task.
    other = task_create(stage=quick, type="t", payload={})
    assert wait_for(lambda: Task.objects.filter(pk=other.pk, status=S.COMPLETED).exists(), timeout=10)
    assert proc.poll() is None
    out = stop(proc)
    assert proc.returncode == 0, out
    assert Task.objects.get(pk=task.pk).status == S.PENDING
    assert not TaskEvent.objects.filter(task=task, kind=E.COMPLETED).exists()


# -- 5. LISTEN wake-up ---------------------------------------------------------------------------


def test_listening_idle_worker_completes_a_new_task_within_a_second(workers: Workers) -> None:
    stage = make_stage("woken")
    proc = start_worker(
        "--stage", "woken", "--poll-interval", "30", "--progress-interval", "0", "--worker-id", "listener-w"
    )
    workers.append(proc)
    wait_until_idle("listener-w", stage)  # the next poll is 24-36 s away
    # It listens: the connection it opened when it first went idle.
    assert session_quiet("listener-w listen", 0.0, "LISTEN tasks_app_stage")

    created = time.monotonic()
    task = task_create(stage=stage, type="t", payload={})
    while Task.objects.get(pk=task.pk).status != S.COMPLETED:
        elapsed = time.monotonic() - created
        assert elapsed < 1.0, f"not completed {elapsed:.2f} s after creation"
        time.sleep(0.02)
    out = stop(proc)
    assert proc.returncode == 0, out
    assert "listening" in out


def test_polling_worker_without_listen_does_not_see_a_new_task_before_its_poll(workers: Workers) -> None:
    stage = make_stage("unheard")
    proc = start_worker(
        "--stage", "unheard", "--no-listen", "--poll-interval", "30", "--progress-interval", "0",
        "--worker-id", "poller-w",
    )  # fmt: skip
    workers.append(proc)
    wait_until_idle("poller-w", stage)  # the next poll is 24-36 s away
    assert not session_quiet("poller-w listen", 0.0)

    task = task_create(stage=stage, type="t", payload={})
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert Task.objects.get(pk=task.pk).status == S.PENDING
        time.sleep(0.05)
    assert Task.objects.get(pk=task.pk).locked_at is None  # never claimed
    out = stop(proc, timeout=10)
    assert proc.returncode == 0, out
    assert "polling" in out


# -- 6. PostgreSQL restart under a draining worker ----------------------------------------------


def test_worker_survives_a_server_restart_mid_drain(workers: Workers) -> None:
    if not os.environ.get("TEST_PG_BINDIR"):
        pytest.skip("needs the server of scripts/with_postgres.py (TEST_PG_BINDIR, TEST_PG_DATA)")
    # A short lock_timeout bounds the stall if a claim committed but its reply was lost.
    stage = make_stage("restart", handler="tests.handlers.sleep", lock_timeout=5)
    ids = bulk_tasks(stage, 300, {"seconds": 0.02})
    proc = start_worker(
        "--stage", "restart", "--batch-size", "10", "--poll-interval", "0.1", "--progress-interval", "0",
        "--worker-id", "survivor",
    )  # fmt: skip
    workers.append(proc)
    assert wait_for(lambda: status_count(stage, S.COMPLETED) >= 40, timeout=30)

    restart_postgres(down_for=1.0)
    connection.close()  # ours was cut too
    # The worker can't have finished while the server was down (≥ 6 s of handlers in all).
    assert status_count(stage, S.COMPLETED) < len(ids)

    # (Stop waiting early if the worker died.)
    assert wait_for(lambda: proc.poll() is not None or status_count(stage, S.COMPLETED) == len(ids), timeout=90)
    assert proc.poll() is None, finish(proc, timeout=10)
    assert status_count(stage, S.COMPLETED) == len(ids)
    out = stop(proc)
    assert proc.returncode == 0, out
    assert "database error" in out

    per_task = completions_per_task(stage)
    assert set(per_task) == set(ids)
    assert set(per_task.values()) == {1}
    assert set(TaskEvent.objects.filter(task__stage=stage, kind=E.COMPLETED).values_list("actor", flat=True)) == {
        "survivor"
    }


# -- 7. the failure policy through a real worker ------------------------------------------------


def test_failing_handler_is_retried_with_backoff_then_failed_at_max_attempts(workers: Workers) -> None:
    stage = make_stage("flaky", handler="tests.handlers.boom", max_attempts=3, lock_timeout=60)
    task = task_create(stage=stage, type="t", payload={})
    env = {"TASKS_RETRY_BACKOFF_BASE": "0.3", "TASKS_RETRY_JITTER": "0"}
    proc = start_worker_env(
        "--stage", "flaky", "--poll-interval", "0.05", "--progress-interval", "0", "--worker-id", "retrier", env=env
    )
    workers.append(proc)
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=S.FAILED).exists(), timeout=30)
    # Nothing claims a failed task again.
    time.sleep(0.5)
    out = stop(proc)
    assert proc.returncode == 0, out

    task.refresh_from_db()
    assert task.attempts == 3 and task.status == S.FAILED and "boom" in task.last_error
    events = list(TaskEvent.objects.filter(task=task).order_by("id"))
    kinds = [e.kind for e in events]
    assert kinds == [E.CREATED, E.RELEASED, E.RELEASED, E.FAILED]  # each carries the claim it ended
    assert [(e.details["worker"], e.details["attempt"]) for e in events[1:]] == [("retrier", n) for n in (1, 2, 3)]
    for e in events:
        if e.kind in (E.RELEASED, E.FAILED):
            assert "Traceback" in e.details["traceback"] and "boom" in e.details["traceback"], e.kind
    releases = [e for e in events if e.kind == E.RELEASED]
    # Backoff base * 2**(attempt-1), no jitter: retry_at is exactly 0.3 s, then 0.6 s after the release.
    for release, delay in zip(releases, (0.3, 0.6), strict=True):
        retry_at = datetime.fromisoformat(release.details["retry_at"])
        assert abs((retry_at - release.at).total_seconds() - delay) < 1e-3
    claims = [datetime.fromisoformat(e.details["claimed_at"]) for e in events[1:]]
    gaps = [(b - a).total_seconds() for a, b in zip(claims, claims[1:], strict=False)]
    # No claim before its backoff; the upper bounds only catch a stuck worker.
    assert 0.3 <= gaps[0] < 3.0, gaps
    assert 0.6 <= gaps[1] < 3.6, gaps


# -- 8. the expiry sweep is one at a time ----------------------------------------------------


def test_expiry_sweep_does_nothing_while_another_holds_the_sweep_lock() -> None:
    stage = make_stage("sweep")
    past = timezone.now() - timedelta(minutes=2)
    task = task_create(stage=stage, type="t", payload={}, now=past)
    # Claimed a minute ago for 1 s: long expired.
    [claimed] = task_claim(stage=stage, worker_id="gone", limit=1, lock_timeout=1, now=past + timedelta(minutes=1))
    assert claimed.pk == task.pk
    before = Task.objects.filter(pk=task.pk).values().get()

    s = connection.settings_dict
    other = psycopg.connect(
        dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"] or None, host=s["HOST"], port=s["PORT"] or None,
        autocommit=True,
    )  # fmt: skip
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [LockKey.SWEEP])
        started = time.monotonic()
        assert tasks_expire_locks() == 0
        # It gives up at once rather than waiting for the other sweeper.
        assert time.monotonic() - started < 5
        assert Task.objects.filter(pk=task.pk).values().get() == before
        assert not TaskEvent.objects.filter(task=task, kind=E.LOCK_EXPIRED).exists()

        row = other.execute("SELECT pg_advisory_unlock(%s)", [LockKey.SWEEP]).fetchone()
        assert row is not None and row[0] is True
    finally:
        other.close()

    assert tasks_expire_locks() == 1
    task.refresh_from_db()
    assert task.status == S.PENDING and task.lock_token == "" and task.locked_by == ""
    [expired] = TaskEvent.objects.filter(task=task, kind=E.LOCK_EXPIRED)
    assert expired.details["worker"] == "gone" and expired.details["now"] == "pending"
    assert tasks_expire_locks() == 0


# -- 9. handler slots run in parallel --------------------------------------------------------


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])  # ends first on ties
    running = best = 0
    for _, delta in points:
        running += delta
        best = max(best, running)
    return best


def test_concurrency_runs_handlers_in_parallel(workers: Workers) -> None:
    stage = make_stage("parallel", handler="tests.handlers.timed_sleep_send", lock_timeout=60)
    sink = make_stage("sink", kind=Stage.Kind.HOOK, handler="")  # no worker: successors stay pending
    Transition.objects.create(source=stage, target=sink, task_type="timed")
    ids = bulk_tasks(stage, 8, {"seconds": 0.5})
    proc = start_worker(
        "--stage", "parallel", "--concurrency", "4", "--batch-size", "8", "--poll-interval", "0.2",
        "--progress-interval", "0", "--worker-id", "parallel-w",
    )  # fmt: skip
    workers.append(proc)
    assert wait_for(lambda: status_count(stage, S.COMPLETED) == len(ids), timeout=60)
    out = stop(proc)
    assert proc.returncode == 0, out

    successors = list(Task.objects.filter(stage=sink))
    assert len(successors) == len(ids) and all(t.status == S.PENDING for t in successors)
    assert sorted(t.payload["task"] for t in successors) == ids
    assert all(t.parent_id == t.payload["task"] for t in successors)
    intervals = [(t.payload["start"], t.payload["end"]) for t in successors]
    # Four slots: up to four at once. At least three, to allow for threads starting a little apart.
    assert max_overlap(intervals) >= 3, intervals


# -- 10. the worker registry -------------------------------------------------------------------


def test_registry_shows_a_live_worker_then_a_dead_one_after_sigkill(workers: Workers, settings: Any) -> None:
    make_stage("reg")
    env = {"TASKS_WORKER_HEARTBEAT": "0.5"}
    proc = start_worker_env(
        "--stage", "reg", "--concurrency", "3", "--poll-interval", "0.2", "--progress-interval", "0",
        "--worker-id", "registered", env=env,
    )  # fmt: skip
    workers.append(proc)
    assert wait_for(lambda: worker_row("registered") is not None, timeout=30)
    row = worker_row("registered")
    assert row is not None
    assert (row.host, row.pid, row.stages, row.concurrency) == (socket.gethostname(), proc.pid, ["reg"], 3)
    assert row.stopped_at is None
    first = row.last_heartbeat
    assert wait_for(lambda: (r := worker_row("registered")) is not None and r.last_heartbeat > first, timeout=5)

    settings.TASKS_WORKER_DEAD_AFTER = 2.0
    # Heartbeats every 0.5 s keep it well inside 2 s.
    assert wait_for(lambda: (r := worker_row("registered")) is not None and r.is_alive(), timeout=5)
    proc.send_signal(signal.SIGKILL)
    finish(proc, timeout=30)

    row = worker_row("registered")
    assert row is not None and row.stopped_at is None  # it never got to record an exit
    assert wait_for(lambda: (r := worker_row("registered")) is not None and not r.is_alive(), timeout=10)
    row = worker_row("registered")
    assert row is not None
    assert (timezone.now() - row.last_heartbeat).total_seconds() > 2.0


def test_registry_records_a_clean_exit(workers: Workers, settings: Any) -> None:
    stage = make_stage("reg-clean")
    task = task_create(stage=stage, type="t", payload={})
    env = {"TASKS_WORKER_HEARTBEAT": "0.5"}
    proc = start_worker_env(
        "--stage", "reg-clean", "--poll-interval", "0.2", "--progress-interval", "0", "--worker-id", "leaver", env=env
    )
    workers.append(proc)
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=S.COMPLETED).exists(), timeout=30)
    out = stop(proc)
    assert proc.returncode == 0, out

    settings.TASKS_WORKER_DEAD_AFTER = 3600.0  # a fresh heartbeat: only stopped_at says it is gone
    row = worker_row("leaver")
    assert row is not None
    assert row.stopped_at is not None and row.stopped_at >= row.started_at
    assert not row.is_alive()
    assert row.tasks_done == 1 and row.current_tasks == []


def test_idle_worker_with_a_long_poll_interval_keeps_reporting_heartbeats(workers: Workers, settings: Any) -> None:
    stage = make_stage("reg-idle")
    env = {"TASKS_WORKER_HEARTBEAT": "0.5"}
    proc = start_worker_env(
        "--stage", "reg-idle", "--poll-interval", "30", "--progress-interval", "0", "--worker-id", "idler", env=env
    )
    workers.append(proc)
    wait_until_idle("idler", stage, quiet=0.2)  # the next poll is 24-36 s away
    row = worker_row("idler")
    assert row is not None
    first = row.last_heartbeat
    # Idle between polls (24-36 s apart) it still reports every TASKS_WORKER_HEARTBEAT (0.5 s) ...
    assert wait_for(lambda: (r := worker_row("idler")) is not None and r.last_heartbeat > first, timeout=3)
    # ... so with TASKS_WORKER_DEAD_AFTER above the heartbeat it is never shown dead while it waits.
    settings.TASKS_WORKER_DEAD_AFTER = 2.0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        r = worker_row("idler")
        assert r is not None and r.is_alive()
        time.sleep(0.2)
    out = stop(proc)
    assert proc.returncode == 0, out
