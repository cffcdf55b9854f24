"""The task list's reads: its filters (shared by the list page, its refresh and the bulk actions) and keyset pages."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import QueryDict

from tasks_app.filters import TaskFilter
from tasks_app.limits import NUL
from tasks_app.models import Task
from tasks_app.values import parse_db_datetime, parse_db_int

PAGE_SIZE = 50
SORTS: dict[str, tuple[str, ...]] = {
    "-id": ("-id",),
    "id": ("id",),
    "-created_at": ("-created_at", "-id"),
    "created_at": ("created_at", "id"),
    "-updated_at": ("-updated_at", "-id"),
    "updated_at": ("updated_at", "id"),
}


def filtered_tasks(params: QueryDict) -> tuple[TaskFilter, QuerySet[Task], dict[str, list[str]]]:
    """The task list's filters (from its query string), shared by the list page and the bulk actions.

    Also returns what is wrong with the query string (field -> messages): with
    errors it matches no task, never all of them.
    """
    task_filter = TaskFilter(params, queryset=Task.objects.select_related("stage", "source_stage"))
    errors = {field: list(messages) for field, messages in task_filter.errors.items()}
    q = params.get("q", "").strip()
    if NUL in q:  # PostgreSQL text can't hold it: the query would raise, not match nothing
        errors["q"] = ["Text can't contain NUL (\\u0000) characters."]
    if errors:
        return task_filter, Task.objects.none(), errors
    qs = task_filter.qs
    if q:
        # Free text over type, last error and payload (a scan: narrow with other filters first on big
        # tables). The last error is a plain text column next to the payload's cast, so it adds little.
        # Stored JSON text escapes quotes (and, on SQLite, non-ASCII letters): match those forms too.
        forms = {q, json.dumps(q)[1:-1], json.dumps(q, ensure_ascii=False)[1:-1]}
        text_match = Q(type__icontains=q) | Q(last_error__icontains=q)
        for form in forms:
            text_match |= Q(payload_text__icontains=form)
        qs = qs.annotate(payload_text=Cast("payload", TextField())).filter(text_match)
    return task_filter, qs, errors


def errors_text(errors: dict[str, list[str]]) -> str:
    """filtered_tasks' errors as plain text, one line per field (the 400 bodies that are not a page)."""
    return "\n".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())


Cursor = tuple[int | datetime, int]


def decode_cursor(sort: str, cursor: str) -> Cursor | None:
    """The (sort value, id) of the row a page ended on, from its Next link's "value|id".

    The one parser of page cursors: anything but what encode_cursor makes (an
    id or a date-time, then an id, each one the databases can compare) is a
    ValueError with a message, never a query that overflows or a silent first page.
    """
    if not cursor:
        return None
    raw_value, sep, raw_id = cursor.rpartition("|")
    if not sep:
        raise ValueError("Not a page cursor: follow the list's Next page link, or leave cursor out.")
    last_id = parse_db_int(raw_id, name="The cursor's id")
    if SORTS[sort][0].lstrip("-") == "id":
        return parse_db_int(raw_value, name="The cursor's id"), last_id
    return parse_db_datetime(raw_value, name="The cursor's date-time"), last_id


def encode_cursor(sort: str, row: Task) -> str:
    value: Any = getattr(row, SORTS[sort][0].lstrip("-"))
    return f"{value.isoformat() if isinstance(value, datetime) else value}|{row.pk}"


def keyset_page(qs: QuerySet[Task], sort: str, after: Cursor | None) -> tuple[list[Task], str | None]:
    """One page after the row `after` names, by index order: no OFFSET, no COUNT(*)."""
    fields = SORTS[sort]
    qs = qs.order_by(*fields)
    if after is not None:
        value, last_id = after
        field = fields[0].lstrip("-")
        op = "lt" if fields[0].startswith("-") else "gt"
        if field == "id":
            qs = qs.filter(**{f"id__{op}": last_id})
        else:
            qs = qs.filter(Q(**{f"{field}__{op}": value}) | Q(**{field: value, f"id__{op}": last_id}))
    rows = list(qs[: PAGE_SIZE + 1])
    next_cursor = encode_cursor(sort, rows[PAGE_SIZE - 1]) if len(rows) > PAGE_SIZE else None
    return rows[:PAGE_SIZE], next_cursor
