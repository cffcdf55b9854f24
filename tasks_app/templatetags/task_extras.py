"""Display helpers for the monitoring pages: status badges, ages, JSON."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from tasks_app.jsonpreview import CELL_CHARS, PAGE_CHARS, ROW_CHARS, editable_json, json_head, json_preview, json_size
from tasks_app.models import Stage, Task
from tasks_app.services.due import due_overdue_by
from tasks_app.services.waiting import overdue_by

register = template.Library()


def human_delta(delta: timedelta) -> str:
    """3 s, 1.2 s, 4 min, 2 h, 3 d: short, for badges."""
    seconds = delta.total_seconds()
    if seconds < 0:
        seconds = 0
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def clock_time(at: datetime, now: datetime) -> str:
    """14:00 today (in the active time zone: the viewer's), else 3 Dec 14:00, else 3 Dec 2027 14:00."""
    local, today = timezone.localtime(at), timezone.localtime(now)
    if local.date() == today.date():
        return f"{local:%H:%M}"
    if local.year == today.year:
        return f"{local.day} {local:%b %H:%M}"
    return f"{local.day} {local:%b %Y %H:%M}"


@register.filter
def duration_short(value: timedelta | None) -> str:
    return human_delta(value) if value is not None else ""


@register.filter
def age(value: datetime | None) -> str:
    if value is None:
        return ""
    return human_delta(timezone.now() - value)


def status_text(task: Task, now: datetime) -> str:
    if task.status == Task.Status.PENDING:
        if (overdue := overdue_by(task, now)) is not None:  # the waiting-time limit (services.waiting)
            waited, limit = overdue
            return f"Overdue · waiting {human_delta(waited)}, limit {human_delta(timedelta(seconds=limit))}"
        if task.stage.kind == Stage.Kind.JOIN and task.available_at <= now:  # an arrival waiting for its group
            return f"Waiting to join for {human_delta(now - task.available_at)}"
        if task.attempts:  # claimed before and given back (an error, an expired lock): say it is a retry
            # The attempt it waits to make; "due" once its backoff has passed (the list and the task page agree).
            wait = f"next in {human_delta(task.available_at - now)}" if task.available_at > now else "due"
            return f"Retrying · attempt {task.attempts + 1} · {wait}"
        if task.available_at and task.available_at > now:  # run-at: created to run later (issue 15)
            return f"Scheduled for {clock_time(task.available_at, now)} (in {human_delta(task.available_at - now)})"
        return f"Pending for {human_delta(now - task.updated_at)}"
    if task.status == Task.Status.LOCKED:
        if task.locked_until and task.locked_until < now:
            return f"Locked by {task.locked_by}, lock expired {human_delta(now - task.locked_until)} ago"
        left = human_delta(task.locked_until - now) if task.locked_until else "?"
        if task.cancel_requested:  # services.cancel: it ends cancelled when its handler returns
            return f"Locked by {task.locked_by}, {left} left · cancel requested"
        return f"Locked by {task.locked_by}, {left} left"
    if task.status == Task.Status.COMPLETED:
        if task.completed_at and task.locked_at:
            return f"Completed in {human_delta(task.completed_at - task.locked_at)}"
        return "Completed"
    if task.status == Task.Status.CANCELLED:
        return "Cancelled"
    return f"Failed after {task.attempts} attempt{'s' if task.attempts != 1 else ''}"


@register.simple_tag
def status_badge(task: Task) -> SafeString:
    return format_html(
        '<span class="badge badge-{}" title="{}">{}</span>',
        task.status,
        task.get_status_display(),
        status_text(task, timezone.now()),
    )


@register.simple_tag
def overdue_badge(task: Task) -> SafeString:
    """The "Overdue" badge of a task past its stage's due time (services.due: pending or open in someone's hands)."""
    late = due_overdue_by(task, timezone.now())
    if late is None:
        return mark_safe("")
    title = f"Past its due time ({human_delta(timedelta(seconds=task.stage.due_after or 0))} after arrival) by "
    return format_html('<span class="badge badge-overdue" title="{}">Overdue</span>', title + human_delta(late))


@register.filter
def json_compact(value: Any) -> str:
    """One line for a table cell: the head of the compact JSON, cut with "..."."""
    return json_preview(value, CELL_CHARS)


@dataclass(frozen=True)
class JsonView:
    """The head of a document, indented, and what a page says about the rest."""

    text: str
    cut: bool
    size: int  # bytes of the whole document as /tasks/<id>/payload.json serves it (0: not measured)
    editable: bool  # small enough to edit in a textarea

    @property
    def highlighted(self) -> SafeString:
        return highlight(self.text)


@register.simple_tag
def json_view(value: Any, where: str = "page") -> JsonView:
    """A bounded pretty view: "row" (an expanded list row) or "page" (a task's page, measured)."""
    text, cut = json_head(value, ROW_CHARS if where == "row" else PAGE_CHARS, indent=2)
    if where == "row":
        return JsonView(text, cut, 0, False)
    return JsonView(text, cut, json_size(value) if cut else 0, editable_json(value) is not None)


_TOKEN = re.compile(
    r'(?P<key>"(?:\\.|[^"\\])*"(?=\s*:))|(?P<string>"(?:\\.|[^"\\])*")'
    r"|(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<literal>\btrue\b|\bfalse\b|\bnull\b)"
)


def highlight(text: str) -> SafeString:
    """JSON text with each token escaped and wrapped in a span for colouring (a cut text too)."""
    out: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        out.append(escape(text[pos : m.start()]))
        out.append(f'<span class="j-{m.lastgroup}">{escape(m.group())}</span>')
        pos = m.end()
    out.append(escape(text[pos:]))
    return mark_safe("".join(out))  # every piece above is escaped


@register.filter
def tail(value: Any, length: int) -> str:
    """The last `length` characters, after an ellipsis: the end of a traceback is the part that says what broke."""
    text = str(value)
    return text if len(text) <= length else "…" + text[-length:]


@register.simple_tag(takes_context=True)
def query_with(context: dict[str, Any], **changes: Any) -> str:
    """The current query string with some parameters replaced (or removed when None)."""
    params = context["request"].GET.copy()
    for key, value in changes.items():
        params.pop(key, None)
        if value not in (None, ""):
            params[key] = value
    return "?" + params.urlencode() if params else "?"


@register.filter
def first_line(value: Any) -> str:
    """The first non-blank line of a text (an error's message, without its details)."""
    for line in str(value or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


@register.filter
def shows_error(task: Task) -> bool:
    """Whether a list row shows the task's last error: failed, or given back after an error and not done since."""
    return bool(task.last_error) and task.status != Task.Status.COMPLETED
