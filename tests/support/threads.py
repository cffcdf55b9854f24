"""Racing threads for the tests of one-at-a-time upkeep work (sweeps, folds, drains, join passes)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connection


def run_at_once(work: Callable[[], None], *, threads: int = 2, timeout: float = 120) -> list[BaseException]:
    """Run `work` in `threads` threads released together, each on its own database connection (closed when
    it ends); returns what they raised, for the test to assert on."""
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            work()
        except BaseException as exc:  # noqa: BLE001 - reported by the calling test
            errors.append(exc)
        finally:
            connection.close()

    started = [threading.Thread(target=run) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join(timeout=timeout)
    return errors
