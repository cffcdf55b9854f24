"""Timing for the worker loop and the scheduler: cadences, the backoff after database errors, naps.

Everything here counts on time.monotonic(): wall-clock jumps (NTP, DST) must
not make a loop skip its upkeep or run it in a burst.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from django.db import DatabaseError, close_old_connections, connection

MAX_BACKOFF = 30.0  # longest pause after database errors
FIRST_BACKOFF = 0.5  # the first pause; each further error in a row doubles it
NAP_SLICE = 0.25  # a stop request is noticed within this many seconds

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
