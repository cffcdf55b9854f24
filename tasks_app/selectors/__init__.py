"""Reads that more than one interface needs (pages, API, /metrics, health, benchmarks).

Selectors only read: every write is a service (tasks_app.services). A view,
an API view or a command that needs the same rows as another imports them
from here, never from another view.

- tasks.py: the task list's filters and its keyset pages (list page, rows refresh, bulk actions).
- overview.py: tasks per stage and status: live counts (exact, with the pending tasks waiting to retry),
  finished counts (sampled on big PostgreSQL tables), throughput, the per-stage attempt counters;
  the overview, the stage page, /metrics and /api/health/ read them.
- workers.py: the worker processes alive now.
- stages.py: what deleting stages would take with them (the admin's confirmation page); the stage page's
  live counts, recent errors grouped by message (bounded windows), a job's next due time and last runs.
- work.py: My work's queue (a person's form stages, searched), its keyset pages in WORK_ORDER, and the
  schema properties that title a task's payload.
"""

from __future__ import annotations
