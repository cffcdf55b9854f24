"""Writing seed rows: COPY in text format on PostgreSQL, bulk_create elsewhere; ids taken from the sequence."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, cast

from django.db import connection, transaction
from django.db.models import Field

from tasks_app.models import Task, TaskEvent
from tasks_app.seeding.generator import EVENT_FIELDS, TASK_FIELDS, EventRow, TaskRow


def reserve_task_ids(n: int) -> Sequence[int]:
    """Take n ids from the task table's sequence, as a sequence would hand them out to n INSERTs."""
    table = Task._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "WITH ids AS MATERIALIZED ("
                "  SELECT nextval(pg_get_serial_sequence(%s, 'id')) AS id FROM generate_series(1, %s))"
                " SELECT min(id), max(id), count(*),"
                "   CASE WHEN max(id) - min(id) + 1 <> count(*) THEN array_agg(id ORDER BY id) END"
                " FROM ids",
                [table, n],
            )
            first, last, _, scattered = cursor.fetchone()
            # Other sessions taking ids meanwhile leave gaps: then the list it is.
            return range(first, last + 1) if scattered is None else scattered
        # SQLite: AUTOINCREMENT hands out max(sqlite_sequence, max(id)) + 1, so moving
        # sqlite_sequence on reserves the ids in between (the transaction holds the write lock).
        quoted = connection.ops.quote_name(table)
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {quoted}")
        last = cursor.fetchone()[0]
        cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = %s", [table])
        row = cursor.fetchone()
        last = max(last, row[0] if row else 0)
        if row:
            cursor.execute("UPDATE sqlite_sequence SET seq = %s WHERE name = %s", [last + n, table])
        else:
            cursor.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)", [table, last + n])
        return range(last + 1, last + 1 + n)


def concrete_field(model: type[Task] | type[TaskEvent], name: str) -> Field[Any, Any]:
    """A column of the model (the row field orders name only those)."""
    found = model._meta.get_field(name)
    assert isinstance(found, Field) and found.column, f"{model.__name__}.{name} is not a column"
    return found


def columns(model: type[Task] | type[TaskEvent], fields: Sequence[str]) -> str:
    return ", ".join(connection.ops.quote_name(str(concrete_field(model, f).column)) for f in fields)


NULL = "\\N"
COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
needs_escape = re.compile(r"[\\\t\n\r]").search


def copy_text(value: str) -> str:
    """A string as a field of COPY's text format."""
    return value.translate(COPY_ESCAPES) if needs_escape(value) else value


def task_lines(rows: list[TaskRow]) -> str:
    """Task rows in COPY's text format (several times faster than psycopg's write_row)."""
    text = copy_text
    return "".join(
        [
            f"{task_id}\t{stage_id}\t{text(type_)}\t{text(payload)}\t{status}\t{created}\t{updated}\t{available}"
            f"\t{attempts}\t{text(token)}\t{text(locked_by)}\t{locked_at or NULL}\t{locked_until or NULL}"
            f"\t{completed_at or NULL}\t{text(error)}\t{parent_id or NULL}\t{source_id or NULL}\n"
            for (
                task_id,
                stage_id,
                type_,
                payload,
                status,
                created,
                updated,
                available,
                attempts,
                token,
                locked_by,
                locked_at,
                locked_until,
                completed_at,
                error,
                parent_id,
                source_id,
            ) in rows
        ]
    )


def event_lines(rows: list[EventRow]) -> str:
    text = copy_text
    return "".join(
        [f"{task_id}\t{kind}\t{at}\t{text(actor)}\t{text(details)}\n" for task_id, kind, at, actor, details in rows]
    )


class PostgresWriter:
    """COPY in text format; the text is made in the producer thread."""

    analyzes = True  # finish() runs ANALYZE

    def __init__(self) -> None:
        quote = connection.ops.quote_name
        self.task_sql = f"COPY {quote(Task._meta.db_table)} ({columns(Task, TASK_FIELDS)}) FROM STDIN"
        self.event_sql = f"COPY {quote(TaskEvent._meta.db_table)} ({columns(TaskEvent, EVENT_FIELDS)}) FROM STDIN"

    def prepare(self, tasks: list[TaskRow], events: list[EventRow]) -> tuple[str, str]:
        return task_lines(tasks), event_lines(events)

    def write(self, prepared: tuple[str, str]) -> None:
        task_text, event_text = prepared
        with connection.cursor() as cursor, connection.wrap_database_errors:
            # A seed chunk lost to a crash is harmless: don't wait for the WAL flush.
            cursor.execute("SET LOCAL synchronous_commit = off")
            with cursor.copy(self.task_sql) as copy:
                copy.write(task_text)
            with cursor.copy(self.event_sql) as copy:
                copy.write(event_text)

    def finish(self) -> None:
        """ANALYZE both tables: the planner's row estimates (and the overview's) see the new rows at once."""
        quote = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {quote(Task._meta.db_table)}, {quote(TaskEvent._meta.db_table)}")


class OrmWriter:
    """bulk_create; the model instances are made in the producer thread."""

    analyzes = False

    def prepare(self, tasks: list[TaskRow], events: list[EventRow]) -> tuple[list[Task], list[TaskEvent]]:
        task_attrs = [concrete_field(Task, f).attname for f in TASK_FIELDS]
        event_attrs = [concrete_field(TaskEvent, f).attname for f in EVENT_FIELDS]
        payload_at, details_at = TASK_FIELDS.index("payload"), EVENT_FIELDS.index("details")
        loads = json.loads
        return (
            [Task(**{**dict(zip(task_attrs, row, strict=True)), "payload": loads(row[payload_at])}) for row in tasks],
            [
                TaskEvent(**{**dict(zip(event_attrs, row, strict=True)), "details": loads(cast(str, row[details_at]))})
                for row in events
            ],
        )

    def write(self, prepared: tuple[list[Task], list[TaskEvent]]) -> None:
        tasks, events = prepared
        Task.objects.bulk_create(tasks)
        TaskEvent.objects.bulk_create(events)

    def finish(self) -> None:
        """Nothing to do after the last chunk."""


def writer_for(vendor: str) -> PostgresWriter | OrmWriter:
    """COPY on PostgreSQL, bulk_create on the others."""
    return PostgresWriter() if vendor == "postgresql" else OrmWriter()
