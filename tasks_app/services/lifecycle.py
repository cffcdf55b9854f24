"""Completing, releasing, failing and extending claimed tasks, and the expiry sweep.

Every write restates the state it expects in its WHERE clause (status locked,
this lock token); a rowcount of 0 means another worker or an operator got
there first, and the caller gets TaskLockLost with nothing changed.

Each of these ends a claim, so its event carries the claim's facts
(services.events.attempt_details), read from the locked row before the write.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from tasks_app.models import Task, TaskEvent
from tasks_app.services.errors import TaskLockLost
from tasks_app.services.events import (
    CLAIM_COLUMNS,
    claim_facts,
    event_record,
    failed_details,
    lock_expired_details,
    released_details,
    unclaimed_details,
)
from tasks_app.services.locks import LockKey, advisory_xact_lock
from tasks_app.services.notify import notify_stages

# Lock columns reset whenever a task goes back to pending.
UNLOCKED: dict[str, Any] = {
    "lock_token": "",
    "locked_by": "",
    "locked_at": None,
    "locked_until": None,
    "reclaimed_from": "",
}


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt: exponential in `attempts`, capped, with jitter."""
    base = float(settings.TASKS_RETRY_BACKOFF_BASE)
    cap = float(settings.TASKS_RETRY_BACKOFF_MAX)
    # The exponent is capped: with retry-forever stages attempts grow without end, and
    # 2**1024 no longer converts to a float (OverflowError). 2**64 is past any cap anyway.
    delay = min(cap, base * 2.0 ** min(max(attempts - 1, 0), 64))
    jitter = float(settings.TASKS_RETRY_JITTER)
    return delay * (1 - jitter * random.random())


def lock_lost(task_id: int) -> TaskLockLost:
    """Explain why a conditional update matched nothing (read after the fact)."""
    row = Task.objects.filter(pk=task_id).values("status", "lock_token", "locked_by").first()
    if row is None:
        return TaskLockLost(f"Task {task_id} does not exist.")
    if row["status"] != Task.Status.LOCKED:
        return TaskLockLost(f"Task {task_id} is {row['status']}, not locked; nothing was changed.")
    return TaskLockLost(
        f"Task {task_id} is locked with another token (held by {row['locked_by'] or 'someone else'}); "
        "its lock expired and it was claimed again. Nothing was changed."
    )


def _locked(task_id: int, lock_token: str) -> Any:
    return Task.objects.filter(pk=task_id, status=Task.Status.LOCKED, lock_token=lock_token)


def task_release(
    *,
    task_id: int,
    lock_token: str,
    error: str = "",
    traceback: str = "",
    retry_in: float | None = None,
    now: datetime | None = None,
    details: dict[str, Any] | None = None,
) -> Task:
    """Give a locked task back after a failed attempt: pending after a backoff, or failed at max attempts.

    `details`: more for the event (a script's output), never its own keys.
    """
    now = now or timezone.now()
    with transaction.atomic():
        # Lock the row first, then decide from what we read under the lock.
        task = _locked(task_id, lock_token).select_for_update(of=("self",)).select_related("stage").first()
        if task is None:
            raise lock_lost(task_id)
        max_attempts = task.stage.max_attempts
        facts = claim_facts(task)
        extra = details or {}
        if task.cancel_requested:
            # Someone asked to cancel it (services.cancel): no retry; it ends cancelled, with the error.
            _locked(task_id, lock_token).update(
                status=Task.Status.CANCELLED, updated_at=now, last_error=error, lock_token="", locked_until=None
            )
            reason = "a cancel was requested; the attempt ended with an error, so no retry"
            details = failed_details(**facts, error=error, traceback=traceback, reason=reason)
            kind = TaskEvent.Kind.CANCELLED
        elif max_attempts is not None and task.attempts >= max_attempts:
            _locked(task_id, lock_token).update(
                status=Task.Status.FAILED, updated_at=now, last_error=error, lock_token="", locked_until=None
            )
            reason = f"max attempts ({max_attempts}) reached"
            details = failed_details(**facts, error=error, traceback=traceback, reason=reason)
            kind = TaskEvent.Kind.FAILED
        else:
            delay = retry_delay(task.attempts) if retry_in is None else max(0.0, float(retry_in))
            available_at = now + timedelta(seconds=delay)
            _locked(task_id, lock_token).update(
                status=Task.Status.PENDING, updated_at=now, available_at=available_at, last_error=error, **UNLOCKED
            )
            details = released_details(**facts, error=error, traceback=traceback, retry_at=available_at)
            kind = TaskEvent.Kind.RELEASED
            if delay == 0:
                notify_stages([task.stage_id])
        details = {**extra, **details}
        event_record(task_id=task_id, kind=kind, at=now, actor=task.locked_by, details=details)
    task.refresh_from_db()
    return task


