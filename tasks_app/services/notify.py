"""Wake idle workers when tasks become claimable (PostgreSQL LISTEN/NOTIFY).

A NOTIFY sent inside a transaction is delivered when it commits, and not at
all if it rolls back, so workers never wake for rows they can't see yet.
At most one notification per stage per TASKS_NOTIFY_THROTTLE seconds leaves
a process: a burst of sends wakes a worker once, and the worker then drains
everything. Polling stays the fallback for the rare wake-up this skips.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from django.conf import settings
from django.db import connection

CHANNEL = "tasks_app_stage"

_last_sent: dict[int, float] = {}
_lock = threading.Lock()


def notify_stages(stage_ids: Iterable[int]) -> None:
    """Tell listening workers that tasks are waiting at these stages."""
    if connection.vendor != "postgresql" or not settings.TASKS_NOTIFY:
        return
    now = time.monotonic()
    throttle = float(settings.TASKS_NOTIFY_THROTTLE)
    due = []
    with _lock:
        for stage_id in set(stage_ids):
            if now - _last_sent.get(stage_id, float("-inf")) >= throttle:
                _last_sent[stage_id] = now
                due.append(stage_id)
    if due:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_notify(%s, s::text) FROM unnest(%s::bigint[]) AS s",
                [CHANNEL, sorted(due)],
            )
