"""Notify on arrival (issue 16): Stage.notify, the outbox written with each task, and the drain that mails.

intake --approval--> approve (a form stage whose groups are told), plus the suite's world (tests.support.world).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import socket
import ssl
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import close_old_connections, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.demo import DEMO_REVIEWER, load_demo
from tasks_app.models import Notification, Stage, Task, TaskEvent, Transition
from tasks_app.notify_rules import MAX_PAYLOAD_ADDRESSES
from tasks_app.services import counters as stage_counters
from tasks_app.services import (
    notifications,
    task_claim,
    task_complete,
    task_create,
    task_send,
    tasks_create_bulk,
    webhooks,
)
from tasks_app.services.notifications import notifications_drain
from tasks_app.services.workflow import workflow_dump, workflow_load, workflow_problems
from tasks_app.worker import Worker
from tests.support.pages import STAGE_URL, form_fields
from tests.support.threads import run_at_once
from tests.support.users import logged_in, make_user
from tests.support.world import make_world

NOTIFIED = TaskEvent.Kind.NOTIFIED
FAILED = TaskEvent.Kind.NOTIFY_FAILED
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "title": "Title"},
        "amount": {"type": "number", "title": "Amount"},
        "requester": {"type": "string"},  # in the schema but untitled: never in a mail
    },
}


def approvers() -> Group:
    group = Group.objects.create(name="approvers")
    for name, email in [("ann", "ann@example.com"), ("bob", "bob@example.com"), ("nomail", "")]:
        user = make_user(name)
        user.email = email
        user.save()
        user.groups.add(group)
    gone = make_user("gone")
    gone.email, gone.is_active = "gone@example.com", False
    gone.save()
    gone.groups.add(group)
    return group


def notifying_world(**notify: Any) -> dict[str, Stage]:
    world = make_world()
    world["intake"].schemas = {"approval": SCHEMA}
    world["intake"].save()
    approve = Stage.objects.create(
        slug="approve", name="Approve", kind=Stage.Kind.FORM, notify=notify or {"groups": True}
    )
    approve.groups.add(approvers())
    Transition.objects.create(source=world["intake"], target=approve, task_type="approval")
    Transition.objects.create(source=world["ship"], target=approve, task_type="approval")
    world["approve"] = approve
    return world


def arrive(world: dict[str, Stage], **payload: Any) -> Task:
    sent = task_send(stage=world["intake"], type="approval", payload={"title": "New laptop", **payload})
    [task] = [t for t in sent if t.stage_id == world["approve"].pk]  # intake also sends every type to review
    return task


def outbox() -> list[tuple[int, str, str, str]]:
    return sorted(Notification.objects.values_list("task_id", "channel", "recipient", "status"))


def kinds(task: Task) -> list[str]:
    return list(task.events.order_by("id").values_list("kind", flat=True))


def closed_port() -> int:
    """A local port nothing listens on: an SMTP backend pointed at it fails at once (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def world(db: None) -> dict[str, Stage]:
    return notifying_world()


# -- the outbox: written with the task --------------------------------------------------------------


def test_an_arrival_writes_one_row_per_recipient_in_the_creating_transaction(world: dict[str, Stage]) -> None:
    task = arrive(world)

    # The active members of the stage's groups that have an address; nobody else.
    assert outbox() == [
        (task.pk, "email", "ann@example.com", "pending"),
        (task.pk, "email", "bob@example.com", "pending"),
    ]
    assert mail.outbox == []  # nothing is delivered on the arrival path

    with pytest.raises(RuntimeError), transaction.atomic():
        arrive(world, title="rolled back")
        assert Notification.objects.count() == 4  # written in the arrival's transaction...
        raise RuntimeError("the arrival rolls back")
    assert Notification.objects.count() == 2  # ...and gone with it


def test_every_arrival_path_writes_the_outbox(world: dict[str, Stage]) -> None:
    approve = world["approve"]
    created = task_create(stage=approve, type="approval", payload={"title": "by create"})
    [bulk1, bulk2] = tasks_create_bulk(
        items=[(approve, "approval", {"title": "bulk 1"}), (approve, "approval", {"title": "bulk 2"})]
    )
    sent = arrive(world)
    task_create(stage=world["ship"], type="approval", payload={"title": "completed into approve"})
    [claim] = task_claim(stage=world["ship"], worker_id="w1")
    [successor] = task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("approval", {"title": "x"})])

    told = set(Notification.objects.values_list("task_id", flat=True))
    assert told == {created.pk, bulk1.pk, bulk2.pk, sent.pk, successor.pk}
    assert Notification.objects.filter(task_id=successor.pk).count() == 2


