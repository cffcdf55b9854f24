"""Prepared statements for the two hottest statements on PostgreSQL.

Django's psycopg cursors bind parameters on the client, so the server parses
and plans every claim and completion again. For these two fixed statements
we take a server-side-binding cursor on Django's own connection (same
transaction state, same type adapters) and let psycopg prepare them: the
plan is made once per connection instead of once per batch.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection

_cursors: weakref.WeakKeyDictionary[psycopg.Connection[Any], psycopg.Cursor[Any]] = weakref.WeakKeyDictionary()


def execute_prepared(sql: str, params: Mapping[str, Any]) -> psycopg.Cursor[Any]:
    """Run `sql` as a prepared statement on Django's connection; returns the cursor to fetch from."""
    connection.ensure_connection()
    with connection.wrap_database_errors:  # psycopg errors become django.db errors, as elsewhere
        conn = connection.connection
        if conn.prepare_threshold is None:
            # Django turns psycopg's statement preparation off (its cursors bind
            # on the client, which can't prepare); with it off, prepare=True is
            # silently ignored. Turning it back on affects only cursors like this one.
            conn.prepare_threshold = 5
        cursor = _cursors.get(conn)
        if cursor is None or cursor.closed:
            # One server-binding cursor per connection, reused: creating one per statement shows in profiles.
            cursor = _cursors[conn] = psycopg.Cursor(conn)
        # PgBouncer in transaction mode (before 1.21) can't keep prepared statements.
        cursor.execute(sql, params, prepare=bool(settings.TASKS_PG_PREPARE))
        return cursor
