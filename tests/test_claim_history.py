"""History without a `claimed` row per claim (issue 13, item 5).

A claim writes no event; the event that ends it carries the claim's facts
(attempt, worker, claimed_at, reclaimed_from), on every path that ends one.
The task page still shows "claimed by X at T", derived from those events and,
for a locked task, from its row; migration 0011 rewrote old history into the
same shape, so old and new tasks read alike. Every test here runs on SQLite
and on PostgreSQL (where a worker's completion without sends is the prepared
SQL statement).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from html import unescape
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.selectors.history import task_timeline
from tasks_app.services import (
    task_claim,
    task_complete,
    task_create,
    task_extend_lock,
    task_unclaim,
    tasks_expire_locks,
)
from tasks_app.services.counters import claim_counts
from tasks_app.templatetags.people import local_text
from tasks_app.worker import Worker
from tests.support.history import claim, claim_of
from tests.support.world import kinds

S = Task.Status
K = TaskEvent.Kind


def row(task: Task | int) -> Task:
    return Task.objects.get(pk=task if isinstance(task, int) else task.pk)


# -- every path that ends a claim ---------------------------------------------------------------


def test_a_worker_batch_writes_only_its_completions_each_with_the_claim(world: dict[str, Stage]) -> None:
    # ship's handler sends nothing: on PostgreSQL the batch completes in the one prepared statement.
    tasks = [task_create(stage=world["ship"], type="t", payload={}) for _ in range(3)]
    Worker(stage_slugs=["ship"], worker_id="w-sql", batch_size=3).run(once=True)
    for task in tasks:
        stored = row(task)
        assert stored.status == S.COMPLETED and kinds(task.pk) == ["created", "completed"]
        done = TaskEvent.objects.get(task=task, kind=K.COMPLETED)
        assert claim_of(done) == claim(1, "w-sql", stored.locked_at)


def test_a_worker_completion_that_sends_carries_the_claim_too(world: dict[str, Stage]) -> None:
    # review's handler sends a successor: the Python path.
    task = task_create(stage=world["review"], type="order", payload={"amount": 5})
    Worker(stage_slugs=["review"], worker_id="w-py").run(once=True)
    stored = row(task)
    done = TaskEvent.objects.get(task=task, kind=K.COMPLETED)
    assert done.details["sent"] and claim_of(done) == claim(1, "w-py", stored.locked_at)


def test_a_shutdown_hand_back_carries_the_claim_it_gives_back(review: Stage, pending_task: Task) -> None:
    now = timezone.now()
    [task] = task_claim(stage=review, worker_id="w1", now=now)
    task_unclaim(task_id=task.pk, lock_token=task.lock_token, now=now + timedelta(seconds=1))
    assert row(task).attempts == 0  # not counted as an attempt ...
    released = TaskEvent.objects.get(task=task, kind=K.RELEASED)
    assert claim_of(released) == claim(1, "w1", now)  # ... but it was a claim, the first
    assert released.details["reason"] == "worker stopped before the handler started"


def test_an_expired_last_attempt_fails_with_the_claim(review: Stage, pending_task: Task) -> None:
    Stage.objects.filter(pk=review.pk).update(max_attempts=1)
    review.refresh_from_db()
    now = timezone.now()
    task_claim(stage=review, worker_id="w1", lock_timeout=1, now=now)
    assert tasks_expire_locks(now=now + timedelta(seconds=2)) == 1
    expired = TaskEvent.objects.get(task=pending_task, kind=K.LOCK_EXPIRED)
    assert (expired.details["now"], row(pending_task).status) == ("failed", S.FAILED)
    assert claim_of(expired) == claim(1, "w1", now)


# -- the task page's timeline -------------------------------------------------------------------


def timeline_of(client: Client, task: Task) -> list[str]:
    """The history entries of a task's page as text, one per entry."""
    html = client.get(f"/tasks/{task.pk}/").content.decode()
    found = re.search(r'<ol class="timeline">(.*?)</ol>', html, re.DOTALL)
    assert found, "no history"
    items = re.findall(r"<li[^>]*>(.*?)</li>", found.group(1), re.DOTALL)
    return [" ".join(unescape(re.sub(r"<[^>]+>", " ", item)).split()) for item in items]


def stamp(at: datetime) -> str:
    return local_text(at, seconds=True)  # "1 Dec 2026, 20:26:14 UTC": the viewer's zone, named


