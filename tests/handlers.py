"""Handlers the tests configure on their stages (imported by worker processes too)."""

from __future__ import annotations

import time
from pathlib import Path
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


def sleep_and_mark(task: Any) -> None:
    """Sleep like `sleep`, leaving <dir>/<id>.started and <dir>/<id>.finished files so a test sees which ran."""
    folder = Path(task.payload["dir"])
    (folder / f"{task.id}.started").write_text(repr(time.time()))
    time.sleep(float(task.payload.get("seconds", 1)))
    (folder / f"{task.id}.finished").write_text(repr(time.time()))


def timed_sleep_send(task: Any) -> None:
    """Sleep, then send a successor of type "timed" carrying when this run started and ended (time.time())."""
    start = time.time()
    time.sleep(float(task.payload.get("seconds", 0.5)))
    task.send("timed", {"task": task.id, "start": start, "end": time.time()})


def forward(task: Any) -> None:
    """Send one "next" successor carrying the task's number (tests/test_http_worker.py, both workers)."""
    task.send("next", {"n": task.payload.get("n")})


def forward_unless_fail(task: Any) -> None:
    """Like `forward`, but raise for a payload with "fail": true (the error must reach the task's history)."""
    if task.payload.get("fail"):
        raise ValueError(f"refusing task {task.id}: it asked to fail")
    forward(task)


def forward_or_misroute(task: Any) -> None:
    """Like `forward`, but send a type nothing routes for a payload with "misroute": true."""
    if task.payload.get("misroute"):
        task.send("nobody-routes-this", {})
    else:
        forward(task)


def slow_forward(task: Any) -> None:
    """Sleep payload["seconds"], then `forward`: longer than its lock lasts, so only heartbeats keep it."""
    time.sleep(float(task.payload.get("seconds", 1)))
    forward(task)


def send_bad_schema(task: Any) -> None:
    """Send an "approved" successor whose payload breaks the order schema of tests/test_schemas.py."""
    task.send("approved", {"amount": "lots", "items": [{"qty": 0}]})


# -- job stage handlers (they get a services.handlers.JobContext) --------------------------------


def digest(job: Any) -> None:
    """Send one "digest" task listing the waiting tasks the run processed."""
    job.send(
        "digest",
        {
            "count": len(job.tasks),
            "ids": [t.id for t in job.tasks],
            "types": sorted({t.type for t in job.tasks}),
            "missed": job.missed,
            "due_at": job.due_at.isoformat(),
        },
    )


def job_boom(job: Any) -> None:
    raise RuntimeError(f"job broke with {len(job.tasks)} task(s)")


def thread_name_send(task: Any) -> None:
    """Sleep payload["seconds"] (default 0), then send a "seen" successor naming the thread the handler ran on."""
    import threading  # here, not at the top: this module's shared, and only this handler needs it

    time.sleep(float(task.payload.get("seconds", 0)))
    task.send("seen", {"task": task.id, "thread": threading.current_thread().name})


def send_with_options(task: Any) -> None:
    """Send "approved" with the send() options the payload names: priority, delay (seconds), at (ISO text)."""
    from datetime import datetime

    options: dict[str, Any] = {k: task.payload[k] for k in ("priority", "delay") if k in task.payload}
    if "at" in task.payload:
        options["at"] = datetime.fromisoformat(task.payload["at"])
    task.send("approved", {"from": task.id}, **options)


def job_send_later(job: Any) -> None:
    """A job's send with options: one "digest" task, held back ten minutes, at priority 3."""
    job.send("digest", {"count": len(job.tasks)}, delay=600, priority=3)


def forward_until_cancelled(task: Any) -> None:
    """Work up to payload["seconds"] in small steps, stopping early once task.cancel_requested turns true.

    Leaves <dir>/<id>.saw-cancel or <dir>/<id>.ran-out, then `forward`s either way (a cancelled task's
    send must be dropped). examples/http_worker.py's task sets the flag from its heartbeats.
    """
    started = time.monotonic()
    while time.monotonic() - started < float(task.payload["seconds"]) and not task.cancel_requested:
        time.sleep(0.05)
    seen = "saw-cancel" if task.cancel_requested else "ran-out"
    (Path(task.payload["dir"]) / f"{task.id}.{seen}").write_text(f"{time.monotonic() - started:.2f}")
    forward(task)
