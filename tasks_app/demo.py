"""The demo order workflow that `make run` loads: every kind of stage, and its handlers.

The stages and transitions are a workflow file, tasks_app/workflows/demo.json
(the format dump_workflow writes and load_workflow reads); this module holds
the handlers it names, the sample orders, and `load_demo`, which loads the
file through the same service as load_workflow.

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
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from tasks_app.models import Stage
from tasks_app.services import task_send
from tasks_app.services.handlers import module_allowed
from tasks_app.services.workflow import workflow_load, workflow_parse
from tasks_app.worker import PermanentFailure

# What the warehouse has, and what things cost (a real handler would ask a service).
STOCK = {"book": 25, "lamp": 3, "mug": 40, "sofa": 0}
PRICES = {"book": 18.0, "lamp": 45.0, "mug": 9.5, "sofa": 640.0}


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


# The stages and transitions: a workflow file, loaded as `load_workflow` loads one.
WORKFLOW_FILE = Path(__file__).resolve().parent / "workflows" / "demo.json"
WORKFLOW: dict[str, Any] = workflow_parse(WORKFLOW_FILE.read_text(encoding="utf-8"))
STAGES: list[dict[str, Any]] = WORKFLOW["stages"]
TRANSITIONS: list[tuple[str, str, str]] = [(t["source"], t["target"], t["type"]) for t in WORKFLOW["transitions"]]
SAMPLE_ORDERS: list[dict[str, Any]] = [
    {"order_id": 1001, "customer": "ada@example.com", "items": [{"sku": "book", "qty": 2}]},
    {
        "order_id": 1002,
        "customer": "grace@example.com",
        "items": [{"sku": "sofa", "qty": 1}, {"sku": "lamp", "qty": 1}],
    },
    {"order_id": 1003, "customer": "alan@example.com", "items": [{"sku": "mug", "qty": 4}, {"sku": "lamp", "qty": 2}]},
]


# The reviewers group's member with an address, so that the review stage's notification (notify: groups)
# has someone to mail: `make run` prints it (the console email backend). No password: nobody logs in as it.
DEMO_REVIEWER = ("demo-reviewer", "reviewer@example.com")


def demo_reviewer() -> None:
    """Create the demo's reviewer (no usable password) in the reviewers group, unless it exists."""
    username, email = DEMO_REVIEWER
    user, created = get_user_model().objects.get_or_create(username=username, defaults={"email": email})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
        user.groups.add(Group.objects.get_or_create(name="reviewers")[0])


class DemoUnavailable(Exception):
    """The demo cannot be loaded here: its handlers may not run."""


@transaction.atomic
def load_demo(*, with_orders: bool = True) -> dict[str, Stage]:
    """Load the demo workflow file (as `load_workflow` does: the demo's stages become the file's);
    then, unless the demo has had orders already, send the sample orders.

    Returns the demo's stages by slug, in the file's order.
    """
    if not module_allowed(__name__):
        # Its stages would be saved, and then every task and run of them would fail.
        raise DemoUnavailable(f"the demo's handlers ({__name__}) are not in TASKS_HANDLER_MODULES; add them")
    workflow_load(WORKFLOW)
    demo_reviewer()
    by_slug = Stage.objects.in_bulk([s["slug"] for s in STAGES], field_name="slug")
    stages = {s["slug"]: by_slug[s["slug"]] for s in STAGES}
    if with_orders and not stages["check-stock"].tasks.exists():
        for order in SAMPLE_ORDERS:
            task_send(stage=stages["orders"], type="order", payload=order, actor="demo")
    return stages
