"""The worker registry: each run_worker process records itself and reports in."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime

from django.utils import timezone

from tasks_app.models import WorkerProcess


def worker_register(
    *, worker_id: str, stages: Sequence[str], concurrency: int, now: datetime | None = None
) -> WorkerProcess:
    """Record a starting worker (a reused id takes the row over)."""
    now = now or timezone.now()
    worker, _ = WorkerProcess.objects.update_or_create(
        worker_id=worker_id,
        defaults={
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "stages": list(stages),
            "concurrency": concurrency,
            "started_at": now,
            "last_heartbeat": now,
            "stopped_at": None,
            "tasks_done": 0,
            "tasks_failed": 0,
            "current_tasks": [],
        },
    )
    return worker


def worker_heartbeat(
    *, worker_id: str, done: int, failed: int, current: Sequence[int], now: datetime | None = None
) -> None:
    """Report a live worker's counters and held tasks."""
    WorkerProcess.objects.filter(worker_id=worker_id).update(
        last_heartbeat=now or timezone.now(), tasks_done=done, tasks_failed=failed, current_tasks=list(current)
    )


def worker_stopped(*, worker_id: str, done: int, failed: int, now: datetime | None = None) -> None:
    """Record a clean exit."""
    now = now or timezone.now()
    WorkerProcess.objects.filter(worker_id=worker_id).update(
        last_heartbeat=now, stopped_at=now, tasks_done=done, tasks_failed=failed, current_tasks=[]
    )
