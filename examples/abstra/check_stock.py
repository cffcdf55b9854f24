"""Check an order's stock: an Abstra script stage, as it would run in Abstra."""

from abstra.tasks import get_trigger_task, send_task

STOCK = {"lamp": 3, "desk": 0}

task = get_trigger_task()
sku = task["sku"]
print(f"checking {sku} for order {task['order_id']}")
if STOCK.get(sku, 0) >= task.get("qty", 1):
    send_task("in_stock", {"order_id": task["order_id"], "sku": sku})
else:
    send_task("out_of_stock", {"order_id": task["order_id"], "sku": sku})
