"""Escalation and reminders under concurrency (issue 16), on PostgreSQL with real processes.

Four processes, each with its own connection, run the upkeep's sweeps (services.due.tasks_due_sweep, then
services.reminders.tasks_remind, in small batches) at the same moment over and over until a pass finds
nothing left: 200 overdue tasks with an on_overdue type are each completed and sent on exactly once, 20
overdue tasks open in a person's hands are flagged once and never sent, and 60 waiting tasks at a second
stage each get exactly remind_max reminders. The waiting-time sweep (issue 15: services.waiting.tasks_wait_sweep)
runs in the same passes: 200 tasks past a third stage's max_wait each get one wait_exceeded event and are sent on
as its on_timeout type exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db.models import Count
from django.utils import timezone

from tasks_app.models import Notification, Stage, Task, TaskEvent, Transition
from tasks_app.services.form_stages import form_task_open
from tests.support.processes import ROOT, subprocess_env
from tests.support.users import make_user

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SWEEPER = """
import json, sys, time
import django
django.setup()
from tasks_app.services.due import tasks_due_sweep
from tasks_app.services.reminders import tasks_remind
from tasks_app.services.waiting import tasks_wait_sweep
print("ready", flush=True)
start = float(sys.stdin.readline())
while time.time() < start:
    time.sleep(0.0005)
done = {"flagged": 0, "escalated": 0, "reminded": 0, "refused": 0, "waited": 0, "timed_out": 0}
quiet, deadline = 0, time.monotonic() + 30
while quiet < 3 and time.monotonic() < deadline:  # three passes in a row with nothing to do: all done
    swept, reminded = tasks_due_sweep(batch_size=25), tasks_remind(batch_size=25)
    waited = tasks_wait_sweep(batch_size=25)
    done["flagged"] += swept.flagged if swept else 0
    done["escalated"] += swept.escalated if swept else 0
    done["reminded"] += reminded.reminded if reminded else 0
    done["waited"] += waited.flagged if waited else 0
    done["timed_out"] += waited.timed_out if waited else 0
    if swept is None or reminded is None or waited is None:
        done["refused"] += 1  # another process held the sweep lock
        time.sleep(0.02)
        continue
    quiet = quiet + 1 if not (swept.flagged or reminded.reminded or waited.flagged) else 0
print(json.dumps(done))
"""

OVERDUE, HELD, WAITING, PROCESSES, REMIND_MAX = 200, 20, 60, 4, 2
TIMED_OUT = 200  # past the third stage's max_wait


def start() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SWEEPER],
        cwd=ROOT,
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    result: dict[str, Any] = json.loads(out)
    return result


def per_task(kind: str, stage: Stage) -> dict[int, int]:
    events = TaskEvent.objects.filter(task__stage=stage, kind=kind).values("task_id").annotate(n=Count("id"))
    return dict(events.values_list("task_id", "n"))


def test_four_processes_sweeping_at_once_escalate_each_task_once_and_remind_each_remind_max_times(db: None) -> None:
    reviewers = Group.objects.create(name="reviewers")
    alice = make_user("alice")
    alice.groups.add(reviewers)
    review = Stage.objects.create(
        slug="review", name="Review", kind=Stage.Kind.FORM, due_after=60, on_overdue="escalated", lock_timeout=3600
    )
    second = Stage.objects.create(
        slug="second", name="Second", kind=Stage.Kind.FORM, notify={"groups": True}, remind_after=60,
        remind_max=REMIND_MAX,
    )  # fmt: skip
    manager = Stage.objects.create(slug="manager", name="Manager", kind=Stage.Kind.FORM)
    for stage in (review, second):
        stage.groups.add(reviewers)
    Transition.objects.create(source=review, target=manager, task_type="escalated")
    past = timezone.now() - timedelta(seconds=400)
    rows = [Task(stage=review, type="order", payload={"n": n}, created_at=past) for n in range(OVERDUE + HELD)]
    rows += [Task(stage=second, type="order", payload={"n": n}, created_at=past) for n in range(WAITING)]
    # Issue 15's waiting-time limit: arrived and due 400 s ago at a stage with a max_wait of 60 s.
    queue = Stage.objects.create(slug="queue", name="Queue", max_wait=60, on_timeout="late")
    late_desk = Stage.objects.create(slug="late-desk", name="Late desk", kind=Stage.Kind.FORM)
    Transition.objects.create(source=queue, target=late_desk, task_type="late")
    rows += [
        Task(stage=queue, type="order", payload={"n": n}, created_at=past, available_at=past) for n in range(TIMED_OUT)
    ]
    Task.objects.bulk_create(rows)
    held = list(Task.objects.filter(stage=review).order_by("id")[:HELD])
    for task in held:
        form_task_open(task=task, user=alice)

    procs = [start() for _ in range(PROCESSES)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "ready\n", proc.communicate(timeout=60)[1][-3000:]
    at = time.time() + 0.2  # every process is connected: all start together
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{at}\n")
        proc.stdin.flush()
    results = [finish(proc) for proc in procs]

    # Escalation: every pending overdue task completed once and sent on once; the held ones flagged, not sent.
    held_ids = {t.pk for t in held}
    assert sum(r["escalated"] for r in results) == OVERDUE, results
    assert sum(r["flagged"] for r in results) == OVERDUE + HELD, results
    flagged, completed = per_task(TaskEvent.Kind.OVERDUE, review), per_task(TaskEvent.Kind.COMPLETED, review)
    assert len(flagged) == OVERDUE + HELD and set(flagged.values()) == {1}
    assert set(completed) == {t.pk for t in Task.objects.filter(stage=review)} - held_ids
    assert set(completed.values()) == {1}
    sent = Task.objects.filter(stage=manager)
    assert sent.count() == OVERDUE and sent.values("parent_id").distinct().count() == OVERDUE
    assert not sent.filter(parent_id__in=held_ids).exists()
    assert set(Task.objects.filter(pk__in=held_ids).values_list("status", flat=True)) == {Task.Status.LOCKED}
    # Reminders: each waiting task got exactly remind_max, each queued once (one row for alice each time).
    assert sum(r["reminded"] for r in results) == WAITING * REMIND_MAX, results
    assert set(Task.objects.filter(stage=second).values_list("reminders", flat=True)) == {REMIND_MAX}
    reminded = per_task(TaskEvent.Kind.REMINDED, second)
    assert len(reminded) == WAITING and set(reminded.values()) == {REMIND_MAX}
    assert Notification.objects.filter(kind=Notification.Kind.REMINDER).count() == WAITING * REMIND_MAX
    # The waiting-time limit: one wait_exceeded event, one completion and one successor per task.
    assert sum(r["waited"] for r in results) == sum(r["timed_out"] for r in results) == TIMED_OUT, results
    waits, ends = per_task(TaskEvent.Kind.WAIT_EXCEEDED, queue), per_task(TaskEvent.Kind.COMPLETED, queue)
    assert len(waits) == len(ends) == TIMED_OUT and set(waits.values()) == set(ends.values()) == {1}
    assert set(Task.objects.filter(stage=queue).values_list("status", flat=True)) == {Task.Status.COMPLETED}
    late = Task.objects.filter(stage=late_desk, type="late")
    assert late.count() == TIMED_OUT and set(late.values_list("parent_id", flat=True)) == set(waits)
    # They did race: more than one process held the sweep lock at some point, or was refused it.
    assert sum(1 for r in results if r["flagged"] or r["reminded"] or r["waited"]) >= 2 or any(
        r["refused"] for r in results
    ), results
