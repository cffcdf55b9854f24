"""Reading the environment: one typed reader per kind of value, and every number's bounds in one table.

workflowsite/settings.py reads each variable through these readers; an unusable
value stops the process with ImproperlyConfigured and one line naming the
variable, the value and the rule (`manage.py` prints it as "configuration error:
..."). tasks_app.checks holds values set in Python (a settings module of one's
own, override_settings) to the same BOUNDS.

Nothing from Django but the exception class (which loads no settings): this
module runs while the settings are being read, before any app exists.

A helper of our own rather than environs: environs would add three packages
(environs, marshmallow, python-dotenv) for what is a hundred lines here, raise
its own error type with its own wording instead of ImproperlyConfigured, and
keep each bound inside a validator at the read, where the system check could
not reuse it. django-environ parses types but has no bounds at all.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

from tasks_app import limits

# Every number from the environment is bounded: unbounded ones end up in a
# timedelta or a database integer and overflow there, far from the setting.
# The default maxima fit a 32-bit integer column, and ~31 years of seconds.
INT_MAX = 2**31 - 1
FLOAT_MAX = 1e9


@dataclass(frozen=True)
class Bounds:
    """The numbers a setting accepts: finite, from `minimum` (excluded if `exclusive`) to `maximum`."""

    minimum: float
    maximum: float
    exclusive: bool = False
    integer: bool = False

    def admits(self, value: object) -> bool:
        """Whether `value` is a number of the right kind within the bounds (NaN and infinities never are)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False  # True is an int to Python, not a number to a person
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.minimum if self.exclusive else value >= self.minimum
        return above and value <= self.maximum

    def __str__(self) -> str:
        low = f"{_number(self.minimum)} (exclusive)" if self.exclusive else _number(self.minimum)
        return f"between {low} and {_number(self.maximum)}"

    def describe(self) -> str:
        """The rule with the kind of number, for values that were never parsed (set in Python)."""
        return f"{'a whole number' if self.integer else 'a number'} {self}"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def ints(minimum: int = 0, maximum: int = INT_MAX) -> Bounds:
    return Bounds(minimum, maximum, integer=True)


def floats(minimum: float = 0.0, maximum: float = FLOAT_MAX) -> Bounds:
    return Bounds(minimum, maximum)


# Intervals and durations a loop waits or a comparison divides by: 0 would spin
# (a worker polling without sleeping) or hold nothing (a tolerance of 0 s).
POSITIVE = Bounds(0.0, FLOAT_MAX, exclusive=True)

# The one place each number's bounds are written; the settings say what each means.
BOUNDS: dict[str, Bounds] = {
    "DB_CONN_MAX_AGE": ints(),
    "SECURE_HSTS_SECONDS": ints(),
    "NUM_PROXIES": ints(),
    "AXES_FAILURE_LIMIT": ints(1),
    "AXES_COOLOFF_TIME": floats(),  # hours; 0 = until `manage.py axes_reset`
    "TASKS_LOCK_TIMEOUT": ints(1, limits.MAX_LOCK_TIMEOUT),
    "TASKS_POLL_INTERVAL": POSITIVE,
    "TASKS_RETRY_BACKOFF_BASE": floats(),
    "TASKS_RETRY_BACKOFF_MAX": POSITIVE,
    "TASKS_RETRY_JITTER": floats(0.0, 1.0),  # a fraction of the delay
    "TASKS_MAX_PAYLOAD_BYTES": ints(1),
    # At most 200: much deeper documents break recursive code (tasks_app.limits).
    "TASKS_MAX_PAYLOAD_DEPTH": ints(1, limits.MAX_PAYLOAD_DEPTH),
    "API_MAX_REQUEST_BYTES": ints(1024),
    "TASKS_EXPIRE_INTERVAL": POSITIVE,
    "TASKS_WORKER_HEARTBEAT": POSITIVE,
    "TASKS_WORKER_DEAD_AFTER": POSITIVE,
    "TASKS_NOTIFY_THROTTLE": floats(),
    "TASKS_HOOK_TOLERANCE": POSITIVE,
    "TASKS_SCHEDULER_INTERVAL": POSITIVE,
    "TASKS_JOB_MAX_TASKS": ints(1),
    "TASKS_RETENTION_DAYS": floats(0.0, 36500.0),  # 100 years; 0 = keep forever
    # One prune a second at most: each one takes an advisory lock and scans for old tasks.
    "TASKS_PRUNE_INTERVAL": floats(1.0),
    "TASKS_METRICS_CACHE": floats(),  # 0 = compute every scrape
    "EMAIL_PORT": ints(1, 65535),
    "EMAIL_TIMEOUT": POSITIVE,  # seconds a drain waits on the mail server (0 would wait forever)
    # A decision link's lifetime: at least a minute (a mail takes time to arrive), at most 90 days.
    "TASKS_DECISION_LINK_MAX_AGE": ints(60, 90 * 24 * 3600),
}


