"""Bounds for values that come from outside (query strings, cursors, form fields, headers).

Each parser answers a value the databases can take, or raises ValueError with a
message a person can act on. Without them an out-of-range value got as far as the
driver: sqlite3 raises OverflowError binding an integer beyond 64 bits, a datetime
at the calendar's edge overflows when it is moved to UTC, PostgreSQL refuses NUL
characters and jsonb has no NaN or Infinity: each of those was a 500.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from tasks_app.limits import NUL

# Both databases store integers (ids included) as signed 64-bit.
DB_INT_MIN = -(2**63)
DB_INT_MAX = 2**63 - 1

_INT = re.compile(r"[+-]?[0-9]{1,19}")  # ASCII digits only: "²".isdigit() is True, int("²") fails


def parse_db_int(text: str, *, name: str = "value") -> int:
    """A decimal integer that fits a database integer column."""
    if not _INT.fullmatch(text):
        raise ValueError(f"{name} must be a whole number.")
    value = int(text)
    check_db_int(value, name=name)
    return value


def check_db_int(value: int, *, name: str = "value") -> int:
    if not DB_INT_MIN <= value <= DB_INT_MAX:
        raise ValueError(f"{name} must be between {DB_INT_MIN} and {DB_INT_MAX}.")
    return value


def to_utc(value: datetime, *, name: str = "value") -> datetime:
    """The same instant in UTC (a naive value is read in the current time zone).

    Refused when that instant has no UTC date: 0001-01-01T00:00+14:00 is in year 0,
    9999-12-31T23:59-14:00 in year 10000.
    """
    try:
        if timezone.is_naive(value):
            value = timezone.make_aware(value)
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(f"{name} is outside the dates that can be stored (years 1 to 9999, in UTC).") from None


def parse_db_datetime(text: str, *, name: str = "value") -> datetime:
    """An ISO 8601 date-time (the `T` may be a space) as an aware UTC datetime."""
    try:
        value = parse_datetime(text)
    except ValueError:  # well-formed but impossible, like month 13
        value = None
    if value is None:
        raise ValueError(f"{name} must be a valid ISO 8601 date-time, like 2026-11-01T08:00:00+00:00.")
    return to_utc(value, name=name)


class NotStorable(ValueError):
    """Well-formed JSON (as Python reads it) holding a value the databases can't store or compare."""


def _no_constant(name: str) -> Any:
    raise NotStorable(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotStorable(f"{text[:20]} is too large for a JSON number")
    return value


def loads_bounded(text: str) -> Any:
    """json.loads for values that will reach a database query.

    Raises NotStorable for a value the databases can't take, ValueError for text that isn't JSON.

    Refuses NaN and Infinity (jsonb has neither; Python's json accepts them), numbers
    that overflow to infinity (1e999), integers beyond 64 bits, NUL characters in keys
    and strings (PostgreSQL text can't hold them) and documents nested too deeply to parse.
    """
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise NotStorable("nested too deeply") from None
    check_json(value)
    return value


def check_json(value: Any) -> None:
    """Raise NotStorable naming the first value the databases can't store (iterative: any depth)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and NUL in key:
                    raise NotStorable("keys can't contain NUL (\\u0000) characters")
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if NUL in item:
                raise NotStorable("strings can't contain NUL (\\u0000) characters")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not DB_INT_MIN <= item <= DB_INT_MAX:
                raise NotStorable(f"whole numbers must be between {DB_INT_MIN} and {DB_INT_MAX}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise NotStorable("numbers must be finite (no NaN or Infinity)")
