"""Moving an Abstra project's task schemas from the stages that receive a type to the stages that send it.

Abstra (3.32, `TaskExecutor.send_task`) checks a sent task against the
`task_schema` of every stage the type is routed *into*, before creating any
copy, and refuses the whole send if one of them refuses. A receiver's
`task_schema` is either

- a map {task type: JSON Schema}, where the key "default" also covers the
  types without their own entry, and a type with neither is refused
  ("Task type 'x' is not defined in stage schema"); or
- a flat JSON Schema (its "type" is a JSON Schema type such as "object"),
  which Abstra reads as {"default": schema}: it covers every type.

An empty or missing `task_schema` accepts everything. This project keys
schemas by the *sending* stage (Stage.schemas {type or "*": schema}), so each
sender S gets, for each type T it can send, the schemas of every stage S
routes T into (a wildcard transition routes every type), combined:

- none of them has a schema: no entry;
- one schema: that schema, as it is (a form stage shows its fields);
- several: {"allOf": [...]} (local `$ref`s rewritten to point into their
  branch), so S refuses what any receiver refused;
- a receiver that refuses the type: REFUSE ({"not": {}}), which refuses every
  payload of that type, as Abstra did.

The types computed are those of S's typed transitions plus those named in the
maps of the stages its wildcard transitions reach; "*" gets what those
wildcard receivers do with a type they don't name (their "default", or a
refusal). An entry equal to the "*" one is left out (it would say the same).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tasks_app.models import validate_task_type
from tasks_app.schema_rules import WILDCARD

# What Abstra's _normalize_task_schema reads as a flat schema rather than a map of types.
JSON_SCHEMA_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
DEFAULT_KEY = "default"
ACCEPT: dict[str, Any] = {}
REFUSE: dict[str, Any] = {"not": {}}
# Keywords that give a part of a schema its own base or name: a branch moved under allOf would change meaning.
BASE_KEYWORDS = ("$id", "$anchor", "$dynamicAnchor", "$recursiveAnchor", "$dynamicRef", "$recursiveRef")
DATA_KEYWORDS = ("enum", "const", "default", "examples")
DEFAULT_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass
class ReceiverRule:
    """What one Abstra stage accepts: None (no schema, all), or its normalised {type: schema} map."""

    types: dict[str, Any] | None
    refuses_all: bool = False

    def for_type(self, type: str) -> dict[str, Any] | None:
        """The schema a task of `type` sent into this stage must match (REFUSE: none may); None: no check."""
        if self.refuses_all:
            return REFUSE
        if self.types is None:
            return None
        schema = self.types.get(type)
        if schema is None:
            schema = self.types.get(DEFAULT_KEY)
        return _as_schema(schema)

    def for_other_types(self) -> dict[str, Any] | None:
        """The schema for a type this stage's map doesn't name."""
        if self.refuses_all:
            return REFUSE
        return None if self.types is None else _as_schema(self.types.get(DEFAULT_KEY))


def _as_schema(value: object) -> dict[str, Any]:
    # Abstra hands the value to jsonschema.validate: true accepts, false refuses; None (no entry) refuses;
    # anything else is not a schema and the send fails, so it refuses too.
    if value is True:
        return ACCEPT
    if isinstance(value, dict):
        return value
    return REFUSE


def receiver_rule(task_schema: object, where: str, unmapped: list[str]) -> ReceiverRule:
    """Read one stage's `task_schema` as Abstra does; what Abstra would fail on is listed and refuses."""
    if not task_schema:  # Abstra: `if task_schema:` (null, {} and "" mean no schema)
        return ReceiverRule(None)
    if not isinstance(task_schema, dict):
        unmapped.append(f"{where}: not an object; Abstra fails every send into this stage, so its senders refuse")
        return ReceiverRule(None, refuses_all=True)
    kind = task_schema.get("type")
    if isinstance(kind, list | dict):  # Abstra's `in` test on a set raises TypeError: every send fails
        unmapped.append(f"{where}.type: a list or object; Abstra fails every send into this stage, so it refuses")
        return ReceiverRule(None, refuses_all=True)
    if kind in JSON_SCHEMA_TYPES:
        return ReceiverRule({DEFAULT_KEY: task_schema})
    for key, value in task_schema.items():
        if value is not None and not isinstance(value, dict | bool):
            unmapped.append(f"{where}.{key}: not a JSON Schema; Abstra fails such a send, so its senders refuse it")
    return ReceiverRule(dict(task_schema))


