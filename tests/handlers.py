"""Handlers the tests configure on their stages (imported by worker processes too)."""

from __future__ import annotations

import time
from typing import Any


def noop(task: Any) -> None:
    pass


def approve_small(task: Any) -> None:
    if task.payload.get("amount", 0) <= 100:
        task.send("approved", task.payload)
    else:
        task.send("declined", task.payload)


def boom(task: Any) -> None:
    raise RuntimeError(f"boom on task {task.id}")


def send_unrouted(task: Any) -> None:
    task.send("nobody-routes-this", {})


def mutate_payload(task: Any) -> None:
    task.payload["mutated"] = True  # must not leak into the stored task


def sleep(task: Any) -> None:
    time.sleep(float(task.payload.get("seconds", 1)))