# Handing back a task whose cancel was requested (services.cancel) ends it cancelled, not pending: back in
# the queue it would run again, with the request hidden in a pending row. The event says why.
CANCELLED_ON_HAND_BACK = "a cancel was requested, so it ends cancelled instead of going back to the queue"
# The columns a task that ends cancelled here gets (as a completion after a request leaves them).
ENDED: dict[str, Any] = {"lock_token": "", "locked_until": None}


def task_unclaim(
    *,
    task_id: int,
    lock_token: str,
    reason: str = "worker stopped before the handler started",
    now: datetime | None = None,
) -> str:
    """Hand back a claimed task whose handler never started (shutdown): pending at once, attempt not counted.

    A task whose cancel was requested ends cancelled instead. Returns the status it is now.
    """
    now = now or timezone.now()
    with transaction.atomic():
        # Read under the row lock: a cancel request waits for it, so the flag read is the one acted on.
        row = (
            _locked(task_id, lock_token)
            .select_for_update(of=("self",))
            .values("stage_id", "cancel_requested", *CLAIM_COLUMNS)
            .first()
        )
        if row is None:
            raise lock_lost(task_id)
        cancel = bool(row["cancel_requested"])
        status = Task.Status.CANCELLED if cancel else Task.Status.PENDING
        # available_at stays: it has passed (the task was claimed), and a never-tried task's wait began then
        # (services.waiting.wait_start): a hand-back must not restart its max_wait clock.
        changes = ENDED if cancel else UNLOCKED
        # A locked task has attempts >= 1 (the claim added it), so this stays >= 0.
        updated = _locked(task_id, lock_token).update(
            status=status, updated_at=now, attempts=F("attempts") - 1, **changes
        )
        if updated != 1:
            raise lock_lost(task_id)
        event_record(
            task_id=task_id,
            kind=TaskEvent.Kind.CANCELLED if cancel else TaskEvent.Kind.RELEASED,
            at=now,
            actor=row["locked_by"],
            details=unclaimed_details(
                **claim_facts(row), reason=f"{reason}; {CANCELLED_ON_HAND_BACK}" if cancel else reason
            ),
        )
        if not cancel:
            notify_stages([row["stage_id"]])
    return status


def tasks_unclaim_orphans(*, worker_id: str, keep: Sequence[int], now: datetime | None = None) -> int:
    """Hand back tasks locked by `worker_id` other than `keep` (claims whose reply was lost); returns the count.

    Those whose cancel was requested end cancelled instead (counted too).
    """
    now = now or timezone.now()
    reason = "claimed as the connection dropped; never started"
    with transaction.atomic():
        orphans = Task.objects.filter(status=Task.Status.LOCKED, locked_by=worker_id).exclude(pk__in=keep)
        rows = list(
            orphans.select_for_update(of=("self",)).values("id", "stage_id", "cancel_requested", *CLAIM_COLUMNS)
        )
        if not rows:
            return 0
        cancelling = {r["id"] for r in rows if r["cancel_requested"]}
        held = Task.objects.filter(status=Task.Status.LOCKED, locked_by=worker_id)
        if len(cancelling) < len(rows):
            # available_at stays, as in task_unclaim
            held.filter(pk__in=[r["id"] for r in rows if r["id"] not in cancelling]).update(
                status=Task.Status.PENDING, updated_at=now, attempts=F("attempts") - 1, **UNLOCKED
            )
        if cancelling:
            held.filter(pk__in=cancelling).update(
                status=Task.Status.CANCELLED, updated_at=now, attempts=F("attempts") - 1, **ENDED
            )
        TaskEvent.objects.bulk_create(
            TaskEvent(
                task_id=row["id"],
                kind=TaskEvent.Kind.CANCELLED if row["id"] in cancelling else TaskEvent.Kind.RELEASED,
                at=now,
                actor=worker_id,
                details=unclaimed_details(
                    **claim_facts(row),
                    reason=f"{reason}; {CANCELLED_ON_HAND_BACK}" if row["id"] in cancelling else reason,
                ),
            )
            for row in rows
        )
        notify_stages({row["stage_id"] for row in rows if row["id"] not in cancelling})
    return len(rows)


