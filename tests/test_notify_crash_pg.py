"""The notification outbox survives a worker killed mid-drain (issue 16), with a real worker process.

A worker drains the outbox of one arrival with two recipients; its mail backend (tests.support.mail_backends)
hangs on the second, and the test SIGKILLs the process there. The first mail's row was marked sent in the
transaction that sent it; the second's transaction died with the process, so its row is still pending (no
lock left behind) and the next drain sends it, and only it: each person gets the mail once.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from django.core import mail

from tasks_app.models import Notification, Stage, TaskEvent
from tasks_app.services import task_create
from tasks_app.services.notifications import notifications_drain
from tests.support.processes import finish, start_worker, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ANN, BOB = "ann@example.com", "bob@example.com"


def lines(log: Path) -> list[dict[str, list[str]]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_worker_killed_mid_drain_loses_no_notification_and_sends_none_twice(tmp_path: Path) -> None:
    stage = Stage.objects.create(slug="approve", name="Approve", kind=Stage.Kind.FORM, notify={"emails_from": "/to"})
    task = task_create(stage=stage, type="approval", payload={"to": [ANN, BOB]})
    assert Notification.objects.filter(task=task, status="pending").count() == 2  # written with the task

    log = tmp_path / "mail.log"
    env = {"EMAIL_BACKEND": "tests.support.mail_backends.FileLineBackend", "MAIL_LOG": str(log), "MAIL_HANG_ON": BOB}
    worker = start_worker("--poll-interval", "0.2", "--progress-interval", "0", "--worker-id", "mailer", env=env)
    try:
        assert wait_for(lambda: {"hanging": [BOB]} in lines(log), timeout=60), finish(worker, timeout=10)
    finally:
        worker.send_signal(signal.SIGKILL)
    finish(worker, timeout=30)
    assert worker.returncode == -signal.SIGKILL

    assert lines(log) == [{"to": [ANN]}, {"to": [BOB]}, {"hanging": [BOB]}]
    rows = dict(Notification.objects.filter(task=task).values_list("recipient", "status"))
    assert rows == {ANN: "sent", BOB: "pending"}  # BOB's send never committed

    # The next drain (this process, the locmem backend): BOB's row is free again, and ANN is not mailed twice.
    drained = notifications_drain()
    assert drained is not None
    assert [m.to for m in mail.outbox] == [[BOB]]
    assert dict(Notification.objects.filter(task=task).values_list("recipient", "status")) == {ANN: "sent", BOB: "sent"}
    notified = TaskEvent.objects.filter(task=task, kind=TaskEvent.Kind.NOTIFIED).order_by("id")
    assert [(e.actor, e.details.get("to")) for e in notified] == [("notifications", ANN), ("notifications", BOB)]
