"""Payload schemas: a stage's JSON Schema per task type, checked wherever tasks are made.

`Stage.schemas` maps a task type (or "*" for every other type) to a JSON
Schema that the payloads of tasks of that type *sent out of* the stage must
match. Keying by the sending stage means one declaration covers every way a
task leaves it: a hook's body, a script handler's `send()`, a form's button,
an API completion. A task created directly at a stage (API, admin, command)
has no sender, so it must match what the stages that route that type into it
declare: it should look like a task that arrived the normal way.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from django.core.exceptions import ValidationError
from jsonschema import SchemaError, validators

from tasks_app.models import Stage, Transition

WILDCARD = "*"
MAX_MESSAGES = 20


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def compiled(schema: dict[str, Any]) -> Any:
    return _validator(json.dumps(schema, sort_keys=True))


def schema_map_problems(value: object) -> list[str]:
    """Why a Stage.schemas value is unusable ([] if it is fine)."""
    if not isinstance(value, dict):
        return ["Schemas must be a JSON object mapping task types to JSON Schemas."]
    problems = []
    for type, schema in value.items():
        if not isinstance(schema, dict):
            problems.append(f"Schema for type '{type}' must be a JSON object.")
            continue
        try:
            validators.validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(
                f"Schema for type '{type}' is not a valid JSON Schema: {exc.message}"
                + (f" (at {where})" if where else "")
            )
    return problems


def schema_for(schemas: dict[str, Any] | None, type: str) -> dict[str, Any] | None:
    if not schemas:
        return None
    return schemas.get(type, schemas.get(WILDCARD))


def payload_errors(schema: dict[str, Any], payload: object) -> list[str]:
    """The schema's messages for a payload, each prefixed with where it applies."""
    messages = []
    for error in sorted(compiled(schema).iter_errors(payload), key=lambda e: list(map(str, e.path))):
        where = ".".join(str(p) for p in error.absolute_path)
        messages.append(f"{where}: {error.message}" if where else error.message)
        if len(messages) >= MAX_MESSAGES:
            break
    return messages


def check_payload(schema: dict[str, Any] | None, type: str, payload: object, *, stage_slug: str) -> None:
    """Raise ValidationError({"payload": [...]}) if the payload doesn't match the schema."""
    if schema is None:
        return
    messages = payload_errors(schema, payload)
    if messages:
        raise ValidationError(
            {"payload": [f"Does not match the '{type}' schema of stage '{stage_slug}': {m}" for m in messages]}
        )


def validate_sent(stage: Stage, type: str, payload: object) -> None:
    """A task of `type` leaving `stage` must match the stage's schema for it."""
    check_payload(schema_for(stage.schemas, type), type, payload, stage_slug=stage.slug)


Senders = list[tuple[str, dict[str, Any], str]]


def senders_into(stage: Stage) -> Senders:
    """(slug, schemas, transition filter) of the stages with schemas that send into `stage`."""
    rows = Transition.objects.filter(target=stage).exclude(source__schemas={})
    return list(rows.values_list("source__slug", "source__schemas", "task_type"))


def validate_created(stage: Stage, type: str, payload: object, *, senders: Senders | None = None) -> None:
    """A task created directly at `stage` must match the schemas of the stages that route `type` into it.

    Pass `senders` (senders_into(stage)) when checking many tasks at one stage.
    """
    for slug, schemas, task_type in senders_into(stage) if senders is None else senders:
        if task_type in ("", type):
            check_payload(schema_for(schemas, type), type, payload, stage_slug=slug)


def validate_arrival(*, stage: Stage, source_stage: Stage | None, type: str, payload: object) -> None:
    """The rule for a task at `stage`: its sender's schema if it was sent, else the create rule."""
    if source_stage is not None:
        validate_sent(source_stage, type, payload)
    else:
        validate_created(stage, type, payload)
