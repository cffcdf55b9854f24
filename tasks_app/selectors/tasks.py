"""The task list's reads: its filters (shared by the list page, its refresh and the bulk actions) and keyset pages."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q, QuerySet, TextField
from django.db.models.functions import Cast, Coalesce
from django.http import QueryDict

from tasks_app.filters import TaskFilter
from tasks_app.limits import NUL
from tasks_app.models import FINISHED, LIVE, Task
from tasks_app.payload_query import split_shorthand
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
# Free text and payload lookups are served by no index (a trigram or jsonb GIN index would take entries
# from every claim and completion): the list searches this many ids per request, newest first, says
# which, and links to the range below. A scan of 40,000 rows' payload text that matches nothing is ~0.25 s on
# PostgreSQL at a million tasks (50,000: 306 ms, bench/pages.py "lookup free text (no match)").
SEARCH_RANGE = 40_000
# A bare number (or #number) typed as text is a task id: free text for "42" matches every payload
# with a 42 anywhere in it, which is noise, never the task.
TASK_ID = re.compile(r"#?\s*(\d+)")
# Sorted by updated_at, finished and live tasks are read apart, each side walking its own partial index
# (task_finished_updated_idx, task_live_updated_idx), and merged.


@dataclass(frozen=True)
class SearchRange:
    """The ids a free-text or payload search read: low..high, newest first."""

    low: int
    high: int
    newest: bool  # the newest range (no `below` given)
    older_below: int | None  # the `below` of the next range down; None when no older task is left

    @property
    def text(self) -> str:
        return f"#{self.low:,}–#{self.high:,}"

    @property
    def size_text(self) -> str:
        return f"{SEARCH_RANGE:,}"


@dataclass
class TaskSearch:
    filter: TaskFilter
    qs: QuerySet[Task]
    errors: dict[str, list[str]]
    searched: SearchRange | None = None  # set when free text or a payload lookup was bounded to a range
    task_id: int | None = None  # set when the text was a task id
    statuses: list[str] = field(default_factory=list)  # the status filter's values (empty: any)


def task_search(params: QueryDict) -> TaskSearch:
    """The task list's filters (from its query string), shared by the list page and the bulk actions.

    Also returns what is wrong with the query string (field -> messages): with
    errors it matches no task, never all of them.
    """
    task_filter = TaskFilter(params, queryset=Task.objects.select_related("stage", "source_stage"))
    errors = {name: list(messages) for name, messages in task_filter.errors.items()}
    q = params.get("q", "").strip()
    if NUL in q:  # PostgreSQL text can't hold it: the query would raise, not match nothing
        errors["q"] = ["Text can't contain NUL (\\u0000) characters."]
    below: int | None = None
    raw_below = str(params.get("below", "")).strip()
    if raw_below:
        try:
            below = parse_db_int(raw_below, name="below")
        except ValueError as exc:
            errors["below"] = [str(exc)]
    if errors:
        return TaskSearch(task_filter, Task.objects.none(), errors)
    qs = task_filter.qs
    statuses = list(task_filter.form.cleaned_data.get("status") or [])
    if not statuses and task_filter.form.cleaned_data.get("scheduled") == "true":
        statuses = [Task.Status.PENDING]  # only pending tasks are scheduled: read them as the live set
    search = TaskSearch(task_filter, qs, errors, statuses=statuses)
    id_match = TASK_ID.fullmatch(q)
    if id_match:
        try:
            search.task_id = parse_db_int(id_match.group(1), name="The task id")
        except ValueError:
            search.qs = Task.objects.none()  # beyond any id: no such task
            return search
        search.qs = qs.filter(pk=search.task_id)
        return search
    if q:
        # Free text over type, last error and payload. The last error is a plain text column next to the
        # payload's cast, so it adds little. Stored JSON text escapes quotes (and, on SQLite, non-ASCII
        # letters): match those forms too.
        forms = {q, json.dumps(q)[1:-1], json.dumps(q, ensure_ascii=False)[1:-1]}
        text_match = Q(type__icontains=q) | Q(last_error__icontains=q)
        for form in forms:
            text_match |= Q(payload_text__icontains=form)
        qs = qs.annotate(payload_text=Cast("payload", TextField())).filter(text_match)
    if q or task_filter.form.cleaned_data.get("payload"):
        search.searched = search_range(below)
        if search.searched is None:
            qs = qs.none()
        else:
            qs = qs.filter(id__gte=search.searched.low, id__lte=search.searched.high)
    search.qs = qs
    return search


def lookup_kind(text: str) -> tuple[str, Any]:
    """What the lookup box's text asks for: ("id", n), ("payload", text), ("text", text) or ("empty", "").

    `123` or `#123` is a task id; `key:value`, `a.b:value`, `key=value` or a JSON object is a payload
    lookup (payload_query says what matches); anything else is free text. A colon followed by a space
    (`ConnectionError: timed out`, an error's message) and a URL (`https://...`) stay free text.
    """
    text = text.strip()
    if not text:
        return "empty", ""
    id_match = TASK_ID.fullmatch(text)
    if id_match:
        try:
            return "id", parse_db_int(id_match.group(1), name="The task id")
        except ValueError:
            return "id", None  # more digits than any id has
    if text.startswith("{"):
        return "payload", text
    parts = split_shorthand(text)
    if parts is not None:
        key, sep, value = parts
        plain_key = key.strip() and not any(c.isspace() for c in key.strip())
        if plain_key and not (sep == ":" and value[:1].isspace()) and not value.startswith("//"):
            return "payload", text
    return "text", text


def search_range(below: int | None) -> SearchRange | None:
    """The SEARCH_RANGE ids below `below` (the newest when None); None when no task is there."""
    ids = Task.objects.order_by("id").values_list("id", flat=True)
    newest = ids.reverse().first() if below is None else ids.filter(id__lt=below).reverse().first()
    oldest = ids.first()
    if newest is None or oldest is None:
        return None
    low = max(newest - SEARCH_RANGE + 1, oldest)
    return SearchRange(low, newest, below is None, low if low > oldest else None)


def filtered_tasks(params: QueryDict) -> tuple[TaskFilter, QuerySet[Task], dict[str, list[str]]]:
    """task_search's filter, tasks and errors (the bulk actions' and the plan tests' view of it)."""
    search = task_search(params)
    return search.filter, search.qs, search.errors


def errors_text(errors: dict[str, list[str]]) -> str:
    """filtered_tasks' errors as plain text, one line per field (the 400 bodies that are not a page)."""
    return "\n".join(f"{name}: {' '.join(messages)}" for name, messages in errors.items())


# -- keyset pages ---------------------------------------------------------------------------

BEFORE = "before:"  # a Previous link's cursor starts with it: the page ends just before that row


@dataclass(frozen=True)
class Cursor:
    """A row's (sort value, id) and which side of it the page lies."""

    value: int | datetime
    last_id: int
    before: bool = False


@dataclass(frozen=True)
class Page:
    tasks: list[Task]
    next_cursor: str | None
    previous_cursor: str | None


def decode_cursor(sort: str, cursor: str) -> Cursor | None:
    """The row a page starts after (Next) or ends before (Previous, "before:..."), from its link's "value|id".

    The one parser of page cursors: anything but what encode_cursor makes (an
    id or a date-time, then an id, each one the databases can compare) is a
    ValueError with a message, never a query that overflows or a silent first page.
    """
    if not cursor:
        return None
    before = cursor.startswith(BEFORE)
    raw_value, sep, raw_id = cursor.removeprefix(BEFORE).rpartition("|")
    if not sep:
        raise ValueError("Not a page cursor: follow the list's Next or Previous page link, or leave cursor out.")
    last_id = parse_db_int(raw_id, name="The cursor's id")
    if SORTS[sort][0].lstrip("-") == "id":
        return Cursor(parse_db_int(raw_value, name="The cursor's id"), last_id, before)
    return Cursor(parse_db_datetime(raw_value, name="The cursor's date-time"), last_id, before)


def encode_cursor(sort: str, row: Task, *, before: bool = False) -> str:
    value: Any = getattr(row, SORTS[sort][0].lstrip("-"))
    text = f"{value.isoformat() if isinstance(value, datetime) else value}|{row.pk}"
    return BEFORE + text if before else text


def _beyond(name: str, cursor: Cursor, descending: bool) -> Q:
    """Rows past the cursor's row in an order on (name, id): `name <= v AND (name < v OR id < last)`.

    Spelt so that the first term is a range on the (name, id) index: the scan starts at the
    cursor and stops after a page (a bare OR would be a filter over the index from its start).
    """
    op = "lt" if descending else "gt"
    if name == "id":
        return Q(**{f"id__{op}": cursor.last_id})
    return Q(**{f"{name}__{op}e": cursor.value}) & (
        Q(**{f"{name}__{op}": cursor.value}) | Q(**{f"id__{op}": cursor.last_id})
    )


def _top_n(name: str, wanted: set[str]) -> bool:
    """Whether to read these statuses' tasks whole through their partial index and keep the top N.

    True where that set is small and an index walk in `name` order would pass every other task first:
    live tasks (task_claim_idx, task_locked_idx; sit at the table's newest end, behind or before all
    the finished ones) in any order but locked by id (task_locked_idx is that order), and failed
    tasks by created (task_failed_idx; the created index would walk past the backlog and 33 finished
    tasks for each failed one). Failed by id has task_failed_idx, by updated task_finished_updated_idx.
    """
    if name == "updated_at":
        return False  # task_finished_updated_idx and task_live_updated_idx are in this order
    if wanted <= set(LIVE):
        return not (name == "id" and wanted == {Task.Status.LOCKED})
    return wanted == {Task.Status.FAILED} and name == "created_at"


def _rows(qs: QuerySet[Task], sort: str, cursor: Cursor | None, *, backwards: bool, statuses: list[str]) -> list[Task]:
    """Up to PAGE_SIZE + 1 rows past the cursor, in the sort's order (reversed when going backwards)."""
    name = SORTS[sort][0].lstrip("-")
    descending = SORTS[sort][0].startswith("-") != backwards
    wanted = set(statuses) or set(Task.Status.values)
    sides = [(qs, _top_n(name, wanted))]
    if name == "updated_at":
        # Finished tasks in task_finished_updated_idx order, live ones in task_live_updated_idx order, then
        # merged. A status filter leaves out the side it excludes.
        sides = [(qs.filter(status__in=side), False) for side in (FINISHED, LIVE) if wanted & set(side)]
    rows: list[Task] = []
    for branch, top_n in sides:
        if cursor is not None:
            branch = branch.filter(_beyond(name, cursor, descending))
        if top_n:
            # Coalesce(x, x) sorts as x but is no indexed expression: the planner can't walk an index in
            # this order, so it reads the (small) set through its partial index and keeps the top N.
            keys = [Coalesce(F(f.lstrip("-")), F(f.lstrip("-"))) for f in SORTS[sort]]
            rows += _small_set_rows(branch.order_by(*[k.desc() if descending else k.asc() for k in keys]))
        else:
            order = [("-" if descending else "") + f.lstrip("-") for f in SORTS[sort]]
            rows += branch.order_by(*order)[: PAGE_SIZE + 1]
    if len(sides) > 1:
        rows.sort(key=lambda t: (getattr(t, name), t.pk), reverse=descending)
    return rows[: PAGE_SIZE + 1]


def _small_set_rows(qs: QuerySet[Task]) -> list[Task]:
    """The first PAGE_SIZE + 1 rows of a top-N query over live (or failed) tasks, read through their partial index.

    On PostgreSQL with a sequential scan ruled out for this one statement: the planner takes live
    tasks to be spread over the whole table, so at a million tasks it chose a parallel scan of all of
    them (0.49 s) over the 70,000 entries of task_claim_idx, whose rows sit together at the table's
    newest end (0.19 s, on a loaded machine). The setting is local to a savepoint and put back.
    """
    if connection.vendor != "postgresql":
        return list(qs[: PAGE_SIZE + 1])
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        rows = list(qs[: PAGE_SIZE + 1])
        cursor.execute("SET LOCAL enable_seqscan = on")  # a released savepoint keeps its settings
    return rows


def keyset_page(qs: QuerySet[Task], sort: str, cursor: Cursor | None, statuses: list[str] | None = None) -> Page:
    """One page after (or, for a Previous link, before) the cursor's row, by index order: no OFFSET, no COUNT(*)."""
    statuses = statuses or []
    if cursor is not None and cursor.before:
        rows = _rows(qs, sort, cursor, backwards=True, statuses=statuses)
        tasks = rows[:PAGE_SIZE][::-1]
        return Page(
            tasks,
            encode_cursor(sort, tasks[-1]) if tasks else None,
            encode_cursor(sort, tasks[0], before=True) if len(rows) > PAGE_SIZE else None,
        )
    rows = _rows(qs, sort, cursor, backwards=False, statuses=statuses)
    tasks = rows[:PAGE_SIZE]
    return Page(
        tasks,
        encode_cursor(sort, tasks[-1]) if len(rows) > PAGE_SIZE else None,
        encode_cursor(sort, tasks[0], before=True) if cursor is not None and tasks else None,
    )
