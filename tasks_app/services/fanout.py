"""Fan-outs (issue 15, join stages): which tasks were created together, so that a join stage can meet them again.

What a fan-out is, precisely:

- A *sender* is one completion of one task (whatever it sends: a handler's
  `task.send()` calls, a person's decision, an API completion, a wait-limit
  or join timeout), or one `tasks_send_many` call with no sending task (an
  API stage send, a hook, a job run).
- When a sender creates two or more tasks, across all its sends and all the
  transitions each send takes, those tasks are a fan-out: each gets
  `fanout_id` = the sending task's id (with no sending task, a negative random
  number) and `fanout_size` = how many it created.
- A sender that creates exactly one task passes its own fan-out on (a 1-to-1
  send): the siblings keep their fan-out through any number of intermediate
  stages until they reach a join stage.
- A task in a fan-out that sends two or more makes a new, nested fan-out: its
  tasks carry the new one; the merged task of a join of that inner fan-out
  gets the outer fan-out back (services.join), so joins nest.
- A task that sends nothing ends its branch: a join waiting for it waits until
  its timeout (or for ever without one, shown on the stage page).

The 1-to-1 inheritance reads the sender's fan-out (one query per batch of
completions). It is skipped while no join stage exists, checked every
JOIN_STAGES_TTL seconds (and at once in this process when a stage is saved):
a workflow without join stages pays nothing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from django.db.models.signals import post_delete, post_save

from tasks_app.models import Stage, Task, Transition

JOIN_STAGES_TTL = 2.0  # seconds a "does any join stage exist?" answer is reused

_join_stages: dict[str, Any] = {"at": float("-inf"), "exist": False}


def join_stages_exist() -> bool:
    """Whether any join stage exists (cached JOIN_STAGES_TTL s per process)."""
    now = time.monotonic()
    if now - _join_stages["at"] >= JOIN_STAGES_TTL:
        _join_stages["exist"] = Stage.objects.filter(kind=Stage.Kind.JOIN).exists()
        _join_stages["at"] = now
    return bool(_join_stages["exist"])


def _forget(**_: Any) -> None:
    _join_stages["at"] = float("-inf")


post_save.connect(_forget, sender=Stage, dispatch_uid="fanout_join_stages_saved")
post_delete.connect(_forget, sender=Stage, dispatch_uid="fanout_join_stages_deleted")


def parentless_fanout_id() -> int:
    """The id of a fan-out no task sent: negative, so it never equals a task id."""
    return -1 - secrets.randbelow(2**62)


def mark_fanout(
    tasks: Sequence[Task], *, parent: Task | None, size: int | None = None, fanout_id: int | None = None
) -> None:
    """Set the fan-out fields on unsaved tasks one sender creates (`size`: all it creates, default len(tasks)).

    A sender with no sending task whose tasks are made in several calls (one per send) gives the one
    `fanout_id` it drew for all of them; without it each call draws its own.
    """
    size = len(tasks) if size is None else size
    if not tasks:
        return
    fanout_size: int | None
    if size >= 2:
        if parent is not None:
            fanout_id = parent.pk
        elif fanout_id is None:
            fanout_id = parentless_fanout_id()
        fanout_size = size
    elif parent is not None and join_stages_exist():
        fanout_id, fanout_size = parent.fanout_id, parent.fanout_size
    else:
        return
    for task in tasks:
        task.fanout_id, task.fanout_size = fanout_id, fanout_size


def mark_fanouts(children: Mapping[int, Sequence[Task]]) -> None:
    """Set the fan-out fields on the unsaved successors of a batch of completions (parent id -> its tasks)."""
    single = [parent_id for parent_id, kids in children.items() if len(kids) == 1]
    inherited: dict[int, tuple[int | None, int | None]] = {}
    if single and join_stages_exist():
        rows = Task.objects.filter(pk__in=single, fanout_id__isnull=False).values_list("id", "fanout_id", "fanout_size")
        inherited = {row[0]: (row[1], row[2]) for row in rows}
    for parent_id, kids in children.items():
        if len(kids) >= 2:
            fanout: tuple[int | None, int | None] = (parent_id, len(kids))
        elif parent_id in inherited:
            fanout = inherited[parent_id]
        else:
            continue
        for kid in kids:
            kid.fanout_id, kid.fanout_size = fanout


def fanout_total(stage: Stage, types: Sequence[str]) -> int:
    """How many tasks sending `types` out of `stage` creates: one per transition passing each type."""
    transitions = list(Transition.objects.filter(source=stage))
    return sum(1 for type in types for t in transitions if t.accepts(type))
