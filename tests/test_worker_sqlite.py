"""Several worker processes draining one stage, on whichever database the suite runs on.

On SQLite there are no row locks: claims are serialised by BEGIN IMMEDIATE
(see services.claim), so this is the test that the serialisation holds
across processes. On PostgreSQL it runs too, with SKIP LOCKED doing the work.
"""

from __future__ import annotations

import subprocess

import pytest
from django.db.models import Count
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tests.support.processes import start_worker

Workers = list[subprocess.Popen[str]]


@pytest.mark.django_db(transaction=True)
def test_three_once_workers_complete_every_task_exactly_once(workers: Workers) -> None:
    stage = Stage.objects.create(slug="drain", name="Drain", kind=Stage.Kind.SCRIPT, handler="tests.handlers.noop")
    now = timezone.now()
    Task.objects.bulk_create(
        [
            Task(stage=stage, type="bulk", payload={"n": n}, created_at=now, updated_at=now, available_at=now)
            for n in range(300)
        ]
    )
    ids = set(Task.objects.filter(stage=stage).values_list("id", flat=True))
    assert len(ids) == 300

    worker_ids = [f"sqlite-drainer-{n}" for n in range(3)]
    # Start all three before waiting on any, so that they compete for the same rows; small
    # batches make many claims, so that their claims interleave (usually; it is not asserted).
    for wid in worker_ids:
        workers.append(
            start_worker(
                "--stage", "drain", "--once", "--batch-size", "2", "--progress-interval", "0", "--worker-id", wid
            )
        )
    outputs = [p.communicate(timeout=120)[0] or "" for p in workers]
    for p, out in zip(workers, outputs, strict=True):
        assert p.returncode == 0, out

    assert not Task.objects.filter(stage=stage).exclude(status=Task.Status.COMPLETED).exists()
    per_task = dict(
        TaskEvent.objects.filter(kind=TaskEvent.Kind.COMPLETED)
        .values("task_id")
        .annotate(n=Count("id"))
        .values_list("task_id", "n")
    )
    # A task claimed by two workers at once would be completed twice (or lost: a gap).
    assert set(per_task) == ids
    assert set(per_task.values()) == {1}
    # Each task was claimed once, in one attempt, by one of our workers.
    assert not Task.objects.filter(stage=stage).exclude(attempts=1).exists()
    # ... and no claim ended but the one that completed it (no lock expired, nothing released).
    assert not TaskEvent.objects.exclude(kind__in=[TaskEvent.Kind.CREATED, TaskEvent.Kind.COMPLETED]).exists()
    ends = TaskEvent.objects.filter(kind=TaskEvent.Kind.COMPLETED).values_list("actor", "details")
    assert all((d["attempt"], d["worker"], d["reclaimed_from"]) == (1, actor, None) for actor, d in ends)
    actors = set(TaskEvent.objects.filter(kind=TaskEvent.Kind.COMPLETED).values_list("actor", flat=True))
    assert actors <= set(worker_ids)
