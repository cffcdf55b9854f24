"""The API's answer to an arrival (create, bulk, stage send, complete): the tasks, each flagged `deduplicated`.

A duplicate arrival (issue 15, services.dedupe) returns the live task holding its dedupe key; the answer
says so per task, and the status is 201 when the request created something, 200 when it created nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rest_framework import status

from tasks_app.models import Task
from tasks_app.serializers import TaskSerializer


def arrivals_data(arrived: Sequence[Task]) -> list[dict[str, Any]]:
    """One serialized task per arrival, in order, read fresh (one query), with its `deduplicated` flag."""
    fresh = Task.objects.select_related("stage", "source_stage").in_bulk([t.pk for t in arrived])
    out = []
    for t in arrived:
        task = fresh[t.pk]
        task.deduplicated = t.deduplicated
        out.append(dict(TaskSerializer(task).data))
    return out


def arrival_status(arrived: Sequence[Task]) -> int:
    """201 if the request created a task, 200 if every arrival found a live task (or there were none)."""
    return status.HTTP_201_CREATED if any(not t.deduplicated for t in arrived) else status.HTTP_200_OK
