"""JSON Schema rules for payloads, with no model in sight: which schemas may be stored, and checking a payload.

A schema is data someone typed in, not code: validating a payload never
reaches outside the schema. Validators are built on a registry that cannot
retrieve anything, so a `$ref` to a URL or a file is never fetched; such refs
are refused when the stage is saved (`schema_problems`, run by
Stage.schemas' validator in tasks_app.models), and one stored anyway (raw
SQL, an old row) refuses the payload with the reason instead of fetching or
failing with a 500 (`payload_errors`).

Which schema applies to which task (the sending stage's, or the senders' of a
task created directly) is tasks_app.services.schemas: it reads stages, and
this module sits below the models so that their validators can use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from typing import Any
from urllib.parse import urljoin

import referencing.jsonschema
from django.core.exceptions import ValidationError
from jsonschema import SchemaError, validators
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

WILDCARD = "*"
MAX_MESSAGES = 20
# JSON nesting levels a schema may have (the schema object itself is level 1).
# Validation recurses once or more per level; forms use a handful. A limit
# keeps every walk (ours, the meta-schema check, validation) far from
# Python's recursion limit.
MAX_SCHEMA_DEPTH = 32
REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
# The drafts the form renderer understands: "required" is a list of names
# from draft-04 on (draft-03 put `required: true` on each property).
SUPPORTED_DRAFTS = (
    validators.Draft4Validator,
    validators.Draft6Validator,
    validators.Draft7Validator,
    validators.Draft201909Validator,
    validators.Draft202012Validator,
)
LATEST = validators.Draft202012Validator
# Instances a new schema is tried on, to find $ref loops that never reach a keyword.
PROBES: tuple[object, ...] = ({}, None)


def _never_retrieve(uri: str) -> Resource[Any]:
    # Only the schema itself (and the drafts' meta-schemas jsonschema bundles) can be referred to.
    # referencing's attrs classes are declared for pyright (a private __dataclass_transform__): mypy sees
    # KeyError's and Mapping's constructors, here and for Registry below.
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


NO_RETRIEVAL: Registry[Any] = Registry(retrieve=_never_retrieve)  # type: ignore[call-arg]


# -- what makes a schema unusable -------------------------------------------------------------


def _step(path: str, key: object) -> str:
    # JSON Pointer escaping, so a property named "a/b" can't pass for two levels.
    part = str(key).replace("~", "~0").replace("/", "~1")
    return f"{path}/{part}" if path else part


def _walk(schema: object) -> Iterator[tuple[str, object, int]]:
    """(path, value, depth) of every value in `schema`, parents first; iterative, stops below the depth limit."""
    stack: list[tuple[str, object, int]] = [("", schema, 1)]
    while stack:
        path, value, depth = stack.pop()
        yield path, value, depth
        if depth > MAX_SCHEMA_DEPTH:
            continue
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        stack.extend((_step(path, k), v, depth + 1) for k, v in reversed(list(items)))


def _at(path: str) -> str:
    return f" (at {path})" if path else ""


def _depth_problems(schema: object) -> list[str]:
    for path, value, depth in _walk(schema):
        if depth > MAX_SCHEMA_DEPTH and isinstance(value, dict | list):  # {} is one level, "x" none
            return [f"is nested deeper than {MAX_SCHEMA_DEPTH} levels{_at(path)}."]
    return []


def _draft(schema: dict[str, Any]) -> Any:
    """The validator class the schema's $schema names: LATEST if it names none, None if unknown."""
    dialect = schema.get("$schema")
    if dialect is None:
        return LATEST
    if not isinstance(dialect, str):
        return None
    try:
        # For an unknown $schema jsonschema returns `default` as given; the stubs allow only a validator class.
        return validators.validator_for(schema, default=None)  # type: ignore[arg-type]
    except ValueError:  # not even a URI ("http://[")
        return None


def _dialect_problems(schema: dict[str, Any]) -> list[str]:
    """$schema, at the root or in a subschema, must name a draft the app supports."""
    problems = []
    for path, value, _depth in _walk(schema):
        if not isinstance(value, dict) or "$schema" not in value:
            continue
        if not path and not isinstance(value["$schema"], str):
            continue  # _safety_problems says so
        cls = _draft(value)
        if cls in SUPPORTED_DRAFTS:
            continue
        named = json.dumps(value["$schema"])[:200]
        if cls is validators.Draft3Validator:
            problems.append(
                f"uses draft-03 ($schema {named}{_at(path)}), which is not supported: "
                'use draft-04 or later, where "required" is a list of property names.'
            )
        else:
            problems.append(
                f"names an unknown $schema {named}{_at(path)}: supported are "
                + ", ".join(str(c.ID_OF(c.META_SCHEMA)) for c in SUPPORTED_DRAFTS)
                + "."
            )
    return problems


def _references(schema: object) -> Iterator[tuple[str, str]]:
    """(path, reference) of every $ref-like string in the schema.

    Anywhere, values of `enum`, `const` or `default` included: refusing a URL
    that was only data costs an edit; missing a real reference costs a fetch.
    """
    for path, value, _depth in _walk(schema):
        if isinstance(value, dict):
            for keyword in REF_KEYWORDS:
                if isinstance(value.get(keyword), str):
                    yield _step(path, keyword), value[keyword]


def _remote_problems(schema: object) -> list[str]:
    return [
        f"refers to {json.dumps(ref)[:200]}{_at(path)}: only references inside the schema (starting with '#') "
        "are allowed; other documents (URLs, files) are never fetched."
        for path, ref in _references(schema)
        if not ref.startswith("#")
    ]


def _meta_problems(schema: dict[str, Any], cls: Any) -> list[str]:
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        return [f"is not a valid JSON Schema: {exc.message}{_at(where)}"]
    return []


