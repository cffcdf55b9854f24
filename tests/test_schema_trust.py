"""Stage settings are data, not reach: schemas never fetch, and unusable schemas and schedules are refused.

Issue 11, section 2. A stage schema with `{"$ref": "http://..."}` made the web
process fetch the URL, and a `file:///` ref was read and enforced; a 400-deep
schema was a 500; a draft-03 schema (`required: true`) broke the form page and
left the task locked; `0 0 30 2 *` (30 February) was a schedule that never fires.

Every save path refuses each of them with a field message (model validation,
API POST and PATCH, the admin, load_workflow), and a schema stored anyway
(a raw UPDATE here) refuses payloads with its reason: never a fetch, never a 500.
A tiny HTTP server in the test counts the requests that reach it: none may.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client
from jsonschema import validators
from rest_framework.test import APIClient

from tasks_app import schema_rules as schemas_module
from tasks_app.models import Stage, Task, TaskEvent, Transition, validate_cron
from tasks_app.services import task_claim, task_create, task_send
from tasks_app.services.schemas import MAX_SCHEMA_DEPTH, payload_errors, schema_map_problems
from tests.support.api import post
from tests.support.pages import form_fields
from tests.support.users import make_user, token_client
from tests.support.world import nothing_written

# What the test server answers: if it were used, {} would fail as "not of type 'integer'".
REMOTE_SCHEMA = {"type": "integer"}
ENFORCED = "is not of type 'integer'"
NEVER_FETCHED = "other documents (URLs, files) are never fetched"
DRAFT3 = "http://json-schema.org/draft-03/schema#"
JOB_HANDLER = "tasks_app.demo.daily_digest"
STAGE_URL = "/admin/tasks_app/stage/"


# -- a server that counts what reaches it ------------------------------------------------------


@dataclass
class Remote:
    url: str
    requests: list[str] = field(default_factory=list)


class _Recorder(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        body = json.dumps(REMOTE_SCHEMA).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/schema+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def remote() -> Iterator[Remote]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    found = Remote(url=f"http://127.0.0.1:{server.server_port}/schema.json")
    server.requests = found.requests  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def local_file(tmp_path: Path) -> str:
    """A file:/// URI of a schema that, if read, would refuse every object."""
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(REMOTE_SCHEMA))
    return path.as_uri()


@pytest.fixture(autouse=True)
def _fresh_validators() -> Iterator[None]:
    # Compiled validators are cached by schema text; tests that patch the checks must not see old ones.
    schemas_module._compiled.cache_clear()
    yield
    schemas_module._compiled.cache_clear()


def nested(levels: int) -> dict[str, Any]:
    """A schema exactly `levels` JSON levels deep (properties/a/properties/a/...), built without recursion."""
    value: Any = {"type": "string"} if levels % 2 else {"a": True}
    for depth in range(levels - 1, 0, -1):
        value = {"properties": value} if depth % 2 else {"a": value}
    return value


# -- the detectors work: jsonschema's defaults do reach out ----------------------------------------


