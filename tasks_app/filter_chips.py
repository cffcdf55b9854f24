"""The task list's active filters in words: the chips above the table and the bulk confirmation's sentence.

Read from the query string the list was given (the same one TaskFilter reads), so a chip names exactly one
value of one parameter, and removing it keeps the rest. Pure: no query of its own (stage names come in).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.http import QueryDict
from django.utils import timezone

from tasks_app.models import Task

# The list's filter parameters in the order the chips show them, with their labels.
LABELS: dict[str, str] = {
    "stage": "Stage",
    "status": "Status",
    "type": "Type",
    "source_stage": "Sent by",
    "created_after": "Created after",
    "created_before": "Created before",
    "payload": "Payload contains",
    "q": "Text",
    "error": "Last error contains",
    "attempts_min": "Attempts at least",
    "assignee": "Assignee",  # issue 16: a username, none or any
    "scheduled": "Scheduled for later",  # issue 15's run-at: true or false
    "parent": "Parent",
    "id": "Ids",
}
STAGE_PARAMS = ("stage", "source_stage")
DATE_PARAMS = ("created_after", "created_before")
# The filters that are a yes/no choice, and how their chips read it (the list's select says the same words).
YES_NO = {"scheduled": {"true": "Yes", "false": "No"}}
NOT_FILTERS = ("cursor",)  # a page of the list, not a filter: dropped when the filters change


@dataclass(frozen=True)
class Chip:
    """One value of one filter parameter, and the list's query string without it."""

    param: str
    value: str  # as in the query string
    label: str  # "Status"
    text: str  # "Failed"
    without: str  # the query string with this value dropped (and no page cursor)


def local_text(value: datetime) -> str:
    """A date-time in the viewer's time zone, to the minute (or the second when it has one)."""
    local = timezone.localtime(value)
    return local.strftime("%Y-%m-%d %H:%M:%S" if local.second or local.microsecond else "%Y-%m-%d %H:%M")


def value_text(param: str, value: str, stage_names: dict[str, str], cleaned: dict[str, Any]) -> str:
    """How a chip reads one value: a stage's name, a status's label, a date-time in the viewer's zone."""
    if param in STAGE_PARAMS:
        return stage_names.get(value, value)
    if param == "status":
        return str(Task.Status(value).label) if value in Task.Status.values else value
    if param in YES_NO:
        return YES_NO[param].get(value, value)
    if param in DATE_PARAMS and isinstance(cleaned.get(param), datetime):
        return local_text(cleaned[param])
    return value


def active_chips(params: QueryDict, stage_names: dict[str, str], cleaned: dict[str, Any] | None = None) -> list[Chip]:
    """A chip per distinct non-blank value of every filter parameter in `params`, in LABELS order.

    `cleaned` is the bound filter form's cleaned_data (dates shown as the instant they were read as).
    """
    chips = []
    for param, label in LABELS.items():
        seen: list[str] = []
        for value in params.getlist(param):
            if value.strip() and value not in seen:
                seen.append(value)
        for value in seen:
            rest = params.copy()
            rest.setlist(param, [v for v in params.getlist(param) if v != value])
            for name in NOT_FILTERS:
                rest.pop(name, None)
            text = value_text(param, value, stage_names, cleaned or {})
            chips.append(Chip(param, value, label, text, rest.urlencode()))
    return chips


def cleared(params: QueryDict) -> str:
    """The query string with every filter dropped (the sort stays): the "Clear all" link."""
    kept = QueryDict(mutable=True)
    kept.setlist("sort", [v for v in params.getlist("sort")[-1:] if v])
    return kept.urlencode()


def plural(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def matching_tasks(count: int, chips: list[Chip], *, more: bool = False, within: str = "") -> str:
    """A number of tasks and the filter that chose them: "587 failed tasks at Check stock (type: order)".

    With `more`, `count` is the first of more than that many: "the first 5,000 of more than 5,000 ...".
    `within` names the id range a free-text or payload search read ("#1–#50,000"), as the list says.
    """
    statuses = [c.text.lower() for c in chips if c.param == "status"]
    stages = [c.text for c in chips if c.param == "stage"]
    rest = [f"{c.label.lower()}: {c.text}" for c in chips if c.param not in ("status", "stage")]
    noun = "tasks" if more or count != 1 else "task"
    head = f"the first {count:,} of more than {count:,}" if more else f"{count:,}"
    words = [head] + ([_either(statuses)] if statuses else []) + [noun]
    if stages:
        words.append("at " + _either(stages))
    text = " ".join(words)
    text = f"{text} ({', '.join(rest)})" if rest else text
    return f"{text} among tasks {within}" if within else text


def chosen_tasks(ids: list[int]) -> str:
    """The rows ticked by hand, the first ten named: "2 selected tasks (#12, #15)"."""
    shown = ", ".join(f"#{i}" for i in ids[:10]) + (", …" if len(ids) > 10 else "")
    return f"{plural(len(ids), 'selected task')} ({shown})"
