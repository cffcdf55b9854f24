"""Payload schemas: a stage's JSON Schema per task type, checked wherever tasks are made.

`Stage.schemas` maps a task type (or "*" for every other type) to a JSON
Schema that the payloads of tasks of that type *sent out of* the stage must
match. Keying by the sending stage means one declaration covers every way a
task leaves it: a hook's body, a script handler's `send()`, a form's button,
an API completion. A task created directly at a stage (API, admin, command)
has no sender, so it must match what the stages that route that type into it
declare: it should look like a task that arrived the normal way.

The schema rules themselves (which schemas may be stored, what a payload's
errors are, never fetching a `$ref`) need no model and live in
tasks_app.schema_rules, below the models, whose Stage.schemas validator uses
them; this module applies them to stages and transitions.
"""

from __future__ import annotations

from typing import Any

from tasks_app.models import Stage, Transition
from tasks_app.schema_rules import (
    MAX_SCHEMA_DEPTH,
    check_payload,
    payload_errors,
    schema_for,
    schema_map_problems,
)

__all__ = [
    "MAX_SCHEMA_DEPTH",
    "Senders",
    "check_payload",
    "payload_errors",
    "schema_for",
    "schema_map_problems",
    "senders_into",
    "validate_arrival",
    "validate_created",
    "validate_sent",
]


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
