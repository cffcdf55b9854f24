"""The demo order workflow that `make run` loads: every kind of stage, and its handlers.

    orders (hook) --order--> check-stock (script) --in_stock / out_of_stock--> review (form)
    review --approved--> invoice (script) --invoiced--> daily-digest (job, nightly)
    review --declined--> notify-customer (script) --notified--> daily-digest
    daily-digest --digest--> send-digest (script)

Handlers are idempotent in effect: a handler that runs twice for a task
(its completion was lost) computes the same successor again, and the lock
token makes sure only one completion is recorded.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.contrib.auth.models import Group
from django.db import transaction

from tasks_app.models import Stage, Transition
from tasks_app.services import task_send
from tasks_app.worker import PermanentFailure

# What the warehouse has, and what things cost (a real handler would ask a service).
STOCK = {"book": 25, "lamp": 3, "mug": 40, "sofa": 0}
PRICES = {"book": 18.0, "lamp": 45.0, "mug": 9.5, "sofa": 640.0}
REVIEWERS = "reviewers"

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order_id", "customer", "items"],
    "properties": {
        "order_id": {"type": "integer"},
        "customer": {"type": "string", "minLength": 1},
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            },
        },
    },
}
REVIEW_SCHEMAS: dict[str, Any] = {
    "approved": {
        "title": "Approve",
        "type": "object",
        "properties": {"note": {"type": "string", "title": "Note for the invoice", "maxLength": 500}},
    },
    "declined": {
        "title": "Decline",
        "type": "object",
        "required": ["reason"],
        "properties": {"reason": {"type": "string", "title": "Reason (sent to the customer)", "minLength": 3}},
    },
}


def check_stock(task: Any) -> None:
    """Send in_stock if the warehouse has every item, else out_of_stock naming what is missing."""
    missing = [line["sku"] for line in task.payload["items"] if STOCK.get(line["sku"], 0) < line["qty"]]
    if missing:
        task.send("out_of_stock", {**task.payload, "missing": missing})
    else:
        task.send("in_stock", dict(task.payload))


def invoice(task: Any) -> None:
    """Price the order and record an invoice number (derived from the order: a rerun gives the same)."""
    try:
        total = sum(PRICES[line["sku"]] * line["qty"] for line in task.payload["items"])
    except KeyError as exc:
        raise PermanentFailure(f"no price for {exc}") from exc
    task.send("invoiced", {**task.payload, "invoice": f"INV-{task.payload['order_id']}", "total": round(total, 2)})


def notify_customer(task: Any) -> None:
    """Pretend to email the customer why their order was declined."""
    task.send("notified", {**task.payload, "emailed": task.payload.get("customer")})


def daily_digest(job: Any) -> None:
    """Nightly: sum up the day's invoiced and declined orders waiting here, send one digest."""
    kinds = Counter(t.type for t in job.tasks)
    revenue = sum(t.payload.get("total", 0) for t in job.tasks if t.type == "invoiced")
    job.send(
        "digest",
        {
            "for": job.due_at.date().isoformat(),
            "invoiced": kinds.get("invoiced", 0),
            "declined": kinds.get("notified", 0),
            "revenue": round(revenue, 2),
            "orders": sorted(t.payload.get("order_id") for t in job.tasks),
        },
    )


def send_digest(task: Any) -> None:
    """Pretend to email the digest to the shop owner: completing is the record."""


STAGES: list[dict[str, Any]] = [
    {"slug": "orders", "name": "Incoming orders", "kind": Stage.Kind.HOOK, "schemas": {"order": ORDER_SCHEMA},
     "description": "POST /hooks/orders/?type=order: orders from the shop arrive here."},
    {"slug": "check-stock", "name": "Check stock", "kind": Stage.Kind.SCRIPT, "handler": "tasks_app.demo.check_stock",
     "description": "Sends in_stock or out_of_stock."},
    {"slug": "review", "name": "Review order", "kind": Stage.Kind.FORM, "schemas": REVIEW_SCHEMAS,
     "description": "A reviewer approves or declines each order (My work)."},
    {"slug": "invoice", "name": "Invoice", "kind": Stage.Kind.SCRIPT, "handler": "tasks_app.demo.invoice",
     "description": "Prices approved orders."},
    {"slug": "notify-customer", "name": "Notify customer", "kind": Stage.Kind.SCRIPT,
     "handler": "tasks_app.demo.notify_customer", "description": "Tells the customer their order was declined."},
    {"slug": "daily-digest", "name": "Daily digest", "kind": Stage.Kind.JOB, "handler": "tasks_app.demo.daily_digest",
     "schedule": "0 2 * * *", "description": "Every night at 02:00: one digest of the day's orders."},
    {"slug": "send-digest", "name": "Send digest", "kind": Stage.Kind.SCRIPT, "handler": "tasks_app.demo.send_digest",
     "description": "Emails the digest."},
]  # fmt: skip
TRANSITIONS = [
    ("orders", "check-stock", "order"),
    ("check-stock", "review", "in_stock"),
    ("check-stock", "review", "out_of_stock"),
    ("review", "invoice", "approved"),
    ("review", "notify-customer", "declined"),
    ("invoice", "daily-digest", "invoiced"),
    ("notify-customer", "daily-digest", "notified"),
    ("daily-digest", "send-digest", "digest"),
]
SAMPLE_ORDERS: list[dict[str, Any]] = [
    {"order_id": 1001, "customer": "ada@example.com", "items": [{"sku": "book", "qty": 2}]},
    {
        "order_id": 1002,
        "customer": "grace@example.com",
        "items": [{"sku": "sofa", "qty": 1}, {"sku": "lamp", "qty": 1}],
    },
    {"order_id": 1003, "customer": "alan@example.com", "items": [{"sku": "mug", "qty": 4}, {"sku": "lamp", "qty": 2}]},
]


@transaction.atomic
def load_demo(*, with_orders: bool = True) -> dict[str, Stage]:
    """Create or update the demo stages and transitions; optionally send sample orders."""
    reviewers, _ = Group.objects.get_or_create(name=REVIEWERS)
    stages = {}
    for spec in STAGES:
        defaults = {"handler": "", "schemas": {}, "schedule": "", **spec}
        slug = defaults.pop("slug")
        stages[slug], _ = Stage.objects.update_or_create(slug=slug, defaults=defaults)
    stages["review"].groups.add(reviewers)
    for source, target, task_type in TRANSITIONS:
        Transition.objects.get_or_create(source=stages[source], target=stages[target], task_type=task_type)
    if with_orders and not stages["check-stock"].tasks.exists():
        for order in SAMPLE_ORDERS:
            task_send(stage=stages["orders"], type="order", payload=order, actor="demo")
    return stages
