"""POST /hooks/<slug>/: secrets, signatures, routing, transforms, errors."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, TaskEvent


@pytest.fixture
def hook(world: dict[str, Stage]) -> Stage:
    cache.clear()  # throttle counters
    stage = world["intake"]
    assert stage.hook_secret, "hook stages get a secret when saved"
    return stage


def post(body: Any, *, headers: dict[str, str] | None = None, query: str = "") -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return APIClient().generic(
        "POST", f"/hooks/intake/{query}", raw, content_type="application/json", headers=headers or {}
    )


def counts() -> tuple[int, int]:
    return Task.objects.count(), TaskEvent.objects.count()


def test_token_sends_the_body_through_the_stage_transitions(hook: Stage) -> None:
    response = post({"order_id": 7}, headers={"X-Hook-Token": hook.hook_secret}, query="?type=order&src=shop")
    assert response.status_code == 202
    [task_id] = response.json()["tasks"]
    task = Task.objects.get(pk=task_id)
    assert (task.stage.slug, task.type, task.source_stage_id) == ("review", "order", hook.pk)
    assert task.payload == {"order_id": 7, "query": {"src": "shop"}}
    assert TaskEvent.objects.get(task=task).actor == "hook:intake"


def test_hmac_signature_of_the_body_is_accepted(hook: Stage) -> None:
    raw = json.dumps({"a": 1}).encode()
    signature = "sha256=" + hmac.new(hook.hook_secret.encode(), raw, hashlib.sha256).hexdigest()
    response = post(raw, headers={"X-Hook-Signature": signature})
    assert response.status_code == 202
    assert Task.objects.get(pk=response.json()["tasks"][0]).type == "webhook"


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Hook-Token": "wrong"}, {"X-Hook-Signature": "sha256=" + "0" * 64}, {"X-Hook-Signature": "md5=abc"}],
)
def test_missing_or_wrong_secret_is_401_and_creates_nothing(hook: Stage, headers: dict[str, str]) -> None:
    before = counts()
    assert post({"a": 1}, headers=headers).status_code == 401
    assert counts() == before


def test_signature_must_match_this_exact_body(hook: Stage) -> None:
    signed = hmac.new(hook.hook_secret.encode(), b'{"a": 1}', hashlib.sha256).hexdigest()
    before = counts()
    assert post({"a": 2}, headers={"X-Hook-Signature": "sha256=" + signed}).status_code == 401
    assert counts() == before


@pytest.mark.parametrize("body", [[1, 2], "text", 5])
def test_body_that_is_not_an_object_is_400(hook: Stage, body: Any) -> None:
    before = counts()
    assert post(body, headers={"X-Hook-Token": hook.hook_secret}).status_code == 400
    assert counts() == before


def test_unknown_stage_or_a_non_hook_stage_is_404(hook: Stage) -> None:
    client = APIClient()
    assert client.post("/hooks/nope/", {}, format="json").status_code == 404
    assert client.post("/hooks/review/", {}, format="json").status_code == 404


def test_a_type_nothing_routes_is_400_naming_the_accepted_types(hook: Stage, world: dict[str, Stage]) -> None:
    # review has typed transitions: make it a hook stage (no transform) and send an unrouted type.
    world["review"].kind = Stage.Kind.HOOK
    world["review"].handler = ""
    world["review"].save()
    world["review"].refresh_from_db()
    response = APIClient().post(
        "/hooks/review/?type=refund", {"a": 1}, format="json", headers={"X-Hook-Token": world["review"].hook_secret}
    )
    assert response.status_code == 400
    assert response.json()["accepted_types"] == ["approved", "declined"]


def transform(body: dict[str, Any], query: dict[str, str]) -> tuple[str, dict[str, Any]]:
    if "sku" not in body:
        raise ValueError("no sku")
    return "order", {"sku": body["sku"].upper()}


def test_handler_transforms_the_body_into_type_and_payload(hook: Stage) -> None:
    hook.handler = "tests.test_hooks.transform"
    hook.save()
    response = post({"sku": "ab-1"}, headers={"X-Hook-Token": hook.hook_secret})
    assert response.status_code == 202
    task = Task.objects.get(pk=response.json()["tasks"][0])
    assert (task.type, task.payload) == ("order", {"sku": "AB-1"})
    before = counts()
    refused = post({"x": 1}, headers={"X-Hook-Token": hook.hook_secret})
    assert refused.status_code == 400 and "no sku" in json.dumps(refused.json())
    assert counts() == before


def test_hooks_are_rate_limited(hook: Stage, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks_app.api.hooks import HookThrottle

    monkeypatch.setattr(HookThrottle, "THROTTLE_RATES", {"hook": "2/minute"})
    codes = [post({"n": i}, headers={"X-Hook-Token": hook.hook_secret}).status_code for i in range(3)]
    assert codes == [202, 202, 429]