def test_a_deduplicated_arrival_tells_nobody(world: dict[str, Stage]) -> None:
    Stage.objects.filter(pk=world["approve"].pk).update(dedupe_on=["/title"])
    first = arrive(world)
    again = arrive(world)

    assert again.pk == first.pk and again.deduplicated
    assert Notification.objects.filter(task_id=first.pk).count() == 2  # the first arrival's rows only


def test_only_notifying_form_stages_write_rows(world: dict[str, Stage]) -> None:
    Stage.objects.filter(pk=world["approve"].pk).update(notify={})
    arrive(world)
    task_create(stage=world["review"], type="order", payload={"amount": 1})

    assert Notification.objects.count() == 0


def test_addresses_from_the_payload_are_validated_and_bounded(db: None) -> None:
    world = notifying_world(emails_from="/cc")
    junk = ["not an address", "x@y.example\r\nBcc: evil@example.com", 42, {"a": 1}, "a" * 300 + "@example.com"]
    good = [f"p{n}@Example.COM" for n in range(MAX_PAYLOAD_ADDRESSES + 5)]
    arrive(world, cc=junk + good)
    one = arrive(world, cc="single@example.com")
    arrive(world, cc=None)

    recipients = list(Notification.objects.order_by("id").values_list("recipient", flat=True))
    # At most MAX_PAYLOAD_ADDRESSES values are read, each validated (the junk took 5 of them), the domain lower-cased.
    assert recipients[: MAX_PAYLOAD_ADDRESSES - 5] == [f"p{n}@example.com" for n in range(MAX_PAYLOAD_ADDRESSES - 5)]
    assert len(recipients) == MAX_PAYLOAD_ADDRESSES - 5 + 1
    assert Notification.objects.get(task_id=one.pk).recipient == "single@example.com"


# -- the drain: the workers' upkeep -------------------------------------------------------------------


def test_the_drain_mails_each_recipient_text_and_html_and_records_it(world: dict[str, Stage], settings: Any) -> None:
    settings.TASKS_BASE_URL = "https://tasks.example.com/"
    task = arrive(world, amount=250)

    drained = notifications_drain()

    assert drained is not None and (drained.sent, drained.failed, drained.rows) == (2, 0, 2)
    assert sorted(m.to[0] for m in mail.outbox) == ["ann@example.com", "bob@example.com"]
    message = mail.outbox[0]
    assert message.subject == f"Task #{task.pk} waits for you at Approve: New laptop"
    link = f"https://tasks.example.com/work/{task.pk}/"
    assert link in message.body and "Title: New laptop" in message.body and "Amount: 250" in message.body
    [(html, mimetype)] = message.alternatives
    assert mimetype == "text/html" and f'href="{link}"' in str(html)
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}
    events = task.events.filter(kind=NOTIFIED).order_by("id")
    assert [(e.actor, e.details["to"], e.details["attempt"]) for e in events] == [
        ("notifications", "ann@example.com", 1),
        ("notifications", "bob@example.com", 1),
    ]
    # Delivered once: the next drain has nothing to do.
    assert notifications_drain() == notifications.Drain()
    assert len(mail.outbox) == 2


