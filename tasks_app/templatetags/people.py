"""Display helpers for the pages people read: times in the viewer's zone, and payloads as key/value lists.

Times: `{{ value|when }}` is "8 Dec 2026, 13:22 CET" in the zone the request
activated (tasks_app.middleware), always with the date and the zone named:
"until 13:22" once hid that a lock was held for 7 days. `{% time_tag value %}`
wraps it in <time> with the machine-readable instant and a relative text.

Payloads: `{% kv_view payload schema "row" %}` draws a task's payload as
nested key/value lists, titled from the JSON Schema that describes it where
there is one, bounded in depth, items and characters (a page shows the head of
a large payload; the raw JSON is one link away), every key and value escaped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django import template
from django.utils import dateformat, timezone
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from tasks_app.jsonpreview import json_size
from tasks_app.templatetags.task_extras import human_delta

register = template.Library()


# -- times ---------------------------------------------------------------------------------


def as_datetime(value: Any) -> datetime | None:
    """A datetime from a model field or from an ISO string stored in an event's details (retry_at)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if timezone.is_aware(parsed) else parsed.replace(tzinfo=UTC)
    return None


def zone_abbreviation(local: datetime) -> str:
    """CET, UTC, EST; a zone without an abbreviation ("+04" in the tz database) reads "UTC+04"."""
    name = local.tzname() or ""
    return f"UTC{name}" if name[:1] in "+-" else name


def local_text(value: datetime, *, seconds: bool = False) -> str:
    """8 Dec 2026, 13:22 CET (with seconds: 13:22:05): the date, the time and the zone, never microseconds."""
    local = timezone.localtime(value)
    return f"{dateformat.format(local, 'j M Y, H:i:s' if seconds else 'j M Y, H:i')} {zone_abbreviation(local)}"


@register.filter
def when(value: Any, precision: str = "minutes") -> str:
    """A date-time in the viewer's zone with the zone named; "" for none (an unreadable string is shown as is)."""
    moment = as_datetime(value)
    if moment is None:
        return "" if value in (None, "") else str(value)
    return local_text(moment, seconds=precision == "seconds")


def relative(moment: datetime, now: datetime) -> str:
    """ "3 min ago" or "in 17 s"."""
    if abs((moment - now).total_seconds()) < 1:
        return "now"
    return f"in {human_delta(moment - now)}" if moment > now else f"{human_delta(now - moment)} ago"


@register.simple_tag
def time_tag(value: Any, precision: str = "seconds", show_relative: bool = True) -> SafeString:
    """<time datetime="ISO">8 Dec 2026, 13:08:20 CET</time> (3 min ago); "—" for none."""
    moment = as_datetime(value)
    if moment is None:
        return format_html("{}", str(value) if value not in (None, "") else "—")
    text = local_text(moment, seconds=precision == "seconds")
    iso = timezone.localtime(moment).isoformat(timespec="seconds")
    if not show_relative:
        return format_html('<time datetime="{}">{}</time>', iso, text)
    return format_html(
        '<time datetime="{}">{}</time> <span class="muted">({})</span>', iso, text, relative(moment, timezone.now())
    )


@register.simple_tag
def current_zone() -> str:
    """The IANA name of the zone this page's times are in ("Europe/Paris")."""
    return timezone.get_current_timezone_name()


# -- payloads as key/value lists -----------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """How much of a payload a view draws: levels, entries per object or list, characters per string, nodes."""

    depth: int
    items: int
    chars: int
    nodes: int


BOUNDS = {
    "row": Bounds(depth=3, items=6, chars=80, nodes=24),  # a row of My work
    "page": Bounds(depth=8, items=100, chars=2_000, nodes=1_000),  # the decision page
}


def _spec(value: object) -> dict[str, Any]:
    """A schema node as a dict ({} when the stored schema has something else there: nothing here trusts it)."""
    return value if isinstance(value, dict) else {}


def _property(schema: dict[str, Any], key: str) -> dict[str, Any]:
    return _spec(_spec(schema.get("properties")).get(key))


