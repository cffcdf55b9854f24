"""Join stages under concurrency (PostgreSQL): each group completes exactly once, however many workers pass.

Real worker processes (`manage.py run_worker`) complete the fanned-out siblings concurrently and run the
join passes; threads race the pass itself. Committed data (transaction=True), deselected on SQLite.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from typing import Any

import pytest
from django.db import close_old_connections, connection, transaction
from django.db.models import Count

from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import task_create
from tasks_app.services.join import tasks_join_pass
from tests.support.processes import finish, start_worker, wait_for
from tests.support.threads import run_at_once

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

Workers = list[subprocess.Popen[str]]


# -- handlers (run by the worker processes) ----------------------------------------------------------------


def fan_out(task: Any) -> None:
    for i in range(task.payload["n"]):
        task.send("part", {"root": task.payload["root"], "i": i})


def step(task: Any) -> None:
    time.sleep(random.uniform(0, 0.004))  # siblings finish in a shuffled order, on different workers
    task.send("part", {**task.payload, "by": task.id})


# -- helpers ----------------------------------------------------------------------------------------------


def stage(slug: str, kind: str = Stage.Kind.SCRIPT, **fields: Any) -> Stage:
    return Stage.objects.create(slug=slug, name=slug.title(), kind=kind, **fields)


def fan_in() -> dict[str, Stage]:
    w = {
        "start": stage("start", handler="tests.test_join_race_pg.fan_out"),
        "mid": stage("mid", handler="tests.test_join_race_pg.step"),
        "gather": stage("gather", Stage.Kind.JOIN, join_rule="siblings"),
        "sink": stage("sink", Stage.Kind.FORM),
    }
    for source, target in [("start", "mid"), ("mid", "gather"), ("gather", "sink")]:
        Transition.objects.create(source=w[source], target=w[target])
    return w


def stop(workers: Workers) -> list[str]:
    for p in workers:
        p.send_signal(signal.SIGTERM)
    return [finish(p, timeout=60) for p in workers]


# -- worker processes -------------------------------------------------------------------------------------


def test_three_workers_join_every_fan_out_exactly_once(workers: Workers) -> None:
    w = fan_in()
    sizes = {root: 3 + root % 4 for root in range(40)}  # fan-outs of 3 to 6
    roots = {r: task_create(stage=w["start"], type="go", payload={"n": n, "root": r}) for r, n in sizes.items()}
    worker_ids = [f"joiner-{n}" for n in range(3)]
    for wid in worker_ids:
        workers.append(start_worker("--batch-size", "2", "--poll-interval", "0.2", "--worker-id", wid))

    def all_joined() -> bool:
        waiting = Task.objects.filter(stage__in=[w["start"], w["mid"], w["gather"]], status__in=["pending", "locked"])
        return Task.objects.filter(stage=w["sink"]).count() >= len(sizes) and not waiting.exists()

    done = wait_for(all_joined, timeout=120, interval=0.2)
    time.sleep(1.5)  # a join pass that would join a group twice has had its chance
    outputs = stop(workers)
    assert done, outputs
    for p, out in zip(workers, outputs, strict=True):
        assert p.returncode == 0, out

    # One merged task per fan-out, keyed by the task that fanned out, with every sibling's part.
    merged = list(Task.objects.filter(stage=w["sink"]))
    assert sorted(t.payload["key"] for t in merged) == sorted(t.pk for t in roots.values())
    for task in merged:
        root = next(r for r, t in roots.items() if t.pk == task.payload["key"])
        assert sorted(p["i"] for p in task.payload["parts"]) == list(range(sizes[root]))
        assert {p["root"] for p in task.payload["parts"]} == {root}
    # Every arrival completed once, by one join; no arrival left behind or joined twice.
    arrivals = Task.objects.filter(stage=w["gather"])
    assert arrivals.count() == sum(sizes.values())
    assert not arrivals.exclude(status=Task.Status.COMPLETED).exists()
    ends = TaskEvent.objects.filter(task__stage=w["gather"], kind=TaskEvent.Kind.COMPLETED)
    per_task = dict(ends.values("task_id").annotate(n=Count("id")).values_list("task_id", "n"))
    assert len(per_task) == arrivals.count() and set(per_task.values()) == {1}
    joined = TaskEvent.objects.filter(kind=TaskEvent.Kind.JOINED)
    assert joined.count() == len(sizes)
    assert set(joined.values_list("actor", flat=True)) <= set(worker_ids)  # the workers' passes joined them
    # The siblings were completed by several workers, concurrently.
    mids = TaskEvent.objects.filter(task__stage=w["mid"], kind=TaskEvent.Kind.COMPLETED)
    assert len(set(mids.values_list("actor", flat=True))) >= 2


# -- the pass itself, raced --------------------------------------------------------------------------------


def test_two_passes_at_once_join_each_group_once(db: None) -> None:
    gather = stage("gather", Stage.Kind.JOIN, join_rule="count", join_key="/g", join_count=3)
    sink = stage("sink", Stage.Kind.FORM)
    Transition.objects.create(source=gather, target=sink)
    for g in range(60):
        for _ in range(3):
            task_create(stage=gather, type="t", payload={"g": g})

    def passes() -> None:
        for _ in range(200):  # small passes, over and over, until one finds nothing left
            result = tasks_join_pass(gather, max_groups=4)
            if result is not None and not result.joined and not result.backlog:
                break

    errors = run_at_once(passes)
    close_old_connections()

    assert not errors
    keys = sorted(t.payload["key"] for t in Task.objects.filter(stage=sink))
    assert keys == list(range(60))  # each group once
    assert not Task.objects.filter(stage=gather).exclude(status=Task.Status.COMPLETED).exists()
    assert TaskEvent.objects.filter(kind=TaskEvent.Kind.JOINED).count() == 60


def test_a_pass_skips_a_stage_another_pass_holds(db: None) -> None:
    gather = stage("gather", Stage.Kind.JOIN, join_rule="count", join_count=1)
    Transition.objects.create(source=gather, target=stage("sink", Stage.Kind.FORM))
    task_create(stage=gather, type="t", payload={})
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                Stage.objects.select_for_update(no_key=True).filter(pk=gather.pk).first()
                holding.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        assert tasks_join_pass(gather) is None  # skipped, not waiting
        assert Task.objects.get(stage=gather).status == Task.Status.PENDING
    finally:
        release.set()
        holder.join(30)
    assert tasks_join_pass(gather).joined == 1
