"""System checks of the engine's settings: bad values are reported by `manage.py check`."""

from __future__ import annotations

from typing import Any

import pytest

from tasks_app.checks import check_task_settings


def ids(settings: Any) -> list[str]:
    return [error.id for error in check_task_settings(None)]


def test_the_default_settings_pass(settings: Any) -> None:
    assert ids(settings) == []


# The messages state the bounds settings.py reads the variables with (workflowsite.env.BOUNDS).
@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("TASKS_LOCK_TIMEOUT", 0, "a whole number between 1 and 604800, got 0"),
        ("TASKS_POLL_INTERVAL", -1, "a number between 0 (exclusive) and 1e+09, got -1"),
        ("TASKS_HOOK_TOLERANCE", 0, "a number between 0 (exclusive) and 1e+09, got 0"),
        ("TASKS_SCHEDULER_INTERVAL", "1", "a number between 0 (exclusive) and 1e+09, got '1'"),
        ("TASKS_PRUNE_INTERVAL", 0, "a number between 1 and 1e+09, got 0"),
        ("TASKS_JOB_MAX_TASKS", 0, "a whole number between 1 and 2147483647, got 0"),
    ],
)
def test_non_positive_intervals_and_limits_are_errors(settings: Any, name: str, value: Any, rule: str) -> None:
    setattr(settings, name, value)
    errors = check_task_settings(None)
    assert [e.id for e in errors] == ["tasks_app.E001"]
    assert errors[0].msg == f"{name} must be {rule}"


@pytest.mark.parametrize("value", [0, -3, "30"])
def test_retention_must_be_unset_or_positive(settings: Any, value: Any) -> None:
    settings.TASKS_RETENTION_DAYS = value
    assert ids(settings) == ["tasks_app.E004"]


def test_retention_may_be_unset_or_a_fraction_of_a_day(settings: Any) -> None:
    for value in (None, 0.5, 30):
        settings.TASKS_RETENTION_DAYS = value
        assert ids(settings) == []
