"""Worker processes: which are alive (the overview, /metrics, /api/health/ and the workers page agree)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from tasks_app.models import WorkerProcess


def live_workers(now: datetime | None = None) -> QuerySet[WorkerProcess]:
    """Running and heard from within TASKS_WORKER_DEAD_AFTER seconds (WorkerProcess.is_alive, as a query)."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.TASKS_WORKER_DEAD_AFTER)
    return WorkerProcess.objects.filter(stopped_at__isnull=True, last_heartbeat__gte=cutoff)


def recent_workers(limit: int = 200) -> list[WorkerProcess]:
    """The workers page: the most recently heard-from processes, stopped ones too."""
    return list(WorkerProcess.objects.order_by("-last_heartbeat")[:limit])
