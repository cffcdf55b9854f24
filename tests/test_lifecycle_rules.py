"""One source per lifecycle rule: where a rule has a SQL spelling for speed, it must say what the Python one says.

- "Claimable": TaskQuerySet.claimable (the ORM's, used by a form open) and
  services.claim.CLAIMABLE_WHERE (the claim statements') select exactly the
  same tasks, in every state, attempt count and lock expiry, on both databases.
- The events that end a claim: the SQL paths write the details that
  services.events.completed_details / lock_expired_details build, key by key,
  with the claim's facts (attempt_details) as every Python path writes them;
  a claim itself writes no event.
- Lock tokens: one generator, one format, whoever takes the lock.
- People as actors: one helper.

Every test here runs on SQLite and on PostgreSQL; on PostgreSQL task_claim and
a completion without sends are the prepared SQL statements.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from itertools import product
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import MAX_CLAIM_BATCH, task_claim, task_complete, task_create
from tasks_app.services.claim import (
    CLAIMABLE_WHERE,
    LOCK_TOKEN_BYTES,
    LOCK_TOKEN_CHARS,
    TASK,
    claim_params,
    lock_token,
    new_lock_tokens,
)
from tasks_app.services.events import (
    actor_for,
    attempt_details,
    completed_details,
    detail_keys,
    details_sql,
    event_time,
    event_time_sql,
    lock_expired_details,
    person_named,
)
from tasks_app.services.form_stages import form_task_open
from tests.support.history import claim_of
from tests.support.world import kinds

APP = Path(__file__).resolve().parent.parent / "tasks_app"
TOKEN = re.compile(rf"[0-9a-f]{{{LOCK_TOKEN_CHARS}}}")
S = Task.Status


def shortly(microsecond: int) -> datetime:
    """A moment after now (so tasks created now are due) with the given fraction of a second."""
    return (timezone.now() + timedelta(seconds=1)).replace(microsecond=microsecond)


def make_stage(slug: str, *, max_attempts: int | None, kind: str = Stage.Kind.SCRIPT) -> Stage:
    handler = "tests.handlers.noop" if kind == Stage.Kind.SCRIPT else ""
    return Stage.objects.create(slug=slug, name=slug, kind=kind, handler=handler, max_attempts=max_attempts)


# -- "claimable": the queryset and the claim's SQL ------------------------------------------


def tasks_in_every_combination(stage: Stage, now: datetime) -> list[Task]:
    """Every status x due time x attempts x lock deadline the constraints allow, at `stage`.

    Times fall before, exactly at, and after `now` (the rules compare with <= and <);
    attempts straddle a max_attempts of 3.
    """
    times = [now - timedelta(minutes=5), now, now + timedelta(minutes=5)]
    tasks = []
    for status, available_at, attempts, locked_until in product(S.values, times, [0, 2, 3, 4], [None, *times]):
        if status == S.LOCKED and locked_until is None:
            continue  # a locked task always has a deadline (task_locked_has_token_and_deadline)
        tasks.append(
            Task(
                stage=stage,
                type="combo",
                status=status,
                available_at=available_at,
                attempts=attempts,
                lock_token="t" * 32 if status == S.LOCKED else "",
                locked_by="w-old" if locked_until else "",
                locked_until=locked_until,
                completed_at=now if status == S.COMPLETED else None,
            )
        )
    return Task.objects.bulk_create(tasks)


def sql_claimable(stage: Stage, now: datetime) -> set[int]:
    """The ids CLAIMABLE_WHERE selects, with the parameters task_claim gives it."""
    params = claim_params(stage=stage, worker_id="probe", limit=1, now=now, until=now)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {TASK} WHERE {CLAIMABLE_WHERE}", params)
        return {row[0] for row in cursor.fetchall()}


@pytest.fixture
def combinations(db: None) -> tuple[datetime, list[Stage]]:
    now = timezone.now()
    stages = [make_stage("bounded", max_attempts=3), make_stage("forever", max_attempts=None)]
    for stage in stages:
        tasks_in_every_combination(stage, now)
    return now, stages


def test_queryset_and_claim_sql_select_the_same_tasks(combinations: tuple[datetime, list[Stage]]) -> None:
    now, stages = combinations
    everywhere = set(Task.objects.claimable(now).values_list("id", flat=True))
    for stage in stages:
        orm = set(Task.objects.claimable(now).filter(stage=stage).values_list("id", flat=True))
        assert orm == sql_claimable(stage, now), stage.slug
        assert orm == everywhere & set(stage.tasks.values_list("id", flat=True))


def test_an_expired_lock_on_its_last_attempt_is_claimable_by_neither(
    combinations: tuple[datetime, list[Stage]],
) -> None:
    # The rule the queryset used to miss: it is the expiry sweep's to fail.
    now, [bounded, forever] = combinations
    last = {"status": S.LOCKED, "locked_until__lt": now, "attempts__gte": 3}
    bounded_last = set(bounded.tasks.filter(**last).values_list("id", flat=True))
    assert bounded_last and not bounded_last & set(Task.objects.claimable(now).values_list("id", flat=True))
    assert not bounded_last & sql_claimable(bounded, now)
    # Without max_attempts a lock is retried forever.
    forever_last = set(forever.tasks.filter(**last).values_list("id", flat=True))
    assert forever_last and forever_last <= sql_claimable(forever, now)


def test_the_claim_takes_exactly_the_claimable_tasks(combinations: tuple[datetime, list[Stage]]) -> None:
    now, stages = combinations
    for stage in stages:
        expected = set(Task.objects.claimable(now).filter(stage=stage).values_list("id", flat=True))
        assert expected  # the combinations hold claimable tasks at every stage
        claimed = task_claim(stage=stage, worker_id="all", limit=MAX_CLAIM_BATCH, now=now)
        assert {t.pk for t in claimed} == expected
        assert not Task.objects.claimable(now).filter(stage=stage).exists()


# -- the events that end a claim ------------------------------------------------------------


def test_details_sql_refuses_keys_the_python_does_not_write() -> None:
    facts = ["attempt", "worker", "claimed_at", "reclaimed_from"]
    assert detail_keys(attempt_details) == facts
    assert detail_keys(completed_details) == [*facts, "duration", "sent"]
    assert detail_keys(lock_expired_details) == [*facts, "now"]
    with pytest.raises(ValueError, match="completed_details writes"):
        details_sql(completed_details, attempt="attempts", duration="0", sent="'[]'", parent="1")
    with pytest.raises(ValueError, match="lock_expired_details writes"):
        details_sql(lock_expired_details, attempt="attempts")


@pytest.mark.postgres
@pytest.mark.parametrize("microsecond", [0, 5, 120_000, 999_999])
def test_event_time_sql_spells_a_timestamp_as_event_time_does(db: None, microsecond: int) -> None:
    # Python drops the fraction of a whole second and keeps trailing zeros otherwise; to_char must agree.
    at = shortly(microsecond)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {event_time_sql('x')} FROM (SELECT %s::timestamptz AS x) AS t", [at])
        assert cursor.fetchone()[0] == event_time(at)


def ending(task_id: int, kind: str) -> TaskEvent:
    return TaskEvent.objects.filter(task_id=task_id, kind=kind).latest("id")


def test_a_claim_writes_no_event_and_a_reclaim_writes_the_lock_expired_of_the_claim_it_ends(review: Stage) -> None:
    # 12:00:00.120000: PostgreSQL's own JSON spelling of it would be "…00.12+00:00".
    now = shortly(120_000)
    task = task_create(stage=review, type="order", payload={})
    [first] = task_claim(stage=review, worker_id="w1", lock_timeout=1, now=now)
    assert kinds(task.pk) == ["created"]

    # Reclaimed after the lock expired (the SQL path on PostgreSQL): w1's claim ends here.
    later = now + timedelta(seconds=30)
    [second] = task_claim(stage=review, worker_id="w2", lock_timeout=60, now=later)
    assert second.pk == first.pk
    assert kinds(task.pk) == ["created", "lock_expired"]
    expired = ending(task.pk, "lock_expired")
    assert (expired.at, expired.actor) == (later, "w2")
    assert expired.details == lock_expired_details(
        attempt=1, worker="w1", claimed_at=now, reclaimed_from=None, now="reclaimed"
    )
    # The row holds the new claim: the expired holder is in reclaimed_from.
    row = Task.objects.get(pk=task.pk)
    assert (row.locked_by, row.locked_at, row.attempts, row.reclaimed_from) == ("w2", later, 2, "w1")

    # A second reclaim: the event names the chain's previous link too.
    latest = later + timedelta(seconds=61)
    task_claim(stage=review, worker_id="w3", now=latest)
    assert ending(task.pk, "lock_expired").details == lock_expired_details(
        attempt=2, worker="w2", claimed_at=later, reclaimed_from="w1", now="reclaimed"
    )


def test_a_form_open_ends_a_worker_claim_as_a_worker_reclaim_does(db: None) -> None:
    stage = make_stage("decide", max_attempts=None, kind=Stage.Kind.FORM)
    user = User.objects.create_superuser("alice", "alice@example.com", "pw")
    now = shortly(0)
    sql_task = task_create(stage=stage, type="order", payload={})
    py_task = task_create(stage=stage, type="order", payload={})
    task_claim(stage=stage, worker_id="w1", limit=2, lock_timeout=1, now=now)

    later = now + timedelta(seconds=30)
    task_claim(stage=stage, worker_id="w2", limit=1, now=later)  # the SQL path on PostgreSQL: sql_task
    form_task_open(task=Task.objects.get(pk=py_task.pk), user=user, now=later)  # the Python path
    by_sql, by_python = ending(sql_task.pk, "lock_expired"), ending(py_task.pk, "lock_expired")
    expected = lock_expired_details(attempt=1, worker="w1", claimed_at=now, reclaimed_from=None, now="reclaimed")
    assert by_sql.details == by_python.details == expected
    for key in expected:
        assert type(by_sql.details[key]) is type(by_python.details[key]), key
    assert (by_python.actor, Task.objects.get(pk=py_task.pk).reclaimed_from) == ("user:alice", "w1")


def test_completed_events_from_the_sql_and_the_python_path_agree(review: Stage) -> None:
    now = shortly(250_000)
    done = now + timedelta(seconds=2, microseconds=500_000)
    quiet = task_create(stage=review, type="order", payload={})
    sending = task_create(stage=review, type="order", payload={})
    claimed = {t.pk: t for t in task_claim(stage=review, worker_id="w1", limit=2, now=now)}

    # Nothing sent: on PostgreSQL, the one prepared statement writes the event.
    task_complete(task_id=quiet.pk, lock_token=claimed[quiet.pk].lock_token, now=done)
    # Something sent: the Python path.
    children = task_complete(
        task_id=sending.pk, lock_token=claimed[sending.pk].lock_token, send=[("approved", {})], now=done
    )

    by_sql = TaskEvent.objects.get(task=quiet, kind=TaskEvent.Kind.COMPLETED).details
    by_python = TaskEvent.objects.get(task=sending, kind=TaskEvent.Kind.COMPLETED).details
    facts = {"attempt": 1, "worker": "w1", "claimed_at": now, "reclaimed_from": None}
    assert by_sql == completed_details(**facts, duration=2.5, sent=[])
    assert by_python == completed_details(**facts, duration=2.5, sent=[c.pk for c in children])
    assert sorted(by_sql) == sorted(by_python) == sorted(detail_keys(completed_details))
    for key in by_sql:
        assert type(by_sql[key]) is type(by_python[key]), key


def test_a_reclaimed_task_completes_with_reclaimed_from_on_both_paths(review: Stage) -> None:
    now = shortly(0)
    later = now + timedelta(seconds=5)
    quiet = task_create(stage=review, type="order", payload={})
    sending = task_create(stage=review, type="order", payload={})
    task_claim(stage=review, worker_id="w1", limit=2, lock_timeout=1, now=now)
    claimed = {t.pk: t for t in task_claim(stage=review, worker_id="w2", limit=2, now=later)}
    task_complete(task_id=quiet.pk, lock_token=claimed[quiet.pk].lock_token, now=later)
    task_complete(task_id=sending.pk, lock_token=claimed[sending.pk].lock_token, send=[("approved", {})], now=later)
    for task in (quiet, sending):
        assert claim_of(ending(task.pk, "completed")) == attempt_details(
            attempt=2, worker="w2", claimed_at=later, reclaimed_from="w1"
        )


# -- lock tokens -----------------------------------------------------------------------------


def test_every_lock_token_comes_in_one_format(db: None) -> None:
    block = new_lock_tokens(3)
    assert len(block) == 3 * LOCK_TOKEN_BYTES
    assert [lock_token(block, n) for n in range(3)] == [block[n * 16 : n * 16 + 16].hex() for n in range(3)]
    assert all(TOKEN.fullmatch(lock_token(block, n)) for n in range(3))

    stage = make_stage("tokens", max_attempts=None)
    for _ in range(5):
        task_create(stage=stage, type="order", payload={})
    claimed = task_claim(stage=stage, worker_id="w", limit=5)
    tokens = [t.lock_token for t in claimed]
    assert all(TOKEN.fullmatch(t) for t in tokens), tokens
    assert len(set(tokens)) == 5  # each row its own slice of the batch's tokens
    assert sorted(tokens) == sorted(Task.objects.filter(stage=stage).values_list("lock_token", flat=True))

    form = make_stage("form-tokens", max_attempts=None, kind=Stage.Kind.FORM)
    user = User.objects.create_superuser("bob", "bob@example.com", "pw")
    opened = form_task_open(task=task_create(stage=form, type="order", payload={}), user=user)
    assert TOKEN.fullmatch(opened.lock_token)


def test_no_other_lock_token_generator_is_left() -> None:
    # The claim statements used gen_random_uuid() and randomblob(16), the form open secrets.token_hex(16).
    sources = {p: p.read_text() for p in APP.rglob("*.py") if "migrations" not in p.parts}
    for needle in ("gen_random_uuid", "randomblob", "token_hex(16)"):
        assert [str(p) for p, text in sources.items() if needle in text] == [], needle


# -- people as actors ------------------------------------------------------------------------


def test_a_person_is_one_actor_name_everywhere(db: None) -> None:
    user = User.objects.create_user("carol")
    assert actor_for(user) == "user:carol"
    assert person_named(actor_for(user)) == "carol"
    assert person_named("host:123:ab") == "host:123:ab"  # a worker id stays as it is
    # Built in one place: no other module spells the prefix out for a username.
    spelled = [
        str(p) for p in APP.rglob("*.py") if re.search(r"user:\{|\"user:\"", p.read_text()) and p.name != "events.py"
    ]
    assert spelled == []


def test_sql_names_tables_through_the_models() -> None:
    # Table names come from Model._meta.db_table, quoted by the backend, not typed into the SQL.
    hard_coded = [
        str(p)
        for p in APP.rglob("*.py")
        if "migrations" not in p.parts and re.search(r"\btasks_app_(task|taskevent)\b", p.read_text())
    ]
    assert hard_coded == []
    assert TASK == connection.ops.quote_name(Task._meta.db_table)
