"""The demo workflow, end to end: hook -> script -> form -> scripts -> nightly job."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from rest_framework.test import APIClient

from tasks_app.demo import SAMPLE_ORDERS, STAGES, TRANSITIONS
from tasks_app.models import Stage, Task, TaskEvent, Transition
from tests.support.users import make_user

committed = pytest.mark.django_db(transaction=True)


def run(*args: str, **options: Any) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


def at(slug: str) -> list[Task]:
    return list(Task.objects.filter(stage__slug=slug).order_by("id"))


def test_load_demo_creates_every_kind_of_stage_and_the_orders(db: None) -> None:
    out = run("load_demo")

    assert sorted(Stage.objects.values_list("slug", flat=True)) == sorted(s["slug"] for s in STAGES)
    assert set(Stage.objects.values_list("kind", flat=True)) == {"hook", "script", "form", "job"}
    assert Stage.objects.get(slug="daily-digest").schedule == "0 2 * * *"
    assert list(Stage.objects.get(slug="review").groups.values_list("name", flat=True)) == ["reviewers"]
    routes = sorted(Transition.objects.values_list("source__slug", "target__slug", "task_type"))
    assert routes == sorted(TRANSITIONS)
    orders = at("check-stock")
    assert sorted(t.payload["order_id"] for t in orders) == [1001, 1002, 1003]
    assert "demo workflow ready" in out and "/hooks/orders/?type=order" in out


def test_load_demo_twice_creates_no_duplicates(db: None) -> None:
    run("load_demo")
    first = (Stage.objects.count(), Transition.objects.count(), Task.objects.count(), TaskEvent.objects.count())
    run("load_demo")
    again = (Stage.objects.count(), Transition.objects.count(), Task.objects.count(), TaskEvent.objects.count())
    assert again == first
    assert first[:3] == (len(STAGES), len(TRANSITIONS), len(SAMPLE_ORDERS))


def test_load_demo_no_orders_creates_only_the_workflow(db: None) -> None:
    run("load_demo", "--no-orders")
    assert Stage.objects.count() == len(STAGES)
    assert not Task.objects.exists()


def test_the_hook_refuses_an_order_that_breaks_its_schema(db: None) -> None:
    cache.clear()
    run("load_demo", "--no-orders")
    hook = Stage.objects.get(slug="orders")
    response = APIClient().post(
        "/hooks/orders/?type=order",
        {"order_id": "x", "customer": "a@b.c", "items": []},
        format="json",
        headers={"X-Hook-Token": hook.hook_secret},
    )
    assert response.status_code == 400
    messages = " ".join(response.json()["payload"])
    assert "order_id: 'x' is not of type 'integer'" in messages
    assert "items: [] should be non-empty" in messages
    assert not Task.objects.exists()


@committed
def test_an_order_travels_the_whole_demo(db: None, client: Any) -> None:
    cache.clear()
    run("load_demo", "--no-orders")
    hook = Stage.objects.get(slug="orders")
    order = {"order_id": 7, "customer": "ada@example.com", "items": [{"sku": "book", "qty": 2}]}
    response = APIClient().post(
        "/hooks/orders/?type=order", order, format="json", headers={"X-Hook-Token": hook.hook_secret}
    )
    assert response.status_code == 202

    run("run_worker", once=True, no_scheduler=True)
    [waiting] = at("review")
    assert (waiting.type, waiting.status) == ("in_stock", Task.Status.PENDING)

    # A reviewer approves it in the browser's form.
    reviewer = make_user("rita")
    reviewer.groups.add(Stage.objects.get(slug="review").groups.get())
    client.force_login(reviewer)
    assert client.post(f"/work/{waiting.pk}/open/").status_code == 302
    response = client.post(f"/work/{waiting.pk}/submit/", {"type": "approved", "f-approved-note": "gift wrap"})
    assert response.status_code == 302
    [to_invoice] = at("invoice")
    assert to_invoice.payload["note"] == "gift wrap" and to_invoice.parent_id == waiting.pk

    run("run_worker", once=True, no_scheduler=True)
    [digest_input] = at("daily-digest")
    assert digest_input.type == "invoiced"
    assert digest_input.payload["total"] == 36.0 and digest_input.payload["invoice"] == "INV-7"
    assert digest_input.status == Task.Status.PENDING  # waits for tonight's job
    assert Task.objects.exclude(stage__slug="daily-digest").exclude(status=Task.Status.COMPLETED).count() == 0

    # Tonight's digest, run now: it takes the waiting task and sends one digest.
    out = run("run_scheduler", run_now="daily-digest")
    assert "daily-digest" in out
    digest_input.refresh_from_db()
    assert digest_input.status == Task.Status.COMPLETED
    [digest] = at("send-digest")
    assert digest.type == "digest"
    assert (digest.payload["invoiced"], digest.payload["revenue"], digest.payload["orders"]) == (1, 36.0, [7])
    run("run_worker", once=True, no_scheduler=True)
    assert not Task.objects.exclude(status=Task.Status.COMPLETED).exists()


def test_the_demo_workflow_round_trips_through_dump_and_load(db: None, tmp_path: Any) -> None:
    run("load_demo", "--no-orders")
    dumped = run("dump_workflow")
    Transition.objects.all().delete()
    Stage.objects.all().delete()
    (tmp_path / "workflow.json").write_text(dumped)

    run("load_workflow", str(tmp_path / "workflow.json"))

    assert run("dump_workflow") == dumped


@committed
def test_out_of_stock_orders_reach_review_and_a_decline_notifies_the_customer(db: None, client: Any) -> None:
    run("load_demo")
    run("run_worker", once=True, no_scheduler=True)
    review = {t.payload["order_id"]: t for t in at("review")}
    assert {k: t.type for k, t in review.items()} == {1001: "in_stock", 1002: "out_of_stock", 1003: "in_stock"}
    assert review[1002].payload["missing"] == ["sofa"]

    admin = make_user("boss", superuser=True)
    client.force_login(admin)
    client.post(f"/work/{review[1002].pk}/open/")
    refused = client.post(f"/work/{review[1002].pk}/submit/", {"type": "declined", "f-declined-reason": ""})
    assert refused.status_code == 400 and not at("notify-customer")
    client.post(f"/work/{review[1002].pk}/submit/", {"type": "declined", "f-declined-reason": "sofa sold out"})
    run("run_worker", once=True, no_scheduler=True)
    [notified] = at("daily-digest")
    assert (notified.type, notified.payload["reason"], notified.payload["emailed"]) == (
        "notified",
        "sofa sold out",
        "grace@example.com",
    )


def test_load_demo_prints_the_curl_for_the_address_make_run_serves(db: None, monkeypatch: Any) -> None:
    monkeypatch.setenv("RUN_ADDR", "127.0.0.1:8765")
    out = run("load_demo", "--no-orders")
    secret = Stage.objects.get(slug="orders").hook_secret
    assert f"curl -X POST 'http://127.0.0.1:8765/hooks/orders/?type=order' -H 'X-Hook-Token: {secret}'" in out
