"""My work's reads: the live tasks of a person's form stages, searched and paged by keyset, and their schemas.

The order is WORK_ORDER: highest priority first, then oldest (ids grow with
creation, so the id order is the age order), as the claim serves them. It is
read from task_claim_idx (stage, priority DESC, id WHERE status IN (pending,
locked)): a page is an index range, never a sort or an OFFSET, and there is
no COUNT. The cursor carries every field of WORK_ORDER (priority may be negative).
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from functools import reduce
from typing import Any

from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast

from tasks_app.limits import NUL
from tasks_app.models import Stage, Task
from tasks_app.schema_rules import schema_for
from tasks_app.values import parse_db_int

WORK_ORDER: tuple[str, ...] = ("-priority", "id")  # every field an integer column: the cursor is their values
PAGE_SIZE = 50
MINE_LIMIT = 100  # the tasks a person has open at once, shown above the queue
MAX_SEARCH = 200  # characters of the search box: a scan of the live tasks' payloads, so a bounded pattern


def search_problem(q: str) -> str | None:
    """What is wrong with a search text (None: nothing), checked before it reaches a query."""
    if NUL in q:  # PostgreSQL text can't hold it: the query would raise, not match nothing
        return "Search text can't contain NUL (\\u0000) characters."
    if len(q) > MAX_SEARCH:
        return f"Search text is at most {MAX_SEARCH} characters (it has {len(q)})."
    return None


def work_queue(stages: list[Stage], q: str = "") -> QuerySet[Task]:
    """The live (pending or locked) tasks of `stages`, matching `q` in their type or payload if given.

    `q` is matched as the task list's free text matches payloads: stored JSON
    text escapes quotes (and, on SQLite, non-ASCII letters), so those forms too.
    """
    qs = Task.objects.filter(stage__in=stages, status__in=[Task.Status.PENDING, Task.Status.LOCKED])
    qs = qs.select_related("stage", "source_stage")
    if q:
        match = Q(type__icontains=q)
        for form in {q, json.dumps(q)[1:-1], json.dumps(q, ensure_ascii=False)[1:-1]}:
            match |= Q(payload_text__icontains=form)
        qs = qs.annotate(payload_text=Cast("payload", TextField())).filter(match)
    return qs


def mine(queue: QuerySet[Task], who: str) -> list[Task]:
    """The tasks of the queue that `who` ("user:<name>") has open, in WORK_ORDER."""
    return list(queue.filter(status=Task.Status.LOCKED, locked_by=who).order_by(*WORK_ORDER)[:MINE_LIMIT])


def waiting(queue: QuerySet[Task], who: str, user_id: int | None = None) -> QuerySet[Task]:
    """The rest of the queue: pending, or open by someone else (and not assigned to `user_id`)."""
    rest = queue.exclude(status=Task.Status.LOCKED, locked_by=who)
    return rest.exclude(assignee_id=user_id) if user_id is not None else rest


def assigned_to(queue: QuerySet[Task], who: str, user_id: int | None) -> list[Task]:
    """Assign (issue 16): the tasks of the queue assigned to `user_id` that they don't have open, in WORK_ORDER
    (My work's "Assigned to me", above the rest; read through task_assignee_idx)."""
    if user_id is None:
        return []
    mine_open = Q(status=Task.Status.LOCKED, locked_by=who)
    return list(queue.filter(assignee_id=user_id).exclude(mine_open).order_by(*WORK_ORDER)[:MINE_LIMIT])


# -- keyset pages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkPage:
    tasks: list[Task]
    next_cursor: str | None  # ?after=...
    previous_cursor: str | None  # ?before=...


def encode_cursor(task: Task) -> str:
    return "|".join(str(getattr(task, field.lstrip("-"))) for field in WORK_ORDER)


def decode_cursor(cursor: str) -> tuple[int, ...]:
    """The WORK_ORDER values a Next/Previous link carries; ValueError with a message for anything else."""
    parts = cursor.split("|")
    if len(parts) != len(WORK_ORDER):
        raise ValueError("Not a page cursor: follow the page's Next or Previous link.")
    return tuple(parse_db_int(part, name="The page cursor") for part in parts)


def _beyond(values: tuple[int, ...], forward: bool) -> Q:
    """Rows after (forward) or before the row with these WORK_ORDER values: a row comparison spelt out."""
    terms = []
    equal: dict[str, int] = {}
    for field, value in zip(WORK_ORDER, values, strict=True):
        name = field.lstrip("-")
        op = "gt" if forward != field.startswith("-") else "lt"
        terms.append(Q(**equal, **{f"{name}__{op}": value}))
        equal[name] = value
    return reduce(operator.or_, terms)


def _reversed(field: str) -> str:
    return field[1:] if field.startswith("-") else f"-{field}"


def work_page(qs: QuerySet[Task], *, after: str = "", before: str = "") -> WorkPage:
    """One page of `qs` in WORK_ORDER after the row `after` names, or before the row `before` names."""
    if before:
        rows = list(
            qs.filter(_beyond(decode_cursor(before), False)).order_by(*map(_reversed, WORK_ORDER))[: PAGE_SIZE + 1]
        )
        more_before = len(rows) > PAGE_SIZE
        tasks = rows[:PAGE_SIZE][::-1]
        return WorkPage(
            tasks,
            encode_cursor(tasks[-1]) if tasks else None,
            encode_cursor(tasks[0]) if more_before else None,
        )
    if after:
        qs = qs.filter(_beyond(decode_cursor(after), True))
    rows = list(qs.order_by(*WORK_ORDER)[: PAGE_SIZE + 1])
    tasks = rows[:PAGE_SIZE]
    return WorkPage(
        tasks,
        encode_cursor(tasks[-1]) if len(rows) > PAGE_SIZE else None,
        encode_cursor(tasks[0]) if after and tasks else None,
    )


# -- what describes a payload -------------------------------------------------------------------


def payload_schema(task: Task, outgoing: list[str]) -> dict[str, Any]:
    """The JSON Schema properties that title a task's payload: its sender's schema for its type, then the
    stage's own form schemas (whose fields the person fills in from the payload). First title wins."""
    found: list[object] = []
    if task.source_stage is not None:
        found.append(schema_for(task.source_stage.schemas, task.type))
    found.extend(schema_for(task.stage.schemas, type) for type in outgoing)
    properties: dict[str, Any] = {}
    for schema in found:
        props = schema.get("properties") if isinstance(schema, dict) else None
        if isinstance(props, dict):
            for name, spec in props.items():
                properties.setdefault(name, spec)
    return {"properties": properties}


def form_stages_for(user: Any) -> QuerySet[Stage]:
    """The form stages `user` may work on: by group; a stage without groups is open to task editors.

    Here, below the services, so that every service that needs the rule (form_stages, assign, decision
    links) reads this one spelling of it.
    """
    stages = Stage.objects.filter(kind=Stage.Kind.FORM)
    if not user.is_authenticated:
        return stages.none()
    if user.is_superuser:
        return stages
    rule = Q(groups__in=user.groups.all())
    if user.has_perm("tasks_app.change_task"):
        rule |= Q(groups__isnull=True)
    return stages.filter(rule).distinct()


def may_work_on(user: Any, stage: Stage) -> bool:
    return form_stages_for(user).filter(pk=stage.pk).exists()
