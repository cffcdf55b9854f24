"""A stage's concurrency cap and rate limit (Stage.max_concurrency, Stage.rate_limit): the claim, and every way in.

intake --*--> review --approved--> ship, audit; --declined--> notify (tests.support.world).
The race tests with real processes are tests/test_flow_limits_race_pg.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from tasks_app.models import Stage, StageGate, Task
from tasks_app.services import claim as claim_module
from tasks_app.services import (
    task_claim,
    task_complete,
    task_create,
    task_fail,
    task_release,
    tasks_expire_locks,
)
from tasks_app.services.cancel import task_cancel
from tasks_app.services.complete import Completion
from tasks_app.services.flow_limits import CAP_PAUSE, throttle_pause, throttled_counts, window_start
from tasks_app.services.pipeline import tasks_complete_and_claim
from tasks_app.worker import Worker

# A fixed instant 10 s into a minute: windows of a second and a minute are easy to step through.
T0 = datetime(2026, 12, 1, 12, 0, 10, tzinfo=UTC)


def limited(stage: Stage, *, cap: int | None = None, rate: str = "") -> Stage:
    Stage.objects.filter(pk=stage.pk).update(max_concurrency=cap, rate_limit=rate)
    stage.refresh_from_db()
    return stage


def backlog(stage: Stage, n: int, now: datetime | None = None) -> list[Task]:
    return [task_create(stage=stage, type="order", payload={"n": i}, now=now) for i in range(n)]


def locked_at(stage: Stage) -> int:
    return Task.objects.filter(stage=stage, status=Task.Status.LOCKED).count()


def throttled(stage: Stage) -> int:
    return throttled_counts().get(stage.pk, 0)


# -- the cap ---------------------------------------------------------------------------------------


def test_the_cap_holds_for_a_claim_of_many_and_of_one(review: Stage) -> None:
    limited(review, cap=3)
    backlog(review, 10)

    many = task_claim(stage=review, worker_id="w1", limit=10)
    one = task_claim(stage=review, worker_id="w2", limit=1)

    assert len(many) == 3 and one == []
    assert locked_at(review) == 3
    assert [t.payload["n"] for t in many] == [0, 1, 2]  # still the claim order, only fewer
    assert throttled(review) == 2  # both were cut short while tasks were claimable
    assert throttle_pause(review.pk) is not None  # and the worker is told to back off


def test_a_claim_the_cap_cuts_to_what_the_backlog_had_is_not_throttled(review: Stage) -> None:
    limited(review, cap=3)
    backlog(review, 2)

    claimed = task_claim(stage=review, worker_id="w1", limit=10)

    assert len(claimed) == 2
    assert throttled(review) == 0
    assert throttle_pause(review.pk) is None


def test_a_stage_without_controls_has_no_gate(review: Stage) -> None:
    backlog(review, 5)

    assert len(task_claim(stage=review, worker_id="w1", limit=5)) == 5
    assert not StageGate.objects.filter(stage=review).exists()


@pytest.mark.parametrize("ending", ["complete", "release", "fail", "expire", "cancel"])
def test_a_task_that_ends_frees_its_slot(review: Stage, ending: str) -> None:
    limited(review, cap=1)
    backlog(review, 2)
    [held] = task_claim(stage=review, worker_id="w1", lock_timeout=30)
    assert task_claim(stage=review, worker_id="w2") == []

    if ending == "complete":
        task_complete(task_id=held.pk, lock_token=held.lock_token)
    elif ending == "release":
        task_release(task_id=held.pk, lock_token=held.lock_token, error="later", retry_in=0)
    elif ending == "fail":
        task_fail(task_id=held.pk, lock_token=held.lock_token, error="broken")
    elif ending == "expire":
        # An expired lock still holds its slot (it is locked) until the expiry sweep hands it back.
        later = timezone.now() + timedelta(seconds=60)
        assert task_claim(stage=review, worker_id="w2", now=later) == []
        assert tasks_expire_locks(now=later) == 1
    else:
        # A cancel of a held task is a request: the slot stays taken until the handler's completion ends it.
        task_cancel(task_id=held.pk, actor="user:ann", reason="not needed")
        assert task_claim(stage=review, worker_id="w2") == []
        task_complete(task_id=held.pk, lock_token=held.lock_token)
        assert Task.objects.get(pk=held.pk).status == Task.Status.CANCELLED

    later = timezone.now() + timedelta(seconds=120)  # past any retry backoff and expired lock
    [next_one] = task_claim(stage=review, worker_id="w2", now=later, lock_timeout=600)
    assert locked_at(review) == 1
    assert next_one.locked_by == "w2"


def test_the_cap_counts_expired_locks_until_they_are_reclaimed_or_swept(review: Stage) -> None:
    limited(review, cap=2)
    backlog(review, 3)
    task_claim(stage=review, worker_id="gone", limit=2, lock_timeout=5)
    later = timezone.now() + timedelta(seconds=10)

    assert task_claim(stage=review, worker_id="w2", limit=3, now=later) == []  # two locked (expired): full
    assert locked_at(review) == 2


def test_completing_and_claiming_together_frees_the_slot_first(review: Stage) -> None:
    limited(review, cap=1)
    backlog(review, 2)
    [held] = task_claim(stage=review, worker_id="w1")

    outcomes, claimed = tasks_complete_and_claim(
        items=[Completion(held.pk, held.lock_token, [])], stage=review, worker_id="w1", limit=5
    )

    assert [o.status for o in outcomes] == ["completed"]
    assert len(claimed) == 1 and locked_at(review) == 1


# -- the rate limit --------------------------------------------------------------------------------


def test_the_rate_limit_is_a_fixed_window(review: Stage) -> None:
    limited(review, rate="2/minute")
    backlog(review, 6, now=T0 - timedelta(hours=1))

    first = task_claim(stage=review, worker_id="w1", limit=5, now=T0, lock_timeout=600)
    same_window = task_claim(stage=review, worker_id="w2", limit=1, now=T0 + timedelta(seconds=40))
    next_window = task_claim(stage=review, worker_id="w2", limit=5, now=T0 + timedelta(seconds=50))

    assert len(first) == 2 and same_window == [] and len(next_window) == 2
    gate = StageGate.objects.get(stage=review)
    assert gate.window_start == window_start(T0 + timedelta(seconds=50), 60) == datetime(2026, 12, 1, 12, 1, tzinfo=UTC)
    assert gate.window_count == 2
    assert throttled(review) == 3


def test_a_rate_limited_claim_says_how_long_until_the_window_opens(review: Stage) -> None:
    limited(review, rate="1/minute")
    backlog(review, 2, now=T0 - timedelta(hours=1))

    task_claim(stage=review, worker_id="w1", limit=2, now=T0)

    pause = throttle_pause(review.pk)
    assert pause is not None and not pause.by_cap
    assert pause.seconds == pytest.approx(50.0)


def test_a_claimer_whose_clock_is_behind_counts_against_the_stored_window(review: Stage) -> None:
    limited(review, rate="2/second")
    backlog(review, 5, now=T0 - timedelta(hours=1))
    task_claim(stage=review, worker_id="ahead", limit=2, now=T0 + timedelta(seconds=1))

    assert task_claim(stage=review, worker_id="behind", limit=2, now=T0) == []


def test_cap_and_rate_together_take_the_smaller_room(review: Stage) -> None:
    limited(review, cap=5, rate="3/hour")
    backlog(review, 10, now=T0 - timedelta(hours=1))

    assert len(task_claim(stage=review, worker_id="w1", limit=10, now=T0)) == 3
    assert task_claim(stage=review, worker_id="w1", limit=10, now=T0 + timedelta(minutes=1)) == []
    assert locked_at(review) == 3


def test_a_paused_stage_claims_nothing_and_counts_no_throttle(review: Stage) -> None:
    limited(review, cap=1)
    Stage.objects.filter(pk=review.pk).update(is_paused=True)
    review.refresh_from_db()
    backlog(review, 2)

    assert task_claim(stage=review, worker_id="w1") == []
    assert throttled(review) == 0


# -- PostgreSQL: a stage without controls keeps its one prepared statement ---------------------------


@pytest.mark.postgres
def test_a_claim_at_a_stage_without_controls_is_one_prepared_statement(
    review: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    backlog(review, 3)
    prepared: list[str] = []
    others: list[str] = []
    real = claim_module.execute_prepared

    def counting(sql: str, params: Any) -> Any:
        prepared.append(sql)
        return real(sql, params)

    def other(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        others.append(sql)
        return execute(sql, params, many, context)

    monkeypatch.setattr(claim_module, "execute_prepared", counting)
    with connection.execute_wrapper(other):
        claimed = task_claim(stage=review, worker_id="w1", limit=2)

    assert len(claimed) == 2
    assert prepared == [claim_module.PG_CLAIM_SQL] and others == []


@pytest.mark.postgres
def test_a_capped_claim_locks_the_gate_then_counts_then_claims(review: Stage, monkeypatch: pytest.MonkeyPatch) -> None:
    limited(review, cap=2)
    backlog(review, 3)
    task_claim(stage=review, worker_id="w0")  # makes the gate row
    statements: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        claimed = task_claim(stage=review, worker_id="w1", limit=3)

    assert len(claimed) == 1
    statements = [s for s in statements if "SAVEPOINT" not in s]  # the test's own transaction
    assert "FOR UPDATE" in statements[0] and "stagegate" in statements[0]
    assert "count(*)" in statements[1] and "status = 'locked'" in statements[1]


# -- the worker ------------------------------------------------------------------------------------


def test_a_throttled_worker_leaves_the_stage_alone_for_a_moment(review: Stage) -> None:
    limited(review, cap=1)
    backlog(review, 3)
    task_claim(stage=review, worker_id="elsewhere", lock_timeout=600)  # the one slot is taken
    worker = Worker(stage_slugs=["review"], listen=False, progress_interval=0)
    worker._start_pool()
    try:
        assert worker.claim() == 0
        assert throttled(review) == 1
        until, by_cap = worker.throttled[review.pk]
        assert by_cap and 0 < until - time.monotonic() <= CAP_PAUSE

        assert worker.claim() == 0  # at once again: the stage is skipped, no gate lock, no throttled claim
        assert throttled(review) == 1
    finally:
        assert worker._pool is not None
        worker._pool.stop()


def test_a_worker_run_once_waits_out_a_rate_limit_instead_of_stopping(review: Stage) -> None:
    limited(review, rate="2/second")
    Stage.objects.filter(pk=review.pk).update(handler="tests.handlers.noop")
    review.refresh_from_db()
    backlog(review, 5)

    Worker(stage_slugs=["review"], listen=False, progress_interval=0, batch_size=5).run(once=True)

    assert not Task.objects.filter(stage=review).exclude(status=Task.Status.COMPLETED).exists()
    assert throttled(review) >= 2  # it was held back at least twice (five tasks, two a second)
