"""Cancelling a task a real worker process holds (issue 15), on whichever database the suite runs on.

The request is stored; the worker's next heartbeat reports it; the handler sees
`task.cancel_requested` and returns early; the completion ends the task cancelled,
and what the handler sent is dropped. A requested task whose worker goes silent is
never taken over by another worker's claim: the expiry sweep cancels it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import task_create
from tasks_app.services.cancel import task_cancel
from tests.support.processes import finish, start_worker, wait_for

Workers = list[subprocess.Popen[str]]
S = Task.Status


def slow_until_cancelled(task: Any) -> None:
    """Work in small steps for up to payload["seconds"], stopping early once a cancel is requested.

    Sends a successor either way (it must be dropped when cancelled), and leaves a file saying
    whether it saw the request, and after how long.
    """
    started = time.monotonic()
    while time.monotonic() - started < float(task.payload["seconds"]) and not task.cancel_requested:
        time.sleep(0.05)
    seen = "saw-cancel" if task.cancel_requested else "ran-out"
    (Path(task.payload["dir"]) / f"{task.id}.{seen}").write_text(f"{time.monotonic() - started:.2f}")
    task.send("next", {"from": task.id})


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("concurrency", ["1", "2"])  # the handler inline (heartbeat thread), or on a slot thread
def test_a_held_task_is_cancelled_when_its_handler_returns_and_sends_nothing(
    workers: Workers, tmp_path: Path, concurrency: str
) -> None:
    stage = Stage.objects.create(
        slug="slow",
        name="Slow",
        kind=Stage.Kind.SCRIPT,
        handler="tests.test_cancel_worker.slow_until_cancelled",
        lock_timeout=2,  # a heartbeat about every second
    )
    after = Stage.objects.create(slug="after", name="After", kind=Stage.Kind.SCRIPT, handler="tests.handlers.noop")
    Transition.objects.create(source=stage, target=after, task_type="next")
    task = task_create(stage=stage, type="t", payload={"seconds": 60, "dir": str(tmp_path)})
    proc = start_worker(
        "--stage", "slow", "--poll-interval", "0.2", "--progress-interval", "0", "--worker-id", "w-c",
        "--concurrency", concurrency,
    )  # fmt: skip
    workers.append(proc)
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=S.LOCKED).exists(), timeout=30, interval=0.02)

    assert task_cancel(task_id=task.pk, actor="user:ann", reason="no longer needed").outcome == "requested"
    # Well before the handler's 60 s: the heartbeat told it, it returned, the completion cancelled the task.
    assert wait_for(lambda: Task.objects.filter(pk=task.pk, status=S.CANCELLED).exists(), timeout=30)
    assert (tmp_path / f"{task.pk}.saw-cancel").exists()
    assert not (tmp_path / f"{task.pk}.ran-out").exists()
    # Its send was dropped: nothing at the next stage, nothing with it as parent.
    assert Task.objects.filter(stage=after).count() == 0
    assert Task.objects.filter(parent_id=task.pk).count() == 0

    proc.send_signal(signal.SIGTERM)
    out = finish(proc, 30)
    assert proc.returncode == 0, out
    history = list(TaskEvent.objects.filter(task_id=task.pk).order_by("id").values_list("kind", "actor"))
    kinds = [kind for kind, _ in history]
    assert kinds[0] == "created" and kinds[-1] == "cancelled"
    assert ("cancel_requested", "user:ann") in history
    assert kinds.count("cancelled") == 1 and "completed" not in kinds
    ended = TaskEvent.objects.get(task_id=task.pk, kind=TaskEvent.Kind.CANCELLED)
    assert (ended.actor, ended.details["worker"], ended.details["sent"]) == ("w-c", "w-c", [])
    assert ended.details["dropped"] == ["next"]
    # The heartbeat that reported the request came after it.
    requested = TaskEvent.objects.get(task_id=task.pk, kind=TaskEvent.Kind.CANCEL_REQUESTED)
    assert TaskEvent.objects.filter(task_id=task.pk, kind="lock_extended", id__gt=requested.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_worker_never_takes_over_the_expired_lock_of_a_requested_task(workers: Workers, tmp_path: Path) -> None:
    """A requested task whose worker went silent is the expiry sweep's to cancel: a live worker's claim, which
    takes over the other expired lock beside it, leaves it alone, and its handler never runs again."""
    stage = Stage.objects.create(
        slug="slow", name="Slow", kind=Stage.Kind.SCRIPT, handler="tests.test_cancel_worker.slow_until_cancelled"
    )
    after = Stage.objects.create(slug="after", name="After", kind=Stage.Kind.SCRIPT, handler="tests.handlers.noop")
    Transition.objects.create(source=stage, target=after, task_type="next")

    def arrive() -> Task:
        return task_create(stage=stage, type="t", payload={"seconds": 0, "dir": str(tmp_path)})

    # No sweep but the one at start: only the worker's claim can touch the expired locks below.
    env = {"TASKS_EXPIRE_INTERVAL": "600"}
    proc = start_worker("--stage", "slow", "--poll-interval", "0.1", "--worker-id", "w-live", env=env)
    workers.append(proc)
    warmup = arrive()
    assert wait_for(lambda: Task.objects.filter(pk=warmup.pk, status=S.COMPLETED).exists(), timeout=30)
    # Two tasks a silent worker holds, their locks about to run out; a cancel is requested for one.
    until = timezone.now() + timedelta(seconds=1)
    requested, plain = (
        Task.objects.create(
            stage=stage, type="t", payload={"seconds": 0, "dir": str(tmp_path)}, status=S.LOCKED,
            lock_token=f"{n}" * 32, locked_by="w-gone", locked_at=timezone.now(), locked_until=until, attempts=1,
        )
        for n in (1, 2)
    )  # fmt: skip
    task_cancel(task_id=requested.pk, actor="user:ann", reason="stop")
    # Both locks run out; the live worker takes over the plain one (and runs it) ...
    assert wait_for(lambda: Task.objects.filter(pk=plain.pk, status=S.COMPLETED).exists(), timeout=30)
    reclaimed = TaskEvent.objects.get(task_id=plain.pk, kind=TaskEvent.Kind.LOCK_EXPIRED)
    assert (reclaimed.actor, reclaimed.details["now"]) == ("w-live", "reclaimed")
    time.sleep(1)  # ... and more claim passes (every 0.1 s) leave the requested one alone
    row = Task.objects.get(pk=requested.pk)
    assert (row.status, row.locked_by, row.attempts) == (S.LOCKED, "w-gone", 1)
    assert not list(tmp_path.glob(f"{requested.pk}.*"))  # its handler never ran again
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    # The sweep of the next worker that starts cancels it.
    workers.append(start_worker("--stage", "slow", "--poll-interval", "0.1", "--worker-id", "w-next"))
    assert wait_for(lambda: Task.objects.filter(pk=requested.pk, status=S.CANCELLED).exists(), timeout=30)
    history = TaskEvent.objects.filter(task_id=requested.pk).order_by("id").values_list("kind", flat=True)
    assert list(history) == ["cancel_requested", "lock_expired", "cancelled"]
    assert not list(tmp_path.glob(f"{requested.pk}.*"))
    assert not Task.objects.filter(parent_id=requested.pk).exists()
