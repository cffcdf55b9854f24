"""The OpenAPI schema's shared parts: the error answers, documented once for every operation.

drf-spectacular documents what a view returns when it succeeds; the errors
come from DRF and tasks_app.api.errors, the same for every view. This
post-processing hook (SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]) adds them
by what an operation has: a login (401, 403), a path parameter (404), input
(400), a body (413, 415), a change (409), and a throttle (429, every one).
An operation that documents a status itself keeps its own description.
"""

from __future__ import annotations

from typing import Any

ERROR = "Error"
FIELD_ERRORS = "FieldErrors"

ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    ERROR: {
        "type": "object",
        "description": "A refused request: `detail` says why.",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    },
    FIELD_ERRORS: {
        "type": "object",
        "description": (
            "Bad input: each offending field (or `non_field_errors`, or `detail`) names its messages; "
            "nested input nests the same way."
        ),
        "additionalProperties": {},
    },
}

DESCRIPTIONS = {
    400: ("Bad input: field messages.", FIELD_ERRORS),
    401: ("No credentials, or wrong ones.", ERROR),
    403: ("Authenticated, but without the permission this needs.", ERROR),
    404: ("No such object.", ERROR),
    409: ("The object is not in a state that allows this (a lock lost, a live stage, a conflicting change).", ERROR),
    413: ("The request body or the payload is over its size limit.", FIELD_ERRORS),
    415: ("The body is not JSON.", ERROR),
    429: ("Throttled: retry after the Retry-After header's seconds.", ERROR),
}

CHANGES = {"post", "put", "patch", "delete"}


def error_statuses(method: str, operation: dict[str, Any]) -> list[int]:
    """The error statuses an operation can answer, from its shape."""
    params = operation.get("parameters", [])
    statuses = [429]
    if any(requirement for requirement in operation.get("security", [])):
        statuses += [401, 403]
    if any(p.get("in") == "path" for p in params):
        statuses.append(404)
    if "requestBody" in operation or any(p.get("in") in ("query", "header") for p in params):
        statuses.append(400)
    if "requestBody" in operation:
        statuses += [413, 415]
    if method in CHANGES:
        statuses.append(409)
    return sorted(set(statuses))


def document_errors(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in ERROR_SCHEMAS.items():
        schemas.setdefault(name, schema)
    for methods in result.get("paths", {}).values():
        for method, operation in methods.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for code in error_statuses(method, operation):
                description, component = DESCRIPTIONS[code]
                responses.setdefault(
                    str(code),
                    {
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{component}"}}},
                    },
                )
    return result
