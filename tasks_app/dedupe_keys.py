"""Dedupe keys (issue 15): a stage's `dedupe_on` JSON pointers and the key they make of a payload.

No model imports: Stage.dedupe_on's validator is here, and services.dedupe
(the insert that folds a duplicate arrival into the live task) builds on it.

The key of a payload is the canonical JSON (sorted keys, no spaces, integral
floats as integers) of the list of the values the pointers point at, in the
stage's order; longer than KEY_TEXT_MAX characters, it is "sha256:" and the
hex digest of that text. A pointer that points at nothing (a missing member,
an index past the end, a member of a non-object) means the task has no key:
it is never deduplicated. A pointer at an explicit `null` is a value like any
other. The task's type is not part of the key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.core.exceptions import ValidationError

# Bounds of Stage.dedupe_on: a few pointers, each of bounded length.
MAX_POINTERS = 5
MAX_POINTER_LENGTH = 200
# Task.dedupe_key's column length; keys longer than KEY_TEXT_MAX are stored as their sha256.
KEY_MAX_LENGTH = 100
KEY_TEXT_MAX = 64
HASH_PREFIX = "sha256:"


def pointer_problem(pointer: object) -> str | None:
    """What is wrong with one RFC 6901 JSON pointer (None: nothing)."""
    if not isinstance(pointer, str):
        return f"a JSON pointer is a string like '/order_id', not {pointer!r}"
    if pointer == "":
        return None  # the whole payload
    if not pointer.startswith("/"):
        return f"JSON pointer {pointer[:40]!r} must start with '/' (e.g. '/order_id')"
    if len(pointer) > MAX_POINTER_LENGTH:
        return f"JSON pointer is {len(pointer)} characters; the limit is {MAX_POINTER_LENGTH}"
    if "\x00" in pointer:
        return "JSON pointer must not contain the NUL character (U+0000)"
    rest = pointer.replace("~0", "").replace("~1", "")
    if "~" in rest:
        return f"JSON pointer {pointer[:40]!r}: '~' must be followed by 0 or 1 (RFC 6901)"
    return None


def dedupe_on_problems(value: object) -> list[str]:
    """Every problem of a dedupe_on value ([] if none): a list of at most MAX_POINTERS distinct pointers."""
    if not isinstance(value, list):
        return [f'dedupe_on must be a list of JSON pointers like ["/order_id"], not {type(value).__name__}']
    if len(value) > MAX_POINTERS:
        return [f"dedupe_on has {len(value)} pointers; the limit is {MAX_POINTERS}"]
    problems = [p for p in map(pointer_problem, value) if p]
    if not problems and len(set(value)) != len(value):
        problems.append("dedupe_on names a pointer twice")
    return problems


def validate_dedupe_on(value: object) -> None:
    problems = dedupe_on_problems(value)
    if problems:
        raise ValidationError("; ".join(problems), code="bad_dedupe_on")


class _Missing:
    pass


MISSING = _Missing()


def resolve(document: Any, pointer: str) -> Any:
    """The value `pointer` points at in `document`, or MISSING."""
    if pointer == "":
        return document
    value = document
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict):
            if token not in value:
                return MISSING
            value = value[token]
        elif isinstance(value, list):
            if not token.isdigit() or (len(token) > 1 and token.startswith("0")) or int(token) >= len(value):
                return MISSING
            value = value[int(token)]
        else:
            return MISSING
    return value


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 7 and 7.0 are the same number to JSON
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def dedupe_key(dedupe_on: list[str] | None, payload: dict[str, Any]) -> str:
    """The dedupe key of a payload arriving at a stage with these pointers ('' : not deduplicated)."""
    if not dedupe_on:
        return ""
    values = [resolve(payload, pointer) for pointer in dedupe_on]
    if any(v is MISSING for v in values):
        return ""
    text = json.dumps(_canonical(values), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if len(text) > KEY_TEXT_MAX:
        return HASH_PREFIX + hashlib.sha256(text.encode()).hexdigest()
    return text
