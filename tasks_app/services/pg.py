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

# The engine's prepared statements (the claim, the completion, the gate's) run with their generic plan,
# planned once per connection. Under PostgreSQL's default (plan_cache_mode = auto) the server plans the
# first five executions for their values and then keeps planning every execution whenever the generic
# plan's estimate is not the lower: the claim's has been so since its index leads with priority
# (bench/claim_scaling.py: 500 of 500 claims custom-planned, 1.2 ms a claim of one against 0.6 ms), and
# planning a statement over a table with a dozen indexes costs more than running it. Their generic plans
# are held to the claim index and the primary key by tests/test_priority_plan_pg.py and
# test_complete_plan_pg.py. Only prepared statements are affected: Django's own queries are bound on
# the client and planned each time whatever the setting.
PLAN_CACHE_MODE = "force_generic_plan"


def session_setup(sender: Any, connection: Any, **kwargs: Any) -> None:
    """connection_created: a new PostgreSQL session plans the prepared statements as PLAN_CACHE_MODE says.

    Set when the session starts (autocommit, so no rollback can undo it); not with TASKS_PG_PREPARE off
    (behind PgBouncer in transaction mode nothing is prepared and session settings don't stay)."""
    if connection.vendor == "postgresql" and settings.TASKS_PG_PREPARE:
        with connection.cursor() as cursor:
            cursor.execute(f"SET plan_cache_mode = {PLAN_CACHE_MODE}")


_cursors: weakref.WeakKeyDictionary[psycopg.Connection[Any], psycopg.Cursor[Any]] = weakref.WeakKeyDictionary()
# Two more per connection for execute_pipelined (in pipeline mode a cursor keeps only its last statement's rows).
_pairs: weakref.WeakKeyDictionary[psycopg.Connection[Any], tuple[psycopg.Cursor[Any], psycopg.Cursor[Any]]] = (
    weakref.WeakKeyDictionary()
)


def _preparing_connection() -> psycopg.Connection[Any]:
    """Django's psycopg connection, able to prepare (call inside connection.wrap_database_errors)."""
    conn = connection.connection
    if conn.prepare_threshold is None:
        # Django turns psycopg's statement preparation off (its cursors bind
        # on the client, which can't prepare); with it off, prepare=True is
        # silently ignored. Turning it back on affects only cursors like these.
        conn.prepare_threshold = 5
    return conn


def execute_prepared(sql: str, params: Mapping[str, Any]) -> psycopg.Cursor[Any]:
    """Run `sql` as a prepared statement on Django's connection; returns the cursor to fetch from."""
    connection.ensure_connection()
    with connection.wrap_database_errors:  # psycopg errors become django.db errors, as elsewhere
        conn = _preparing_connection()
        cursor = _cursors.get(conn)
        if cursor is None or cursor.closed:
            # One server-binding cursor per connection, reused: creating one per statement shows in profiles.
            cursor = _cursors[conn] = psycopg.Cursor(conn)
        # PgBouncer in transaction mode (before 1.21) can't keep prepared statements.
        cursor.execute(sql, params, prepare=bool(settings.TASKS_PG_PREPARE))
        return cursor


def execute_pipelined(
    first: tuple[str, Mapping[str, Any]], second: tuple[str, Mapping[str, Any]]
) -> tuple[psycopg.Cursor[Any], psycopg.Cursor[Any]]:
    """Send two prepared statements, then one Sync: one round trip; returns their cursors to fetch from.

    No BEGIN/COMMIT: outside a transaction the extended protocol runs everything up to the Sync (sent
    when the pipeline block ends) as one implicit transaction, committed at the Sync; inside a Django
    atomic block the two join the open transaction. The second is a later statement than the first, so
    under READ COMMITTED its snapshot is taken after the first has run (and holds its row locks).
    """
    connection.ensure_connection()
    with connection.wrap_database_errors:  # psycopg errors become django.db errors, as elsewhere
        conn = _preparing_connection()
        cursors = _pairs.get(conn)
        if cursors is None or cursors[0].closed or cursors[1].closed:
            cursors = _pairs[conn] = (psycopg.Cursor(conn), psycopg.Cursor(conn))
        prepare = bool(settings.TASKS_PG_PREPARE)
        with conn.pipeline():
            cursors[0].execute(first[0], first[1], prepare=prepare)
            cursors[1].execute(second[0], second[1], prepare=prepare)
        return cursors
