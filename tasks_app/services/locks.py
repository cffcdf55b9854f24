"""PostgreSQL advisory locks: the one table of their keys, and the one way to take one.

An advisory lock key is a number that every session of the database shares,
whichever application it belongs to: the keys live here, side by side, so
that two uses can't pick the same number by accident (`unique` refuses a
duplicate at import time). Ours are in the 0x7A5C_xxxx block.
"""

from __future__ import annotations

import enum

from django.db import connection


@enum.unique
class LockKey(enum.IntEnum):
    # The expiry sweep (lifecycle.tasks_expire_locks): one worker sweeps at a time.
    SWEEP = 0x7A5C_0001
    # Retention batches (retention.tasks_prune): two prunes never delete at the same time.
    PRUNE = 0x7A5C_0002
    # The notification outbox's drain (notifications.notifications_drain): one worker delivers at a time.
    NOTIFY = 0x7A5C_0003


def advisory_xact_lock(key: LockKey, *, wait: bool = False) -> bool:
    """Take `key`'s transaction-scoped advisory lock; False if another transaction holds it and `wait` is off.

    Transaction-scoped, never per session: nothing outlives the transaction,
    so a dropped connection or a transaction-pooling PgBouncer can't leave it
    held. SQLite needs none and always gets True: its transactions begin
    IMMEDIATE, so writers take turns anyway.
    """
    assert connection.in_atomic_block, "an advisory xact lock outside a transaction is released at once"
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int(key)])
            return True
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [int(key)])
        row = cursor.fetchone()
        return bool(row and row[0])
