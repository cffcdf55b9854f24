"""Payload lookups: what `payload=` (the list's, the API's and the lookup box's) means, on both databases.

The text is a JSON object (`{"customer": {"tier": "gold"}}`) or the shorthand
`key=value` / `key:value`, whose key may be a dotted path into nested objects
(`customer.email:x@y`) and whose value is JSON when it parses (`42`, `true`,
`"42"`), else the text itself. The query is split into leaves, each matched on
its own:

- a scalar leaf matches when a value at its path equals it (same JSON type;
  numbers by value: 42 = 42.0). Arrays on the way and at the end are looked
  into, so `items=lamp` matches `{"items": ["lamp", "desk"]}` and
  `items.sku=lamp` matches `{"items": [{"sku": "lamp"}]}` (PostgreSQL's lax
  jsonpath: `$."items" ? (@ == "lamp")`);
- in the shorthand, a bare number also matches the same text stored as a
  string: `order_id:42` finds `{"order_id": 42}` and `{"order_id": "42"}`
  (people type what they see, and ids often travel as strings); quote it,
  `order_id:"42"`, for the string alone. The JSON form is exact: `{"order_id": 42}`
  is the number only;
- a list of scalars is one leaf per element (`{"tags": ["a", "b"]}`: both are in tags);
- an empty object or list, or a list holding objects or lists, is matched by
  containment as jsonb's `@>` defines it.

PostgreSQL runs the leaves as `jsonb_path_exists` / `@>`; SQLite, which has
neither, runs the same rules in Python (`payload_matches`, registered as an SQL
function on the connection). Neither is served by an index: the task list
searches newest-first in bounded id ranges (selectors.tasks.search_range).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import BooleanField, Expression, F
from django.db.models.sql.compiler import SQLCompiler

from tasks_app.values import NotStorable, check_json, loads_bounded

SQLITE_FUNCTION = "tasks_payload_match"


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]
    # "eq": a value at the path equals one of `values`; "contains": the payload @> nested(path, values[0]).
    kind: str
    values: tuple[Any, ...]


def parse(text: str) -> list[Leaf] | None:
    """The leaves of a payload query (None for blank text); ValueError with a message for text that isn't one."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            parsed = loads_bounded(text)
        except NotStorable as exc:
            raise ValueError(f"Not a value a query can match: {exc}.") from None
        except ValueError as exc:
            raise ValueError(f"Not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError('Must be a JSON object, like {"customer_id": 12345}.')
        return leaves_of(parsed)
    parts = split_shorthand(text)
    if parts is None:
        raise ValueError(
            "Must be key=value or key:value (a dotted key reaches into objects: customer.email:x@y),"
            ' or a JSON object, like {"customer_id": 12345}.'
        )
    key, raw = parts[0].strip(), parts[2].strip()
    path = tuple(part.strip() for part in key.split("."))
    if not all(path):
        raise ValueError(f"Not a key path: {key!r} (name each key, like customer.email:x@y).")
    try:
        value: Any = loads_bounded(raw)
        quoted = False
    except NotStorable as exc:
        raise ValueError(f"Not a value a query can match: {exc}.") from None
    except ValueError:
        value, quoted = raw, True  # not JSON: the text itself
    try:
        check_json({"k": list(path), "v": value})
    except NotStorable as exc:
        raise ValueError(f"Not a value a query can match: {exc}.") from None
    if isinstance(value, int | float) and not isinstance(value, bool) and not quoted:
        return [Leaf(path, "eq", (value, raw))]  # 42 also finds "42"
    nested: Any = value
    for part in reversed(path):
        nested = {part: nested}
    return leaves_of(nested)


def split_shorthand(text: str) -> tuple[str, str, str] | None:
    """`key=value` or `key:value` as (key, separator, value), split at whichever comes first (unstripped)."""
    cuts = [i for i in (text.find("="), text.find(":")) if i > 0]
    if not cuts:
        return None
    cut = min(cuts)
    return text[:cut], text[cut], text[cut + 1 :]


def leaves_of(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[Leaf]:
    out: list[Leaf] = []
    for key, value in obj.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and value:
            out += leaves_of(value, path)
        elif isinstance(value, list) and value and not any(isinstance(v, dict | list) for v in value):
            out += [Leaf(path, "eq", (v,)) for v in value]
        elif isinstance(value, dict | list):
            out.append(Leaf(path, "contains", (value,)))
        else:
            out.append(Leaf(path, "eq", (value,)))
    return out


def nested(path: tuple[str, ...], value: Any) -> Any:
    for part in reversed(path):
        value = {part: value}
    return value


# -- PostgreSQL ---------------------------------------------------------------------------


def jsonpath_of(leaf: Leaf) -> tuple[str, str]:
    """`$."a"."b" ? (@ == $v0 || @ == $v1)` and its variables (values never go into the path's text)."""
    keys = "".join("." + json.dumps(part) for part in leaf.path)
    test = " || ".join(f"@ == $v{i}" for i in range(len(leaf.values)))
    variables = {f"v{i}": v for i, v in enumerate(leaf.values)}
    return f"$.{keys[1:]} ? ({test})", json.dumps(variables)


class PayloadMatches(Expression):
    """True when a task's payload matches every leaf (a WHERE clause: `.filter(PayloadMatches(leaves))`)."""

    conditional = True

    def __init__(self, leaves: list[Leaf], payload: Any = None) -> None:
        super().__init__(output_field=BooleanField())
        self.leaves = leaves
        self.payload: Any = payload if payload is not None else F("payload")

    def get_source_expressions(self) -> list[Any]:
        return [self.payload]

    def set_source_expressions(self, exprs: Sequence[Any]) -> None:
        (self.payload,) = exprs

    def as_sql(self, compiler: SQLCompiler, connection: BaseDatabaseWrapper) -> tuple[str, list[Any]]:
        column, column_params = compiler.compile(self.payload)  # the resolved F("payload"): a Col
        if connection.vendor == "postgresql":
            parts, params = [], []
            for leaf in self.leaves:
                if leaf.kind == "eq":
                    path, variables = jsonpath_of(leaf)
                    parts.append(f"jsonb_path_exists({column}, %s::jsonpath, %s::jsonb)")
                    params += [*column_params, path, variables]
                else:
                    parts.append(f"{column} @> %s::jsonb")
                    params += [*column_params, json.dumps(nested(leaf.path, leaf.values[0]))]
            return "(" + " AND ".join(parts or ["TRUE"]) + ")", params
        if connection.vendor == "sqlite":
            register_sqlite_function(connection)
            spec = json.dumps([[list(leaf.path), leaf.kind, list(leaf.values)] for leaf in self.leaves])
            return f"{SQLITE_FUNCTION}({column}, %s)", [*column_params, spec]
        raise NotImplementedError(f"payload lookups on {connection.vendor}")


# -- SQLite (and the rules in Python) -------------------------------------------------------


def register_sqlite_function(connection: BaseDatabaseWrapper) -> None:
    """Make the SQL function available on this connection (cheap; create_function replaces)."""
    connection.ensure_connection()
    connection.connection.create_function(SQLITE_FUNCTION, 2, _sqlite_match, deterministic=True)


@lru_cache(maxsize=64)
def _spec(text: str) -> list[Leaf]:
    return [Leaf(tuple(path), kind, tuple(values)) for path, kind, values in json.loads(text)]


def _sqlite_match(payload: str | None, spec: str) -> int:
    if payload is None:
        return 0
    return int(payload_matches(json.loads(payload), _spec(spec)))


def payload_matches(payload: Any, leaves: list[Leaf]) -> bool:
    return all(_leaf_matches(payload, leaf) for leaf in leaves)


def _unwrap(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        out.extend(item if isinstance(item, list) else [item])
    return out


def _leaf_matches(payload: Any, leaf: Leaf) -> bool:
    if leaf.kind == "contains":
        return _contains(payload, nested(leaf.path, leaf.values[0]))
    nodes = [payload]
    for key in leaf.path:  # lax accessors: an array on the way is looked into (one level)
        nodes = [node[key] for node in _unwrap(nodes) if isinstance(node, dict) and key in node]
    # The filter looks into an array at the end, and the comparison once more (as jsonpath's lax mode does).
    return any(_same(value, want) for value in _unwrap(_unwrap(nodes)) for want in leaf.values)


def _same(a: Any, b: Any) -> bool:
    """jsonpath's ==: same JSON type (a boolean is not a number), numbers by value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if a is None or b is None:
        return a is None and b is None
    return isinstance(a, str) and isinstance(b, str) and a == b


def _contains(a: Any, b: Any) -> bool:
    """jsonb's @> below the top level."""
    if isinstance(b, dict):
        return isinstance(a, dict) and all(k in a and _contains(a[k], v) for k, v in b.items())
    if isinstance(b, list):
        return isinstance(a, list) and all(any(_contains(x, y) for x in a) for y in b)
    if isinstance(a, dict | list):
        return False
    return _same(a, b)
