"""Reminders (Stage.remind_after, Stage.remind_max; issue 16): queued while a form task waits, mailed by the drain.

intake --order--> review (form: alice, bob, vera; notify: groups) --approved--> invoice; --declined--> notify.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core import mail
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.demo import load_demo
from tasks_app.limits import MAX_WAIT
from tasks_app.models import Notification, Stage, Task, TaskEvent
from tasks_app.notify_rules import Item
from tasks_app.services import notifications, webhooks
from tasks_app.services.cancel import task_cancel
from tasks_app.services.form_stages import form_task_open, form_task_submit
from tasks_app.services.notifications import notifications_drain
from tasks_app.services.reminders import REMIND_ACTOR, tasks_remind
from tasks_app.services.workflow import workflow_dump
from tasks_app.worker import Worker
from tests.support.due import (
    api_refuses,
    arrived,
    dumped_with,
    kinds,
    load_file,
    model_errors,
    one_problem,
    people,
    round_trip,
)
from tests.support.pages import STAGE_URL, form_fields
from tests.support.users import logged_in, make_user
from tests.support.work import FormWorld, form_world

REMINDED = TaskEvent.Kind.REMINDED
HOUR = 3600
REVIEWERS = ["alice@example.com", "bob@example.com", "vera@example.com"]


@pytest.fixture
def fw(db: None) -> FormWorld:
    world = form_world()
    people(world.review, notify={"groups": True}, remind_after=HOUR, remind_max=2)
    return world


@pytest.fixture
def t0() -> datetime:
    return timezone.now().replace(microsecond=0) - timedelta(days=1)


def reminder_rows(task: Task | None = None) -> list[tuple[str, str]]:
    rows = Notification.objects.filter(kind=Notification.Kind.REMINDER)
    rows = rows.filter(task=task) if task is not None else rows
    return sorted(rows.values_list("channel", "recipient"))


# -- queueing ---------------------------------------------------------------------------------


def test_a_reminder_is_queued_once_per_period_and_at_most_remind_max(fw: FormWorld, t0: datetime) -> None:
    task = arrived(fw.review, 0, now=t0)

    early = tasks_remind(now=t0 + timedelta(seconds=HOUR - 1))
    first = tasks_remind(now=t0 + timedelta(seconds=HOUR + 1))
    same = tasks_remind(now=t0 + timedelta(seconds=HOUR + 2))

    assert early is not None and early.reminded == 0
    assert first is not None and (first.reminded, first.rows) == (1, 3)
    assert same is not None and same.reminded == 0
    task.refresh_from_db()
    assert task.reminders == 1 and kinds(task) == ["created", REMINDED]
    event = task.events.get(kind=REMINDED)
    assert event.actor == REMIND_ACTOR and event.details == {"reminder": 1, "remind_max": 2, "recipients": 3}

    second = tasks_remind(now=t0 + timedelta(seconds=2 * HOUR + 1))
    beyond = tasks_remind(now=t0 + timedelta(days=30))

    assert second is not None and second.reminded == 1
    assert beyond is not None and beyond.reminded == 0  # remind_max is 2
    task.refresh_from_db()
    assert task.reminders == 2 and kinds(task).count(REMINDED) == 2
    assert len(reminder_rows(task)) == 2 * 3


def test_missed_periods_are_queued_one_pass_at_a_time_not_in_a_burst(fw: FormWorld, t0: datetime) -> None:
    task = arrived(fw.review, 0, now=t0)
    late = t0 + timedelta(hours=10)  # a worker was down: both reminders are past due

    passes = [tasks_remind(now=late) for _ in range(3)]

    assert [p.reminded if p else None for p in passes] == [1, 1, 0]
    assert Task.objects.get(pk=task.pk).reminders == 2


def test_a_reminder_goes_to_the_people_told_of_the_arrival(fw: FormWorld, t0: datetime) -> None:
    people(fw.review, notify={"groups": True, "emails_from": "/contact"})
    task = arrived(fw.review, 0, now=t0, order_id=1, contact="buyer@example.org")
    arrival = sorted(
        Notification.objects.filter(task=task, kind=Notification.Kind.ARRIVAL).values_list("channel", "recipient")
    )

    tasks_remind(now=t0 + timedelta(seconds=HOUR + 1))

    assert arrival == [("email", a) for a in sorted([*REVIEWERS, "buyer@example.org"])]
    assert reminder_rows(task) == arrival


def test_a_reminder_of_an_assigned_task_goes_to_its_assignee_as_its_arrival_did(fw: FormWorld, t0: datetime) -> None:
    task = arrived(fw.review, 0, now=t0)
    Task.objects.filter(pk=task.pk).update(assignee=fw.bob)  # services.assign's effect, stored

    tasks_remind(now=t0 + timedelta(seconds=HOUR + 1))

    assert reminder_rows(task) == [("email", "bob@example.com")]  # not the whole group


def test_the_assignees_of_a_batch_are_read_in_one_query(fw: FormWorld, t0: datetime) -> None:
    tasks = [arrived(fw.review, 0, now=t0, order_id=n) for n in range(6)]
    Task.objects.filter(pk__in=[t.pk for t in tasks[:3]]).update(assignee=fw.bob)
    Task.objects.filter(pk__in=[t.pk for t in tasks[3:]]).update(assignee=fw.alice)
    user_table = connection.ops.quote_name(fw.bob._meta.db_table)

    with CaptureQueriesContext(connection) as queries:
        swept = tasks_remind(now=t0 + timedelta(seconds=HOUR + 1))

    assert swept is not None and swept.reminded == 6
    user_reads = [q["sql"] for q in queries if f"FROM {user_table}" in q["sql"]]
    # one read of the assignees; the stage's members are read through their groups, apart
    assert len([sql for sql in user_reads if "groups" not in sql]) == 1, user_reads
    assert {r for t in tasks for r in reminder_rows(t)} == {("email", "bob@example.com"), ("email", fw.alice.email)}


def test_reminders_stop_when_the_task_is_taken(fw: FormWorld, t0: datetime) -> None:
    waiting = arrived(fw.review, 0, now=t0, order_id=1)
    opened = arrived(fw.review, 0, now=t0, order_id=2)
    decided = arrived(fw.review, 0, now=t0, order_id=3)
    cancelled = arrived(fw.review, 0, now=t0, order_id=4)
    form_task_open(task=opened, user=fw.alice)
    form_task_open(task=decided, user=fw.bob)
    form_task_submit(task_id=decided.pk, user=fw.bob, type="approved", fields={})
    task_cancel(task_id=cancelled.pk, actor="test")

    swept = tasks_remind(now=t0 + timedelta(seconds=HOUR + 1))

    assert swept is not None and swept.reminded == 1
    assert [t.pk for t in Task.objects.filter(reminders__gt=0)] == [waiting.pk]
    assert {r.task_id for r in Notification.objects.filter(kind=Notification.Kind.REMINDER)} == {waiting.pk}


def test_a_stage_that_notifies_nobody_reminds_nobody(fw: FormWorld, t0: datetime) -> None:
    people(fw.review, notify={})
    task = arrived(fw.review, 0, now=t0)

    swept = tasks_remind(now=t0 + timedelta(days=1))

    assert swept is not None and swept.reminded == 0
    assert Task.objects.get(pk=task.pk).reminders == 0 and kinds(task) == ["created"]


def test_a_paused_stage_reminds_nobody_until_it_is_resumed(fw: FormWorld, t0: datetime) -> None:
    task = arrived(fw.review, 0, now=t0)
    people(fw.review, is_paused=True)
    assert tasks_remind(now=t0 + timedelta(seconds=HOUR + 1)).reminded == 0  # type: ignore[union-attr]
    people(fw.review, is_paused=False)
    assert tasks_remind(now=t0 + timedelta(seconds=HOUR + 1)).reminded == 1  # type: ignore[union-attr]
    assert Task.objects.get(pk=task.pk).reminders == 1


def test_the_worker_upkeep_queues_reminders(fw: FormWorld) -> None:
    task = arrived(fw.review, HOUR + 60)

    _, reminded = Worker(listen=False).remind_and_escalate()

    assert reminded is not None and reminded.reminded == 1
    assert Task.objects.get(pk=task.pk).reminders == 1


# -- delivering ---------------------------------------------------------------------------------


def test_the_mail_says_it_is_a_reminder_in_its_subject_and_body(fw: FormWorld, t0: datetime) -> None:
    task = arrived(fw.review, 0, now=t0)
    notifications_drain(now=t0)  # the arrival
    arrivals = list(mail.outbox)
    mail.outbox.clear()
    later = t0 + timedelta(seconds=HOUR + 1)
    tasks_remind(now=later)

    drained = notifications_drain(now=later)

    assert drained is not None and drained.sent == 3
    assert sorted(m.to[0] for m in mail.outbox) == REVIEWERS
    message = mail.outbox[0]
    assert message.subject == f"Reminder: Task #{task.pk} still waits for you at Review"
    assert message.body.startswith("Reminder: a task still waits for you at Review. Nobody has taken it yet.")
    html = message.alternatives[0][0]  # type: ignore[attr-defined]
    assert "<strong>Reminder:</strong> a task still waits for you at <strong>Review</strong>." in html
    assert all("Reminder" not in m.subject and "Reminder" not in m.body for m in arrivals)
    notified = task.events.filter(kind=TaskEvent.Kind.NOTIFIED).order_by("id")
    assert [e.details["kind"] for e in notified] == ["arrival"] * 3 + ["reminder"] * 3


def test_a_webhook_is_told_it_is_a_reminder(fw: FormWorld, t0: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://hooks.example.com/review"
    people(fw.review, notify={"webhook": url})
    posted: list[tuple[str, list[int], dict[str, Any]]] = []
    monkeypatch.setattr(
        notifications, "webhook_post", lambda to, stage, items, **kw: posted.append((to, [i.id for i in items], kw))
    )
    task = arrived(fw.review, 0, now=t0)
    notifications_drain(now=t0)
    later = t0 + timedelta(seconds=HOUR + 1)
    tasks_remind(now=later)

    notifications_drain(now=later)

    assert posted == [(url, [task.pk], {}), (url, [task.pk], {"reminder": True})]
    item = Item(id=task.pk, type="order", stage="Review", url="https://x.example/work/1/", fields=[])
    body = json.loads(webhooks.webhook_body(fw.review, [item], reminder=True))
    assert body["kind"] == "reminder" and body["text"].startswith("Reminder: A task still waits at Review:")
    assert json.loads(webhooks.webhook_body(fw.review, [item]))["kind"] == "arrival"


def test_the_drain_drops_the_reminders_of_a_task_taken_since_they_were_queued(
    fw: FormWorld, t0: datetime, caplog: pytest.LogCaptureFixture
) -> None:
    task = arrived(fw.review, 0, now=t0)
    notifications_drain(now=t0)
    mail.outbox.clear()
    later = t0 + timedelta(seconds=HOUR + 1)
    tasks_remind(now=later)
    form_task_open(task=task, user=fw.alice)  # taken before the drain's turn

    with caplog.at_level("INFO", logger="tasks_app"):
        drained = notifications_drain(now=later)

    assert drained is not None and drained.sent == 0
    assert mail.outbox == []
    assert reminder_rows() == []  # settled: deleted, unsent
    assert "dropped 1 reminder(s) to alice@example.com at review: their tasks were taken" in caplog.text
    assert kinds(task).count(TaskEvent.Kind.NOTIFIED) == 3  # the arrival's only


def test_the_digest_groups_reminders_apart_from_arrivals(fw: FormWorld, t0: datetime) -> None:
    old = [arrived(fw.review, 0, now=t0, order_id=n) for n in range(4)]
    notifications_drain(now=t0)
    mail.outbox.clear()
    later = t0 + timedelta(seconds=HOUR + 1)
    tasks_remind(now=later)
    fresh = arrived(fw.review, 0, now=later, order_id=99)  # an arrival pending beside the reminders

    notifications_drain(now=later)

    to_alice = sorted(m.subject for m in mail.outbox if m.to == ["alice@example.com"])
    assert to_alice == [
        "Reminder: 4 tasks still wait for you at Review",
        f"Task #{fresh.pk} waits for you at Review",
    ]
    reminder = next(m for m in mail.outbox if m.to == ["alice@example.com"] and m.subject.startswith("Reminder"))
    assert all(f"Task #{t.pk} " in reminder.body for t in old) and f"#{fresh.pk}" not in reminder.body
    assert len(mail.outbox) == 2 * 3


# -- entry paths: model, API, workflow file, admin, stage page ------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"remind_after": 59}, "remind_after", "greater than or equal to 60"),
        ({"remind_after": MAX_WAIT + 1}, "remind_after", f"less than or equal to {MAX_WAIT}"),
        ({"remind_max": 0}, "remind_max", "greater than or equal to 1"),
        ({"remind_max": 11}, "remind_max", "less than or equal to 10"),
    ],
)
def test_the_model_refuses_bad_reminder_fields(fw: FormWorld, fields: dict[str, Any], field: str, message: str) -> None:
    assert message in " ".join(model_errors(fw.review, **fields)[field])


def test_the_api_shows_sets_and_refuses_the_reminder_fields(fw: FormWorld, admin: APIClient) -> None:
    assert api_refuses(admin, "review", {"remind_after": 59}, "remind_after")
    assert api_refuses(admin, "review", {"remind_after": MAX_WAIT + 1}, "remind_after")
    assert api_refuses(admin, "review", {"remind_max": 0}, "remind_max")
    assert api_refuses(admin, "review", {"remind_max": 11}, "remind_max")
    assert api_refuses(admin, "intake", {"remind_after": 600}, "remind_after")  # a script stage

    saved = admin.patch("/api/stages/review/", {"remind_after": 4 * HOUR, "remind_max": 10}, format="json")

    assert saved.status_code == 200
    assert (saved.json()["remind_after"], saved.json()["remind_max"]) == (4 * HOUR, 10)
    review = Stage.objects.get(slug="review")
    assert (review.remind_after, review.remind_max) == (4 * HOUR, 10)


def test_the_workflow_file_round_trips_the_reminders(fw: FormWorld, tmp_path: Path) -> None:
    entry = next(s for s in workflow_dump()["stages"] if s["slug"] == "review")
    assert (entry["remind_after"], entry["remind_max"]) == (HOUR, 2)

    review = round_trip("review", tmp_path, remind_after=600, remind_max=5)

    assert (review.remind_after, review.remind_max) == (600, 5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"remind_after": 59}, "remind_after: Ensure this value is greater than or equal to 60."),
        ({"remind_after": MAX_WAIT + 1}, f"remind_after: Ensure this value is less than or equal to {MAX_WAIT}."),
        ({"remind_after": "4h"}, "remind_after must be a whole number of seconds or null (form stages), not a string"),
        ({"remind_max": 0}, "remind_max: Ensure this value is greater than or equal to 1."),
        ({"remind_max": 11}, "remind_max: Ensure this value is less than or equal to 10."),
        ({"remind_max": None}, "remind_max must be a whole number, not null"),
        ({"kind": "script", "handler": "tests.handlers.noop", "remind_after": 600}, "remind_after: Only form stages"),
    ],
)
def test_bad_reminder_fields_in_a_workflow_file_are_one_line_each(
    db: None, fields: dict[str, Any], message: str
) -> None:
    assert message in one_problem({"slug": "review", "name": "Review", "kind": "form", **fields}, [])


def test_load_workflow_refuses_bad_reminders_and_changes_nothing(fw: FormWorld, tmp_path: Path) -> None:
    with pytest.raises(CommandError):
        load_file(dumped_with("review", remind_after=600, remind_max=0), tmp_path)

    review = Stage.objects.get(slug="review")
    assert (review.remind_after, review.remind_max) == (HOUR, 2)


def test_the_admin_sets_the_reminders_in_its_people_fieldset_and_refuses_bad_values(fw: FormWorld) -> None:
    client = logged_in(make_user("boss", superuser=True))
    url = f"{STAGE_URL}{fw.review.pk}/change/"
    data = form_fields(client, url, form_id="stage_form")

    for bad in ({"remind_after": "59"}, {"remind_after": str(MAX_WAIT + 1)}, {"remind_max": "0"}, {"remind_max": "11"}):
        refused = client.post(url, {**data, **bad, "_save": "Save"})
        assert refused.status_code == 200 and "errorlist" in refused.content.decode(), bad
    assert (Stage.objects.get(slug="review").remind_after, Stage.objects.get(slug="review").remind_max) == (HOUR, 2)

    saved = client.post(url, {**data, "remind_after": "7200", "remind_max": "4", "_save": "Save"})

    assert saved.status_code == 302
    review = Stage.objects.get(slug="review")
    assert (review.remind_after, review.remind_max) == (7200, 4)


def test_the_stage_page_shows_the_reminders(fw: FormWorld) -> None:
    page = logged_in(make_user("boss", superuser=True)).get("/stages/review/").content.decode()

    assert "every 3600 s while a task waits (pending), at most 2, to the people told of its arrival" in page


def test_the_demos_review_stage_has_a_due_time_and_reminders(db: None) -> None:
    load_demo()

    review = Stage.objects.get(slug="review")

    assert (review.due_after, review.remind_after, review.remind_max, review.on_overdue) == (86400, 4 * HOUR, 2, "")
    assert review.notify == {"groups": True}  # the reviewers are reminded as they were told
