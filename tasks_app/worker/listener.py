"""LISTEN for new-work notifications on a connection of its own (PostgreSQL).

The listening connection stays idle in autocommit, outside Django's
connection handling, so it survives the worker's transactions and can be
dropped (and re-opened) without touching them. Any failure falls back to
plain polling until the next attempt to reconnect.
"""

from __future__ import annotations

import logging
import time

import psycopg
from django.db import connection

from tasks_app.services.notify import CHANNEL

logger = logging.getLogger("tasks_app.worker")

RECONNECT_AFTER = 5.0


class Listener:
    def __init__(self, application_name: str) -> None:
        self.application_name = application_name
        self.conn: psycopg.Connection | None = None
        self._retry_at = 0.0

    def _connect(self) -> psycopg.Connection | None:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        if time.monotonic() < self._retry_at:
            return None
        s = connection.settings_dict
        try:
            self.conn = psycopg.connect(
                dbname=s["NAME"],
                user=s["USER"] or None,
                password=s["PASSWORD"] or None,
                host=s["HOST"] or None,
                port=s["PORT"] or None,
                application_name=f"{self.application_name[:54]} listen",
                autocommit=True,
                connect_timeout=5,
            )
            self.conn.execute(f"LISTEN {CHANNEL}")
            return self.conn
        except psycopg.Error as exc:
            logger.warning("LISTEN unavailable (%s); polling until it comes back", exc)
            self._drop()
            return None

    def _drop(self) -> None:
        self._retry_at = time.monotonic() + RECONNECT_AFTER
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
        self.conn = None

    def wait(self, timeout: float) -> set[int] | None:
        """Block up to `timeout` s for notifications; the notified stage ids, or None if not listening."""
        conn = self._connect()
        if conn is None:
            return None
        stages: set[int] = set()
        try:
            for note in conn.notifies(timeout=timeout, stop_after=1):
                stages.add(int(note.payload))
            if stages:  # take whatever else is already queued, without waiting
                for note in conn.notifies(timeout=0):
                    stages.add(int(note.payload))
        except (psycopg.Error, ValueError) as exc:
            logger.warning("LISTEN connection lost (%s); polling meanwhile", exc)
            self._drop()
            return None
        return stages

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
