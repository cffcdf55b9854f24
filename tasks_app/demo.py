"""The demo workflow that `make run` loads, and its handlers.

    incoming (hook) --*--> check-order (script) --approved--> ship (script)
                                                 --declined--> notify-declined (script)

Handlers are idempotent: running one twice for the same task sends the same
successor again only if the first completion was lost, which the lock token
rules out.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from tasks_app.models import Stage, Transition
from tasks_app.services import task_send
from tasks_app.worker import PermanentFailure

APPROVAL_LIMIT = 1000


def check_order(task: Any) -> None:
    """Approve orders up to APPROVAL_LIMIT with at least one item; decline the rest."""
    amount = task.payload.get("amount")
    items = task.payload.get("items") or []
    if not isinstance(amount, int | float):
        raise PermanentFailure(f"order has no numeric 'amount': {amount!r}")
    if items and amount <= APPROVAL_LIMIT:
        task.send("approved", {**task.payload, "checked": True})
    else:
        reason = "no items" if not items else f"amount {amount} is over {APPROVAL_LIMIT}"
        task.send("declined", {**task.payload, "reason": reason})


def ship(task: Any) -> None:
    """Pretend to ship the order: nothing to send, completing is the record."""


def notify_declined(task: Any) -> None:
    """Pretend to email the customer about the declined order."""


STAGES = [
    ("incoming", "Incoming orders", Stage.Kind.HOOK, "", "Orders arrive here and are sent on to be checked."),
    ("check-order", "Check order", Stage.Kind.SCRIPT, "tasks_app.demo.check_order", "Approves or declines."),
    ("ship", "Ship", Stage.Kind.SCRIPT, "tasks_app.demo.ship", "Approved orders are shipped."),
    ("notify-declined", "Notify declined", Stage.Kind.SCRIPT, "tasks_app.demo.notify_declined", "Tells the customer."),
]
TRANSITIONS = [
    ("incoming", "check-order", ""),
    ("check-order", "ship", "approved"),
    ("check-order", "notify-declined", "declined"),
]
SAMPLE_ORDERS: list[dict[str, Any]] = [
    {"order_id": 1001, "customer_id": 12345, "amount": 120, "items": ["book"]},
    {"order_id": 1002, "customer_id": 777, "amount": 5400, "items": ["sofa", "lamp"]},
    {"order_id": 1003, "customer_id": 12345, "amount": 35, "items": []},
]


@transaction.atomic
def load_demo(*, with_orders: bool = True) -> dict[str, Stage]:
    """Create or update the demo stages and transitions; optionally send sample orders."""
    stages = {}
    for slug, name, kind, handler, description in STAGES:
        stages[slug], _ = Stage.objects.update_or_create(
            slug=slug, defaults={"name": name, "kind": kind, "handler": handler, "description": description}
        )
    for source, target, task_type in TRANSITIONS:
        Transition.objects.get_or_create(source=stages[source], target=stages[target], task_type=task_type)
    if with_orders and not stages["check-order"].tasks.exists():
        for order in SAMPLE_ORDERS:
            task_send(stage=stages["incoming"], type="order", payload=order, actor="demo")
    return stages