def test_no_payload_field_is_mailed_unless_the_schema_titles_it_and_html_is_escaped(world: dict[str, Stage]) -> None:
    arrive(world, title="<script>alert(1)</script> & co", requester="hidden@example.com", secret="hunter2")

    notifications_drain()

    message = mail.outbox[0]
    html = str(message.alternatives[0][0])
    for text in (message.body, html, message.subject):
        assert "hunter2" not in text and "hidden@example.com" not in text  # untitled or not in the schema
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert "<script>alert(1)</script> & co" in message.body  # plain text is not HTML


def test_a_burst_becomes_one_digest_per_person_per_window(world: dict[str, Stage]) -> None:
    Stage.objects.filter(pk=world["approve"].pk).update(notify_digest=10)
    approve = Stage.objects.get(pk=world["approve"].pk)
    burst = tasks_create_bulk(items=[(approve, "approval", {"title": f"laptop {n}"}) for n in range(50)])

    notifications_drain()

    assert sorted(m.to[0] for m in mail.outbox) == ["ann@example.com", "bob@example.com"]
    assert mail.outbox[0].subject == "50 tasks wait for you at Approve"
    assert mail.outbox[0].body.count("/work/") == notifications.LISTED + 1  # 50 listed, and the My work link
    assert all(kinds(t) == ["created", NOTIFIED, NOTIFIED] for t in burst)

    # Within the window, later arrivals wait for its end, and then go out together.
    now = timezone.now()
    later = [task_create(stage=approve, type="approval", payload={"title": f"more {n}"}) for n in range(3)]
    deferred = notifications_drain(now=now + timedelta(minutes=1))
    assert deferred is not None and (deferred.sent, deferred.deferred) == (0, 6)
    assert len(mail.outbox) == 2
    notifications_drain(now=now + timedelta(minutes=11))
    assert len(mail.outbox) == 4 and mail.outbox[-1].subject == "3 tasks wait for you at Approve"
    assert all(kinds(t) == ["created", NOTIFIED, NOTIFIED] for t in later)


def test_a_burst_of_5000_arrivals_is_one_mail_per_person(world: dict[str, Stage]) -> None:
    """The issue's figure: 5,000 arrivals between two passes become one digest per person, not 5,000 mails."""
    approve = world["approve"]
    items = [(approve, "approval", {"title": f"laptop {n}"}) for n in range(5000)]
    for start in range(0, len(items), 1000):
        tasks_create_bulk(items=items[start : start + 1000])
    assert Notification.objects.filter(status="pending").count() == 10_000  # 2 reviewers x 5,000

    drained = notifications_drain()

    assert drained is not None
    assert sorted(m.to[0] for m in mail.outbox) == ["ann@example.com", "bob@example.com"]
    assert {m.subject for m in mail.outbox} == {"5000 tasks wait for you at Approve"}
    assert all("...and 4950 more." in m.body for m in mail.outbox)  # LISTED (50) listed, the rest counted
    assert not Notification.objects.exclude(status="sent").exists()
    assert TaskEvent.objects.filter(kind=NOTIFIED).count() == 10_000  # each task's history has both mails


def test_a_failing_mail_server_is_retried_with_backoff_and_each_attempt_is_in_the_history(
    world: dict[str, Stage], settings: Any
) -> None:
    task = arrive(world)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port(), 2.0
    now = timezone.now()

    failed = notifications_drain(now=now)

    assert failed is not None and (failed.sent, failed.failed) == (0, 2)
    row = Notification.objects.get(task=task, recipient="ann@example.com")
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.due_at == now + notifications.backoff(1) and notifications.backoff(1) == timedelta(seconds=60)
    event = task.events.filter(kind=FAILED).first()
    assert event is not None and "ConnectionRefusedError" in event.details["error"]
    assert event.details["retry_at"] == row.due_at.isoformat()
    # Not due yet: nothing happens; once due, the second attempt fails again and waits twice as long.
    assert notifications_drain(now=now + timedelta(seconds=30)) == notifications.Drain()
    notifications_drain(now=now + timedelta(seconds=61))
    row.refresh_from_db()
    assert row.attempts == 2 and row.due_at == now + timedelta(seconds=61) + timedelta(seconds=120)

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    notifications_drain(now=now + timedelta(seconds=200))

    assert sorted(m.to[0] for m in mail.outbox) == ["ann@example.com", "bob@example.com"]
    assert kinds(task) == ["created", FAILED, FAILED, FAILED, FAILED, NOTIFIED, NOTIFIED]
    assert task.events.filter(kind=NOTIFIED).first().details["attempt"] == 3  # type: ignore[union-attr]


