"""Server-side SVG charts of the hourly roll-ups (selectors.figures): no JavaScript, nothing inline to style.

A chart is an <svg role="img"> whose <title> and <desc> say what it shows and its
totals in words; each bar carries a <title> (a hover tooltip, and what a screen
reader can reach), and _hourly_chart.html puts a table of the hours with events
beside it. Colours come from app.css classes (dark mode follows), so the strict
CSP (no inline styles) holds.
"""

from __future__ import annotations

import itertools
from typing import Any

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from tasks_app.selectors.figures import HourCounts, HourlySeries, format_seconds
from tasks_app.services.rollups import Percentile

register = template.Library()

BAR = 4  # viewBox units per hour (a 3-unit bar and a gap)
HEIGHT = 60
# What a chart stacks, bottom up: (HourCounts field, label, CSS class).
OUTCOMES = (("completed", "completed", "bar-completed"), ("retried", "retried", "bar-retried"),
            ("failed", "failed", "bar-failed"))  # fmt: skip
ERRORS = (("errors", "errors", "bar-errors"),)
KINDS = {"outcomes": OUTCOMES, "errors": ERRORS}

_ids = itertools.count(1)


def _bars(series: HourlySeries, stack: tuple[tuple[str, str, str], ...]) -> tuple[list[tuple[Any, ...]], int]:
    """(x, y, height, class, tooltip) of each bar segment, and the tallest hour's total."""
    totals = {i: sum(getattr(c, name) for name, _, _ in stack) for i, c in series.by_index.items()}
    top = max(totals.values(), default=0)
    bars = []
    for i, c in sorted(series.by_index.items()):
        if not totals[i]:
            continue
        when = f"{series.hour(i):%a %d %b %H:00} UTC"
        tip = when + ": " + ", ".join(f"{getattr(c, name)} {label}" for name, label, _ in stack)
        y = float(HEIGHT)
        for name, _, css in stack:
            n = getattr(c, name)
            if not n:
                continue
            h = max(HEIGHT * n / top, 1.0)
            y -= h
            bars.append((i * BAR, round(y, 2), round(h, 2), css, tip))
    return bars, top


def chart_summary(series: HourlySeries, kind: str = "outcomes") -> str:
    """The chart in words: the totals of each series over the hours, and the busiest hour."""
    stack = KINDS[kind]
    days = series.hours // 24
    parts = ", ".join(f"{series.total(name):,} {label}" for name, label, _ in stack)
    busiest = max(series.by_index.items(), key=lambda item: sum(getattr(item[1], n) for n, _, _ in stack), default=None)
    text = f"Per hour over the last {days} days: {parts}."
    if busiest is not None and sum(getattr(busiest[1], n) for n, _, _ in stack):
        text += f" Busiest hour: {series.hour(busiest[0]):%a %d %b %H:00} UTC."
    return text


@register.simple_tag
def hourly_svg(series: HourlySeries, kind: str = "outcomes", title: str = "", small: bool = False) -> SafeString:
    """An <svg> bar chart of a series: stacked completed/retried/failed per hour, or errors per hour."""
    stack = KINDS[kind]
    bars, top = _bars(series, stack)
    uid = f"chart-{next(_ids)}"
    width = series.hours * BAR
    days = format_html_join(
        "",
        '<line class="chart-day" x1="{0}" x2="{0}" y1="0" y2="{1}"></line>',
        ((i * BAR, HEIGHT) for i in range(series.hours) if series.hour(i).hour == 0),
    )
    rects = format_html_join(
        "",
        '<rect class="{3}" x="{0}" y="{1}" width="{5}" height="{2}"><title>{4}</title></rect>',
        ((x, y, h, css, tip, BAR - 1) for x, y, h, css, tip in bars),
    )
    return format_html(
        '<svg class="hourly-chart{small}" role="img" aria-labelledby="{uid}-t {uid}-d" viewBox="0 0 {w} {h}"'
        ' preserveAspectRatio="none" data-top="{top}" data-bars="{n}">'
        '<title id="{uid}-t">{title}</title><desc id="{uid}-d">{desc}</desc>'
        '<line class="chart-base" x1="0" x2="{w}" y1="{h}" y2="{h}"></line>{days}{rects}</svg>',
        small=" small" if small else "",
        uid=uid,
        w=width,
        h=HEIGHT,
        top=top,
        n=len(bars),
        title=title,
        desc=chart_summary(series, kind),
        days=days,
        rects=rects,
    )


@register.filter
def seconds(value: float | Percentile | None) -> str:
    """A duration in seconds for people (selectors.figures.format_seconds)."""
    return format_seconds(value)


@register.filter
def percent(value: float | None) -> str:
    """0.823 -> "82%"; None -> "—"."""
    return "—" if value is None else f"{value:.0%}"


@register.filter
def hours_with_events(series: HourlySeries) -> list[tuple[Any, HourCounts]]:
    """The series' hours that had events, newest first (the table beside a chart)."""
    return [(series.hour(i), c) for i, c in sorted(series.by_index.items(), reverse=True)]


@register.filter
def thousands(value: int | None) -> str:
    """1234567 -> "1,234,567"."""
    return "—" if value is None else f"{value:,}"


@register.filter
def series_of(charts: dict[int, HourlySeries] | None, stage_id: int) -> HourlySeries | None:
    """A stage's series out of hourly_series()'s dict (None without one)."""
    return (charts or {}).get(stage_id)