def test_by_default_jsonschema_fetches_remote_refs(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    # Proves the server counts requests, so the "no request" assertions below mean something.
    monkeypatch.setenv("no_proxy", "*")
    with pytest.warns(DeprecationWarning):
        errors = list(validators.Draft202012Validator({"$ref": remote.url}).iter_errors({}))
    assert remote.requests == ["/schema.json"]
    assert ENFORCED in errors[0].message


def test_by_default_jsonschema_reads_file_refs(local_file: str) -> None:
    with pytest.warns(DeprecationWarning):
        errors = list(validators.Draft202012Validator({"$ref": local_file}).iter_errors({}))
    assert ENFORCED in errors[0].message


# -- what is refused, and the message ---------------------------------------------------------------


def test_nested_remote_and_file_refs_are_named_by_their_path(remote: Remote, local_file: str) -> None:
    value = {
        "order": {
            "properties": {"customer": {"$ref": remote.url}},
            "allOf": [{"items": {"$ref": local_file}}],
        }
    }
    assert schema_map_problems(value) == [
        f"Schema for type 'order' refers to {json.dumps(remote.url)} (at properties/customer/$ref): "
        f"only references inside the schema (starting with '#') are allowed; {NEVER_FETCHED}.",
        f"Schema for type 'order' refers to {json.dumps(local_file)} (at allOf/0/items/$ref): "
        f"only references inside the schema (starting with '#') are allowed; {NEVER_FETCHED}.",
    ]
    assert remote.requests == []


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"$ref": "other.json#/a"}, "refers to \"other.json#/a\" (at $ref): only references inside the schema"),
        ({"$dynamicRef": "https://x.test/s"}, "refers to \"https://x.test/s\" (at $dynamicRef)"),
        ({"properties": {"a/b": {"$ref": "#/$defs/none"}}}, "refers to \"#/$defs/none\" (at properties/a~1b/$ref), "
         "which is not in the schema."),
        ({"$ref": "#"}, "refers to itself in a loop"),
        ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "in a loop"),
        ({"$schema": DRAFT3, "required": True}, "uses draft-03"),
        ({"properties": {"a": {"$schema": DRAFT3}}}, "(at properties/a)"),
        ({"$schema": "https://x.test/my-draft"}, "names an unknown $schema \"https://x.test/my-draft\""),
        ({"$schema": 7}, "has a $schema that is not a string: 7."),
        (nested(MAX_SCHEMA_DEPTH + 1), f"deeper than {MAX_SCHEMA_DEPTH} levels (at properties/a/properties/a/"),
    ],
)  # fmt: skip
def test_unusable_schemas_are_refused_with_the_reason(schema: dict[str, Any], message: str) -> None:
    [problem] = schema_map_problems({"t": schema})
    assert problem.startswith("Schema for type 't' ")
    assert message in problem


@pytest.mark.parametrize(
    "schema",
    [
        nested(MAX_SCHEMA_DEPTH),
        {"$defs": {"qty": {"type": "integer"}}, "properties": {"n": {"$ref": "#/$defs/qty"}}},
        {"$id": "https://example.com/order.schema.json", "$defs": {"q": {}},
         "properties": {"n": {"$ref": "#/$defs/q"}}},
        {"$defs": {"q": {"$anchor": "qty", "type": "integer"}}, "properties": {"n": {"$ref": "#qty"}}},
        {"$schema": "http://json-schema.org/draft-04/schema#", "id": "http://x.test/o.json",
         "definitions": {"q": {}}, "properties": {"id": {"$ref": "#/definitions/q"}}},
        {"$schema": "http://json-schema.org/draft-07/schema#", "required": ["a"]},
        # A tree: recursive, but each step goes one level into the payload.
        {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}},
    ],
)  # fmt: skip
def test_local_refs_ids_anchors_and_supported_drafts_are_accepted(schema: dict[str, Any]) -> None:
    assert schema_map_problems({"t": schema}) == []


def test_a_schema_thousands_of_levels_deep_gets_one_message_not_a_recursion_error() -> None:
    [problem] = schema_map_problems({"t": nested(5000)})
    assert f"is nested deeper than {MAX_SCHEMA_DEPTH} levels" in problem