def _valid_type(type: str) -> bool:
    try:
        validate_task_type(type)
    except Exception:  # ValidationError: not a type this project can route
        return False
    return type == type.strip()


def _canonical(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True)


def _walk(value: object) -> Iterator[dict[str, Any]]:
    """Every object in a schema, but not inside its data (an enum's values are not subschemas)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(v for k, v in item.items() if k not in DATA_KEYWORDS)
        elif isinstance(item, list):
            stack.extend(item)


def _rebased(schema: dict[str, Any], index: int) -> dict[str, Any] | None:
    """A copy of `schema` to sit at /allOf/index: its local $refs point into the branch; None if it can't."""
    copy = json.loads(json.dumps(schema))
    copy.pop("$schema", None)
    for node in _walk(copy):
        if any(k in node for k in BASE_KEYWORDS) or isinstance(node.get("id"), str):
            return None
        ref = node.get("$ref")
        if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
            node["$ref"] = f"#/allOf/{index}{ref[1:]}"
        elif isinstance(ref, str) and ref.startswith("#"):
            return None  # a named anchor: its name lives in the branch's own resource
    return copy


def combine(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One schema that refuses what any part refuses; None if they can't be combined safely."""
    unique: dict[str, dict[str, Any]] = {}
    for part in parts:
        unique.setdefault(_canonical(part), part)
    if _canonical(REFUSE) in unique:
        return REFUSE
    kept = [p for p in unique.values() if p != ACCEPT]
    if len(kept) <= 1:
        return kept[0] if kept else ACCEPT
    dialects = {p.get("$schema", DEFAULT_DIALECT) for p in kept}
    branches = [_rebased(p, i) for i, p in enumerate(kept)]
    if len(dialects) != 1 or any(b is None for b in branches):
        return None
    named = {p["$schema"] for p in kept if "$schema" in p}
    return {**({"$schema": named.pop()} if named else {}), "allOf": branches}


Route = tuple[str, ReceiverRule, str]  # (task type, "" = every type; the receiver's rule; the receiver's slug)


def sender_schemas(routes: list[Route], where: str, unmapped: list[str]) -> dict[str, Any]:
    """Stage.schemas for a stage with these outgoing routes, in Abstra's terms (module docstring)."""
    wild = [rule for type, rule, _slug in routes if not type]
    typed = {type for type, _rule, _slug in routes if type}
    named = {key for rule in wild if rule.types for key in rule.types} - typed
    entries: dict[str, dict[str, Any]] = {}

    def put(key: str, parts: list[dict[str, Any] | None], receivers: list[str]) -> None:
        given = [p for p in parts if p is not None]
        if not given:
            return
        schema = combine(given)
        if schema is None:
            unmapped.append(
                f"{where}: the schemas of {', '.join(receivers)} for type '{key}' use $id, anchors, dynamic refs "
                "or different drafts and can't be combined; the type is refused here (REFUSE): write one by hand"
            )
            schema = REFUSE
        entries[key] = schema

    if wild:
        put(WILDCARD, [r.for_other_types() for r in wild], [s for t, _r, s in routes if not t])
    for type in sorted(typed | named):
        if type in named and not _valid_type(type):
            unmapped.append(f"{where}: type '{type}' of a receiver's task_schema is not a task type here; left out")
            continue
        matching = [(rule, slug) for t, rule, slug in routes if t in ("", type)]
        put(type, [rule.for_type(type) for rule, _slug in matching], [slug for _rule, slug in matching])
    star = entries.get(WILDCARD, ACCEPT)
    return {key: s for key, s in entries.items() if (s != ACCEPT if key == WILDCARD else s != star)}
