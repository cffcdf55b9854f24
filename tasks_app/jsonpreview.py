"""Bounded views of stored JSON: a page shows the head of a payload, never the whole of a large one.

A 60 KB payload of 100 arrays nested 300 deep is 18 MB once indented (the
indentation grows with the depth), so nothing here serialises a whole
document to show part of it: json_head stops encoding at its limit.
The whole document is served as-is by the raw payload view.
"""

from __future__ import annotations

import json
from typing import Any

from django.utils.html import escape

# Characters of a payload shown: one table cell, an expanded list row, a detail page.
CELL_CHARS = 90
ROW_CHARS = 400
PAGE_CHARS = 20_000
# Payloads longer than this (as HTML-escaped compact JSON) are not put in an editable textarea.
EDIT_CHARS = 150_000

TOO_DEEP = "(nested too deep to show here)"


def json_head(value: Any, limit: int, *, indent: int | None = None) -> tuple[str, bool]:
    """The first `limit` characters of `value` as JSON (sorted keys), and whether the document goes on.

    JSONEncoder.iterencode (without one-shot) is the pure-Python encoder, a generator:
    it produces the text piece by piece, so stopping early costs only what was shown.
    """
    encoder = json.JSONEncoder(indent=indent, sort_keys=True, ensure_ascii=False)
    pieces: list[str] = []
    size = 0
    try:
        for piece in encoder.iterencode(value):
            pieces.append(piece)
            size += len(piece)
            if size > limit:
                return "".join(pieces)[:limit], True
    except (RecursionError, ValueError):
        return TOO_DEEP, True
    return "".join(pieces), False


def json_preview(value: Any, limit: int, *, indent: int | None = None, ellipsis: str = "...") -> str:
    """json_head with the ellipsis inside the limit when the document was cut."""
    text, cut = json_head(value, limit, indent=indent)
    if cut and text != TOO_DEEP:
        text = text[: limit - len(ellipsis)] + ellipsis
    return text


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
    for indent in (2, None):
        text, cut = json_head(value, EDIT_CHARS, indent=indent)
        if not cut and len(escape(text)) <= EDIT_CHARS:
            return text
    return None
