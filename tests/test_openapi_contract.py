"""The OpenAPI schema says what the API does (tests/test_api_fuzz.py then holds the API to it).

Task lists are cursor-paged (no count); the action answers are plain lists;
payloads, stage schemas and event details are objects; every operation has a
tag and a summary and documents its error answers; Swagger UI's claim example
locks a task for seconds, not a week; `manage.py spectacular --validate
--fail-on-warn` is clean. API paths that no route matches answer a JSON 404,
and the limit/offset pages are bounded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from rest_framework.test import APIClient

from tasks_app.api.pagination import MAX_LIMIT, MAX_OFFSET
from tasks_app.models import Stage, Task
from tests.support.api import post
from tests.support.world import claim_one, create

TAGS = {"tasks", "stages", "transitions", "hooks", "health"}
METHODS = {"get", "post", "patch", "put", "delete"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document, renderer_context={}))


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
        if method in METHODS
    ]


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def body_schema(schema: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    response = schema["paths"][path][method]["responses"][status]
    return resolve(schema, response["content"]["application/json"]["schema"])


def param_names(operation: dict[str, Any]) -> set[str]:
    return {p["name"] for p in operation.get("parameters", [])}


# -- pages ------------------------------------------------------------------------------


def test_task_list_is_documented_as_cursor_pages(schema: dict[str, Any]) -> None:
    page = body_schema(schema, "/api/tasks/", "get", "200")
    assert set(page["properties"]) == {"next", "previous", "results"}
    assert "count" not in page.get("required", [])
    assert "cursor=" in page["properties"]["next"]["example"]
    params = param_names(schema["paths"]["/api/tasks/"]["get"])
    assert {"cursor", "page_size"} <= params
    assert not {"limit", "offset"} & params


def test_task_list_answers_as_documented(world: dict[str, Stage], admin: APIClient) -> None:
    for i in range(3):
        create(world["review"], n=i)
    response = admin.get("/api/tasks/", {"page_size": 2})
    assert response.status_code == 200
    assert set(response.json()) == {"next", "previous", "results"}
    assert "cursor=" in response.json()["next"]


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/api/stages/{slug}/send/", "post", "201"),
        ("/api/stages/{slug}/claim/", "post", "200"),
        ("/api/tasks/bulk/", "post", "201"),
        ("/api/tasks/{id}/complete/", "post", "200"),
        ("/api/tasks/{id}/events/", "get", "200"),
    ],
)
def test_action_answers_are_plain_lists(schema: dict[str, Any], path: str, method: str, status: str) -> None:
    # They were documented as pages (with a count, and page/filter parameters they ignore).
    assert body_schema(schema, path, method, status)["type"] == "array"
    params = param_names(schema["paths"][path][method])
    assert not {"limit", "offset", "cursor", "page_size", "stage", "status", "payload"} & params


def test_stage_and_transition_lists_are_bounded_limit_offset_pages(schema: dict[str, Any]) -> None:
    for path in ("/api/stages/", "/api/transitions/"):
        page = body_schema(schema, path, "get", "200")
        assert {"count", "next", "previous", "results"} <= set(page["properties"])
        params = {p["name"]: p for p in schema["paths"][path]["get"]["parameters"]}
        bounds = {name: p["schema"] for name, p in params.items()}
        assert str(MAX_LIMIT) in params["limit"]["description"]
        assert bounds["offset"]["maximum"] == MAX_OFFSET


def test_limit_and_offset_are_bounded(world: dict[str, Stage], admin: APIClient) -> None:
    # ?limit=10**35 answered 409 "datatype mismatch" on SQLite; an offset past 64 bits overflowed.
    response = admin.get("/api/stages/", {"limit": str(10**35)})
    assert response.status_code == 200, response.content
    assert len(response.json()["results"]) == len(world)
    response = admin.get("/api/transitions/", {"offset": str(10**20), "limit": "5"})
    assert response.status_code == 400, response.content
    assert "offset" in response.json()
    assert admin.get("/api/stages/", {"offset": str(MAX_OFFSET)}).json()["results"] == []


# -- types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "field"),
    [
        ("Task", "payload"),
        ("ClaimedTask", "payload"),
        ("TaskCreate", "payload"),
        ("SendItem", "payload"),
        ("Stage", "schemas"),
        ("PatchedStage", "schemas"),
        ("TaskEvent", "details"),
    ],
)
def test_json_documents_are_objects(schema: dict[str, Any], component: str, field: str) -> None:
    # A JSONField was documented as "any value" (Swagger UI offered a string).
    assert schema["components"]["schemas"][component]["properties"][field]["type"] == "object"


def test_nullable_fields_are_documented_nullable(schema: dict[str, Any]) -> None:
    task = schema["components"]["schemas"]["Task"]["properties"]
    assert task["source_stage"]["nullable"] is True
    assert task["parent"]["nullable"] is True


def test_task_list_filters_are_typed_as_sent(schema: dict[str, Any]) -> None:
    params = {p["name"]: p for p in schema["paths"]["/api/tasks/"]["get"]["parameters"]}
    assert params["payload"]["schema"] == {"type": "string"}  # JSON text in the query string
    assert params["parent"]["schema"] == {"type": "integer"}


def test_health_documents_its_body(schema: dict[str, Any]) -> None:
    ok = body_schema(schema, "/api/health/", "get", "200")
    assert {"status", "database", "pending", "locked", "workers_alive"} <= set(ok["properties"])
    assert "status" in body_schema(schema, "/api/health/", "get", "503")["properties"]


# -- flow control (issue 15) ---------------------------------------------------------------


def test_the_flow_control_fields_are_documented(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    stage = components["Stage"]["properties"]
    assert stage["max_concurrency"]["type"] == "integer" and stage["max_concurrency"]["nullable"] is True
    assert (stage["max_concurrency"]["minimum"], stage["max_concurrency"]["maximum"]) == (1, 10_000)
    assert stage["rate_limit"]["type"] == "string" and "N/second" in stage["rate_limit"]["description"]
    assert stage["dedupe_on"] == {**stage["dedupe_on"], "type": "array", "items": {"type": "string"}}
    assert {"default_priority", "priority_from", "max_wait", "on_timeout"} <= set(stage)
    rules = {value for choice in stage["join_rule"]["oneOf"] for value in resolve(schema, choice)["enum"]}
    assert rules == {"siblings", "count", ""}  # blank: not a join stage
    for field in ("join_key", "join_count", "join_timeout", "join_type"):
        assert field in stage, field
    assert set(components["PatchedStage"]["properties"]) == set(stage)
    task = components["Task"]["properties"]
    for field in ("fanout_id", "fanout_size"):
        assert task[field] == {"type": "integer", "readOnly": True, "nullable": True}, field
    assert {"priority", "available_at", "dedupe_key", "deduplicated", "cancel_requested"} <= set(task)
    for component in ("TaskCreate", "SendItem"):
        sent = components[component]["properties"]
        assert (sent["priority"]["minimum"], sent["priority"]["maximum"]) == (-1000, 1000), component
        assert sent["available_at"]["format"] == "date-time", component
        assert sent["delay"]["type"] == "number" and sent["delay"]["minimum"] == 0, component


def test_the_claim_declares_its_retry_after_header(schema: dict[str, Any]) -> None:
    answer = schema["paths"]["/api/stages/{slug}/claim/"]["post"]["responses"]["200"]
    header = answer["headers"]["Retry-After"]
    assert header["schema"] == {"type": "integer"}
    assert "max_concurrency" in header["description"] and "rate_limit" in header["description"]
    # A response header, not a request parameter.
    assert "Retry-After" not in param_names(schema["paths"]["/api/stages/{slug}/claim/"]["post"])


def test_bulk_complete_declares_which_sends_were_deduplicated(schema: dict[str, Any]) -> None:
    results = body_schema(schema, "/api/tasks/bulk-complete/", "post", "200")["properties"]["results"]
    item = resolve(schema, results["items"])["properties"]
    assert item["sent"]["items"] == item["deduplicated"]["items"] == {"type": "integer"}
    assert "dedupe key" in item["deduplicated"]["description"]


# -- descriptions ------------------------------------------------------------------------


def test_every_operation_has_a_tag_and_a_summary(schema: dict[str, Any]) -> None:
    for path, method, operation in operations(schema):
        label = f"{method.upper()} {path}"
        assert operation.get("tags") and set(operation["tags"]) <= TAGS, (label, operation.get("tags"))
        assert operation.get("summary", "").strip(), label
    assert {t["name"] for t in schema["tags"]} == TAGS
    assert all(t["description"] for t in schema["tags"])


def test_every_operation_documents_its_errors(schema: dict[str, Any]) -> None:
    for path, method, operation in operations(schema):
        codes = set(operation["responses"])
        label = f"{method.upper()} {path}"
        assert "429" in codes, label
        if any(operation.get("security", [])):  # health and hooks need no login
            assert {"401", "403"} <= codes, label
        if "{" in path:
            assert "404" in codes, label
        if "requestBody" in operation:
            assert {"400", "413", "415"} <= codes, label
    complete = schema["paths"]["/api/tasks/{id}/complete/"]["post"]["responses"]
    assert {"200", "400", "401", "403", "404", "409", "413", "415", "429"} == set(complete)
    assert resolve(schema, complete["409"]["content"]["application/json"]["schema"])["required"] == ["detail"]
    assert "401" in schema["paths"]["/hooks/{slug}/"]["post"]["responses"]


def test_request_bodies_are_documented_as_json(schema: dict[str, Any]) -> None:
    for path, method, operation in operations(schema):
        if "requestBody" in operation:
            assert set(operation["requestBody"]["content"]) == {"application/json"}, (method, path)


# -- the claim example -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/stages/{slug}/claim/", "/api/tasks/{id}/heartbeat/"])
def test_swagger_examples_lock_for_seconds_not_a_week(schema: dict[str, Any], path: str) -> None:
    # Swagger UI prefilled lock_timeout=604800: "Try it out" locked a real task for 7 days.
    content = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    examples = [e["value"] for e in content.get("examples", {}).values()]
    assert examples, "an explicit example, so Swagger UI does not invent one"
    assert all(0 < e["lock_timeout"] <= 300 for e in examples), examples
    lock_timeout = resolve(schema, content["schema"])["properties"]["lock_timeout"]
    assert lock_timeout.get("example", 0) <= 300
    assert lock_timeout.get("default", 0) <= 300


def test_the_claim_example_claims_briefly(world: dict[str, Stage], admin: APIClient, schema: dict[str, Any]) -> None:
    content = schema["paths"]["/api/stages/{slug}/claim/"]["post"]["requestBody"]["content"]["application/json"]
    [example] = [e["value"] for e in content["examples"].values()]
    task = create(world["review"])
    response = post(admin, "/api/stages/review/claim/", example)
    assert response.status_code == 200, response.content
    task.refresh_from_db()
    assert task.status == Task.Status.LOCKED
    assert (task.locked_until - task.locked_at).total_seconds() <= 300


# -- validity ----------------------------------------------------------------------------


def test_schema_validates_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "schema.yaml"
    # --fail-on-warn: any drf-spectacular warning (an unresolvable type, an enum name clash) fails.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert out.read_text().startswith("openapi: 3")


def test_served_schema_is_the_generated_one(admin: APIClient, schema: dict[str, Any]) -> None:
    response = admin.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    assert response.json() == schema


# -- JSON 404s outside the routes ----------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["/api/tasks/1.5/complete/", "/api/transitions/x.y/", "/hooks/%F2%A8%A2%BD/", "/api/nothing/"]
)
def test_api_paths_no_route_matches_answer_json_404(admin: APIClient, url: str) -> None:
    # They answered Django's HTML page, which the schema (JSON errors) does not describe.
    response = admin.post(url, {}, format="json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


def test_other_paths_keep_the_html_404(admin: APIClient) -> None:
    response = admin.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_lock_verbs_ignore_list_filters(world: dict[str, Stage], admin: APIClient) -> None:
    # The actions are not lists: list filters in the query string neither apply nor break them.
    create(world["review"])
    task = claim_one(world["review"])
    response = post(admin, f"/api/tasks/{task.pk}/complete/?status=failed&payload=%7B", {"lock_token": task.lock_token})
    assert response.status_code == 200, response.content