def _title(spec: dict[str, Any]) -> str:
    title = spec.get("title")
    return title if isinstance(title, str) else ""


class _KeyValue:
    """One drawing of one payload: counts the nodes it draws, so a huge payload costs a bounded page."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.nodes = 0
        self.cut = False  # whether some of the payload is left out

    def scalar(self, value: object) -> str:
        if isinstance(value, str):
            cut = value[: self.bounds.chars]
            self.cut |= cut != value
            return format_html(
                '<span class="kv-str">{}</span>{}',
                cut,
                mark_safe('<span class="j-more">…</span>') if cut != value else "",
            )
        literal = value is None or isinstance(value, bool)
        text = json.dumps(value) if literal or isinstance(value, int | float) else str(value)
        return format_html('<span class="kv-{}">{}</span>', "lit" if literal else "num", text)

    def value(self, value: object, schema: dict[str, Any], depth: int) -> str:
        if isinstance(value, dict):
            return self.mapping(value, schema, depth) if value else '<span class="muted">{}</span>'
        if isinstance(value, list | tuple):
            return self.sequence(list(value), schema, depth) if value else '<span class="muted">[]</span>'
        return self.scalar(value)

    def deeper(self, depth: int, size: int, what: str) -> str | None:
        """The note that replaces a container this view goes no deeper into, else None."""
        if depth < self.bounds.depth and self.nodes < self.bounds.nodes:
            return None
        self.cut = True
        return format_html('<span class="muted">{} {}{}</span>', size, what, "" if size == 1 else "s")

    def mapping(self, value: dict[Any, Any], schema: dict[str, Any], depth: int) -> str:
        note = self.deeper(depth, len(value), "field")
        if note is not None:
            return note
        rows = []
        for key in list(value)[: self.bounds.items]:
            if self.nodes >= self.bounds.nodes:
                break
            self.nodes += 1
            name = str(key)
            spec = _property(schema, name)
            title = _title(spec)
            label = (
                format_html('{} <small class="muted">{}</small>', title, name)
                if title and title != name
                else format_html("{}", name)
            )
            rows.append(
                format_html("<dt>{}</dt> <dd>{}</dd>\n", label, mark_safe(self.value(value[key], spec, depth + 1)))
            )
        return format_html(
            '<dl class="kv">{}</dl>{}', mark_safe("".join(rows)), self.more(len(value) - len(rows), "field")
        )

    def sequence(self, value: list[Any], schema: dict[str, Any], depth: int) -> str:
        note = self.deeper(depth, len(value), "item")
        if note is not None:
            return note
        items_schema = _spec(schema.get("items"))
        items = []
        for item in value[: self.bounds.items]:
            if self.nodes >= self.bounds.nodes:
                break
            self.nodes += 1
            items.append(format_html("<li>{}</li>\n", mark_safe(self.value(item, items_schema, depth + 1))))
        return format_html(
            '<ol class="kv-list">{}</ol>{}', mark_safe("".join(items)), self.more(len(value) - len(items), "item")
        )

    def more(self, left: int, what: str) -> str:
        if left <= 0:
            return ""
        self.cut = True
        return format_html('<p class="kv-more muted">and {} more {}{}</p>', left, what, "" if left == 1 else "s")


@dataclass(frozen=True)
class KeyValueView:
    html: SafeString
    cut: bool  # some of the payload is left out (the page links to all of it)
    size: int  # bytes of the whole document as /tasks/<id>/payload.json serves it (0: not measured, not cut)


@register.simple_tag
def kv_view(payload: Any, schema: Any = None, where: str = "page") -> KeyValueView:
    """A payload as nested key/value lists, titled from `schema`, bounded for `where` ("row" or "page")."""
    drawing = _KeyValue(BOUNDS.get(where, BOUNDS["page"]))
    html = drawing.value(payload, _spec(schema), 0)
    # Every piece of `html` is escaped above (format_html), and `where` is one of BOUNDS' names.
    view = mark_safe(f'<div class="kv-view kv-{escape(where)}">{html}</div>')
    return KeyValueView(view, drawing.cut, json_size(payload) if drawing.cut and where == "page" else 0)
