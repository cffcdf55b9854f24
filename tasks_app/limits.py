"""Bounds on the values people and programs hand the engine, and the one JSON walk that checks documents.

Plain constants and functions with no Django imports: workflowsite/settings.py
reads the bounds too (TASKS_LOCK_TIMEOUT, TASKS_MAX_PAYLOAD_DEPTH), before the
apps are loaded, so a setting and a stage field can never disagree.

Why bounds at all: an unbounded number ends up in a `timedelta` or a SQLite
integer and overflows (a stage with lock_timeout 2**62 killed the worker), and
an unbounded nesting depth ends up in recursive code (copying, encoding,
schema validation, templates) and raises RecursionError.
"""

from __future__ import annotations

from collections.abc import Iterable

# Stage.lock_timeout, the claim and heartbeat `lock_timeout` inputs, --lock-timeout
# and TASKS_LOCK_TIMEOUT, in seconds. A week: a lock held longer is a lost worker,
# not a slow one (a long handler keeps its lock alive with heartbeats).
MAX_LOCK_TIMEOUT = 7 * 24 * 3600
# Stage.max_run_time, in seconds: the same week.
MAX_RUN_TIME = 7 * 24 * 3600
# Stage.max_attempts (blank means retry forever, so a cap costs nobody anything).
MAX_ATTEMPTS = 1000
# run_worker --concurrency: handler threads in one process.
MAX_CONCURRENCY = 256

# TASKS_MAX_PAYLOAD_DEPTH: its default, and the most the setting accepts.
DEFAULT_PAYLOAD_DEPTH = 64
MAX_PAYLOAD_DEPTH = 200
# The most a whole JSON document (an API request body, a workflow file) may nest.
# Above every field's own limit plus its envelope (bulk-complete wraps a payload
# in 5 levels), so the field's check answers with its own message; below what the
# recursive code that handles a document before that check can take (Python's
# default recursion limit is 1000 frames, shared with the C JSON encoder).
MAX_DOCUMENT_DEPTH = 500

NUL = "\x00"


CONTAINERS = (dict, list, tuple)


def _children(item: object) -> Iterable[object]:
    return item.values() if isinstance(item, dict) else item  # type: ignore[return-value]


def json_depth_exceeds(value: object, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels deep ({} is one level, {"a": []} two).

    Iterative, one level at a time: about as fast as json.loads itself on a large document.
    """
    level = [value] if isinstance(value, CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [child for item in level for child in _children(item) if isinstance(child, CONTAINERS)]
    return False


def json_has_nul(value: object) -> bool:
    """Whether a string or key anywhere in `value` contains U+0000 (PostgreSQL can store neither)."""
    level = [value]
    while level:
        deeper: list[object] = []
        for item in level:
            if isinstance(item, str):
                if NUL in item:
                    return True
            elif isinstance(item, dict):
                if any(isinstance(key, str) and NUL in key for key in item):
                    return True
                deeper.extend(item.values())
            elif isinstance(item, list | tuple):
                deeper.extend(item)
        level = deeper
    return False


def clamp_lock_timeout(seconds: int) -> int:
    """A lock timeout within 1..MAX_LOCK_TIMEOUT: rows stored before the bounds (or by raw SQL) mustn't overflow."""
    return max(1, min(int(seconds), MAX_LOCK_TIMEOUT))


# Task.priority and Stage.default_priority (higher runs first); a priority a stage reads from a payload
# field (Stage.priority_from) is clamped into this range. Wide enough for any scheme people use (0-10,
# -100..100), small enough that no arithmetic on it can overflow.
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000
# How far ahead a task may be scheduled, in seconds: send(delay=/at=), the API's delay/available_at,
# a hook's ?delay=, the New task page. A year, as a release's retry_in.
MAX_DELAY = 365 * 24 * 3600
# Stage.max_wait, in seconds (the waiting-time limit, services.waiting): a year.
MAX_WAIT = 365 * 24 * 3600
# Reminders (issue 16): no sooner than a minute apart, at most this many per task.
MIN_REMIND_AFTER = 60
MAX_REMINDERS = 10
# Stage.max_concurrency (services.flow_limits): locked tasks at a stage across every worker and API client.
MAX_STAGE_CONCURRENCY = 10_000
# Stage.rate_limit, "N/second", "N/minute" or "N/hour": claimed tasks per fixed window of that length.
MAX_RATE = 1_000_000
RATE_PERIODS = {"second": 1, "minute": 60, "hour": 3600}


def parse_rate_limit(text: str) -> tuple[int, int] | None:
    """A rate limit "N/second|minute|hour" as (N, period in seconds); None for blank. ValueError says what's wrong.

    Strict on purpose: one spelling, so the workflow file, the API and the admin all show what was typed.
    """
    text = text.strip()
    if not text:
        return None
    count, slash, unit = text.partition("/")
    if not slash or unit not in RATE_PERIODS or not count.isascii() or not count.isdigit():
        raise ValueError(f"'{text}' is not a rate limit: write N/second, N/minute or N/hour (e.g. 10/second).")
    n = int(count)
    if not 1 <= n <= MAX_RATE:
        raise ValueError(f"A rate limit's count must be 1 to {MAX_RATE} (got {n}).")
    return n, RATE_PERIODS[unit]
