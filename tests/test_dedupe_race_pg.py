"""Dedupe under concurrency (issue 15), on PostgreSQL with real processes, each with its own connection.

1. Four processes send the same key at the same moment, round after round: each round leaves exactly
   one task, every caller gets its id, one caller created it and the others' arrivals are its
   `deduplicated` events.
2. Three processes keep sending one key while a fourth claims and completes whatever holds it: the
   live task ends between a skipped INSERT and the look-up that follows, which services.dedupe meets
   by inserting again. No caller fails, no arrival is lost (each is a created task or a deduplicated
   event), and every answer is a task with that key.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tasks_app.models import Stage, Task, TaskEvent
from tests.support.processes import ROOT, subprocess_env

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SENDER = """
import json, sys, time
import django
django.setup()
from tasks_app.models import Stage
from tasks_app.services import task_create
stage = Stage.objects.get(slug="dd")
rounds, who, same = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "same"
if not same:  # started and connected: say so, then wait for the common start time
    print("ready", flush=True)
    start = float(sys.stdin.readline())
out = []
for r in range(rounds):
    if not same:
        while time.time() < start + r * 0.3:
            time.sleep(0.0005)
    key = 0 if same else r
    task = task_create(stage=stage, type="t", payload={"k": key, "who": who}, actor=who)
    out.append([key, task.pk, task.deduplicated])
print(json.dumps(out))
"""

COMPLETER = """
import os, sys
import django
django.setup()
from tasks_app.models import Stage
from tasks_app.services import task_claim, task_complete
stage = Stage.objects.get(slug="dd")
done, stop = 0, sys.argv[1]
while not os.path.exists(stop):  # until the senders are done
    for task in task_claim(stage=stage, worker_id="completer", limit=5):
        task_complete(task_id=task.pk, lock_token=task.lock_token)
        done += 1
print(done)
"""


def start(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> Any:
    out, err = proc.communicate(timeout=180)
    out = out.removeprefix("ready\n")
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)


def test_simultaneous_arrivals_of_one_key_make_one_task_and_every_caller_gets_its_id(db: None) -> None:
    stage = Stage.objects.create(slug="dd", name="Dd", handler="tests.handlers.noop", dedupe_on=["/k"])
    rounds, senders = 12, 4
    procs = [start(SENDER, str(rounds), f"p{i}", "timed") for i in range(senders)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "ready\n", proc.communicate(timeout=60)[1][-3000:]
    at = time.time() + 0.3  # every process is connected: round r starts at `at + 0.3 r` in all of them
    for proc in procs:
        proc.stdin.write(f"{at}\n")
        proc.stdin.flush()
    answers = [row for proc in procs for row in finish(proc)]
    assert len(answers) == rounds * senders
    for r in range(rounds):
        got = [(pk, dedup) for key, pk, dedup in answers if key == r]
        tasks = list(Task.objects.filter(stage=stage, payload__k=r))
        assert len(tasks) == 1, f"round {r}: {len(tasks)} tasks"
        assert {pk for pk, _ in got} == {tasks[0].pk}
        assert sorted(dedup for _, dedup in got) == [False] + [True] * (senders - 1)
        events = TaskEvent.objects.filter(task_id=tasks[0].pk, kind=TaskEvent.Kind.DEDUPLICATED).count()
        assert events == senders - 1


def test_arrivals_racing_the_completion_of_the_live_task_are_each_created_or_deduplicated_once(
    db: None, tmp_path: Path
) -> None:
    stage = Stage.objects.create(slug="dd", name="Dd", handler="tests.handlers.noop", dedupe_on=["/k"])
    per_sender, senders = 150, 3
    stop = tmp_path / "senders-done"
    completer = start(COMPLETER, str(stop))
    procs = [start(SENDER, str(per_sender), f"p{i}", "same") for i in range(senders)]
    answers = [row for proc in procs for row in finish(proc)]
    stop.touch()
    out, err = completer.communicate(timeout=180)
    assert completer.returncode == 0, err[-3000:]
    assert len(answers) == per_sender * senders
    created = Task.objects.filter(stage=stage).count()
    dedup_events = TaskEvent.objects.filter(task__stage=stage, kind=TaskEvent.Kind.DEDUPLICATED).count()
    assert created + dedup_events == len(answers)  # every arrival is one or the other, none lost
    assert sum(not dedup for _, _, dedup in answers) == created
    assert Task.objects.filter(stage=stage, status__in=["pending", "locked"]).count() <= 1
    keys = set(Task.objects.filter(pk__in={pk for _, pk, _ in answers}).values_list("dedupe_key", flat=True))
    assert keys == {"[0]"}
    assert created > 1, "the completer never freed the key: the race was not exercised"
