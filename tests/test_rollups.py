"""The hourly roll-ups (issue 14 section 3): the counters' fold adds each history event once to its stage's
and transition's hour; wait and work histograms; the slowest tasks; retention; two folds at once.

Real events from the services (claims, completions sending along transitions, releases, failures, expiry,
a form stage's open and submit), folded with services.counters.counters_fold.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from tasks_app.models import Stage, StageHour, Task, Transition, TransitionHour
from tasks_app.services import (
    task_claim,
    task_complete,
    task_create,
    task_duplicate,
    task_fail,
    task_mark_completed,
    task_release,
    task_retry,
    tasks_create_bulk,
)
from tasks_app.services.counters import counters_fold
from tasks_app.services.form_stages import form_task_cancel, form_task_open, form_task_submit
from tasks_app.services.lifecycle import task_unclaim, tasks_expire_locks
from tasks_app.services.rollups import BUCKETS, N_BUCKETS, RETENTION, bucket_of, hour_of, percentile
from tests.support.threads import run_at_once
from tests.support.users import make_user

# Past the PostgreSQL fold's settling margin (services.counters.SETTLE_SECONDS), so every event is folded.
LATER = timedelta(minutes=5)


def fold() -> None:
    while counters_fold(now=timezone.now() + LATER):
        pass


def t0() -> datetime:
    """The start of the hour three hours ago: every event of the scenario falls in that hour."""
    return hour_of(timezone.now()) - timedelta(hours=3)


def at(seconds: float) -> datetime:
    return t0() + timedelta(seconds=seconds)


def hist(*seconds: float) -> list[int]:
    out = [0] * N_BUCKETS
    for s in seconds:
        out[bucket_of(s)] += 1
    return out


def claim_one(stage: Stage, when: datetime, lock_timeout: int = 300) -> Task:
    [task] = task_claim(stage=stage, worker_id="w1", lock_timeout=lock_timeout, now=when)
    return task


def review_scenario(world: dict[str, Stage]) -> dict[str, Task]:
    """At review, all in one hour: A approved (fan-out to ship and audit), B released once then declined,
    C failed, D handed back unstarted, claimed again and its lock expired, E completed sending nothing."""
    review = world["review"]
    tasks = {name: task_create(stage=review, type="order", payload={"n": name}, now=at(0)) for name in "ABCDE"}
    claims = {}

    def claim(name: str, seconds: float, lock_timeout: int = 300) -> Task:
        claims[name] = claim_one(review, at(seconds), lock_timeout)
        assert claims[name].pk == tasks[name].pk  # claims go in id order: the scenario relies on it
        return claims[name]

    a = claim("A", 10)
    task_complete(task_id=a.pk, lock_token=a.lock_token, send=[("approved", {})], now=at(12))
    b = claim("B", 20)
    task_release(task_id=b.pk, lock_token=b.lock_token, error="ConnectionError", retry_in=60, now=at(21))
    c = claim("C", 25)
    task_fail(task_id=c.pk, lock_token=c.lock_token, error="ValueError", now=at(26))
    d = claim("D", 30)
    task_unclaim(task_id=d.pk, lock_token=d.lock_token, now=at(31))  # never started: counts nowhere
    claim("D", 35, lock_timeout=1)
    assert tasks_expire_locks(now=at(60)) == 1
    assert claim("D", 61).attempts == 2  # still locked at the fold: nothing more for D
    e = claim("E", 70)
    task_complete(task_id=e.pk, lock_token=e.lock_token, now=at(170))  # sends nothing: ended here
    b = claim("B", 100)
    assert b.attempts == 2
    task_complete(task_id=b.pk, lock_token=b.lock_token, send=[("declined", {})], now=at(130))
    return tasks


def test_the_fold_rolls_completions_failures_retries_and_sends_up_per_hour(world: dict[str, Stage]) -> None:
    tasks = review_scenario(world)
    fold()
    row = StageHour.objects.get(stage=world["review"])
    assert row.hour == t0()
    assert (row.completed, row.failed, row.retried, row.errors, row.ended) == (3, 1, 2, 3, 1)
    # Waits: first attempts only (A 10 s, B 20, C 25, D 35: its first claim was handed back unstarted, E 70).
    assert row.wait_buckets == hist(10, 20, 25, 35, 70)
    # Work: claim to completion of each completion (A 2 s, B's second attempt 30 s, E 100 s).
    assert row.work_buckets == hist(2, 30, 100)
    assert row.stage_seconds == pytest.approx(12 + 130 + 170)
    assert row.slowest == [[tasks["E"].pk, 170.0, "completed"], [tasks["B"].pk, 130.0, "completed"],
                           [tasks["C"].pk, 26.0, "failed"], [tasks["A"].pk, 12.0, "completed"]]  # fmt: skip
    taken = {(h.transition.target.slug, h.transition.task_type): h.taken for h in TransitionHour.objects.all()}
    assert taken == {("ship", "approved"): 1, ("audit", "approved"): 1, ("notify", "declined"): 1}
    assert set(TransitionHour.objects.values_list("hour", flat=True)) == {t0()}


def test_folding_again_adds_nothing_and_later_events_add_to_the_same_hour(world: dict[str, Stage]) -> None:
    review_scenario(world)
    fold()
    before = list(StageHour.objects.values())
    fold()
    assert list(StageHour.objects.values()) == before
    # Another completion in the same hour, folded later: added to the row, not a second row.
    late = task_create(stage=world["review"], type="order", payload={}, now=at(200))
    claim = claim_one(world["review"], at(205))
    assert claim.pk == late.pk
    task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("declined", {})], now=at(300))
    fold()
    row = StageHour.objects.get(stage=world["review"])
    assert (row.completed, sum(row.wait_buckets), sum(row.work_buckets)) == (4, 6, 4)
    assert TransitionHour.objects.get(transition__target__slug="notify").taken == 2


def test_an_expired_lock_at_the_last_attempt_counts_as_failed(world: dict[str, Stage]) -> None:
    notify = world["notify"]
    notify.max_attempts = 1
    notify.save()
    task = task_create(stage=notify, type="order", payload={}, now=at(0))
    claim_one(notify, at(5), lock_timeout=1)
    assert tasks_expire_locks(now=at(50)) == 1
    assert Task.objects.get(pk=task.pk).status == Task.Status.FAILED
    fold()
    row = StageHour.objects.get(stage=notify)
    assert (row.completed, row.failed, row.retried, row.errors) == (0, 1, 0, 1)
    assert row.slowest == [[task.pk, 50.0, "failed"]]


def test_a_form_stage_counts_the_wait_until_a_person_opens_the_task(world: dict[str, Stage]) -> None:
    approve = Stage.objects.create(slug="approve", name="Approve", kind=Stage.Kind.FORM)
    to_ship = Transition.objects.create(source=approve, target=world["ship"], task_type="approved")
    person = make_user("ann", "view_task", "change_task")
    now = timezone.now()
    task = task_create(stage=approve, type="order", payload={}, now=now - timedelta(minutes=50))
    form_task_open(task=task, user=person, now=now - timedelta(minutes=20))
    form_task_cancel(task_id=task.pk, user=person)  # closed without deciding: no attempt, no wait counted
    form_task_open(task=task, user=person)
    form_task_submit(task_id=task.pk, user=person, type="approved", fields={})
    fold()
    rows = StageHour.objects.filter(stage=approve)
    assert sum(r.completed for r in rows) == 1 and sum(r.retried + r.errors for r in rows) == 0
    wait = [sum(b) for b in zip(*(r.wait_buckets for r in rows), strict=True)]
    assert wait == hist(50 * 60)  # opened 50 min after it arrived (the opening closed undecided is not counted)
    assert sum(sum(r.work_buckets) for r in rows) == 1
    assert sum(r.stage_seconds for r in rows) == pytest.approx(50 * 60, abs=30)
    assert sum(h.taken for h in TransitionHour.objects.filter(transition=to_ship)) == 1


def test_peoples_retries_and_marks_count_and_a_duplicate_takes_no_transition(world: dict[str, Stage]) -> None:
    [sent] = review_scenario(world)["A"].children.filter(stage=world["ship"])  # ship got A's approved send
    claim = claim_one(world["ship"], at(200))
    assert claim.pk == sent.pk
    task_fail(task_id=claim.pk, lock_token=claim.lock_token, error="ValueError", now=at(210))
    task_retry(task_id=sent.pk, actor="user:ann", now=at(220))  # a person sends it back: retried
    task_mark_completed(task_id=sent.pk, actor="user:ann", now=at(230))  # and marks it done: completed, ended
    copy = task_duplicate(task_id=sent.pk, actor="user:ann", now=at(240))
    assert copy.source_stage_id == world["review"].pk  # a copy of a sent task: still no transition taken
    fold()
    row = StageHour.objects.get(stage=world["ship"])
    assert (row.completed, row.failed, row.retried, row.errors, row.ended) == (1, 1, 1, 1, 1)
    assert [r[0] for r in row.slowest] == [sent.pk, sent.pk]  # completed (218 s at ship) and failed (198 s)
    assert TransitionHour.objects.get(transition__target=world["ship"]).taken == 1


def test_hours_older_than_the_retention_are_deleted_and_not_written(world: dict[str, Stage]) -> None:
    old = hour_of(timezone.now() - RETENTION - timedelta(hours=2))
    StageHour.objects.create(stage=world["ship"], hour=old, completed=7)
    ancient = task_create(stage=world["ship"], type="order", payload={}, now=old)
    claim = claim_one(world["ship"], old + timedelta(seconds=1))
    assert claim.pk == ancient.pk
    task_complete(task_id=claim.pk, lock_token=claim.lock_token, now=old + timedelta(seconds=2))
    fold()
    assert not StageHour.objects.filter(hour__lt=hour_of(timezone.now() - RETENTION)).exists()


def test_percentiles_are_read_from_the_summed_buckets() -> None:
    assert percentile([0] * N_BUCKETS, 0.5) is None
    ten = bucket_of(10)  # 5 < x <= 10
    buckets = [0] * N_BUCKETS
    buckets[ten] = 90
    buckets[bucket_of(60)] = 10  # 30 < x <= 60
    p50 = percentile(buckets, 0.5)
    assert p50 is not None and BUCKETS[ten - 1] < p50.seconds <= 10
    assert p50.seconds == pytest.approx(5 + 5 * 50 / 90)  # linear inside the bucket
    p95 = percentile(buckets, 0.95)
    assert p95 is not None and 30 < p95.seconds <= 60 and not p95.over
    longest = [0] * N_BUCKETS
    longest[-1] = 3  # longer than the last bound: "at least" that
    p = percentile(longest, 0.5)
    assert p is not None and p.over and p.seconds == BUCKETS[-1]
    assert bucket_of(-1) == 0 and bucket_of(BUCKETS[-1] + 1) == N_BUCKETS - 1


@pytest.mark.django_db(transaction=True)
def test_two_folds_at_once_roll_each_event_up_once() -> None:
    stage = Stage.objects.create(slug="bulk", name="Bulk", handler="tests.handlers.noop")
    total = 600
    tasks_create_bulk(items=[(stage, "t", {"n": i}) for i in range(total)])
    claims = task_claim(stage=stage, worker_id="w1", limit=total)
    for task in claims:
        task_complete(task_id=task.pk, lock_token=task.lock_token)

    def folder() -> None:
        while counters_fold(now=timezone.now() + LATER, max_rows=150):
            pass

    errors = run_at_once(folder)
    assert not errors, errors
    # Two connections folded the same 1,800 events in steps of 150: the cursor lock lets each event in once.
    rows = StageHour.objects.filter(stage=stage)
    assert sum(r.completed for r in rows) == total
    assert sum(sum(r.work_buckets) for r in rows) == total and sum(sum(r.wait_buckets) for r in rows) == total
    assert all(r.hour.tzinfo is not None and r.hour == r.hour.astimezone(UTC).replace(minute=0) for r in rows)