@pytest.mark.parametrize("schedule", ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 2 *"])
def test_a_schedule_that_never_fires_is_refused(schedule: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_cron(schedule)
    assert info.value.messages == [
        f"'{schedule}' never fires: no date matches it within 10 years "
        "(is it a day the month doesn't have, like 30 February?)."
    ]


@pytest.mark.parametrize("schedule", ["0 0 29 2 *", "0 3 * * *", "0 0 31 * *", "0 0 30 2 1"])
def test_rare_but_real_schedules_are_accepted(schedule: str) -> None:
    validate_cron(schedule)  # 29 February: every 4 years; "30 Feb or a Monday": every Monday


# -- every save path refuses ------------------------------------------------------------------------

FORM_STAGE = {"slug": "desk", "name": "Desk", "kind": "form"}
JOB_STAGE = {"slug": "digest", "name": "Digest", "kind": "job", "handler": JOB_HANDLER, "schedule": "0 3 * * *"}


@pytest.fixture
def stages(db: None) -> dict[str, Stage]:
    return {
        "schemas": Stage.objects.create(**FORM_STAGE),
        "schedule": Stage.objects.create(**JOB_STAGE),
    }


def stage_rows() -> list[dict[str, Any]]:
    return list(Stage.objects.order_by("id").values())


def via_model(stages: dict[str, Stage], name: str, value: Any) -> list[str]:
    base = FORM_STAGE if name == "schemas" else JOB_STAGE
    with pytest.raises(ValidationError) as info:
        Stage(**{**base, "slug": "other", name: value}).full_clean()
    return info.value.message_dict[name]


def _api(stages: dict[str, Stage], method: str, name: str, value: Any) -> list[str]:
    client = token_client(make_user("root", superuser=True))
    base = FORM_STAGE if name == "schemas" else JOB_STAGE
    with nothing_written():
        if method == "post":
            response = post(client, "/api/stages/", {**base, "slug": "other", name: value})
        else:
            response = client.patch(f"/api/stages/{stages[name].slug}/", {name: value}, format="json")
    assert response.status_code == 400, response.content
    return [str(m) for m in response.data[name]]


def via_api_post(stages: dict[str, Stage], name: str, value: Any) -> list[str]:
    return _api(stages, "post", name, value)


def via_api_patch(stages: dict[str, Stage], name: str, value: Any) -> list[str]:
    return _api(stages, "patch", name, value)


def via_admin(stages: dict[str, Stage], name: str, value: Any) -> list[str]:
    client = Client()
    client.force_login(make_user("root", superuser=True))
    url = f"{STAGE_URL}{stages[name].pk}/change/"
    data = {**form_fields(client, url, form_id="stage_form"), "_save": "Save"}
    data[name] = json.dumps(value) if name == "schemas" else value
    before = stage_rows()
    response = client.post(url, data)
    assert response.status_code == 200  # the form again, with its errors
    assert stage_rows() == before
    return list(response.context["adminform"].form.errors[name])


def via_load_workflow(stages: dict[str, Stage], name: str, value: Any, tmp_path: Path) -> list[str]:
    base = FORM_STAGE if name == "schemas" else JOB_STAGE
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps({"version": 1, "stages": [{**base, name: value}], "transitions": []}))
    before = stage_rows()
    with pytest.raises(CommandError) as info:
        call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=io.StringIO())
    assert stage_rows() == before
    where = f"  stages[0] (slug '{base['slug']}'): {name}: "
    return [line.removeprefix(where) for line in str(info.value).splitlines() if line.startswith(where)]


PATHS: dict[str, Callable[..., list[str]]] = {
    "model": via_model,
    "api-post": via_api_post,
    "api-patch": via_api_patch,
    "admin": via_admin,
    "load_workflow": via_load_workflow,
}


def refusal(path: str, stages: dict[str, Stage], name: str, value: Any, tmp_path: Path) -> list[str]:
    if path == "load_workflow":
        return via_load_workflow(stages, name, value, tmp_path)
    return PATHS[path](stages, name, value)


@pytest.mark.parametrize("path", PATHS)
def test_every_save_path_refuses_a_remote_ref_and_fetches_nothing(
    path: str, stages: dict[str, Stage], remote: Remote, tmp_path: Path
) -> None:
    messages = refusal(path, stages, "schemas", {"approved": {"properties": {"a": {"$ref": remote.url}}}}, tmp_path)
    assert messages == [
        f"Schema for type 'approved' refers to {json.dumps(remote.url)} (at properties/a/$ref): "
        f"only references inside the schema (starting with '#') are allowed; {NEVER_FETCHED}."
    ]
    assert remote.requests == []


@pytest.mark.parametrize("path", PATHS)
def test_every_save_path_refuses_a_file_ref(
    path: str, stages: dict[str, Stage], local_file: str, tmp_path: Path
) -> None:
    [message] = refusal(path, stages, "schemas", {"*": {"$ref": local_file}}, tmp_path)
    assert NEVER_FETCHED in message


@pytest.mark.parametrize("path", PATHS)
def test_every_save_path_refuses_a_400_deep_schema(path: str, stages: dict[str, Stage], tmp_path: Path) -> None:
    [message] = refusal(path, stages, "schemas", {"deep": nested(400)}, tmp_path)
    assert message.startswith(f"Schema for type 'deep' is nested deeper than {MAX_SCHEMA_DEPTH} levels (at ")


