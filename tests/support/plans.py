"""EXPLAIN helpers for the PostgreSQL plan tests: a statement's plan as JSON, custom or generic."""

from __future__ import annotations

import json
import re
from typing import Any

from django.db import connection


def explain(sql: str, params: Any, options: str = "FORMAT JSON") -> dict[str, Any]:
    """The top plan node of `sql` with `params` (`options` must include FORMAT JSON)."""
    with connection.cursor() as cur:
        cur.execute(f"EXPLAIN ({options}) " + sql, params)
        (doc,) = cur.fetchone()
    return (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]


def explain_generic(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The plan a prepared statement may settle on after its first runs: one made for any parameter values."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", number, sql).replace("%%", "%")
    with connection.cursor() as cur:
        cur.execute("PREPARE plan_probe AS " + prepared.replace("%", "%%"))
        try:
            cur.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            args = ", ".join(["%s"] * len(names))
            plan = explain(f"EXECUTE plan_probe({args})", [params[name] for name in names])
        finally:
            cur.execute("DEALLOCATE plan_probe")
    return plan
