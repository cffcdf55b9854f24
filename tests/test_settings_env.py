"""Settings in one place (issue 12, item 7): one typed reader per variable, its bounds in one table.

The readers (workflowsite/env.py) are tried directly; settings.py is read afresh
in this process with a chosen environment (runpy), and through `manage.py check`
in a child process where what an operator sees matters: one line, non-zero exit.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from tasks_app.checks import ENGINE_NUMBERS, check_task_settings
from tests.support.processes import ROOT, subprocess_env
from workflowsite.env import (
    BOUNDS,
    FLOAT_MAX,
    POSITIVE,
    Bounds,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_rate,
    floats,
    ints,
)

VAR = "WORKFLOWSITE_TEST_VARIABLE"


def refusal(monkeypatch: pytest.MonkeyPatch, raw: str, read: Any) -> str:
    """The message `read()` refuses VAR=raw with; it is one line."""
    monkeypatch.setenv(VAR, raw)
    with pytest.raises(ImproperlyConfigured) as caught:
        read()
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "1e308", "infinity"])
def test_float_refuses_nan_and_infinities(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    message = refusal(monkeypatch, raw, lambda: env_float(VAR, 1.0, floats()))
    assert message == f"{VAR} must be between 0 and 1e+09, got {raw!r}"


def test_float_bounds_name_the_variable_the_value_and_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    bounds = floats(1.0, 10.0)
    message = refusal(monkeypatch, "0.5", lambda: env_float(VAR, 2.0, bounds))
    assert message == f"{VAR} must be between 1 and 10, got '0.5'"
    assert refusal(monkeypatch, "10.5", lambda: env_float(VAR, 2.0, bounds)).endswith("got '10.5'")
    assert refusal(monkeypatch, "fast", lambda: env_float(VAR, 2.0, bounds)) == f"{VAR} must be a number, got 'fast'"
    for edge in ("1", "10", " 7.5 "):
        monkeypatch.setenv(VAR, edge)
        assert env_float(VAR, 2.0, bounds) == float(edge)


def test_exclusive_minimum_refuses_the_minimum_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, "0", lambda: env_float(VAR, 1.0, POSITIVE))
    assert message == f"{VAR} must be between 0 (exclusive) and 1e+09, got '0'"
    assert refusal(monkeypatch, "-0.0", lambda: env_float(VAR, 1.0, POSITIVE))
    monkeypatch.setenv(VAR, "0.001")
    assert env_float(VAR, 1.0, POSITIVE) == 0.001


def test_int_bounds_and_junk(monkeypatch: pytest.MonkeyPatch) -> None:
    bounds = ints(1, 200)
    assert refusal(monkeypatch, "0", lambda: env_int(VAR, 5, bounds)) == f"{VAR} must be between 1 and 200, got '0'"
    assert refusal(monkeypatch, "201", lambda: env_int(VAR, 5, bounds)).endswith("got '201'")
    assert refusal(monkeypatch, "1.5", lambda: env_int(VAR, 5, bounds)) == f"{VAR} must be an integer, got '1.5'"
    assert refusal(monkeypatch, "nan", lambda: env_int(VAR, 5, bounds)) == f"{VAR} must be an integer, got 'nan'"
    monkeypatch.setenv(VAR, " 200 ")
    assert env_int(VAR, 5, bounds) == 200


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_unset_or_empty_numbers_take_the_default(monkeypatch: pytest.MonkeyPatch, raw: str | None) -> None:
    if raw is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, raw)
    assert env_int(VAR, 7, ints()) == 7
    assert env_float(VAR, 0.5, POSITIVE) == 0.5
    assert env_bool(VAR, True) is True


def test_bounds_admit_only_finite_numbers_of_their_kind() -> None:
    assert POSITIVE.admits(0.5) and POSITIVE.admits(3)
    for value in (0, -1, float("nan"), float("inf"), FLOAT_MAX * 2, "1", None, True):
        assert not POSITIVE.admits(value), value
    whole = ints(1, 10)
    assert whole.admits(10) and not whole.admits(10.0) and not whole.admits(False) and not whole.admits(11)
    assert Bounds(0, 1).describe() == "a number between 0 and 1"
    assert whole.describe() == "a whole number between 1 and 10"


def test_a_number_without_a_row_in_the_table_is_a_programming_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every number settings.py reads takes its bounds from BOUNDS: one forgotten stops the start.
    monkeypatch.delenv(VAR, raising=False)
    with pytest.raises(KeyError):
        env_float(VAR, 1.0)


# -- booleans, choices, lists, rates ----------------------------------------------------------------


def test_bool_spellings_and_junk(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, value in (("Yes", True), (" on ", True), ("1", True), ("FALSE", False), ("off", False), ("0", False)):
        monkeypatch.setenv(VAR, raw)
        assert env_bool(VAR, not value) is value
    message = refusal(monkeypatch, "maybe", lambda: env_bool(VAR, True))
    assert message == f"{VAR} must be a boolean (true/false), got 'maybe'"


def test_choice_names_every_choice_and_keeps_its_spelling(monkeypatch: pytest.MonkeyPatch) -> None:
    levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    message = refusal(monkeypatch, "LOUD", lambda: env_choice(VAR, "INFO", levels))
    assert message == f"{VAR} must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got 'LOUD'"
    monkeypatch.setenv(VAR, " warning ")
    assert env_choice(VAR, "INFO", levels) == "WARNING"
    assert refusal(monkeypatch, "xml", lambda: env_choice(VAR, "text", ("text", "json"))).startswith(
        f"{VAR} must be text or json"
    )


def test_list_strips_items_and_drops_empty_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, " a.example , ,b.example,, ")
    assert env_list(VAR) == ["a.example", "b.example"]
    monkeypatch.setenv(VAR, " , ")
    assert env_list(VAR, "x,y") == []  # set, even to nothing, replaces the default
    monkeypatch.delenv(VAR)
    assert env_list(VAR, "x, y") == ["x", "y"]
    assert env_list(VAR) == []


def test_list_items_are_checked_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def short(item: str) -> str | None:
        return "is too long" if len(item) > 3 else None

    assert refusal(monkeypatch, "ab, abcd ,c", lambda: env_list(VAR, item=short)) == f"{VAR}: 'abcd' is too long"


def test_rate_is_what_the_throttles_can_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw in ("5/minute", " 120/m ", "0/day", "20000/second"):
        monkeypatch.setenv(VAR, raw)
        assert env_rate(VAR, "1/minute") == raw.strip()
    for raw in ("lots", "5/fortnight", "5", "-1/minute", "five/minute", "5/Minute"):
        assert refusal(monkeypatch, raw, lambda: env_rate(VAR, "1/minute")).startswith(f"{VAR} must be a rate")


# -- settings.py read afresh with a chosen environment -------------------------------------------------


def read_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "workflowsite" / "settings.py"))


def settings_refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    with pytest.raises(ImproperlyConfigured) as caught:
        read_settings(monkeypatch, **env)
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # 0 passed settings.py (minimum 0) and then failed the system check (> 0): one rule now.
        ({"TASKS_POLL_INTERVAL": "0"}, "TASKS_POLL_INTERVAL must be between 0 (exclusive) and 1e+09, got '0'"),
        ({"TASKS_POLL_INTERVAL": "nan"}, "TASKS_POLL_INTERVAL must be between 0 (exclusive) and 1e+09, got 'nan'"),
        ({"TASKS_RETRY_BACKOFF_MAX": "0"}, "TASKS_RETRY_BACKOFF_MAX must be between 0 (exclusive)"),
        # The jitter is a fraction: settings.py took anything up to 1e9, the check 0 to 1.
        ({"TASKS_RETRY_JITTER": "2"}, "TASKS_RETRY_JITTER must be between 0 and 1, got '2'"),
        ({"TASKS_PRUNE_INTERVAL": "0.5"}, "TASKS_PRUNE_INTERVAL must be between 1 and 1e+09, got '0.5'"),
        # A raw ValueError from logging.config before.
        ({"TASKS_LOG_LEVEL": "LOUD"}, "TASKS_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got 'LOUD'"),
        # DRF read the rate at the first request: every API call a 500.
        ({"API_THROTTLE_USER": "lots"}, "API_THROTTLE_USER must be a rate"),
        ({"HOOK_THROTTLE": "5/fortnight"}, "HOOK_THROTTLE must be a rate"),
        ({"TASKS_METRICS_ALLOW": " 10.0.0.0/8 , nonsense"}, "TASKS_METRICS_ALLOW: 'nonsense' is not an IP address"),
        ({"AXES_ENABLED": "perhaps"}, "AXES_ENABLED must be a boolean (true/false), got 'perhaps'"),
    ],
)
def test_settings_refuse_a_bad_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    assert message in settings_refusal(monkeypatch, **env)


def test_a_bad_database_url_is_one_line_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("postgress://tasks:s3cret@db/tasks", "postgres://tasks:s3cret@db:port/tasks"):
        message = settings_refusal(monkeypatch, DATABASE_URL=url)
        assert message.startswith("DATABASE_URL is not a database URL") and "s3cret" not in message


def test_settings_read_lists_choices_and_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    values = read_settings(
        monkeypatch,
        ALLOWED_HOSTS=" tasks.example.com, ,127.0.0.1 ",
        CSRF_TRUSTED_ORIGINS="https://tasks.example.com,",
        TASKS_METRICS_ALLOW="10.0.0.0/8, ::1",
        TASKS_LOG_LEVEL="warning",
        TASKS_LOG_FORMAT=" JSON ",
        TASKS_POLL_INTERVAL="0.25",
        TASKS_RETENTION_DAYS="0",
    )
    assert values["ALLOWED_HOSTS"] == ["tasks.example.com", "127.0.0.1"]
    assert values["CSRF_TRUSTED_ORIGINS"] == ["https://tasks.example.com"]
    assert values["TASKS_METRICS_ALLOW"] == ["10.0.0.0/8", "::1"]
    assert values["LOGGING"]["loggers"]["tasks_app"]["level"] == "WARNING"
    assert values["TASKS_LOG_FORMAT"] == "json"
    assert values["TASKS_POLL_INTERVAL"] == 0.25
    assert values["TASKS_RETENTION_DAYS"] is None  # 0 keeps every task


# -- one rule: the environment readers and the system check agree ------------------------------------


def just_outside(bounds: Bounds) -> list[float]:
    below = bounds.minimum if bounds.exclusive else bounds.minimum - 1
    return [below, bounds.maximum * 2]


@pytest.mark.parametrize("name", ENGINE_NUMBERS)
def test_the_check_and_the_environment_refuse_the_same_values(
    monkeypatch: pytest.MonkeyPatch, settings: Any, name: str
) -> None:
    bounds = BOUNDS[name]
    for value in just_outside(bounds):
        number = int(value) if bounds.integer else value
        assert f"{name} must be between" in settings_refusal(monkeypatch, **{name: str(number)})
        setattr(settings, name, number)
        errors = check_task_settings(None)
        assert [error.msg.split(",")[0] for error in errors] == [f"{name} must be {bounds.describe()}"]
    # The default is inside the bounds, for both.
    monkeypatch.delenv(name, raising=False)
    default = read_settings(monkeypatch)[name]
    assert bounds.admits(default)
    setattr(settings, name, default)
    assert check_task_settings(None) == []


@pytest.mark.parametrize(
    ("value", "check_id"),
    [(float("nan"), "tasks_app.E001"), (True, "tasks_app.E001"), (float("inf"), "tasks_app.E005")],
)
def test_the_check_refuses_nan_infinity_and_booleans_set_in_python(settings: Any, value: Any, check_id: str) -> None:
    # NaN compares false with everything: `value <= 0` let it through the old check.
    settings.TASKS_POLL_INTERVAL = value
    assert [error.id for error in check_task_settings(None)] == [check_id]


def test_every_number_settings_reads_is_in_the_table_and_its_value_inside() -> None:
    from django.conf import settings

    for name, bounds in BOUNDS.items():
        value = getattr(settings, name, None)
        if value is not None:  # DB_CONN_MAX_AGE lives in DATABASES; unset retention and cool-off are None
            assert bounds.admits(value), name


# -- what an operator sees ------------------------------------------------------------------------------


def manage_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # A throwaway database: a setting that got through must not touch the development one.
    base = {**subprocess_env(), "DATABASE_URL": f"sqlite:///{tmp_path / 'check.sqlite3'}"}
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("TASKS_POLL_INTERVAL", "0", "between 0 (exclusive) and 1e+09, got '0'"),
        ("TASKS_POLL_INTERVAL", "nan", "between 0 (exclusive) and 1e+09, got 'nan'"),
        ("TASKS_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR or CRITICAL, got 'LOUD'"),
    ],
)
def test_manage_py_check_refuses_a_bad_setting_in_exactly_one_line(
    tmp_path: Path, variable: str, value: str, rule: str
) -> None:
    result = manage_check(tmp_path, **{variable: value})
    assert result.returncode != 0
    assert result.stderr.splitlines() == [f"configuration error: {variable} must be {rule}"], result.stderr
