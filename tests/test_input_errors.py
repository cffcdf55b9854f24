"""Every value from outside has bounds: malformed or out-of-range input answers 400
(401 / 415 / 413 for hooks) with a message, never a 500, and changes nothing.

Query parameters of the task list (API and pages), cursors, the bulk forms, and
the hook view's headers, bodies and transform results. Each case was a 500 on
at least one database; every case runs on both and answers the same on both.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from django.views.debug import ExceptionReporter
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory

from tasks_app.api.hooks import check_secret
from tasks_app.models import HookReceipt, Stage, Task
from tasks_app.services import task_claim, task_create
from tests.support.world import state

HUGE = "99999999999999999999999"  # beyond 64 bits: sqlite3 raises OverflowError binding it


@pytest.fixture
def tasks(world: dict[str, Stage]) -> list[Task]:
    review = world["review"]
    made = [task_create(stage=review, type="order", payload={"a": i}) for i in range(3)]
    task_claim(stage=review, worker_id="w", limit=1)
    return made


@contextmanager
def unchanged() -> Iterator[None]:
    before = (state(), list(HookReceipt.objects.values_list("id", flat=True)))
    yield
    assert (state(), list(HookReceipt.objects.values_list("id", flat=True))) == before


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- the task filters (API and pages share TaskFilter) -----------------------------------------

FILTER_CASES = [
    ("payload", '{"a": NaN}'),
    ("payload", '{"a": Infinity}'),
    ("payload", '{"a": -Infinity}'),
    ("payload", '{"a": 1e999}'),
    ("payload", '{"a": {"b": [1, -1e999]}}'),
    ("payload", "a=NaN"),
    ("payload", "a=1e999"),
    ("payload", '{"a": "\\u0000"}'),
    ("payload", '{"a\\u0000": 1}'),
    ("payload", "a=\x00"),
    ("payload", '{"a": ' + HUGE + "}"),
    ("payload", "a=" + HUGE),
    ("payload", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("created_after", "9999-12-31T23:59:59-14:00"),
    ("created_before", "0001-01-01T00:00:00+14:00"),
    ("id", HUGE),
    ("id", f"1,{HUGE}"),
    ("id", "-" + HUGE),
    ("parent", HUGE),
    ("parent", "-1e100"),
    ("parent", "1e999"),
    ("parent", "9" * 5000),
]
FILTER_IDS = [f"{field}={value[:40]!r}" for field, value in FILTER_CASES]


@pytest.mark.parametrize(("field", "value"), FILTER_CASES, ids=FILTER_IDS)
def test_api_list_refuses_an_out_of_bounds_filter(admin: APIClient, tasks: list[Task], field: str, value: str) -> None:
    with unchanged():
        response = admin.get("/api/tasks/", {field: value})
    assert response.status_code == 400, response.content[:300]
    assert response.json()[field][0]


@pytest.mark.parametrize("url", ["/tasks/", "/tasks/rows/"])
@pytest.mark.parametrize(("field", "value"), FILTER_CASES, ids=FILTER_IDS)
def test_list_page_shows_the_filter_error_with_400(
    admin_client: Client, tasks: list[Task], url: str, field: str, value: str
) -> None:
    with unchanged():
        response = admin_client.get(url, {field: value})
    assert response.status_code == 400
    body = response.content.decode()
    assert f"{field}:" in body
    assert not re.search(r'<tr id="task-[0-9]', body), "an invalid filter lists no rows"


@pytest.mark.parametrize("url", ["/tasks/", "/tasks/rows/"])
def test_free_text_with_a_nul_character_is_400(admin_client: Client, tasks: list[Task], url: str) -> None:
    with unchanged():
        response = admin_client.get(url, {"q": "a\x00b"})
    assert response.status_code == 400
    assert "q:" in response.content.decode()


# -- cursors ------------------------------------------------------------------------------------

API_CURSORS = [
    ({}, b64("p=abc")),
    ({}, b64("p=" + HUGE)),
    ({}, b64("p=-" + HUGE)),
    ({}, b64("p=1.5")),
    ({}, b64("p=\x00")),
    ({}, b64("o=" + "9" * 5000)),
    ({}, b64("r=x")),
    ({}, "not base64!"),
    ({"ordering": "created_at"}, b64("p=abc")),
    ({"ordering": "created_at"}, b64("p=2020-13-45 00:00:00")),
    ({"ordering": "-created_at"}, b64("p=9999-12-31 23:59:59-14:00")),
    ({"ordering": "updated_at"}, b64("p=0001-01-01 00:00:00+14:00")),
]


@pytest.mark.parametrize(("params", "cursor"), API_CURSORS)
def test_api_list_refuses_a_malformed_cursor(
    admin: APIClient, tasks: list[Task], params: dict[str, str], cursor: str
) -> None:
    with unchanged():
        response = admin.get("/api/tasks/", {**params, "cursor": cursor})
    assert response.status_code == 400, response.content[:300]
    assert response.json()["cursor"][0]


def test_api_cursors_the_api_made_still_page(admin: APIClient, tasks: list[Task]) -> None:
    for ordering in ("-id", "id", "created_at", "-updated_at"):
        first = admin.get("/api/tasks/", {"ordering": ordering, "page_size": 1})
        second = admin.get(first.json()["next"])
        assert second.status_code == 200, second.content
        assert second.json()["results"][0]["id"] != first.json()["results"][0]["id"]


PAGE_CURSORS = [
    ("created_at", "2020-13-45T00:00:00|5"),
    ("created_at", "0001-01-01T00:00:00+14:00|5"),
    ("-created_at", "9999-12-31T23:59:59-14:00|5"),
    ("updated_at", "not-a-date|5"),
    ("created_at", "2020-01-01T00:00:00|" + HUGE),
    ("id", f"{HUGE}|{HUGE}"),
    ("-id", "5|-" + HUGE),
    ("-id", "5|²"),
    ("-id", "garbage"),
    ("-id", "|"),
    ("-id", "a\x00|5"),
]


@pytest.mark.parametrize("url", ["/tasks/", "/tasks/rows/"])
@pytest.mark.parametrize(("sort", "cursor"), PAGE_CURSORS)
def test_list_page_refuses_a_malformed_cursor(
    admin_client: Client, tasks: list[Task], url: str, sort: str, cursor: str
) -> None:
    with unchanged():
        response = admin_client.get(url, {"sort": sort, "cursor": cursor})
    assert response.status_code == 400
    assert "cursor:" in response.content.decode()


def test_page_cursors_the_page_made_still_page(admin_client: Client, world: dict[str, Stage]) -> None:
    from tasks_app.selectors.tasks import PAGE_SIZE
    from tasks_app.services import tasks_create_bulk

    tasks_create_bulk(items=[(world["review"], "t", {})] * (PAGE_SIZE + 1))
    for sort in ("-id", "id", "created_at", "-updated_at"):
        first = admin_client.get("/tasks/", {"sort": sort})
        cursor = first.context["next_cursor"]
        second = admin_client.get("/tasks/", {"sort": sort, "cursor": cursor})
        assert second.status_code == 200
        assert len(second.context["tasks"]) == 1


# -- bulk actions -------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", [2**70, -(2**70), 2**63])
def test_api_bulk_complete_refuses_an_id_beyond_64_bits(admin: APIClient, tasks: list[Task], task_id: int) -> None:
    body = {"tasks": [{"id": task_id, "lock_token": "x"}]}
    with unchanged():
        response = admin.post("/api/tasks/bulk-complete/", body, format="json")
    assert response.status_code == 400, response.content[:300]
    assert json.dumps(response.json())


@pytest.mark.parametrize(
    "form",
    [
        {"scope": "selected", "ids": ["²"]},
        {"scope": "selected", "ids": [HUGE]},
        {"scope": "selected", "ids": ["1", "x"]},
        {"scope": "all", "query": 'payload={"a": NaN}'},
        {"scope": "all", "query": "created_after=9999-12-31T23:59:59-14:00"},
        {"scope": "all", "query": f"parent={HUGE}"},
        {"scope": "all", "query": "status=sleeping"},
        {"scope": "all", "query": "q=%00"},
    ],
)
def test_bulk_form_refuses_malformed_ids_and_queries(
    admin_client: Client, tasks: list[Task], form: dict[str, Any]
) -> None:
    with unchanged():
        response = admin_client.post("/tasks/bulk/", {"action": "complete", **form})
    assert response.status_code == 400
    assert response.content.decode().strip()


# -- hooks --------------------------------------------------------------------------------------


@pytest.fixture
def hook(world: dict[str, Stage]) -> Stage:
    cache.clear()  # throttle counters
    return world["intake"]


def hook_post(body: bytes, content_type: str = "application/json", **headers: str) -> Any:
    return APIClient().generic("POST", "/hooks/intake/", body, content_type=content_type, headers=headers)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hook-Timestamp": "²", "X-Hook-Signature": "sha256=" + "0" * 64},
        {"X-Hook-Timestamp": "1" * 400, "X-Hook-Signature": "sha256=" + "0" * 64},
        {"X-Hook-Timestamp": "1" * 5000, "X-Hook-Signature": "sha256=" + "0" * 64},
        {"X-Hook-Timestamp": "NOW", "X-Hook-Signature": "sha256=é"},
        {"X-Hook-Timestamp": "NOW", "X-Hook-Signature": "sha256=" + "é" * 64},
        {"X-Hook-Token": "é"},
    ],
    ids=["superscript", "400-digits", "5000-digits", "non-ascii-signature", "non-ascii-64", "non-ascii-token"],
)
def test_malformed_hook_credentials_are_401(hook: Stage, settings: Any, headers: dict[str, str]) -> None:
    settings.DEBUG = True  # a 500 would then render the debug page, with the stage's secret in its locals
    headers = {k: (str(int(time.time())) if v == "NOW" else v) for k, v in headers.items()}
    with unchanged():
        response = hook_post(b'{"a": 1}', **headers)
    assert response.status_code == 401
    assert response.json()["detail"]
    assert hook.hook_secret not in response.content.decode()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"a=1&b=2", "application/x-www-form-urlencoded"),
        (b"", "application/x-www-form-urlencoded"),
        (b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--B--\r\n', "multipart/form-data; boundary=B"),
        (b'{"a": 1}', "text/plain"),
    ],
)
def test_hooks_accept_only_json_bodies(hook: Stage, body: bytes, content_type: str) -> None:
    with unchanged():
        response = hook_post(body, content_type, **{"X-Hook-Token": hook.hook_secret})
    assert response.status_code == 415
    assert response.json()["detail"]


@pytest.mark.parametrize("size", [20 * 1024 * 1024, 3 * 1024 * 1024])
def test_a_hook_body_over_the_limit_is_a_json_413(hook: Stage, size: int) -> None:
    body = b'{"a": "' + b"x" * (size - 10) + b'"}'
    with unchanged():
        response = hook_post(body, **{"X-Hook-Token": hook.hook_secret})
    assert response.status_code == 413
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["detail"]


def test_an_api_body_over_the_data_upload_limit_is_a_json_413(admin: APIClient, world: dict[str, Stage]) -> None:
    body = json.dumps({"stage": "review", "type": "t", "payload": {"a": "x" * (20 * 1024 * 1024)}})
    with unchanged():
        response = admin.generic("POST", "/api/tasks/", body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["detail"]


# A transform's result must be a payload object or a (type, payload) pair.
BAD_RESULTS: dict[str, Any] = {
    "triple": ("order", {"a": 1}, "extra"),
    "single": ("order",),
    "empty": (),
    "type-not-str": (1, {"a": 1}),
    "payload-not-object": ("order", [1]),
    "list": ["order", {"a": 1}],
    "none": None,
    "string": "order",
}


def bad_transform(body: dict[str, Any], query: dict[str, str]) -> Any:
    return BAD_RESULTS[body["case"]]


@pytest.mark.parametrize("case", list(BAD_RESULTS))
def test_a_transform_result_of_the_wrong_shape_is_the_transforms_error(hook: Stage, case: str, settings: Any) -> None:
    settings.TASKS_HANDLER_MODULES = [*getattr(settings, "TASKS_HANDLER_MODULES", []), "tests.test_input_errors"]
    Stage.objects.filter(pk=hook.pk).update(handler="tests.test_input_errors.bad_transform")
    with unchanged():
        response = hook_post(json.dumps({"case": case}).encode(), **{"X-Hook-Token": hook.hook_secret})
    assert response.status_code == 400, response.content[:300]
    assert json.dumps(response.json())


def test_an_error_report_from_inside_check_secret_hides_the_secret(
    hook: Stage, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reports of a 500 with DEBUG off (mailed or logged with their variables) don't show the
    # secret: check_secret is @sensitive_variables(). (DEBUG's own page shows every variable by
    # Django's design; there, what counts is that no header can raise, the 401 tests above.)
    settings.DEBUG = False

    def broken(*args: Any) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr("tasks_app.api.hooks.sign", broken)
    headers = {"X-Hook-Timestamp": str(int(time.time())), "X-Hook-Signature": "sha256=" + "0" * 64}
    request = APIRequestFactory().post("/hooks/intake/", b"{}", content_type="application/json", headers=headers)
    with pytest.raises(RuntimeError) as info:
        check_secret(Request(request), hook.hook_secret, b"{}")
    report = ExceptionReporter(request, info.type, info.value, info.tb.tb_next)  # from check_secret down
    assert "check_secret" in report.get_traceback_text()
    assert hook.hook_secret not in report.get_traceback_text()
    assert hook.hook_secret not in report.get_traceback_html()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"stage=review&type=t", "application/x-www-form-urlencoded"),
        (b'--B\r\nContent-Disposition: form-data; name="stage"\r\n\r\nreview\r\n--B--\r\n', "multipart/form-data; boundary=B"),  # noqa: E501
    ],
)
def test_the_api_takes_only_json_bodies(
    admin: APIClient, world: dict[str, Stage], body: bytes, content_type: str
) -> None:
    with unchanged():
        response = admin.generic("POST", "/api/tasks/", body, content_type=content_type)
    assert response.status_code == 415
    assert response.json()["detail"]


def test_too_many_query_parameters_is_a_json_400(admin: APIClient, tasks: list[Task]) -> None:
    response = admin.get("/api/tasks/?" + "&".join(f"x{i}=1" for i in range(1100)))
    assert response.status_code == 400
    assert response.json()["detail"]


# -- the same class on other API entries ----------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "nan", "Infinity", "-Infinity", "1e999"])
def test_release_refuses_a_retry_in_that_is_not_a_number(admin: APIClient, tasks: list[Task], value: str) -> None:
    # "NaN" passed min/max (every comparison with it is false) and became a retry in 0 seconds.
    [claimed] = Task.objects.filter(status=Task.Status.LOCKED)
    with unchanged():
        response = admin.post(
            f"/api/tasks/{claimed.pk}/release/", {"lock_token": claimed.lock_token, "retry_in": value}, format="json"
        )
    assert response.status_code == 400
    assert response.json()["retry_in"][0]


@pytest.mark.parametrize(("method", "url"), [("get", "/api/stages/a%00b/"), ("post", "/api/stages/a%00b/claim/")])
def test_a_stage_path_that_is_not_a_slug_is_404(admin: APIClient, tasks: list[Task], method: str, url: str) -> None:
    # On PostgreSQL a NUL in the slug reached the query (DataError, a 500).
    with unchanged():
        response = getattr(admin, method)(url)
    assert response.status_code == 404  # the URL doesn't resolve: the API's 404, whatever its renderer
    assert response.content.strip()
