"""Timing for the worker loop and the scheduler: cadences, the backoff after database errors, naps.

Everything here counts on time.monotonic(): wall-clock jumps (NTP, DST) must
not make a loop skip its upkeep or run it in a burst.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from django.db import DatabaseError, close_old_connections, connection

MAX_BACKOFF = 30.0  # longest pause after database errors
FIRST_BACKOFF = 0.5  # the first pause; each further error in a row doubles it
NAP_SLICE = 0.25  # a stop request is noticed within this many seconds

logger = logging.getLogger("tasks_app.worker")

T = TypeVar("T")


@dataclass
class Cadence:
    """Something a loop does every `interval` seconds, give or take `jitter` (a fraction of it).

    The loop asks `due(now)` and, when it acts, calls `done(now)`, before the
    action: an action that fails (the database is away) waits for its next
    turn instead of being retried at every step. `next_at` 0 means due at the
    first chance. Jitter spreads workers that started together.
    """

    interval: float
    jitter: float = 0.0
    next_at: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def done(self, now: float, *, after: float | None = None) -> None:
        """Schedule the next turn: an interval (±jitter) after `now`, or exactly `after` seconds when given."""
        if after is None:
            after = self.interval * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else self.interval
        self.next_at = now + after

    def tick(self, now: float) -> bool:
        """due() and, if so, done(): True when it is this cadence's turn."""
        if not self.due(now):
            return False
        self.done(now)
        return True

    def run(self, now: float, action: Callable[[], T]) -> T | None:
        """Run `action` if due (marked done first); returns what it returned, or None when not due."""
        return action() if self.tick(now) else None


@dataclass
class Backoff:
    """The pause after database errors in a row: FIRST_BACKOFF, doubling, at most MAX_BACKOFF."""

    seconds: float = 0.0  # 0 while the database answers

    def failed(self) -> float:
        """One more error in a row; returns the pause to take."""
        self.seconds = min(MAX_BACKOFF, max(FIRST_BACKOFF, self.seconds * 2))
        return self.seconds

    def reset(self) -> None:
        self.seconds = 0.0


def nap(seconds: float, *, stop: Callable[[], bool] | None = None) -> None:
    """Sleep `seconds` in short slices, returning early once `stop()` is true."""
    deadline = time.monotonic() + seconds
    while stop is None or not stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, NAP_SLICE))


def close_connection() -> None:
    """Drop this thread's database connection after an error; the next query reconnects."""
    try:
        connection.close()
    except DatabaseError:
        pass


def close_old_connections_outside_transactions() -> None:
    """Django's per-request connection upkeep, for loops (never inside an atomic block, which it would break)."""
    if not connection.in_atomic_block:
        close_old_connections()


def close_broken_connection() -> None:
    """After a handler ran on the coordinator's thread: drop its connection only if the handler left it unusable.

    Not close_old_connections(), which slot threads run after each handler:
    on the coordinator it would reconnect after every handler with
    CONN_MAX_AGE 0, and with health checks on make the next query pay an
    extra round trip. The coordinator does that upkeep once a second instead.
    """
    if connection.connection is None or connection.in_atomic_block:
        return
    if connection.get_autocommit() != connection.settings_dict["AUTOCOMMIT"]:
        close_connection()  # the handler changed autocommit and left it so: don't take chances
    elif connection.errors_occurred:
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            close_connection()


class Keeper(threading.Thread):
    """Runs `beat` every `interval` s on its own thread, but only while it can take `guard` at once.

    The worker's heartbeat thread: the coordinator holds `guard` except while it
    runs a handler itself, so the beats (extending held locks, the registry
    heartbeat) happen exactly while the coordinator cannot do them, and never at
    the same time as its own bookkeeping. A beat that fails (the database away) is
    logged and tried again at the next interval. The thread's database connection
    (Django's are per thread) is closed when it stops.
    """

    def __init__(
        self, beat: Callable[[], object], guard: threading.Lock, interval: float, name: str, application_name: str = ""
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.beat = beat
        self.guard = guard
        self.interval = interval
        self.application_name = application_name  # its connection's name in pg_stat_activity
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            if self.application_name and connection.vendor == "postgresql":
                # Its own name, not the worker's (which is on the settings all threads share).
                options = {**connection.settings_dict.get("OPTIONS", {}), "application_name": self.application_name}
                connection.settings_dict = {**connection.settings_dict, "OPTIONS": options}
            while not self.stopping.wait(self.interval):
                if not self.guard.acquire(blocking=False):
                    continue  # the coordinator is at work: it beats itself
                try:
                    self.beat()
                except DatabaseError as exc:
                    logger.warning("heartbeat thread: database error (%s); retrying", exc)
                    close_connection()
                except Exception:
                    logger.exception("heartbeat thread: unexpected error; retrying")
                finally:
                    self.guard.release()
        finally:
            close_connection()

    def stop(self, wait: float = 5.0) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=wait)


class TextOut(Protocol):
    """Where status lines go: a text stream, a command's OutputWrapper or a JsonLines (write and flush only)."""

    def write(self, s: str, /) -> object: ...

    def flush(self) -> object: ...


def say(logger: logging.Logger, stdout: TextOut | None, line: str) -> None:
    """A status line for people: on `stdout` when given, and in the debug log."""
    logger.debug(line)
    if stdout is not None:
        stdout.write(line + "\n")
        stdout.flush()
