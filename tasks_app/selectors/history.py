"""A task's history as its page shows it: the events, with each claim put back in its place.

A claim writes no event (services.events): the event that ends it carries
its facts (worker, claimed_at, attempt, reclaimed_from), and the claim a
locked task holds now is on the row (locked_by, locked_at, reclaimed_from).
The timeline shows each as a `claimed` entry at its time, so a task reads as
it did when claims had their own row (and as the tasks whose history
migration 0011 rewrote).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils.dateparse import parse_datetime

from tasks_app.models import Task, TaskEvent
from tasks_app.services.events import CLAIMED_AT


@dataclass
class Timeline:
    entries: list[TaskEvent]  # oldest first; the derived claims are unsaved TaskEvents (kind "claimed")
    earlier: int  # events before the first one shown


def task_timeline(task: Task, *, limit: int) -> Timeline:
    """The latest `limit` events of `task` with the claims they end, and its live claim, in time order."""
    events = list(task.events.order_by("-id")[:limit])[::-1]
    earlier = task.events.count() - len(events) if len(events) == limit else 0
    entries: list[TaskEvent] = []
    for event in events:
        details = event.details if isinstance(event.details, dict) else {}
        claimed_at = _parsed(details.get(CLAIMED_AT))
        if claimed_at is not None:
            claim = _claim(task.pk, claimed_at, details.get("worker") or "", details)
            entries.insert(_place(entries, claimed_at), claim)
        entries.append(event)
    if task.status == Task.Status.LOCKED and task.locked_at is not None:
        facts = {"attempt": task.attempts, "reclaimed_from": task.reclaimed_from or None}
        entries.insert(_place(entries, task.locked_at), _claim(task.pk, task.locked_at, task.locked_by, facts))
    return Timeline(entries=entries, earlier=earlier)


def _claim(task_id: int, at: datetime, worker: str, facts: dict[str, Any]) -> TaskEvent:
    details = {"attempt": facts.get("attempt"), "reclaimed_from": facts.get("reclaimed_from")}
    return TaskEvent(task_id=task_id, kind=TaskEvent.Kind.CLAIMED, at=at, actor=worker, details=details)


# What can happen to a task while it is claimed, so may come between a claim and the event that ends it.
DURING_A_CLAIM = {TaskEvent.Kind.LOCK_EXTENDED, TaskEvent.Kind.DUPLICATED, TaskEvent.Kind.DEDUPLICATED}


def _place(entries: list[TaskEvent], at: datetime) -> int:
    """Where a claim made at `at` goes among the entries so far: before the ones of its own time
    (heartbeats, later than `at`), after everything else.

    Only those kinds are passed over, so clocks that disagree between machines
    can't move a claim before the event that made the task claimable.
    """
    i = len(entries)
    while i > 0 and entries[i - 1].kind in DURING_A_CLAIM and entries[i - 1].at > at:
        i -= 1
    return i


def _parsed(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_datetime(value)
    except ValueError:
        return None
