"""A small form workflow for the people's pages (My work, the decision page, task detail): plain helpers.

    intake (script, schema for "order") --order--> review (form, reviewers) --approved--> invoice
                                                                            --declined--> notify

The intake stage's schema describes the orders it sends (titles "Order number",
"Customer", "E-mail", "Items"), and review's own schemas are its buttons'.
Alice and Bob are reviewers; Vera may view tasks and is a reviewer too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import Group

from tasks_app.models import Stage, Task, Transition
from tasks_app.services import task_claim, task_complete, task_create
from tests.support.users import make_user

LOCK_TIMEOUT = 7 * 24 * 3600  # a week: the lock whose date "until 13:22" hid

ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer", "title": "Order number"},
        "customer": {
            "type": "object",
            "title": "Customer",
            "properties": {"email": {"type": "string", "title": "E-mail"}},
        },
        "items": {
            "type": "array",
            "title": "Items",
            "items": {"type": "object", "properties": {"sku": {"type": "string", "title": "Article"}}},
        },
    },
}
APPROVE = {"title": "Approve", "type": "object", "properties": {"note": {"type": "string", "title": "Note"}}}
DECLINE = {
    "title": "Decline",
    "type": "object",
    "required": ["reason"],
    "properties": {"reason": {"type": "string", "minLength": 3, "title": "Reason", "description": "Told to them."}},
}


@dataclass
class FormWorld:
    intake: Stage
    review: Stage
    reviewers: Group
    alice: Any
    bob: Any
    vera: Any


def form_world() -> FormWorld:
    intake = Stage.objects.create(
        slug="intake", name="Intake", kind=Stage.Kind.SCRIPT, handler="tests.handlers.noop",
        schemas={"order": ORDER_SCHEMA},
    )  # fmt: skip
    review = Stage.objects.create(
        slug="review", name="Review", kind=Stage.Kind.FORM, lock_timeout=LOCK_TIMEOUT,
        schemas={"approved": APPROVE, "declined": DECLINE},
    )  # fmt: skip
    reviewers = Group.objects.create(name="reviewers")
    review.groups.add(reviewers)
    for slug, task_type in [("invoice", "approved"), ("notify", "declined")]:
        target = Stage.objects.create(slug=slug, name=slug.title(), handler="tests.handlers.noop")
        Transition.objects.create(source=review, target=target, task_type=task_type)
    Transition.objects.create(source=intake, target=review, task_type="order")
    alice, bob, vera = make_user("alice"), make_user("bob"), make_user("vera", "view_task", "view_taskevent")
    for user in (alice, bob, vera):
        user.groups.add(reviewers)
    return FormWorld(intake, review, reviewers, alice, bob, vera)


def sent_order(world: FormWorld, payload: dict[str, Any], *, now: datetime | None = None) -> Task:
    """An order sent by intake to review (so it has a parent and a sender, as in a real workflow)."""
    parent = task_create(stage=world.intake, type="order", payload=payload, now=now)
    [claim] = task_claim(stage=world.intake, worker_id="w1", now=now)
    assert claim.pk == parent.pk
    [order] = task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("order", payload)], now=now)
    return order


def waiting_orders(world: FormWorld, n: int) -> list[Task]:
    """`n` orders waiting at review, oldest first (stored directly: a page's worth of rows, cheaply)."""
    return Task.objects.bulk_create(
        Task(stage=world.review, source_stage=world.intake, type="order", payload={"order_id": i}) for i in range(n)
    )