@pytest.mark.parametrize("path", PATHS)
def test_every_save_path_refuses_a_draft_03_schema(path: str, stages: dict[str, Stage], tmp_path: Path) -> None:
    schema = {"$schema": DRAFT3, "type": "object", "required": True, "properties": {"note": {"required": True}}}
    [message] = refusal(path, stages, "schemas", {"approved": schema}, tmp_path)
    assert message.startswith("Schema for type 'approved' uses draft-03")


@pytest.mark.parametrize("path", PATHS)
def test_every_save_path_refuses_a_schedule_that_never_fires(
    path: str, stages: dict[str, Stage], tmp_path: Path
) -> None:
    messages = refusal(path, stages, "schedule", "0 0 30 2 *", tmp_path)
    assert messages == [
        "'0 0 30 2 *' never fires: no date matches it within 10 years "
        "(is it a day the month doesn't have, like 30 February?)."
    ]


# -- a schema stored anyway is never fetched, and refuses payloads with its reason ------------------


@pytest.fixture
def routed(db: None) -> dict[str, Stage]:
    """review (form) --approved--> invoice; review's schemas are stored by a test, bypassing validation."""
    review = Stage.objects.create(slug="review", name="Review", kind=Stage.Kind.FORM)
    invoice = Stage.objects.create(slug="invoice", name="Invoice", kind=Stage.Kind.HOOK)
    Transition.objects.create(source=review, target=invoice, task_type="approved")
    return {"review": review, "invoice": invoice}


def store(stage: Stage, schemas: Any) -> None:
    """Write schemas as raw SQL would: no validator runs."""
    Stage.objects.filter(pk=stage.pk).update(schemas=schemas)
    stage.refresh_from_db()


def root_client() -> APIClient:
    return token_client(make_user("root", superuser=True))


def test_a_stored_remote_ref_refuses_sends_and_creates_with_400_and_fetches_nothing(
    routed: dict[str, Stage], remote: Remote
) -> None:
    store(routed["review"], {"approved": {"$ref": remote.url}})
    client = root_client()

    with nothing_written():
        sent = post(client, "/api/stages/review/send/", {"type": "approved", "payload": {}})
        created = post(client, "/api/tasks/", {"stage": "invoice", "type": "approved", "payload": {}})

    for response in (sent, created):
        assert response.status_code == 400, response.content
        [message] = response.data["payload"]
        assert message.startswith("Does not match the 'approved' schema of stage 'review': the schema can't be used: ")
        assert NEVER_FETCHED in message and "Fix the stage's schemas." in message
    assert remote.requests == []


def test_a_stored_remote_ref_refuses_a_completion_and_the_task_stays_claimed(
    routed: dict[str, Stage], remote: Remote
) -> None:
    task_create(stage=routed["review"], type="order", payload={})
    [task] = task_claim(stage=routed["review"], worker_id="w")
    store(routed["review"], {"*": {"$ref": remote.url}})

    with nothing_written():
        response = post(
            root_client(),
            f"/api/tasks/{task.pk}/complete/",
            {"lock_token": task.lock_token, "send": [{"type": "approved", "payload": {}}]},
        )

    assert response.status_code == 400, response.content
    assert NEVER_FETCHED in response.data["payload"][0]
    assert remote.requests == []


def test_a_stored_file_ref_is_not_read(routed: dict[str, Stage], local_file: str) -> None:
    store(routed["review"], {"approved": {"$ref": local_file}})
    with pytest.raises(ValidationError) as info:
        task_send(stage=routed["review"], type="approved", payload={})
    [message] = info.value.message_dict["payload"]
    assert NEVER_FETCHED in message
    assert ENFORCED not in message  # what reading the file would have said