def test_after_max_attempts_the_rows_are_given_up_and_say_so(world: dict[str, Stage], settings: Any) -> None:
    task = arrive(world)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", closed_port(), 2.0
    when = timezone.now()
    for _ in range(notifications.MAX_ATTEMPTS):
        notifications_drain(now=when)
        when += timedelta(hours=2)

    assert set(Notification.objects.values_list("status", "attempts")) == {("failed", notifications.MAX_ATTEMPTS)}
    last = task.events.filter(kind=FAILED).order_by("id").last()
    assert last is not None and last.details["gave_up"] and last.details["retry_at"] is None
    assert notifications_drain(now=when + timedelta(days=1)) == notifications.Drain()


class Crash(BaseException):
    """The worker dies (SIGKILL, OOM) in the middle of a drain: nothing after it runs, its transaction rolls back."""


def test_a_worker_dying_mid_drain_leaves_the_rest_for_the_next_drain(
    world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = arrive(world)
    send = notifications.send_digest_mail

    def dies_at_bob(recipient: str, stage: Stage, items: list[notifications.Item]) -> None:
        if recipient == "bob@example.com":
            raise Crash
        send(recipient, stage, items)

    monkeypatch.setattr(notifications, "send_digest_mail", dies_at_bob)
    with pytest.raises(Crash):
        notifications_drain()

    assert [m.to for m in mail.outbox] == [["ann@example.com"]]
    assert outbox() == [
        (task.pk, "email", "ann@example.com", "sent"),
        (task.pk, "email", "bob@example.com", "pending"),  # its transaction died with the worker
    ]

    monkeypatch.setattr(notifications, "send_digest_mail", send)
    notifications_drain()

    assert [m.to for m in mail.outbox] == [["ann@example.com"], ["bob@example.com"]]  # each once
    assert kinds(task) == ["created", NOTIFIED, NOTIFIED]


def test_a_task_taken_or_deleted_before_the_drain_mails_nobody(world: dict[str, Stage]) -> None:
    taken = arrive(world, title="taken")
    deleted = arrive(world, title="deleted")
    kept = arrive(world, title="kept")
    Task.objects.filter(pk=taken.pk).update(status=Task.Status.COMPLETED, completed_at=timezone.now())
    Task.objects.filter(pk=deleted.pk).delete()

    notifications_drain()

    assert len(mail.outbox) == 2 and all(f"/work/{kept.pk}/" in m.body for m in mail.outbox)
    assert all(f"/work/{taken.pk}/" not in m.body for m in mail.outbox)
    assert set(Notification.objects.values_list("task_id", flat=True)) == {kept.pk}


def test_the_workers_upkeep_drains_the_outbox(world: dict[str, Stage]) -> None:
    arrive(world)
    worker = Worker(listen=False, progress_interval=0)

    drained = worker.send_notifications()

    assert drained is not None and drained.sent == 2 and len(mail.outbox) == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_drains_at_once_send_each_notification_once(db: None) -> None:
    world = notifying_world(groups=True, emails_from="/to")
    approve = world["approve"]
    tasks = tasks_create_bulk(
        items=[(approve, "approval", {"title": "t", "to": f"p{n}@example.com"}) for n in range(40)]
    )

    def upkeep() -> None:
        # Small bites, over and over, at the same time, until nothing is left to send.
        for _ in range(2000):
            notifications_drain(groups_limit=3)
            if not Notification.objects.filter(status=Notification.Status.PENDING).exists():
                break

    errors = run_at_once(upkeep)
    close_old_connections()

    assert not errors
    # 40 payload addresses and the two approvers: one mail each, never two.
    recipients = sorted(m.to[0] for m in mail.outbox)
    assert recipients == sorted({*(f"p{n}@example.com" for n in range(40)), "ann@example.com", "bob@example.com"})
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}
    for task in tasks:
        assert kinds(task).count(NOTIFIED) == 3


