"""The rows seed_tasks writes: tasks and their events, made up from one random.Random(seed).

The tasks are a mix like a long-lived installation's: about 90% completed, 6%
pending (a quarter of them waiting for a retry), 2% locked (about half of
those locks expired), 2% failed; created over the last 30 days, a higher id
never older; spread evenly over the stages, typed by the stage's outgoing
transitions ("order" where they name no type); at stages with incoming
transitions, most tasks are the successor of an earlier completed task at a
source stage (parent and source_stage set, its order in the payload); the
orders are shaped as the demo's handlers read them (customer, items of known
SKUs with a qty), so a worker running the demo works them without errors. Each
task gets a "created" event, and a "completed", "failed" or "released" one
where that fits, carrying the facts of the claim it ended (attempt, worker,
claimed_at, reclaimed_from) as services.events writes them, so task pages
have a history; a locked task's claim is on its row, as a real claim's is.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tasks_app.demo import PRICES as DEMO_PRICES
from tasks_app.models import Stage, Task, TaskEvent, Transition

SPAN = timedelta(days=30)
DEFAULT_TYPE = "order"
ACTOR = "seed"
# Cumulative shares of the statuses; the rest (2%) are locked.
COMPLETED_UPTO = 0.90
FAILED_UPTO = 0.92
PENDING_UPTO = 0.98
# Share of the tasks at a stage with incoming transitions that are an earlier task's successor.
SUCCESSOR_SHARE = 0.75
# Share of the pending tasks that already had an attempt (attempts >= 1, a "released" event).
RETRIED_SHARE = 0.25
RECENT = 256  # completed tasks per stage remembered as possible parents
# What the orders hold: the demo's SKUs, as {"sku", "qty"} lines, the shape its handlers read (check-stock
# looks each SKU up in its stock, invoice in its prices), so `make run`'s worker can work seeded tasks.
ITEMS = tuple(DEMO_PRICES)
ITEM_COUNTS = (1, 1, 1, 2, 2, 3)  # how many lines an order has, as weights (the demo's schema wants one or more)
# The "items" arrays of new orders, as JSON text.
ITEMS_JSON = tuple(
    json.dumps([{"sku": ITEMS[(n * 7 + k * 3) % len(ITEMS)], "qty": 1 + (n + k) % 3} for k in range(size)])
    for n in range(len(ITEMS))
    for size in ITEM_COUNTS
)
ERRORS = (
    "TimeoutError: payment gateway did not answer in 30s",
    "ConnectionError: inventory service refused the connection",
    "ValueError: order has no numeric 'amount'",
    "KeyError: 'customer_id'",
)
WORKERS = tuple(f"seed-worker-{n}:{4100 + n}:{n * 4099 % 65536:04x}" for n in range(1, 9))

CREATED = TaskEvent.Kind.CREATED.value
RELEASED = TaskEvent.Kind.RELEASED.value
COMPLETED = Task.Status.COMPLETED.value
FAILED = Task.Status.FAILED.value
PENDING = Task.Status.PENDING.value
LOCKED = Task.Status.LOCKED.value

# Rows are tuples in these field orders, ready for the database: times as ISO
# 8601 text, payloads and details as JSON text (formatting them once, in the
# generator, is most of what makes the PostgreSQL path fast).
TASK_FIELDS = (
    "id",
    "stage",
    "type",
    "payload",
    "status",
    "created_at",
    "updated_at",
    "available_at",
    "attempts",
    "lock_token",
    "locked_by",
    "locked_at",
    "locked_until",
    "completed_at",
    "last_error",
    "parent",
    "source_stage",
)
EVENT_FIELDS = ("task", "kind", "at", "actor", "details")
TaskRow = tuple[Any, ...]
EventRow = tuple[int, str, str, str, str]


def claim_json(attempt: int, worker: str, claimed_at: datetime) -> str:
    """The claim's facts (services.events.attempt_details) as the start of a JSON object, without its braces."""
    return (
        f'"attempt": {attempt}, "worker": {json.dumps(worker)}, '
        f'"claimed_at": "{claimed_at.isoformat()}", "reclaimed_from": null'
    )


@dataclass(frozen=True)
class StagePlan:
    """What the generator needs to know of one stage."""

    id: int
    slug: str
    types: tuple[str, ...]  # task types of its outgoing transitions, or ("order",)
    sources: tuple[int, ...]  # stages with a transition into it
    lock_timeout: int
    max_attempts: int | None


def stage_plans(stages: Sequence[Stage]) -> list[StagePlan]:
    """The plans of `stages`: types from their outgoing transitions, sources from the incoming ones."""
    types: dict[int, set[str]] = {s.pk: set() for s in stages}
    sources: dict[int, set[int]] = {s.pk: set() for s in stages}
    for source, target, task_type in Transition.objects.values_list("source_id", "target_id", "task_type"):
        if source in types and task_type:
            types[source].add(task_type)
        if target in sources:
            sources[target].add(source)
    return [
        StagePlan(
            id=s.pk,
            slug=s.slug,
            types=tuple(sorted(types[s.pk])) or (DEFAULT_TYPE,),
            sources=tuple(sorted(sources[s.pk])),
            lock_timeout=s.lock_timeout,
            max_attempts=s.max_attempts,
        )
        for s in stages
    ]


