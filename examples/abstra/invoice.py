"""Invoice the orders waiting at this stage: an Abstra stage script, as it would run in Abstra.

It runs unchanged as a script stage (get_trigger_task() and get_tasks() serve
the one task the worker claimed for this run) and as a job stage (no trigger
task; get_tasks() serves the tasks the job run claimed). An order without a quantity is skipped: its `with task:` body
raises, so that task goes back to pending, and the others go on.
"""

import dataclasses
from datetime import date

from abstra.tasks import get_tasks, get_trigger_task, send_task


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


try:
    trigger = get_trigger_task()  # a script stage: the task this run was started for
    print(f"run for order {trigger['order_id']}")
except Exception:  # a job stage has no trigger task: Abstra raises here too
    print("run by the schedule")

for task in get_tasks(where={"status": "ready"}):
    try:
        with task:
            if not task.get("qty"):
                raise ValueError(f"order {task['order_id']} has no quantity")
            print(f"invoicing order {task['order_id']}")
            send_task(
                "invoiced",
                {
                    "order_id": task["order_id"],
                    "lines": (Line(task["sku"], task["qty"]),),
                    "tags": {"abstra"},
                    "on": date(2026, 12, 2),
                },
            )
    except ValueError as exc:
        print(f"skipped: {exc}")
