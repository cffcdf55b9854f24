"""POST /hooks/<slug>/: secrets, signatures, routing, transforms, errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.api.hooks import sign
from tasks_app.models import HookReceipt, Stage, Task, TaskEvent


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


def signed(secret: str, raw: bytes, *, at: float | None = None) -> dict[str, str]:
    """Headers of a signed request, computed independently of the app's code."""
    timestamp = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return {"X-Hook-Timestamp": timestamp, "X-Hook-Signature": f"sha256={digest}"}


def test_hmac_signature_of_timestamp_and_body_is_accepted(hook: Stage) -> None:
    raw = json.dumps({"a": 1}).encode()
    response = post(raw, headers=signed(hook.hook_secret, raw))
    assert response.status_code == 202
    assert Task.objects.get(pk=response.json()["tasks"][0]).type == "webhook"


def test_the_app_signs_like_the_senders_do(hook: Stage) -> None:
    raw = b'{"a": 1}'
    assert sign(hook.hook_secret, 1700000000, raw) == signed(hook.hook_secret, raw, at=1700000000)["X-Hook-Signature"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Hook-Token": "wrong"},
        {"X-Hook-Token": ""},
        {"X-Hook-Signature": "sha256=" + "0" * 64, "X-Hook-Timestamp": str(int(time.time()))},
        {"X-Hook-Signature": "md5=abc", "X-Hook-Timestamp": str(int(time.time()))},
    ],
)
def test_missing_or_wrong_secret_is_401_and_creates_nothing(hook: Stage, headers: dict[str, str]) -> None:
    before = counts()
    assert post({"a": 1}, headers=headers).status_code == 401
    assert counts() == before


def test_signature_must_match_this_exact_body(hook: Stage) -> None:
    headers = signed(hook.hook_secret, b'{"a": 1}')
    before = counts()
    assert post({"a": 2}, headers=headers).status_code == 401
    assert counts() == before


def test_signature_without_its_timestamp_is_401(hook: Stage) -> None:
    raw = b'{"a": 1}'
    headers = signed(hook.hook_secret, raw)
    del headers["X-Hook-Timestamp"]
    response = post(raw, headers=headers)
    assert response.status_code == 401
    assert "X-Hook-Timestamp" in response.json()["detail"]


def test_a_replayed_signed_request_is_401_and_creates_nothing(hook: Stage) -> None:
    raw = json.dumps({"order_id": 1}).encode()
    headers = signed(hook.hook_secret, raw)
    assert post(raw, headers=headers).status_code == 202
    before = counts()
    response = post(raw, headers=headers)
    assert response.status_code == 401
    assert "already used" in response.json()["detail"]
    assert counts() == before


def test_an_old_signed_request_is_401_even_if_never_seen(hook: Stage, settings: Any) -> None:
    settings.TASKS_HOOK_TOLERANCE = 300
    raw = b'{"a": 1}'
    before = counts()
    for at in (time.time() - 301, time.time() + 301):
        response = post(raw, headers=signed(hook.hook_secret, raw, at=at))
        assert response.status_code == 401
        assert "clock" in response.json()["detail"]
    assert counts() == before


def test_a_request_refused_after_its_signature_check_can_be_sent_again(hook: Stage) -> None:
    # A 400 (here: a type nothing routes... every type routes at intake, so a
    # non-object body) must not burn the signature: the receipt is rolled back.
    raw = json.dumps({"a": 1}).encode()
    headers = signed(hook.hook_secret, raw)
    assert post(raw, headers=headers, query="?type=" + "x" * 200).status_code == 400
    assert HookReceipt.objects.count() == 0
    assert post(raw, headers=headers).status_code == 202


def test_receipts_older_than_twice_the_tolerance_are_forgotten(hook: Stage, settings: Any) -> None:
    settings.TASKS_HOOK_TOLERANCE = 60
    old = HookReceipt.objects.create(stage=hook, signature="0" * 64)
    HookReceipt.objects.filter(pk=old.pk).update(received_at=timezone.now() - timedelta(seconds=121))
    raw = b'{"a": 1}'
    assert post(raw, headers=signed(hook.hook_secret, raw)).status_code == 202
    assert not HookReceipt.objects.filter(pk=old.pk).exists()
    assert HookReceipt.objects.count() == 1


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
    # The transform's error stays in the log (tests/test_handler_trust.py): a fixed message and a request id.
    assert refused.status_code == 400 and "no sku" not in json.dumps(refused.json())
    assert refused.json()["request_id"]
    assert counts() == before


def test_hooks_are_rate_limited(hook: Stage, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks_app.api.hooks import HookThrottle

    monkeypatch.setattr(HookThrottle, "THROTTLE_RATES", {"hook": "2/minute"})
    codes = [post({"n": i}, headers={"X-Hook-Token": hook.hook_secret}).status_code for i in range(3)]
    assert codes == [202, 202, 429]