def _bases(schema: dict[str, Any], spec: Any) -> dict[str, str]:
    """The base URI at each path, as $id (draft-04: id) keywords change it on the way down, as jsonschema does."""
    bases = {"": spec.id_of(schema) or ""}
    for path, value, _depth in _walk(schema):
        if path and isinstance(value, dict | list):
            parent = bases[path.rpartition("/")[0]]
            try:
                own = spec.id_of(value) if isinstance(value, dict) else None
            except (AttributeError, TypeError):  # a map of names (properties), not a schema
                own = None
            bases[path] = urljoin(parent, own) if isinstance(own, str) else parent
    return bases


def _dangling_problems(schema: dict[str, Any], cls: Any) -> list[str]:
    """Local references must point at something in the schema."""
    spec = referencing.jsonschema.specification_with(cls.ID_OF(cls.META_SCHEMA))
    resource = spec.create_resource(schema)
    registry = NO_RETRIEVAL.with_resource(resource.id() or "", resource).crawl()
    bases = _bases(schema, spec)
    problems = []
    for path, ref in _references(schema):
        try:
            registry.resolver(base_uri=bases.get(path.rpartition("/")[0], "")).lookup(ref)
        except Unresolvable:
            problems.append(f"refers to {json.dumps(ref)[:200]}{_at(path)}, which is not in the schema.")
    return problems


def _loop_problems(schema: dict[str, Any], cls: Any) -> list[str]:
    """Validate a few instances: a $ref loop that checks nothing on the way recurses until Python stops it."""
    validator = cls(schema, registry=NO_RETRIEVAL)
    try:
        for probe in PROBES:
            for _error in validator.iter_errors(probe):
                pass
    except RecursionError:
        return ["refers to itself in a loop: its references go round without checking anything."]
    except Unresolvable as exc:
        return [f"has a reference that can't be resolved: {exc}."]
    return []


def _safety_problems(schema: object) -> list[str]:
    """What makes a stored schema unsafe or impossible to validate with (not a matter of style)."""
    if not isinstance(schema, dict):
        return ["must be a JSON object."]
    problems = _depth_problems(schema)
    if problems:
        return problems  # nothing else walks a schema this deep
    if "$schema" in schema and not isinstance(schema["$schema"], str):
        return [f"has a $schema that is not a string: {json.dumps(schema['$schema'])[:200]}."]
    cls = _draft(schema) or LATEST
    problems = _remote_problems(schema) or _meta_problems(schema, cls)
    if problems:
        return problems
    return _dangling_problems(schema, cls) or _loop_problems(schema, cls)


def schema_problems(schema: object) -> list[str]:
    """Why one schema can't be stored ([] if it is fine); each message completes "Schema for type 'x' ..."."""
    if not isinstance(schema, dict):
        return ["must be a JSON object."]
    problems = _depth_problems(schema)
    return problems or [*_dialect_problems(schema), *_safety_problems(schema)]


def schema_map_problems(value: object) -> list[str]:
    """Why a Stage.schemas value is unusable ([] if it is fine)."""
    if not isinstance(value, dict):
        return ["Schemas must be a JSON object mapping task types to JSON Schemas."]
    return [
        f"Schema for type '{type}' {problem}"
        for type, schema in value.items()
        for problem in schema_problems(schema)
    ]


# -- validating payloads ----------------------------------------------------------------------


@lru_cache(maxsize=256)
def _compiled(schema_json: str) -> tuple[Any, tuple[str, ...]]:
    """(validator, ()) for a usable schema; (None, problems) for one that must not be used."""
    schema = json.loads(schema_json)
    problems = _safety_problems(schema)
    if problems:
        return None, tuple(problems)
    cls = _draft(schema) or LATEST
    return cls(schema, registry=NO_RETRIEVAL, format_checker=cls.FORMAT_CHECKER), ()


def compiled(schema: object) -> tuple[Any, tuple[str, ...]]:
    try:
        key = json.dumps(schema, sort_keys=True)
    except (RecursionError, TypeError, ValueError):
        return None, (f"is nested deeper than {MAX_SCHEMA_DEPTH} levels or is not JSON.",)
    return _compiled(key)


def schema_for(schemas: object, type: str) -> Any:
    if not schemas:
        return None
    if not isinstance(schemas, dict):
        return schemas  # a map stored broken: payload_errors says so, rather than checking nothing
    return schemas.get(type, schemas.get(WILDCARD))


def payload_errors(schema: object, payload: object) -> list[str]:
    """The schema's messages for a payload, each prefixed with where it applies."""
    validator, problems = compiled(schema)
    if validator is None:
        # A schema no save path accepts (stored by raw SQL, or before these checks): refuse, never fetch or crash.
        return [f"the schema can't be used: it {p.rstrip('.')}. Fix the stage's schemas." for p in problems]
    try:
        errors = sorted(validator.iter_errors(payload), key=lambda e: list(map(str, e.path)))
    except RecursionError:
        return ["the payload is nested too deeply to check against the schema."]
    except Unresolvable as exc:
        return [f"the schema can't be used: it has a reference that can't be resolved ({exc})."]
    messages = []
    for error in errors[:MAX_MESSAGES]:
        where = ".".join(str(p) for p in error.absolute_path)
        messages.append(f"{where}: {error.message}" if where else error.message)
    return messages


def check_payload(schema: object, type: str, payload: object, *, stage_slug: str) -> None:
    """Raise ValidationError({"payload": [...]}) if the payload doesn't match the schema."""
    if schema is None:
        return
    messages = payload_errors(schema, payload)
    if messages:
        raise ValidationError(
            {"payload": [f"Does not match the '{type}' schema of stage '{stage_slug}': {m}" for m in messages]}
        )