def test_the_validators_registry_never_retrieves_even_if_the_save_checks_miss_a_ref(
    remote: Remote, local_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second line of defence on its own: suppose the stored-schema checks let the ref through.
    monkeypatch.setattr(schemas_module, "_safety_problems", lambda schema: [])
    for ref in (remote.url, local_file):
        [message] = payload_errors({"properties": {"a": {"$ref": ref}}}, {"a": 1})
        assert message.startswith("the schema can't be used: it has a reference that can't be resolved")
        assert ENFORCED not in message
    assert remote.requests == []


def test_the_dangling_ref_check_does_not_fetch_either(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schemas_module, "_remote_problems", lambda schema: [])
    [problem] = schema_map_problems({"t": {"$ref": remote.url}})
    assert problem == f"Schema for type 't' refers to {json.dumps(remote.url)} (at $ref), which is not in the schema."
    assert remote.requests == []


@pytest.mark.parametrize(
    ("schemas", "reason"),
    [
        ({"approved": nested(400)}, "is nested deeper than"),
        ({"approved": {"$ref": "#"}}, "refers to itself in a loop"),
        ({"approved": {"type": "banana"}}, "is not a valid JSON Schema"),
        ({"approved": {"$schema": 5}}, "has a $schema that is not a string"),
        ({"approved": "text"}, "must be a JSON object"),
        (["not", "a", "map"], "must be a JSON object"),
    ],
)
def test_a_stored_unusable_schema_refuses_payloads_with_400_not_500(
    routed: dict[str, Stage], schemas: Any, reason: str
) -> None:
    store(routed["review"], schemas)
    with nothing_written():
        response = post(root_client(), "/api/stages/review/send/", {"type": "approved", "payload": {}})
    assert response.status_code == 400, response.content
    [message] = response.data["payload"]
    assert "the schema can't be used: it " in message and reason in message


def test_a_payload_too_deep_for_a_recursive_schema_is_a_message_not_a_500(routed: dict[str, Stage]) -> None:
    store(routed["review"], {"approved": {"type": "object", "properties": {"c": {"$ref": "#"}}}})
    payload: dict[str, Any] = {}
    for _ in range(400):  # deeper than the API lets in, but a handler's send is not parsed from JSON
        payload = {"c": payload}
    assert payload_errors(routed["review"].schemas["approved"], payload) == [
        "the payload is nested too deeply to check against the schema."
    ]


# -- the form page draws whatever schema is stored ------------------------------------------------


@pytest.fixture
def desk_user(db: None) -> Any:
    user = make_user("dana")
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_task", "change_task"]))
    return user


ODD_SCHEMAS = {
    "draft-03 required: true": {
        "$schema": DRAFT3,
        "type": "object",
        "required": True,
        "properties": {"note": {"type": "string", "required": True}},
    },
    "properties is a list": {"properties": ["note"]},
    "bounds of the wrong type": {
        "properties": {
            "n": {"type": "integer", "minimum": "x", "maximum": True},
            "s": {"type": "string", "maxLength": "long", "minLength": -1},
            "f": {"type": "number", "minimum": [1]},
        }
    },
    "title and description not strings": {"title": 5, "properties": {"note": {"title": ["x"], "description": {}}}},
    "enum not a list": {"properties": {"pick": {"enum": "abc"}}},
    "required not a list of names": {"required": [1, {"a": 2}], "properties": {"note": {"type": "string"}}},
    "schema is a string": "text",
}


@pytest.mark.parametrize("schema", ODD_SCHEMAS.values(), ids=ODD_SCHEMAS.keys())
def test_the_work_page_draws_any_stored_schema_and_the_task_can_be_handed_back(
    routed: dict[str, Stage], desk_user: Any, schema: Any
) -> None:
    store(routed["review"], {"approved": schema})
    task = task_create(stage=routed["review"], type="order", payload={"note": "hi"})
    client = Client()
    client.force_login(desk_user)

    assert client.post(f"/work/{task.pk}/open/").status_code == 302
    page = client.get(f"/work/{task.pk}/")
    assert page.status_code == 200  # was a 500, with the task left locked to the person
    assert 'name="type" value="approved"' in page.content.decode()

    # Submitting answers with the form again (or sends it on, where the stored schema can still check
    # the payload), never a 500; and closing hands the task back.
    submitted = client.post(f"/work/{task.pk}/submit/", {"type": "approved", "f-approved-note": "ok"})
    assert submitted.status_code in (302, 400)
    if submitted.status_code == 400:
        assert client.post(f"/work/{task.pk}/cancel/").status_code == 302
        task.refresh_from_db()
        assert task.status == Task.Status.PENDING
    else:
        task.refresh_from_db()
        assert task.status == Task.Status.COMPLETED
    assert TaskEvent.objects.filter(task=task).exists()