def task_fail(
    *,
    task_id: int,
    lock_token: str,
    error: str,
    traceback: str = "",
    now: datetime | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Fail a locked task at once, without retries (a fault retrying cannot fix); `details` as task_release's.

    A task whose cancel was requested ends cancelled instead, with the error (as in task_release).
    """
    now = now or timezone.now()
    with transaction.atomic():
        # Read under the row lock: a cancel request waits for it, so the flag read is the one acted on.
        row = (
            _locked(task_id, lock_token)
            .select_for_update(of=("self",))
            .values("cancel_requested", *CLAIM_COLUMNS)
            .first()
        )
        if row is None:
            raise lock_lost(task_id)
        cancel = bool(row["cancel_requested"])
        updated = _locked(task_id, lock_token).update(
            status=Task.Status.CANCELLED if cancel else Task.Status.FAILED, updated_at=now, last_error=error, **ENDED
        )
        if updated != 1:
            raise lock_lost(task_id)
        reason = "a cancel was requested; the attempt ended with a permanent error" if cancel else None
        event_record(
            task_id=task_id,
            kind=TaskEvent.Kind.CANCELLED if cancel else TaskEvent.Kind.FAILED,
            at=now,
            actor=row["locked_by"],
            details={
                **(details or {}),
                **failed_details(**claim_facts(row), error=error, traceback=traceback, reason=reason),
            },
        )


def _expired_now(task_id: int, exhausted: set[int], cancelling: set[int]) -> str:
    """What an expired lock's task is now: cancelled (a cancel was requested), failed (max attempts), or pending."""
    if task_id in cancelling:
        return "cancelled"
    return "failed" if task_id in exhausted else "pending"


def tasks_expire_locks(*, now: datetime | None = None, batch_size: int = 1000) -> int:
    """Turn every task whose lock has passed back to pending (failed at max attempts); returns the count."""
    now = now or timezone.now()
    total = 0
    while True:
        with transaction.atomic():
            if not advisory_xact_lock(LockKey.SWEEP):
                return total  # another worker is sweeping right now
            rows = list(
                Task.objects.lock_expired(now)
                .select_for_update(skip_locked=True, of=("self",))
                .order_by("id")
                .values("id", "stage__max_attempts", "stage_id", "cancel_requested", *CLAIM_COLUMNS)[:batch_size]
            )
            # Tasks whose cancel was requested end cancelled (services.cancel); tasks that used up
            # max_attempts fail; the others go back to pending.
            cancelling = {r["id"] for r in rows if r["cancel_requested"]}
            exhausted = {
                r["id"]
                for r in rows
                if r["id"] not in cancelling
                and r["stage__max_attempts"] is not None
                and r["attempts"] >= r["stage__max_attempts"]
            }
            to_fail = [r["id"] for r in rows if r["id"] in exhausted]
            to_pending = [r["id"] for r in rows if r["id"] not in exhausted and r["id"] not in cancelling]
            still_expired = Task.objects.lock_expired(now)
            if cancelling:
                still_expired.filter(id__in=cancelling).update(
                    status=Task.Status.CANCELLED, updated_at=now, lock_token="", locked_until=None
                )
            if to_pending:
                still_expired.filter(id__in=to_pending).update(
                    status=Task.Status.PENDING, updated_at=now, available_at=now, **UNLOCKED
                )
            if to_fail:
                still_expired.filter(id__in=to_fail).update(
                    status=Task.Status.FAILED,
                    updated_at=now,
                    last_error="Lock expired and max attempts reached.",
                    lock_token="",
                    locked_until=None,
                )
            TaskEvent.objects.bulk_create(
                [
                    TaskEvent(
                        task_id=r["id"],
                        kind=TaskEvent.Kind.LOCK_EXPIRED,
                        at=now,
                        actor="expiry sweep",
                        details=lock_expired_details(
                            **claim_facts(r), now=_expired_now(r["id"], exhausted, cancelling)
                        ),
                    )
                    for r in rows
                ]
                + [
                    TaskEvent(
                        task_id=task_id,
                        kind=TaskEvent.Kind.CANCELLED,
                        at=now,
                        actor="expiry sweep",
                        details={"reason": "a cancel was requested and the worker's lock expired"},
                    )
                    for task_id in sorted(cancelling)
                ]
            )
            notify_stages({r["stage_id"] for r in rows if r["id"] not in exhausted and r["id"] not in cancelling})
        total += len(rows)
        if len(rows) < batch_size:
            return total
