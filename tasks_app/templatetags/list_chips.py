"""The task list's filter form and its active-filter chips (issue 14, section 2), from request.GET and the
bound filter form, so the list's view needs no extra context."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.http import QueryDict
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from tasks_app.filter_chips import Chip, active_chips, cleared

register = template.Library()


def cleaned_data(task_filter: Any) -> dict[str, Any]:
    """The bound filter form's valid values ({} for an unbound or never-validated form)."""
    form = getattr(task_filter, "form", None)
    return getattr(form, "cleaned_data", None) or {}


@register.simple_tag
def filter_chips(params: QueryDict, task_filter: Any, stages: Any) -> list[Chip]:
    """{% filter_chips request.GET filter stages as chips %}: one removable chip per active filter value."""
    names = {stage.slug: stage.name for stage in stages}
    return active_chips(params, names, cleaned_data(task_filter))


@register.simple_tag
def clear_all_query(params: QueryDict) -> str:
    return cleared(params)


@register.simple_tag
def chosen(params: QueryDict, name: str) -> list[str]:
    """{% chosen request.GET "stage" as chosen_stages %}: the values a multi-valued parameter has."""
    return params.getlist(name)


@register.simple_tag
def date_picker(params: QueryDict, task_filter: Any, name: str) -> SafeString:
    """A datetime-local input for a date filter, showing the instant it was read as in the viewer's time zone.

    The picker sends a naive "2026-11-01T10:00", which the filter reads in the current (the viewer's) zone; a
    value with an offset from a link ("...T09:00Z") is shown converted, so submitting again keeps the instant.
    A value that did not parse is shown as typed (the page lists its error).
    """
    value = cleaned_data(task_filter).get(name)
    step = "60"
    if isinstance(value, datetime):
        local = timezone.localtime(value)
        text = local.strftime("%Y-%m-%dT%H:%M")
        if local.second or local.microsecond:  # the default step (a minute) would make the form invalid
            text, step = local.strftime("%Y-%m-%dT%H:%M:%S.%f"), "any"
    else:
        text = params.get(name, "")
    return format_html(
        '<input type="datetime-local" name="{}" id="id_{}" value="{}" step="{}">', name, name, text, step
    )
