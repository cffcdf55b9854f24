"""The worker registry: each run_worker process records itself and reports in.

The row also carries the worker's duration histograms (services.histograms):
recording starts at registration and every report writes the cumulative
snapshot, so /metrics can add up all workers, stopped ones included.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.utils import timezone

from tasks_app.models import WorkerProcess
from tasks_app.services import histograms


def worker_register(
    *, worker_id: str, stages: Sequence[str], concurrency: int, now: datetime | None = None
) -> WorkerProcess:
    """Record a starting worker (a reused id takes the row over) and start recording its histograms."""
    now = now or timezone.now()
    # A reused id (a fixed --worker-id across restarts) goes on from its row's
    # histograms: starting again from zero would make /metrics' sums drop.
    previous = WorkerProcess.objects.filter(worker_id=worker_id).values_list("metrics", flat=True).first()
    histograms.worker_opened(worker_id, previous)
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
            "tasks_released": 0,
            "current_tasks": [],
            "metrics": histograms.snapshot(worker_id),
        },
    )
    return worker


def _with_metrics(worker_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    snapshot = histograms.snapshot(worker_id)
    if snapshot is not None:  # recorded in this process (not, say, a test calling the service directly)
        fields["metrics"] = snapshot
    return fields


def worker_heartbeat(
    *,
    worker_id: str,
    done: int,
    failed: int,
    current: Sequence[int],
    released: int = 0,
    now: datetime | None = None,
) -> None:
    """Report a live worker's counters, held tasks and histograms."""
    fields = {
        "last_heartbeat": now or timezone.now(),
        "tasks_done": done,
        "tasks_failed": failed,
        "tasks_released": released,
    }
    WorkerProcess.objects.filter(worker_id=worker_id).update(
        **_with_metrics(worker_id, {**fields, "current_tasks": list(current)})
    )


def worker_stopped(*, worker_id: str, done: int, failed: int, released: int = 0, now: datetime | None = None) -> None:
    """Record a clean exit, with the final histograms, and stop recording them."""
    now = now or timezone.now()
    fields = {
        "last_heartbeat": now,
        "stopped_at": now,
        "tasks_done": done,
        "tasks_failed": failed,
        "tasks_released": released,
        "current_tasks": [],
    }
    WorkerProcess.objects.filter(worker_id=worker_id).update(**_with_metrics(worker_id, fields))
    histograms.worker_closed(worker_id)