def test_the_page_shows_each_claim_at_its_time_before_its_heartbeats(admin_client: Client, review: Stage) -> None:
    t0 = timezone.now() - timedelta(minutes=5)
    task = task_create(stage=review, type="order", payload={}, now=t0)
    [held] = task_claim(stage=review, worker_id="w1", lock_timeout=10, now=t0 + timedelta(seconds=1))
    task_extend_lock(task_id=task.pk, lock_token=held.lock_token, lock_timeout=10, now=t0 + timedelta(seconds=6))
    task_complete(task_id=task.pk, lock_token=held.lock_token, now=t0 + timedelta(seconds=8))

    entries = timeline_of(admin_client, task)

    assert [e.split(" ", 5)[5] for e in entries] == [
        "Created",
        "Claimed by w1 attempt 1",
        "Lock extended",
        "Completed by w1",
    ]
    assert entries[1].startswith(stamp(t0 + timedelta(seconds=1)))


def test_a_locked_task_shows_its_live_claim_from_the_row(admin_client: Client, review: Stage) -> None:
    t0 = timezone.now() - timedelta(minutes=5)
    task = task_create(stage=review, type="order", payload={}, now=t0)
    task_claim(stage=review, worker_id="w1", lock_timeout=1, now=t0 + timedelta(seconds=1))
    task_claim(stage=review, worker_id="w2", lock_timeout=600, now=t0 + timedelta(seconds=5))  # takes it over

    entries = timeline_of(admin_client, task)

    assert [e.split(" ", 5)[5] for e in entries] == [
        "Created",
        "Claimed by w1 attempt 1",
        "Lock expired by w2 held by w1; taken over by a new claim",
        "Claimed by w2 attempt 2 lock of w1 had expired",
    ]
    assert entries[3].startswith(stamp(t0 + timedelta(seconds=5)))
    # The entries come from the task's history and its row; the history has no claimed row.
    assert kinds(task.pk) == ["created", "lock_expired"]


def test_the_timeline_keeps_the_history_limit_and_counts_what_it_leaves_out(review: Stage) -> None:
    task = task_create(stage=review, type="order", payload={})
    t0 = timezone.now()
    for n in range(3):
        [held] = task_claim(stage=review, worker_id=f"w{n}", now=t0 + timedelta(seconds=n))
        task_unclaim(task_id=task.pk, lock_token=held.lock_token, now=t0 + timedelta(seconds=n, milliseconds=500))
    timeline = task_timeline(row(task), limit=2)
    assert timeline.earlier == 2  # created and the first release
    assert [(e.kind, e.actor) for e in timeline.entries] == [
        ("claimed", "w1"),
        ("released", "w1"),
        ("claimed", "w2"),
        ("released", "w2"),
    ]


# -- migration 0011: old history reads like new -------------------------------------------------

OLD = [("tasks_app", "0010_task_index_audit")]
NEW = [("tasks_app", "0011_outcome_events")]


def old_history(apps: Any, t0: datetime) -> dict[str, int]:
    """Tasks with history as the engine wrote it before 0011 (a `claimed` row per claim)."""
    stage_model, task_model, event_model = (apps.get_model("tasks_app", m) for m in ("Stage", "Task", "TaskEvent"))
    stage = stage_model.objects.create(slug="old", name="old", handler="tests.handlers.noop", lock_timeout=60)
    sec = timedelta(seconds=1)

    def task(status: str, **fields: Any) -> Any:
        return task_model.objects.create(
            stage=stage, type="t", payload={}, status=status, created_at=t0, updated_at=t0, available_at=t0, **fields
        )

    def event(t: Any, kind: str, at: datetime, actor: str, **details: Any) -> None:
        event_model.objects.create(task=t, kind=kind, at=at, actor=actor, details=details)

    def claimed(
        t: Any, at: datetime, actor: str, attempt: int, reclaimed_from: str | None = None, **extra: Any
    ) -> None:
        details = {"attempt": attempt, "locked_until": (at + 60 * sec).isoformat(), "reclaimed_from": reclaimed_from}
        event(t, "claimed", at, actor, **details, **extra)

    done = task("completed", attempts=1, locked_by="w1", locked_at=t0 + sec, completed_at=t0 + 3 * sec)
    event(done, "created", t0, "")
    claimed(done, t0 + sec, "w1", 1)
    event(done, "lock_extended", t0 + 2 * sec, "", locked_until=(t0 + 62 * sec).isoformat())
    event(done, "completed", t0 + 3 * sec, "w1", attempt=1, duration=2.0, sent=[])

    # w1's lock expired and w2 took it over; w2's handler failed once; w3 holds it now.
    chain = task("locked", attempts=3, locked_by="w3", locked_at=t0 + 9 * sec, locked_until=t0 + 69 * sec,
                 lock_token="x" * 32)  # fmt: skip
    event(chain, "created", t0, "")
    claimed(chain, t0 + sec, "w1", 1)
    claimed(chain, t0 + 5 * sec, "w2", 2, reclaimed_from="w1")
    event(
        chain,
        "released",
        t0 + 6 * sec,
        "w2",
        attempt=2,
        error="boom",
        traceback="",
        retry_at=(t0 + 7 * sec).isoformat(),
    )
    claimed(chain, t0 + 9 * sec, "w3", 3)

    # A person opened it and closed it without deciding; the sweep ended a worker's claim.
    other = task("pending", attempts=1)
    event(other, "created", t0, "")
    claimed(other, t0 + sec, "user:ann", 1, form=True)
    event(other, "released", t0 + 2 * sec, "user:ann", reason="closed by ann")
    claimed(other, t0 + 3 * sec, "w1", 2)
    event(other, "lock_expired", t0 + 70 * sec, "expiry sweep", locked_by="w1", attempt=2, now="pending")
    # Marked completed while pending: no claim to fold.
    event(other, "marked_completed", t0 + 80 * sec, "user:ann", previous_status="pending")
    return {"done": done.pk, "chain": chain.pk, "other": other.pk, "stage": stage.pk}