# -- Stage.notify on every path -------------------------------------------------------------------------


BAD_NOTIFY = [
    ({"teams": True}, "unknown key 'teams'"),
    ({"groups": "yes"}, "notify.groups must be true or false"),
    ({"emails_from": "requester"}, "must start with '/'"),
    ({"emails_from": ""}, "notify.emails_from must be a JSON pointer"),
    ({"webhook": "http://hooks.example.com/x"}, "notify.webhook must be an https URL"),
    ({"webhook": "https://" + "a" * 2000 + ".com"}, "at most 2000 characters"),
    (["groups"], "notify must be an object"),
]


@pytest.mark.parametrize(("notify", "message"), BAD_NOTIFY)
def test_the_model_refuses_a_bad_notify(db: None, notify: Any, message: str) -> None:
    stage = Stage(slug="f", name="F", kind=Stage.Kind.FORM, notify=notify)
    with pytest.raises(ValidationError) as caught:
        stage.full_clean()
    assert any(message in m for m in caught.value.message_dict["notify"])


def test_only_form_stages_notify_and_the_digest_is_bounded(db: None) -> None:
    with pytest.raises(ValidationError) as caught:
        Stage(
            slug="s", name="S", kind=Stage.Kind.SCRIPT, handler="tests.handlers.noop", notify={"groups": True}
        ).full_clean()
    assert caught.value.message_dict == {"notify": ["Only form stages notify: people work their tasks."]}
    with pytest.raises(ValidationError) as caught:
        Stage(slug="f", name="F", kind=Stage.Kind.FORM, notify_digest=1441).full_clean()
    assert "notify_digest" in caught.value.message_dict


@pytest.mark.parametrize(("notify", "message"), BAD_NOTIFY[:3])
def test_bad_notify_in_a_workflow_file_is_one_line(db: None, notify: Any, message: str) -> None:
    data = {"version": 1, "stages": [{"slug": "f", "name": "F", "kind": "form", "notify": notify}], "transitions": []}

    problems = workflow_problems(data)

    assert len(problems) == 1 and problems[0].startswith("stages[0] (slug 'f'): notify") and message in problems[0]
    assert "\n" not in problems[0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"notify_digest": -1}, "notify_digest: Ensure this value is greater than or equal to 0."),
        ({"notify_digest": "5m"}, "notify_digest must be a whole number of minutes, not a string"),
        ({"notify": "groups"}, 'notify must be an object like {"groups": true} (form stages), not a string'),
        ({"kind": "script", "handler": "tests.handlers.noop", "notify": {"groups": True}}, "Only form stages notify"),
    ],
)
def test_bad_notify_fields_in_a_workflow_file(db: None, fields: dict[str, Any], message: str) -> None:
    data = {"version": 1, "stages": [{"slug": "f", "name": "F", "kind": "form", **fields}], "transitions": []}

    problems = workflow_problems(data)

    assert len(problems) == 1 and message in problems[0], problems


def test_notify_survives_a_dump_and_load_round_trip(world: dict[str, Stage], tmp_path: Path) -> None:
    setting = {"groups": True, "emails_from": "/requester", "webhook": "https://hooks.example.com/T1"}
    Stage.objects.filter(pk=world["approve"].pk).update(notify=setting, notify_digest=15)
    dumped = workflow_dump()
    entry = next(s for s in dumped["stages"] if s["slug"] == "approve")
    assert (entry["notify"], entry["notify_digest"]) == (setting, 15)

    Stage.objects.filter(pk=world["approve"].pk).update(notify={}, notify_digest=0)
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(dumped))
    call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=io.StringIO())

    approve = Stage.objects.get(slug="approve")
    assert (approve.notify, approve.notify_digest) == (setting, 15)
    assert workflow_dump() == dumped