def refuse(name: str, rule: str, raw: object) -> ImproperlyConfigured:
    """The one-line error: the variable, the rule, the value."""
    return ImproperlyConfigured(f"{name} must be {rule}, got {raw!r}")


def _raw(name: str) -> str | None:
    """The variable's text, or None when it is unset or empty (`X=` in an env file means "the default")."""
    raw = os.environ.get(name)
    return None if raw is None or raw.strip() == "" else raw


def env_str(name: str, default: str) -> str:
    """The variable as it is; set-but-empty stays empty (SECRET_KEY= must not fall back to a default)."""
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = _raw(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise refuse(name, "a boolean (true/false)", raw)


def env_int(name: str, default: int, bounds: Bounds | None = None) -> int:
    """A whole number within `bounds` (by default the variable's row in BOUNDS)."""
    bounds = bounds or BOUNDS[name]
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise refuse(name, "an integer", raw) from None
    if not bounds.admits(value):
        raise refuse(name, str(bounds), raw)
    return value


def env_float(name: str, default: float, bounds: Bounds | None = None) -> float:
    """A finite number within `bounds` (by default the variable's row in BOUNDS); "nan" and "inf" are refused."""
    bounds = bounds or BOUNDS[name]
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise refuse(name, "a number", raw) from None
    if not bounds.admits(value):
        raise refuse(name, str(bounds), raw)
    return value


def env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    """One of `choices`, compared without case or surrounding spaces; returned as spelled in `choices`."""
    raw = _raw(name)
    if raw is None:
        return default
    by_key = {choice.lower(): choice for choice in choices}
    try:
        return by_key[raw.strip().lower()]
    except KeyError:
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
        raise refuse(name, listed, raw) from None


def env_list(name: str, default: str = "", *, item: Callable[[str], str | None] | None = None) -> list[str]:
    """A comma-separated list, each item stripped, empty items dropped.

    `item` returns what is wrong with one entry (None if nothing); the error
    names the variable and that entry.
    """
    items = [part.strip() for part in env_str(name, default).split(",") if part.strip()]
    for entry in items:
        problem = item(entry) if item is not None else None
        if problem is not None:
            raise ImproperlyConfigured(f"{name}: {entry!r} {problem}")
    return items


# What Django REST framework's SimpleRateThrottle.parse_rate reads: a count, a
# slash, and a period it knows by its first letter (s, m, h, d).
RATE = re.compile(r"\d{1,9}/[smhd][a-z]*")


def env_rate(name: str, default: str) -> str:
    """A throttle rate such as "120/minute" (checked here: DRF would only fail at the first request)."""
    raw = _raw(name)
    if raw is None:
        return default
    if RATE.fullmatch(raw.strip()) is None:
        raise refuse(name, "a rate such as 120/minute (per second, minute, hour or day)", raw)
    return raw.strip()