@pytest.mark.django_db(transaction=True)
def test_migration_0011_folds_old_claimed_rows_into_the_events_that_end_them() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(OLD)
    t0 = (timezone.now() - timedelta(hours=1)).replace(microsecond=250_000)
    try:
        apps = executor.loader.project_state(OLD).apps
        ids = old_history(apps, t0)
        # /metrics had folded the history up to chain's first claim (3 claims counted so far).
        events = apps.get_model("tasks_app", "TaskEvent").objects.order_by("id")
        folded_upto = events.filter(task_id=ids["chain"], kind="claimed").first().pk
        apps.get_model("tasks_app", "CounterCursor").objects.create(pk=1, last_event_id=folded_upto)
        counted = events.filter(kind="claimed", id__lte=folded_upto).count()
        apps.get_model("tasks_app", "StageCounter").objects.create(stage_id=ids["stage"], kind="claimed", value=counted)

        executor = MigrationExecutor(connection)
        executor.migrate(NEW)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    sec = timedelta(seconds=1)
    assert not TaskEvent.objects.filter(kind=K.CLAIMED).exists()
    assert kinds(ids["done"]) == ["created", "lock_extended", "completed"]
    done = TaskEvent.objects.get(task_id=ids["done"], kind=K.COMPLETED)
    assert done.details == {**claim(1, "w1", t0 + sec), "duration": 2.0, "sent": []}

    assert kinds(ids["chain"]) == ["created", "lock_expired", "released"]
    expired, released = TaskEvent.objects.filter(task_id=ids["chain"]).exclude(kind=K.CREATED).order_by("id")
    # w2's claimed row became the lock_expired that ends w1's claim, as a reclaim writes it now.
    assert (expired.at, expired.actor) == (t0 + 5 * sec, "w2")
    assert expired.details == {**claim(1, "w1", t0 + sec), "now": "reclaimed"}
    assert claim_of(released) == claim(2, "w2", t0 + 5 * sec, reclaimed_from="w1")
    assert released.details["error"] == "boom"
    assert row(ids["chain"]).reclaimed_from == ""  # w3's claim took over nothing

    assert kinds(ids["other"]) == ["created", "released", "lock_expired", "marked_completed"]
    closed, swept, marked = TaskEvent.objects.filter(task_id=ids["other"]).exclude(kind=K.CREATED).order_by("id")
    assert closed.details == {**claim(1, "user:ann", t0 + sec), "reason": "closed by ann"}
    assert swept.details == {**claim(2, "w1", t0 + 3 * sec), "now": "pending"}  # `worker` replaces locked_by
    assert marked.details == {"previous_status": "pending"}

    # The claims counter goes on from where it was: 6 claims, none counted twice.
    assert claim_counts() == {ids["stage"]: 6}

    # The page reads as a new task's would: every claim in its place.
    entries = task_timeline(row(ids["chain"]), limit=50).entries
    assert [(e.kind, e.actor) for e in entries] == [
        ("created", ""),
        ("claimed", "w1"),
        ("lock_expired", "w2"),
        ("claimed", "w2"),
        ("released", "w2"),
        ("claimed", "w3"),
    ]
    assert [e.at for e in entries if e.kind == K.CLAIMED] == [t0 + sec, t0 + 5 * sec, t0 + 9 * sec]
