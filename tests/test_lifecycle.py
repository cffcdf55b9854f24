"""The task lifecycle: claim, complete, release, fail, extend, expire, operator actions.

Illegal transitions must be rejected with nothing changed: each such test
snapshots the task and its history before and compares after.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import (
    NoRouteError,
    TaskLockLost,
    TaskStateError,
    retry_delay,
    task_claim,
    task_complete,
    task_create,
    task_duplicate,
    task_edit_payload,
    task_extend_lock,
    task_fail,
    task_force_release,
    task_mark_completed,
    task_release,
    task_retry,
    tasks_expire_locks,
)
from tests.support.history import claim, claim_of


def snapshot(task_id: int) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    row = Task.objects.filter(pk=task_id).values().get()
    events = list(TaskEvent.objects.filter(task_id=task_id).values_list("kind", "actor"))
    return row, events


def kinds(task: Task) -> list[str]:
    return list(TaskEvent.objects.filter(task=task).order_by("id").values_list("kind", flat=True))


# -- create ---------------------------------------------------------------
def test_create_makes_a_pending_task_with_a_created_event(review: Stage) -> None:
    task = task_create(stage=review, type="order", payload={"a": 1}, actor="cli")
    task.refresh_from_db()
    assert task.status == Task.Status.PENDING
    assert task.attempts == 0 and task.lock_token == "" and task.locked_until is None
    assert task.available_at <= timezone.now()
    assert list(TaskEvent.objects.filter(task=task).values_list("kind", "actor")) == [("created", "cli")]


# -- claim ----------------------------------------------------------------
def test_claim_locks_with_fresh_token_and_counts_the_attempt(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="worker-7", lock_timeout=60, now=now)
    assert task.pk == pending_task.pk
    stored = Task.objects.get(pk=task.pk)
    assert stored.status == Task.Status.LOCKED
    assert stored.lock_token == task.lock_token and len(task.lock_token) == 32
    assert stored.locked_by == "worker-7"
    assert stored.locked_at == now
    assert stored.locked_until == now + timedelta(seconds=60)
    assert stored.attempts == 1 and stored.reclaimed_from == ""
    # A claim writes no history: the row holds it until the event that ends it.
    assert kinds(task) == ["created"]
    task_complete(task_id=task.pk, lock_token=task.lock_token, now=now)
    event = TaskEvent.objects.get(task=task, kind="completed")
    assert event.actor == "worker-7" and claim_of(event) == claim(1, "worker-7", now)


def test_claim_uses_the_stage_lock_timeout_by_default(review: Stage, pending_task: Task) -> None:
    review.lock_timeout = 42
    review.save()
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w", now=now)
    assert Task.objects.get(pk=task.pk).locked_until == now + timedelta(seconds=42)


def test_claim_is_fifo_by_id_and_respects_the_limit(review: Stage) -> None:
    ids = [task_create(stage=review, type="t", payload={"i": i}).pk for i in range(5)]
    first = task_claim(stage=review, worker_id="w", limit=3)
    second = task_claim(stage=review, worker_id="w", limit=3)
    assert [t.pk for t in first] == ids[:3]
    assert [t.pk for t in second] == ids[3:]
    assert task_claim(stage=review, worker_id="w", limit=3) == []


def test_each_claimed_task_gets_its_own_token(review: Stage) -> None:
    for i in range(3):
        task_create(stage=review, type="t", payload={"i": i})
    tokens = {t.lock_token for t in task_claim(stage=review, worker_id="w", limit=3)}
    assert len(tokens) == 3


def test_claim_only_takes_tasks_of_its_stage(world: dict[str, Stage]) -> None:
    task_create(stage=world["ship"], type="t", payload={})
    assert task_claim(stage=world["review"], worker_id="w") == []
    assert len(task_claim(stage=world["ship"], worker_id="w")) == 1


def test_task_not_yet_available_is_not_claimed(review: Stage) -> None:
    now = timezone.now()
    task = task_create(stage=review, type="t", payload={}, available_at=now + timedelta(minutes=5))
    assert task_claim(stage=review, worker_id="w", now=now) == []
    [claimed] = task_claim(stage=review, worker_id="w", now=now + timedelta(minutes=5))
    assert claimed.pk == task.pk


def test_paused_stage_yields_nothing(review: Stage, pending_task: Task) -> None:
    review.is_paused = True
    review.save()
    assert task_claim(stage=review, worker_id="w") == []
    assert Task.objects.get(pk=pending_task.pk).status == Task.Status.PENDING


def test_locked_and_completed_tasks_are_not_claimed_again(review: Stage, pending_task: Task) -> None:
    [task] = task_claim(stage=review, worker_id="w1")
    # Still locked (lock not expired): nobody else gets it.
    assert task_claim(stage=review, worker_id="w2") == []
    task_complete(task_id=task.pk, lock_token=task.lock_token, send=[("approved", {})])
    # Completed: never claimed again, even far in the future.
    assert task_claim(stage=review, worker_id="w2", now=timezone.now() + timedelta(days=365)) == []


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_claim_limit_out_of_range_is_refused(review: Stage, limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        task_claim(stage=review, worker_id="w", limit=limit)


# -- lock expiry ------------------------------------------------------------
def test_expired_lock_is_claimable_by_another_worker_at_once(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    [first] = task_claim(stage=review, worker_id="w1", lock_timeout=10, now=now)
    later = now + timedelta(seconds=11)
    [second] = task_claim(stage=review, worker_id="w2", now=later)
    assert second.pk == first.pk and second.lock_token != first.lock_token
    assert second.attempts == 2 and second.locked_by == "w2"
    assert Task.objects.get(pk=first.pk).reclaimed_from == "w1"
    # The reclaim ends w1's claim: one lock_expired event, written by the claim, with w1's facts.
    [expired] = TaskEvent.objects.filter(task=first, kind="lock_expired")
    assert (expired.actor, expired.at, expired.details["now"]) == ("w2", later, "reclaimed")
    assert claim_of(expired) == claim(1, "w1", now)
    # The first worker's late completion is rejected and sends nothing.
    before = Task.objects.count()
    with pytest.raises(TaskLockLost, match="another token"):
        task_complete(task_id=first.pk, lock_token=first.lock_token, send=[("approved", {})])
    assert Task.objects.count() == before
    task_complete(task_id=second.pk, lock_token=second.lock_token, send=[("approved", {})], now=later)
    assert kinds(first).count("completed") == 1
    done = TaskEvent.objects.get(task=first, kind="completed")
    assert claim_of(done) == claim(2, "w2", later, reclaimed_from="w1")


def test_lock_is_not_claimable_until_it_expires(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    task_claim(stage=review, worker_id="w1", lock_timeout=10, now=now)
    # locked_until == now + 10s is not yet expired (strictly less than).
    assert task_claim(stage=review, worker_id="w2", now=now + timedelta(seconds=10)) == []


def test_sweep_returns_expired_locks_to_pending_with_an_event(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w1", lock_timeout=5, now=now)
    assert tasks_expire_locks(now=now + timedelta(seconds=4)) == 0
    assert tasks_expire_locks(now=now + timedelta(seconds=6)) == 1
    stored = Task.objects.get(pk=task.pk)
    assert stored.status == Task.Status.PENDING
    assert stored.lock_token == "" and stored.locked_by == "" and stored.locked_until is None
    event = TaskEvent.objects.get(task=task, kind="lock_expired")
    assert event.details["now"] == "pending" and claim_of(event) == claim(1, "w1", now)
    with pytest.raises(TaskLockLost):
        task_complete(task_id=task.pk, lock_token=task.lock_token)


def test_sweep_fails_tasks_that_reached_max_attempts(review: Stage, pending_task: Task) -> None:
    review.max_attempts = 1
    review.save()
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w1", lock_timeout=5, now=now)
    assert tasks_expire_locks(now=now + timedelta(seconds=6)) == 1
    stored = Task.objects.get(pk=task.pk)
    assert stored.status == Task.Status.FAILED
    assert "max attempts" in stored.last_error


def test_sweep_leaves_live_locks_and_other_states_alone(review: Stage) -> None:
    live = task_create(stage=review, type="t", payload={})
    now = timezone.now()
    assert len(task_claim(stage=review, worker_id="w", lock_timeout=600, now=now)) == 1
    pending = task_create(stage=review, type="t", payload={})
    assert tasks_expire_locks(now=now + timedelta(seconds=60)) == 0
    assert Task.objects.get(pk=live.pk).status == Task.Status.LOCKED
    assert Task.objects.get(pk=pending.pk).status == Task.Status.PENDING


# -- complete ---------------------------------------------------------------
def test_complete_sends_successors_in_the_same_transaction(review: Stage, pending_task: Task) -> None:
    [task] = task_claim(stage=review, worker_id="w1")
    successors = task_complete(task_id=task.pk, lock_token=task.lock_token, send=[("approved", {"ok": 1})])
    stored = Task.objects.get(pk=task.pk)
    assert stored.status == Task.Status.COMPLETED and stored.completed_at is not None
    assert stored.lock_token == "" and stored.locked_by == "w1"
    assert sorted(t.stage.slug for t in successors) == ["audit", "ship"]
    event = TaskEvent.objects.get(task=task, kind="completed")
    assert sorted(event.details["sent"]) == sorted(t.pk for t in successors)


def test_complete_with_unrouted_type_rolls_back_the_completion(review: Stage, pending_task: Task) -> None:
    [task] = task_claim(stage=review, worker_id="w1")
    before = snapshot(task.pk)
    count = Task.objects.count()
    with pytest.raises(NoRouteError):
        task_complete(task_id=task.pk, lock_token=task.lock_token, send=[("approved", {}), ("nope", {})])
    # Neither the completion nor the routable successor was committed.
    assert snapshot(task.pk) == before
    assert Task.objects.count() == count


def test_complete_with_invalid_successor_payload_changes_nothing(review: Stage, pending_task: Task) -> None:
    from django.core.exceptions import ValidationError

    [task] = task_claim(stage=review, worker_id="w1")
    before = snapshot(task.pk)
    with pytest.raises(ValidationError):
        task_complete(task_id=task.pk, lock_token=task.lock_token, send=[("approved", ["not", "a", "dict"])])
    assert snapshot(task.pk) == before


def test_complete_a_pending_task_is_rejected(pending_task: Task) -> None:
    before = snapshot(pending_task.pk)
    with pytest.raises(TaskLockLost, match="pending"):
        task_complete(task_id=pending_task.pk, lock_token="whatever")
    assert snapshot(pending_task.pk) == before


@pytest.mark.parametrize("token", ["", "wrong-token", "0" * 32])
def test_complete_with_wrong_token_is_rejected(review: Stage, pending_task: Task, token: str) -> None:
    [task] = task_claim(stage=review, worker_id="w1")
    before = snapshot(task.pk)
    with pytest.raises(TaskLockLost):
        task_complete(task_id=task.pk, lock_token=token, send=[("approved", {})])
    assert snapshot(task.pk) == before


def test_complete_twice_is_rejected_and_sends_once(review: Stage, pending_task: Task) -> None:
    [task] = task_claim(stage=review, worker_id="w1")
    task_complete(task_id=task.pk, lock_token=task.lock_token, send=[("declined", {})])
    count = Task.objects.count()
    with pytest.raises(TaskLockLost, match="completed"):
        task_complete(task_id=task.pk, lock_token=task.lock_token, send=[("declined", {})])
    assert Task.objects.count() == count


@pytest.mark.django_db
def test_complete_unknown_task_is_rejected() -> None:
    with pytest.raises(TaskLockLost, match="does not exist"):
        task_complete(task_id=999_999, lock_token="x")


def test_stale_complete_after_operator_release_is_rejected(review: Stage, pending_task: Task) -> None:
    [task] = task_claim(stage=review, worker_id="w1")
    task_force_release(task_id=task.pk, actor="user:op")
    with pytest.raises(TaskLockLost):
        task_complete(task_id=task.pk, lock_token=task.lock_token)
    assert Task.objects.get(pk=task.pk).status == Task.Status.PENDING


# -- release and fail -------------------------------------------------------
def test_release_records_error_and_backs_off(review: Stage, pending_task: Task, settings: Any) -> None:
    settings.TASKS_RETRY_BACKOFF_BASE = 10
    settings.TASKS_RETRY_JITTER = 0
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w1", now=now)
    released = task_release(
        task_id=task.pk, lock_token=task.lock_token, error="KeyError: 'x'", traceback="Trace...", now=now
    )
    assert released.status == Task.Status.PENDING
    assert released.available_at == now + timedelta(seconds=10)
    assert released.last_error == "KeyError: 'x'"
    assert released.lock_token == "" and released.locked_by == ""
    event = TaskEvent.objects.get(task=task, kind="released")
    assert event.details["error"] == "KeyError: 'x'" and event.details["traceback"] == "Trace..."
    assert claim_of(event) == claim(1, "w1", now)
    # Not claimable during the backoff, claimable after it.
    assert task_claim(stage=review, worker_id="w2", now=now + timedelta(seconds=9)) == []
    assert len(task_claim(stage=review, worker_id="w2", now=now + timedelta(seconds=10))) == 1


def test_release_with_explicit_retry_in(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w1", now=now)
    released = task_release(task_id=task.pk, lock_token=task.lock_token, retry_in=0, now=now)
    assert released.available_at == now
    assert len(task_claim(stage=review, worker_id="w2", now=now)) == 1


def test_backoff_is_exponential_capped_and_jittered(settings: Any) -> None:
    settings.TASKS_RETRY_BACKOFF_BASE = 2
    settings.TASKS_RETRY_BACKOFF_MAX = 100
    settings.TASKS_RETRY_JITTER = 0
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert retry_delay(30) == 100
    settings.TASKS_RETRY_JITTER = 0.5
    samples = {retry_delay(3) for _ in range(50)}
    assert all(4 <= s <= 8 for s in samples) and len(samples) > 1


def test_release_at_max_attempts_fails_the_task(review: Stage, pending_task: Task) -> None:
    review.max_attempts = 2
    review.save()
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w1", now=now)
    assert (
        task_release(task_id=task.pk, lock_token=task.lock_token, error="e1", retry_in=0, now=now).status == "pending"
    )
    [task] = task_claim(stage=review, worker_id="w1", now=now)
    failed = task_release(task_id=task.pk, lock_token=task.lock_token, error="e2", now=now)
    assert failed.status == Task.Status.FAILED and failed.last_error == "e2" and failed.attempts == 2
    assert kinds(task)[-1] == "failed"
    event = TaskEvent.objects.filter(task=task).latest("id")
    assert event.details["reason"] == "max attempts (2) reached" and claim_of(event) == claim(2, "w1", now)
    # Failed tasks are never claimed.
    assert task_claim(stage=review, worker_id="w1", now=now + timedelta(days=1)) == []


def test_release_with_wrong_token_changes_nothing(review: Stage, pending_task: Task) -> None:
    [task] = task_claim(stage=review, worker_id="w1")
    before = snapshot(task.pk)
    with pytest.raises(TaskLockLost):
        task_release(task_id=task.pk, lock_token="nope", error="x")
    assert snapshot(task.pk) == before


def test_fail_marks_failed_at_once(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w1", now=now)
    task_fail(task_id=task.pk, lock_token=task.lock_token, error="cannot import handler")
    stored = Task.objects.get(pk=task.pk)
    assert stored.status == Task.Status.FAILED and stored.last_error == "cannot import handler"
    assert kinds(task)[-1] == "failed"
    event = TaskEvent.objects.filter(task=task).latest("id")
    assert event.details["error"] == "cannot import handler" and claim_of(event) == claim(1, "w1", now)


# -- extend -----------------------------------------------------------------
def test_extend_pushes_the_deadline_and_keeps_the_lock(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w1", lock_timeout=10, now=now)
    until = task_extend_lock(
        task_id=task.pk, lock_token=task.lock_token, lock_timeout=30, now=now + timedelta(seconds=8)
    )
    assert until == now + timedelta(seconds=38)
    # Past the original deadline the task is still ours.
    assert task_claim(stage=review, worker_id="w2", now=now + timedelta(seconds=20)) == []
    assert tasks_expire_locks(now=now + timedelta(seconds=20)) == 0
    task_complete(task_id=task.pk, lock_token=task.lock_token, send=[("approved", {})])
    assert "lock_extended" in kinds(task)


def test_extend_with_wrong_token_or_after_reclaim_is_rejected(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w1", lock_timeout=10, now=now)
    with pytest.raises(TaskLockLost):
        task_extend_lock(task_id=task.pk, lock_token="bad", now=now)
    task_claim(stage=review, worker_id="w2", now=now + timedelta(seconds=11))
    with pytest.raises(TaskLockLost):
        task_extend_lock(task_id=task.pk, lock_token=task.lock_token, now=now + timedelta(seconds=12))


# -- operator actions -------------------------------------------------------
def complete(review: Stage, task: Task) -> Task:
    [claimed] = task_claim(stage=review, worker_id="w1")
    task_complete(task_id=claimed.pk, lock_token=claimed.lock_token, send=[("approved", {})])
    return Task.objects.get(pk=task.pk)


def test_retry_sends_a_completed_task_back_to_pending_keeping_attempts(review: Stage, pending_task: Task) -> None:
    complete(review, pending_task)
    task_retry(task_id=pending_task.pk, actor="user:alice")
    stored = Task.objects.get(pk=pending_task.pk)
    assert stored.status == Task.Status.PENDING and stored.attempts == 1 and stored.completed_at is None
    event = TaskEvent.objects.filter(task=pending_task).last()
    assert event is not None and (event.kind, event.actor) == ("retried", "user:alice")
    assert event.details["previous_status"] == "completed"
    assert len(task_claim(stage=review, worker_id="w")) == 1


def test_retry_a_pending_or_locked_task_is_refused(review: Stage, pending_task: Task) -> None:
    before = snapshot(pending_task.pk)
    with pytest.raises(TaskStateError, match="pending"):
        task_retry(task_id=pending_task.pk, actor="user:alice")
    assert snapshot(pending_task.pk) == before
    task_claim(stage=review, worker_id="w1")
    with pytest.raises(TaskStateError, match="locked"):
        task_retry(task_id=pending_task.pk, actor="user:alice")


def test_force_release_frees_a_locked_task_and_voids_its_token(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w1", now=now)
    task_force_release(task_id=task.pk, actor="user:bob")
    stored = Task.objects.get(pk=task.pk)
    assert stored.status == Task.Status.PENDING and stored.lock_token == ""
    # It ends w1's claim: the event says whose, as every end of a claim does.
    event = TaskEvent.objects.filter(task=task).latest("id")
    assert (event.kind, event.actor, event.details["previous_status"]) == ("force_released", "user:bob", "locked")
    assert claim_of(event) == claim(1, "w1", now)
    with pytest.raises(TaskStateError):
        task_force_release(task_id=task.pk, actor="user:bob")


def test_mark_completed_and_its_refusal(review: Stage, pending_task: Task) -> None:
    task_mark_completed(task_id=pending_task.pk, actor="user:carol")
    stored = Task.objects.get(pk=pending_task.pk)
    assert stored.status == Task.Status.COMPLETED and stored.completed_at is not None
    with pytest.raises(TaskStateError, match="completed"):
        task_mark_completed(task_id=pending_task.pk, actor="user:carol")
    assert kinds(pending_task)[-1] == "marked_completed"
    # A pending task was nobody's claim: its event carries no claim.
    event = TaskEvent.objects.get(task=pending_task, kind="marked_completed")
    assert event.details == {"previous_status": "pending"}


def test_mark_completed_of_a_locked_task_ends_its_claim(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    task_claim(stage=review, worker_id="w1", now=now)
    task_mark_completed(task_id=pending_task.pk, actor="user:carol")
    event = TaskEvent.objects.get(task=pending_task, kind="marked_completed")
    assert event.details["previous_status"] == "locked" and claim_of(event) == claim(1, "w1", now)


def test_duplicate_creates_a_pending_copy(review: Stage, pending_task: Task) -> None:
    complete(review, pending_task)
    copy = task_duplicate(task_id=pending_task.pk, actor="user:dan")
    copy.refresh_from_db()
    assert copy.pk != pending_task.pk and copy.status == Task.Status.PENDING
    assert (copy.stage_id, copy.type, copy.payload, copy.attempts) == (review.pk, "order", {"amount": 10}, 0)
    assert TaskEvent.objects.get(task=copy, kind="created").details == {"duplicate_of": pending_task.pk}
    assert kinds(pending_task)[-1] == "duplicated"


def test_edit_payload_validates_and_records_before_and_after(pending_task: Task) -> None:
    from django.core.exceptions import ValidationError

    task_edit_payload(task_id=pending_task.pk, payload={"amount": 20}, actor="user:eve")
    assert Task.objects.get(pk=pending_task.pk).payload == {"amount": 20}
    event = TaskEvent.objects.filter(task=pending_task, kind="edited").get()
    assert event.details == {"before": {"amount": 10}, "after": {"amount": 20}}
    with pytest.raises(ValidationError):
        task_edit_payload(task_id=pending_task.pk, payload=[1], actor="user:eve")  # type: ignore[arg-type]
    assert Task.objects.get(pk=pending_task.pk).payload == {"amount": 20}


def test_edit_payload_of_a_locked_task_is_refused(review: Stage, pending_task: Task) -> None:
    task_claim(stage=review, worker_id="w1")
    with pytest.raises(TaskStateError, match="locked"):
        task_edit_payload(task_id=pending_task.pk, payload={"x": 1}, actor="user:eve")
    assert Task.objects.get(pk=pending_task.pk).payload == {"amount": 10}


def test_expired_lock_at_max_attempts_is_not_reclaimed_but_failed_by_the_sweep(
    review: Stage, pending_task: Task
) -> None:
    review.max_attempts = 1
    review.save()
    now = timezone.now()
    task_claim(stage=review, worker_id="w1", lock_timeout=5, now=now)
    later = now + timedelta(seconds=6)
    # The task has used its only attempt: no second run, however the lock ended.
    assert task_claim(stage=review, worker_id="w2", now=later) == []
    assert tasks_expire_locks(now=later) == 1
    assert Task.objects.get(pk=pending_task.pk).status == Task.Status.FAILED


def test_orphaned_claims_of_a_worker_are_handed_back(review: Stage) -> None:
    from tasks_app.services import tasks_unclaim_orphans

    for i in range(3):
        task_create(stage=review, type="t", payload={"i": i})
    kept, orphan, _ = task_claim(stage=review, worker_id="w1", limit=3)
    other = task_create(stage=review, type="t", payload={})
    task_claim(stage=review, worker_id="w2")  # someone else's lock is never touched
    assert tasks_unclaim_orphans(worker_id="w1", keep=[kept.pk, _.pk]) == 1
    assert Task.objects.get(pk=orphan.pk).status == Task.Status.PENDING
    assert Task.objects.get(pk=orphan.pk).attempts == 0
    assert Task.objects.get(pk=kept.pk).status == Task.Status.LOCKED
    assert Task.objects.get(pk=other.pk).locked_by == "w2"
    assert kinds(orphan)[-1] == "released"
    event = TaskEvent.objects.filter(task=orphan).latest("id")
    # The claim it hands back was attempt 1, though the attempt is not counted.
    assert claim_of(event) == claim(1, "w1", kept.locked_at)  # one claim: one locked_at
