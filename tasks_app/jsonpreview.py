"""Bounded views of stored JSON: a page shows the head of a payload, never the whole of a large one.

A 60 KB payload of 100 arrays nested 300 deep is 18 MB once indented (the
indentation grows with the depth), so nothing here serialises a whole
document to show part of it: json_head stops encoding at its limit.
The whole document is served as-is by the raw payload view.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from json.encoder import INFINITY, encode_basestring
from typing import Any, cast

from django.utils.html import escape

# Characters of a payload shown: one table cell, an expanded list row, a detail page.
CELL_CHARS = 90
ROW_CHARS = 400
PAGE_CHARS = 20_000
# Payloads longer than this (as HTML-escaped compact JSON) are not put in an editable textarea.
EDIT_CHARS = 150_000

_END = object()
_NO_KEY = object()


def _scalar(value: Any, max_string: int) -> str:
    """A JSON scalar (or empty container) as json.dumps writes it; a long string is cut first (only a head is shown)."""
    if isinstance(value, str):
        return encode_basestring(value[:max_string])
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (INFINITY, -INFINITY):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    if isinstance(value, dict | list | tuple):
        return "{}" if isinstance(value, dict) else "[]"
    raise TypeError(f"{type(value).__name__} is not JSON")


def _key(key: Any, max_string: int) -> str:
    # json.dumps writes a non-string key (1, true, null) as the string of its JSON.
    return _scalar(key if isinstance(key, str) else _scalar(key, max_string), max_string)


def iter_json(value: Any, *, indent: int | None = None, max_string: int = 1 << 62) -> Iterator[str]:
    """The text of json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False), piece by piece.

    Iterative, with its own stack: json's pure-Python encoder (the only one that
    yields) nests a generator per level, so each piece of a 300-deep document
    cost 300 resumptions (1.3 s for the issue's 60 KB), and 1,000 levels raised
    RecursionError. Here a piece costs the same at any depth.
    """
    sep = ", " if indent is None else ","

    def newline(depth: int) -> str:
        return "" if indent is None else "\n" + " " * (indent * depth)

    stack: list[list[Any]] = []  # per open container: [children iterator, closing bracket, children written]
    node = value
    while True:
        if isinstance(node, dict) and node:
            yield "{"
            stack.append([iter(sorted(node.items(), key=lambda item: str(item[0]))), "}", 0])
        elif isinstance(node, list | tuple) and node:
            yield "["
            stack.append([((_NO_KEY, child) for child in node), "]", 0])
        else:
            yield _scalar(node, max_string)
        # Climb to the next child to write, closing the containers that are done.
        while stack:
            top = stack[-1]
            child = next(top[0], _END)
            if child is _END:
                stack.pop()
                yield newline(len(stack)) + top[1]
                continue
            key, node = cast("tuple[Any, Any]", child)  # a (key, value) pair once not _END
            label = "" if key is _NO_KEY else _key(key, max_string) + ": "
            yield (sep if top[2] else "") + newline(len(stack)) + label
            top[2] += 1
            break
        else:
            return


def json_head(value: Any, limit: int, *, indent: int | None = None) -> tuple[str, bool]:
    """The first `limit` characters of `value` as JSON (sorted keys), and whether the document goes on.

    Costs what is shown, not what is stored: the encoding stops at the limit.
    """
    pieces: list[str] = []
    size = 0
    for piece in iter_json(value, indent=indent, max_string=limit + 1):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return "".join(pieces)[:limit], True
    return "".join(pieces), False


def json_preview(value: Any, limit: int, *, indent: int | None = None, ellipsis: str = "...") -> str:
    """json_head with the ellipsis inside the limit when the document was cut."""
    text, cut = json_head(value, limit, indent=indent)
    return text[: limit - len(ellipsis)] + ellipsis if cut else text


def json_raw(value: Any) -> bytes:
    """The whole document, compact UTF-8: what the raw payload view serves (no indentation to blow up)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        # A lone surrogate (SQLite keeps one) has no UTF-8 form: escape it, the document stays exact.
        return json.dumps(value, separators=(",", ":")).encode()


def json_size(value: Any) -> int:
    """Bytes of the whole document as the raw view serves it."""
    try:
        return len(json_raw(value))
    except (RecursionError, ValueError):
        return 0


def editable_json(value: Any) -> str | None:
    """The document as text to edit in a textarea: indented when that is small, else compact; None when too big.

    The measure is the HTML-escaped length, what the page would carry.
    """
    try:
        compact = json.dumps(value, sort_keys=True, ensure_ascii=False)  # C speed; as large as what is stored
    except (RecursionError, ValueError):
        return None
    if len(escape(compact)) > EDIT_CHARS:
        return None
    indented, cut = json_head(value, EDIT_CHARS, indent=2)
    return compact if cut or len(escape(indented)) > EDIT_CHARS else indented