class Generator:
    """The rows of `count` tasks and their events, chunk by chunk; the same seed gives the same rows."""

    def __init__(self, plans: Sequence[StagePlan], *, count: int, seed: int, now: datetime) -> None:
        self.plans = list(plans)
        self.rng = random.Random(seed)
        self.now = now
        self.step = SPAN / count
        self.created = now - SPAN  # of the next task
        self.done = 0
        self.statuses: Counter[str] = Counter()
        self.events = 0
        # Per stage, a ring of recently completed tasks: (id, completed_at, the order's payload JSON).
        self.recent: dict[int, list[tuple[int, datetime, str]]] = {p.id: [] for p in self.plans}

    def chunk(self, ids: Sequence[int]) -> tuple[list[TaskRow], list[EventRow]]:
        tasks: list[TaskRow] = []
        events: list[EventRow] = []
        add_task, add_event = tasks.append, events.append
        rng, now, plans, recent = self.rng, self.now, self.plans, self.recent
        rand = rng.random  # plans[int(rand() * n)] is several times faster than rng.choice(plans)
        n_plans, n_workers, n_errors, n_items = len(plans), len(WORKERS), len(ERRORS), len(ITEMS_JSON)
        second = timedelta(seconds=1)
        created, step = self.created, self.step
        statuses = dict.fromkeys((COMPLETED, FAILED, PENDING, LOCKED), 0)
        for task_id in ids:
            plan = plans[int(rand() * n_plans)]
            created_at = created.isoformat()
            parent_id = source_id = None
            order = payload = ""
            if plan.sources and rand() < SUCCESSOR_SHARE:
                source = plan.sources[int(rand() * len(plan.sources))]
                ring = recent.get(source)
                if ring:
                    candidate, finished, order = ring[int(rand() * len(ring))]
                    if finished <= created:
                        parent_id, source_id = candidate, source
                        payload = order[:-1] + ', "checked": true}'
            if not payload:
                order = payload = (
                    f'{{"order_id": {task_id}, "customer": "customer-{task_id % 5000}@example.com", '
                    f'"customer_id": {task_id % 5000}, "amount": {5 + int(rand() * 1496)}, '
                    f'"items": {ITEMS_JSON[int(rand() * n_items)]}}}'
                )
            add_event((task_id, CREATED, created_at, ACTOR, f'{{"parent": {parent_id}}}' if parent_id else "{}"))
            worker = WORKERS[int(rand() * n_workers)]
            lock_token = locked_by = last_error = ""
            locked_at = locked_until = completed_at = None
            available_at = updated_at = created_at
            r = rand()
            if r < COMPLETED_UPTO:
                status = COMPLETED
                attempts = 1 if rand() < 0.95 else 2 + int(rand() * 2)
                duration = round(0.05 + rand() * 20, 3)
                finished = min(created + duration * second, now)
                completed_at = updated_at = finished.isoformat()
                claim = claim_json(attempts, worker, finished - duration * second)
                details = f'{{{claim}, "duration": {duration!r}, "sent": []}}'
                add_event((task_id, COMPLETED, completed_at, worker, details))
                ring = recent[plan.id]
                if len(ring) < RECENT:
                    ring.append((task_id, finished, order))
                else:
                    ring[task_id % RECENT] = (task_id, finished, order)
            elif r < FAILED_UPTO:
                status = FAILED
                attempts = plan.max_attempts or 1 + int(rand() * 3)
                last_error = ERRORS[int(rand() * n_errors)]
                failed_at = min(created + (1 + rand() * 600) * second, now)
                updated_at = failed_at.isoformat()
                failure: dict[str, Any] = {"error": last_error, "traceback": ""}
                if plan.max_attempts:
                    failure["reason"] = f"max attempts ({plan.max_attempts}) reached"
                claim = claim_json(attempts, worker, max(created, failed_at - second))
                add_event((task_id, FAILED, updated_at, worker, f"{{{claim}, {json.dumps(failure)[1:]}"))
            elif r < PENDING_UPTO:
                status = PENDING
                attempts = 0
                if rand() < RETRIED_SHARE:
                    attempts = 1 + int(rand() * 2)
                    last_error = ERRORS[int(rand() * n_errors)]
                    released = min(created + (1 + rand() * 60) * second, now)
                    updated_at = released.isoformat()
                    available_at = (released + 5 * 2 ** (attempts - 1) * second).isoformat()
                    retry = json.dumps({"error": last_error, "traceback": "", "retry_at": available_at})
                    claim = claim_json(attempts, worker, max(created, released - second))
                    details = f"{{{claim}, {retry[1:]}"
                    add_event((task_id, RELEASED, updated_at, worker, details))
            else:
                status = LOCKED
                attempts = 1 + int(rand() * 2)
                lock_token = f"{rng.getrandbits(128):032x}"
                locked_by = worker
                # Claimed within the last two lock timeouts: about half of these locks have expired.
                claimed = max(created, now - rand() * 2 * plan.lock_timeout * second)
                locked_at = updated_at = claimed.isoformat()
                locked_until = (claimed + plan.lock_timeout * second).isoformat()
                # No event: a claim writes none; the row holds it until the event that ends it.
            statuses[status] += 1
            add_task(
                (
                    task_id,
                    plan.id,
                    plan.types[int(rand() * len(plan.types))],
                    payload,
                    status,
                    created_at,
                    updated_at,
                    available_at,
                    attempts,
                    lock_token,
                    locked_by,
                    locked_at,
                    locked_until,
                    completed_at,
                    last_error,
                    parent_id,
                    source_id,
                )
            )
            created += step
        self.created = created
        self.done += len(tasks)
        self.statuses.update(statuses)
        self.events += len(events)
        return tasks, events