def test_a_workflow_file_without_notify_resets_it(world: dict[str, Stage]) -> None:
    dumped = workflow_dump()
    entry = next(s for s in dumped["stages"] if s["slug"] == "approve")
    del entry["notify"], entry["notify_digest"]

    workflow_load(dumped)

    assert Stage.objects.get(slug="approve").notify == {}


def test_the_api_sets_notify_and_refuses_bad_values_with_field_messages(
    world: dict[str, Stage], admin: APIClient
) -> None:
    bad = admin.patch("/api/stages/approve/", {"notify": {"webhook": "http://x.example.com/"}}, format="json")
    assert bad.status_code == 400 and "https URL" in json.dumps(bad.json()["notify"])
    script = admin.patch("/api/stages/ship/", {"notify": {"groups": True}}, format="json")
    assert script.status_code == 400 and script.json()["notify"] == [
        "Only form stages notify: people work their tasks."
    ]
    digest = admin.patch("/api/stages/approve/", {"notify_digest": 100000}, format="json")
    assert digest.status_code == 400 and "notify_digest" in digest.json()

    ok = admin.patch("/api/stages/approve/", {"notify": {"emails_from": "/to"}, "notify_digest": 5}, format="json")

    assert ok.status_code == 200 and (ok.json()["notify"], ok.json()["notify_digest"]) == ({"emails_from": "/to"}, 5)
    assert Stage.objects.get(slug="approve").notify == {"emails_from": "/to"}


def test_the_admin_sets_notify_and_refuses_bad_values(world: dict[str, Stage]) -> None:
    client = logged_in(make_user("boss", superuser=True))
    url = f"{STAGE_URL}{world['approve'].pk}/change/"
    data = form_fields(client, url, form_id="stage_form")

    refused = client.post(url, {**data, "notify": '{"emails_from": "to"}', "_save": "Save"})
    assert refused.status_code == 200 and "must start with" in refused.content.decode()
    saved = client.post(url, {**data, "notify": '{"emails_from": "/to"}', "notify_digest": "30", "_save": "Save"})
    assert saved.status_code == 302
    approve = Stage.objects.get(slug="approve")
    assert (approve.notify, approve.notify_digest) == ({"emails_from": "/to"}, 30)
    cleared = client.post(url, {**data, "notify": "", "_save": "Save"})
    assert cleared.status_code == 302 and Stage.objects.get(slug="approve").notify == {}


# -- the demo ---------------------------------------------------------------------------------------------


def test_the_demos_review_stage_mails_the_reviewers(db: None) -> None:
    stages = load_demo(with_orders=False)
    assert stages["review"].notify == {"groups": True}
    task = task_create(stage=stages["review"], type="in_stock", payload={"order_id": 7, "customer": "ada@example.com"})

    notifications_drain()

    assert [m.to for m in mail.outbox] == [[DEMO_REVIEWER[1]]]
    assert f"/work/{task.pk}/" in mail.outbox[0].body


# -- outbound webhooks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://0.0.0.0/hook",
    ],
)
def test_a_webhook_to_a_private_loopback_or_link_local_address_is_refused_before_connecting(
    db: None, settings: Any, url: str
) -> None:
    settings.TASKS_WEBHOOK_SECRET = "s3cret"
    stage = Stage(slug="f", name="F", kind=Stage.Kind.FORM)

    with pytest.raises(webhooks.WebhookRefused, match="not a public address"):
        webhooks.webhook_post(url, stage, [])


def test_a_webhook_is_never_sent_unsigned(db: None, settings: Any) -> None:
    settings.TASKS_WEBHOOK_SECRET = ""
    with pytest.raises(webhooks.WebhookRefused, match="TASKS_WEBHOOK_SECRET"):
        webhooks.webhook_post("https://hooks.example.com/x", Stage(slug="f", name="F"), [])


def test_a_refused_webhook_is_a_failed_attempt_in_the_history(db: None, settings: Any) -> None:
    settings.TASKS_WEBHOOK_SECRET = "s3cret"
    world = notifying_world(webhook="https://10.0.0.7/hook")
    task = arrive(world)

    drained = notifications_drain()

    assert drained is not None and drained.failed == 1
    [event] = task.events.filter(kind=FAILED)
    assert event.details["channel"] == "webhook" and event.details["to"] == "webhook"  # the URL may hold a token
    assert "10.0.0.7" in event.details["error"] and "not a public address" in event.details["error"]
    assert Notification.objects.get(task=task).status == "pending"  # retried later


def test_the_webhook_body_is_slack_compatible_signed_and_shows_only_titled_fields(world: dict[str, Stage]) -> None:
    task = arrive(world, amount=9, secret="hunter2")
    [item] = notifications._items([Task.objects.select_related("stage", "source_stage").get(pk=task.pk)])

    body = webhooks.webhook_body(world["approve"], [item])

    data = json.loads(body)
    assert f"/work/{task.pk}/" in data["text"] and data["tasks"][0]["fields"] == {"Title": "New laptop", "Amount": "9"}
    assert b"hunter2" not in body
    signature = webhooks.webhook_signature("s3cret", 1700000000, body)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"


def test_metrics_count_notifications_sent_and_failed(
    world: dict[str, Stage], settings: Any, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stage_counters, "SETTLE_SECONDS", 0.0)  # count the events just written
    settings.TASKS_METRICS_CACHE = 0
    settings.TASKS_METRICS_TOKEN = "t0ken"
    arrive(world)
    notifications_drain()

    text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken").content.decode()

    assert 'tasks_notified_total{stage="approve"} 2.0' in text
    assert 'tasks_notify_failed_total{stage="approve"} 0.0' in text


TLS = Path(__file__).resolve().parent / "support" / "tls"  # a self-signed certificate for localhost (100 years)


class _Receiver(BaseHTTPRequestHandler):
    got: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.got.append((self.path, dict(self.headers), body))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "https://127.0.0.1/elsewhere")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_webhook_is_posted_signed_over_verified_tls_and_a_redirect_is_not_followed(
    world: dict[str, Stage], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(TLS / "localhost.crt", TLS / "localhost.key")
    server.socket = served.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Receiver.got = []
    port = server.server_address[1]
    settings.TASKS_WEBHOOK_SECRET = "s3cret"
    # The receiver is on loopback, which the address check refuses (tested above): here it lets it through,
    # and the client trusts the test certificate. The connection, TLS host check and HTTP are real.
    monkeypatch.setattr(webhooks, "public_address", lambda host, port: "127.0.0.1")
    monkeypatch.setattr(webhooks, "tls_context", lambda: ssl.create_default_context(cafile=str(TLS / "localhost.crt")))
    task = arrive(world)
    [item] = notifications._items([Task.objects.select_related("stage", "source_stage").get(pk=task.pk)])
    try:
        webhooks.webhook_post(f"https://localhost:{port}/hook?team=a", world["approve"], [item], now=1700000000)
        with pytest.raises(RuntimeError, match="HTTP 302"):
            webhooks.webhook_post(f"https://localhost:{port}/moved", world["approve"], [item])
        with pytest.raises(ssl.SSLCertVerificationError):  # the certificate is for localhost, not this name
            webhooks.webhook_post(f"https://hooks.example.com:{port}/hook", world["approve"], [item])
    finally:
        server.shutdown()
        server.server_close()

    [(path, headers, body), (moved, _, _)] = _Receiver.got  # the redirect's target was never asked
    assert (path, moved) == ("/hook?team=a", "/moved")
    assert headers["X-Tasks-Timestamp"] == "1700000000" and headers["Content-Type"] == "application/json"
    assert headers["X-Tasks-Signature"] == webhooks.webhook_signature("s3cret", 1700000000, body)
    assert json.loads(body)["tasks"][0]["url"].endswith(f"/work/{task.pk}/")
