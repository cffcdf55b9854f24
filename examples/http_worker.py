#!/usr/bin/env python3
"""A task worker that talks to workflowsite only over HTTP: the REST API's worker protocol, end to end.

It imports nothing from this project and needs nothing beyond Python's
standard library, so it reads as a recipe for a worker in any language.
Against `make run`, in a second terminal:

    export HTTP_WORKER_TOKEN=$(.venv/bin/python manage.py drf_create_token admin | awk '{print $3}')
    python3 examples/http_worker.py --stage check-stock

The protocol is five calls (README, "REST API"):

    POST /api/stages/<slug>/claim/    {"limit": N, "lock_timeout": S?}      -> tasks, each with its lock_token
    POST /api/tasks/<id>/heartbeat/   {"lock_token": T, "lock_timeout": S?} -> the lock lasts S more seconds,
                                      and "cancel_requested": whether someone asked to cancel the task
    POST /api/tasks/<id>/complete/    {"lock_token": T, "send": [{"type": ..., "payload": {...}}]}
    POST /api/tasks/bulk-complete/    {"tasks": [{"id": ..., "lock_token": T, "send": [...]}, ...]}
    POST /api/tasks/<id>/release/     {"lock_token": T, "error": "...", "retry_in": S?}

The loop: claim a batch, run the handler on each task while a background
thread keeps the batch's locks alive, then complete what succeeded (one
bulk call) and release what raised (with the error, which the task's history
keeps). Delivery is at least once: if this process dies, or loses the
server for longer than a lock lasts, the locks expire and another worker
runs the tasks again, so handlers must be idempotent. A lock token is what
makes a completion count: a stale one answers 409 and changes nothing.

Cancel: when a heartbeat answers "cancel_requested": true, the task's
`cancel_requested` turns true (a long handler may look and return early),
and a task of the batch whose handler has not started yet is not run. Either
way the task is completed as usual, and the server ends it `cancelled`,
dropping what it sent (bulk-complete says "status": "cancelled").

Handlers have the in-process worker's signature, handler(task) with
task.id, task.type, task.payload, task.stage, task.attempts,
task.cancel_requested and task.send(type, payload), so one function can run
in either worker.

Configuration: flags, or the environment (flags win):
    HTTP_WORKER_URL (default http://127.0.0.1:8000), HTTP_WORKER_TOKEN (required),
    HTTP_WORKER_STAGE, HTTP_WORKER_HANDLER, HTTP_WORKER_LIMIT, HTTP_WORKER_LOCK_TIMEOUT.
SIGTERM or Ctrl-C finishes the task in hand, gives the rest of the batch
back and exits; a second signal exits at once (the locks then expire).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard

log = logging.getLogger("http_worker")

Json = dict[str, Any]
# Statuses worth asking again: throttled, or a proxy/server that is restarting.
RETRYABLE = {429, 502, 503, 504}
MAX_ERROR_CHARS = 20_000  # the API accepts up to 100,000; a traceback's tail is what matters


# -- what a handler sees ---------------------------------------------------------------------------


@dataclass
class Task:
    """A claimed task as the handler sees it; `send()` queues successors, created when it completes."""

    id: int
    type: str
    payload: Json
    stage: str
    attempts: int
    lock_token: str = field(repr=False)
    sent: list[Json] = field(default_factory=list, repr=False)
    # Set by the heartbeat thread when the server reports that someone asked to cancel the task: a long
    # handler may look and return early. Whatever it does, the completion ends the task cancelled.
    cancel_requested: bool = False

    def send(
        self,
        type: str,
        payload: Json | None = None,
        *,
        delay: float | None = None,
        at: datetime | None = None,
        priority: int | None = None,
    ) -> None:
        """As run_worker's task.send: delay (seconds from the completion) or at (aware), priority (default: ours)."""
        # Copied now, so a handler that keeps mutating its dict can't change what is sent.
        item: Json = {"type": type, "payload": copy.deepcopy(payload or {})}
        if delay is not None:
            item["delay"] = delay
        if at is not None:
            item["available_at"] = at.isoformat()
        if priority is not None:
            item["priority"] = priority
        self.sent.append(item)

    @classmethod
    def from_api(cls, data: Json) -> Task:
        return cls(data["id"], data["type"], data["payload"], data["stage"], data["attempts"], data["lock_token"])


Handler = Callable[[Task], Any]

# The demo's stock table (tasks_app/demo.py), so that `--stage check-stock` does the demo's work over HTTP.
STOCK = {"book": 25, "lamp": 3, "mug": 40, "sofa": 0}


def check_stock(task: Task) -> None:
    """The default handler: the demo's check-stock, sending in_stock or out_of_stock naming what is missing."""
    missing = [line["sku"] for line in task.payload.get("items", []) if STOCK.get(line["sku"], 0) < line["qty"]]
    if missing:
        task.send("out_of_stock", {**task.payload, "missing": missing})
    else:
        task.send("in_stock", dict(task.payload))


def load_handler(spec: str) -> Handler:
    """`package.module:function` or `package.module.function` (the module must be importable: PYTHONPATH)."""
    module_name, _, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    handler = getattr(importlib.import_module(module_name), name)
    if not callable(handler):
        raise TypeError(f"{spec} is not callable")
    return handler


# -- HTTP --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer the worker can't act on (401, 403, 404, 400 on a claim...): it stops with this message."""

    def __init__(self, status: int, path: str, detail: Any) -> None:
        super().__init__(f"HTTP {status} from {path}: {detail}")
        self.status = status
        self.detail = detail


class ServerError(OSError):
    """A 5xx answer: the server is there but failing (its database is down, say); worth waiting for."""


class Api:
    """POSTs JSON with the token; retries connection errors and RETRYABLE statuses a few times."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0, retries: int = 3) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {
            "Authorization": f"Token {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "workflowsite-http-worker/1",
        }
        self.timeout = timeout
        self.retries = retries

    def post(self, path: str, body: Json) -> tuple[int, Any]:
        """(status, decoded JSON) for any answer the server gave; raises OSError when it gave none.

        A retried POST may repeat work the first attempt did but whose answer
        was lost: a repeated claim leaves the first claim's tasks locked until
        their lock expires (then someone claims them again), and a repeated
        complete answers 409 although the first one completed the task.
        """
        for attempt in range(self.retries + 1):
            try:
                status, data, retry_after = self._post_once(path, body)
            except OSError as exc:  # refused, reset, timed out (urllib.error.URLError is an OSError)
                if attempt == self.retries:
                    raise
                log.warning("POST %s: %s; retrying", path, exc)
                time.sleep(0.5 * 2**attempt)
                continue
            if status not in RETRYABLE or attempt == self.retries:
                return status, data
            delay = retry_after if retry_after is not None else 0.5 * 2**attempt
            log.warning("POST %s: HTTP %s; retrying in %.1fs", path, status, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _post_once(self, path: str, body: Json) -> tuple[int, Any, float | None]:
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(body).encode(), headers=self.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _decode(response.read()), None
        except urllib.error.HTTPError as exc:  # 4xx and 5xx arrive as exceptions in urllib
            retry_after = exc.headers.get("Retry-After")
            return exc.code, _decode(exc.read()), float(retry_after) if _is_number(retry_after) else None


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw[:500].decode(errors="replace")  # an HTML error page from a proxy, say


def _is_number(value: str | None) -> TypeGuard[str]:
    try:
        return value is not None and float(value) >= 0
    except ValueError:
        return False


def _detail(data: Any) -> str:
    """The API's message, as one line: {"detail": ...} for 409s, field errors for 400s."""
    if isinstance(data, dict) and set(data) == {"detail"}:
        return str(data["detail"])
    return json.dumps(data) if not isinstance(data, str) else data


# -- keeping locks alive ------------------------------------------------------------------------------


class Heartbeat(threading.Thread):
    """Extends the locks of a batch's unfinished tasks every `interval` seconds until stopped.

    Without it a handler that runs longer than the lock lasts would see its
    task claimed and run again by another worker, and its own completion
    refused (409). One thread per batch, so a slow handler delays nothing else.
    """

    def __init__(self, api: Api, tasks: list[Task], *, lock_timeout: int | None, interval: float) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.api = api
        self.lock_timeout = lock_timeout
        self.interval = interval
        self.live = {t.id: t for t in tasks}
        self.guard = threading.Lock()
        self.stopped = threading.Event()

    def done(self, task: Task) -> None:
        """The task is being completed or released: stop extending its lock."""
        with self.guard:
            self.live.pop(task.id, None)

    def stop(self) -> None:
        self.stopped.set()
        self.join()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.guard:
                tasks = list(self.live.values())
            for task in tasks:
                self._extend(task)

    def _extend(self, task: Task) -> None:
        body: Json = {"lock_token": task.lock_token}
        if self.lock_timeout:
            body["lock_timeout"] = self.lock_timeout
        try:
            status, data = self.api.post(f"/api/tasks/{task.id}/heartbeat/", body)
        except OSError as exc:
            log.warning("heartbeat of task %s failed: %s", task.id, exc)  # the next beat tries again
            return
        with self.guard:
            still_ours = task.id in self.live
        if status == 409 and still_ours:
            # The lock expired and someone else holds the task now: our completion will be refused.
            log.warning("task %s: lock lost (%s)", task.id, _detail(data))
            self.done(task)
        elif status != 200 and still_ours:
            log.warning("heartbeat of task %s: HTTP %s %s", task.id, status, _detail(data))
        elif status == 200 and isinstance(data, dict) and data.get("cancel_requested") and not task.cancel_requested:
            log.info("task %s: cancel requested; it ends cancelled when completed", task.id)
            task.cancel_requested = True  # the handler may look (a plain bool: one writer, this thread)


def lock_seconds(claimed: Json) -> float:
    """How long the claim locked a task for (its stage's lock_timeout unless we asked for another)."""
    start = datetime.fromisoformat(claimed["locked_at"])
    until = datetime.fromisoformat(claimed["locked_until"])
    return max((until - start).total_seconds(), 1.0)


# -- the worker -------------------------------------------------------------------------------------------


class Abort(BaseException):
    """Raised by a second SIGTERM/SIGINT: leave now, whatever runs (not caught as a handler error)."""


@dataclass
class Config:
    url: str
    token: str
    stage: str
    handler: Handler
    limit: int = 10
    lock_timeout: int | None = None  # None: the stage's own
    once: bool = False
    max_tasks: int | None = None
    poll_interval: float = 0.5
    max_idle: float = 10.0


class Worker:
    def __init__(self, config: Config, api: Api) -> None:
        self.config = config
        self.api = api
        self.stop = threading.Event()
        self.counts = {"completed": 0, "released": 0, "lost": 0, "unsettled": 0, "cancelled": 0}
        self.handled = 0

    # 1. the loop
    def run(self) -> None:
        """Claim and process batches until stopped; with `once`, until a claim comes back empty."""
        log.info("started: stage %s at %s, claiming up to %s", self.config.stage, self.config.url, self.config.limit)
        idle = self.config.poll_interval
        while not self.stop.is_set() and not self._reached_max():
            try:
                did_work = self.run_once()
            except OSError as exc:  # the server is unreachable even after retries
                if self.config.once:
                    raise
                log.warning("server unreachable (%s); trying again in %.1fs", exc, idle)
                did_work = False
            if did_work:
                idle = self.config.poll_interval
            elif self.config.once:
                break
            else:
                # Nothing to do: wait a little longer each time, up to max_idle (a signal ends the wait).
                self.stop.wait(idle)
                idle = min(idle * 2, self.config.max_idle)

    def _reached_max(self) -> bool:
        return self.config.max_tasks is not None and self.handled >= self.config.max_tasks

    # 2. one batch
    def run_once(self) -> bool:
        """Claim one batch and process it; False when there was nothing to claim."""
        tasks, seconds = self.claim()
        if not tasks:
            return False
        # Beat three times per lock period: two beats may fail before the lock runs out.
        beat = Heartbeat(self.api, tasks, lock_timeout=self.config.lock_timeout, interval=max(seconds / 3, 0.2))
        beat.start()
        try:
            succeeded = self.run_handlers(tasks, beat)
            self.complete(succeeded, beat)
        finally:
            beat.stop()
        return True

    def claim(self) -> tuple[list[Task], float]:
        limit = self.config.limit
        if self.config.max_tasks is not None:
            limit = min(limit, self.config.max_tasks - self.handled)
        body: Json = {"limit": limit}
        if self.config.lock_timeout:
            body["lock_timeout"] = self.config.lock_timeout
        path = f"/api/stages/{self.config.stage}/claim/"
        status, data = self.api.post(path, body)
        if status >= 500:
            raise ServerError(f"HTTP {status} from {path}")  # the loop waits and tries again
        if status != 200:
            raise ApiError(status, path, _detail(data))  # wrong token, unknown stage, no permission: stop
        log.debug("claimed %s task(s)", len(data))
        tasks = [Task.from_api(item) for item in data]
        return tasks, (lock_seconds(data[0]) if data else 0.0)

    # 3. handlers
    def run_handlers(self, tasks: list[Task], beat: Heartbeat) -> list[Task]:
        """Run the handler on each task; release the ones that raise. Returns the ones to complete."""
        succeeded = []
        for task in tasks:
            if self.stop.is_set():
                # Stopping: give the tasks not started back at once (this attempt still counts).
                beat.done(task)
                self.release(task, "not run: the worker was stopped before its handler started", retry_in=0)
                continue
            self.handled += 1
            if task.cancel_requested:
                # A heartbeat said someone asked to cancel it: don't start its work. Completed with
                # nothing sent, it ends cancelled (as it would whatever the handler did).
                succeeded.append(task)
                continue
            try:
                self.config.handler(task)
            except Abort:
                raise
            except BaseException as exc:  # SystemExit from a handler is a handler error too
                log.warning("task %s: handler raised %s: %s", task.id, type(exc).__name__, exc)
                beat.done(task)
                self.release(task, error_text(exc))
                continue
            succeeded.append(task)
        return succeeded

    # 4. completing and releasing
    def complete(self, tasks: list[Task], beat: Heartbeat) -> None:
        """One bulk-complete call for the batch, a single task too: its answer says completed or cancelled."""
        try:
            if tasks:
                self.complete_bulk(tasks, beat)
        except OSError as exc:  # no answer, even after retries: as for a 5xx
            self._unsettled(tasks, 0, str(exc))

    def complete_bulk(self, tasks: list[Task], beat: Heartbeat) -> None:
        body = {"tasks": [{"id": t.id, "lock_token": t.lock_token, "send": t.sent} for t in tasks]}
        for task in tasks:
            beat.done(task)  # from here on a heartbeat could only race the completion and log a false alarm
        status, data = self.api.post("/api/tasks/bulk-complete/", body)
        if status >= 500:
            self._unsettled(tasks, status, data)
            return
        if status != 200:
            # The whole request was refused (400: malformed; 413: too large): nothing was
            # completed, so complete one by one and release only the ones at fault.
            log.warning("bulk complete: HTTP %s %s; completing one by one", status, _detail(data))
            for task in tasks:
                self.complete_one(task, beat)
            return
        by_id = {t.id: t for t in tasks}
        for result in data["results"]:
            task = by_id[result["id"]]
            if result["status"] == "completed":
                self.counts["completed"] += 1
            elif result["status"] == "cancelled":
                # Someone asked to cancel it while we held it: it ended cancelled and what it sent was dropped.
                self.counts["cancelled"] += 1
                log.info("task %s: cancelled (a cancel was requested); its sends were dropped", task.id)
            elif result["status"] == "lock_lost":
                self._lost(task, "its lock expired and another worker claimed it")
            else:  # "error": a send nothing routes; the task is still ours, so give it back with why
                self.release(task, result.get("error", "completion refused"))

    def complete_one(self, task: Task, beat: Heartbeat) -> None:
        beat.done(task)
        status, data = self.api.post(
            f"/api/tasks/{task.id}/complete/", {"lock_token": task.lock_token, "send": task.sent}
        )
        if status == 200:
            # The answer is the tasks it sent: none when the completion ended a cancel-requested task
            # cancelled (its sends dropped); bulk-complete, which says so, is the usual path.
            cancelled = task.cancel_requested or (bool(task.sent) and data == [])
            self.counts["cancelled" if cancelled else "completed"] += 1
        elif status == 409:
            self._lost(task, _detail(data))
        elif status >= 500:
            self._unsettled([task], status, data)
        else:  # 400/413: the sends were refused; the lock is still ours
            self.release(task, f"completion refused (HTTP {status}): {_detail(data)}")

    def release(self, task: Task, error: str, *, retry_in: float | None = None) -> None:
        """Give the task back with the error; the server retries it after a backoff, or fails it at max attempts."""
        body: Json = {"lock_token": task.lock_token, "error": error[:MAX_ERROR_CHARS]}
        if retry_in is not None:
            body["retry_in"] = retry_in
        try:
            status, data = self.api.post(f"/api/tasks/{task.id}/release/", body)
        except OSError as exc:  # the lock expires and the task runs again: carry on with the batch
            self._unsettled([task], 0, str(exc))
            return
        if status == 200:
            self.counts["released"] += 1
        elif status == 409:
            self._lost(task, _detail(data))
        else:
            self._unsettled([task], status, data)

    def _unsettled(self, tasks: list[Task], status: int, data: Any) -> None:
        # The server failed or never answered (status 0), after retries: the tasks stay locked until
        # their locks expire, then they are claimed and run again (at least once), not lost.
        self.counts["unsettled"] += len(tasks)
        ids = ", ".join(str(t.id) for t in tasks)
        log.error("task(s) %s left locked: HTTP %s %s", ids, status or "-", _detail(data))

    def _lost(self, task: Task, why: str) -> None:
        # Not an error of ours to fix: the task is someone else's now, and the history shows who finished it.
        self.counts["lost"] += 1
        log.warning("task %s: lock lost, nothing recorded (%s)", task.id, why)


def error_text(exc: BaseException) -> str:
    """`Type: message`, then the traceback: the first line is what the task list shows, the rest is in its history."""
    summary = f"{type(exc).__name__}: {exc}"
    trace = "".join(traceback.format_exception(exc))
    return f"{summary}\n\n{trace[-(MAX_ERROR_CHARS - len(summary) - 2) :]}"


# -- command line ---------------------------------------------------------------------------------------


def install_signals(worker: Worker) -> None:
    def on_signal(signum: int, frame: Any) -> None:
        if worker.stop.is_set():
            raise Abort(signal.Signals(signum).name)
        log.info("%s: finishing the task in hand, then stopping", signal.Signals(signum).name)
        worker.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return number


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=env("HTTP_WORKER_URL", "http://127.0.0.1:8000"), help="Server base URL.")
    parser.add_argument(
        "--token", default=env("HTTP_WORKER_TOKEN"), help="API token (prefer HTTP_WORKER_TOKEN: flags show in ps)."
    )
    parser.add_argument("--stage", default=env("HTTP_WORKER_STAGE"), help="Slug of the stage to work on.")
    parser.add_argument(
        "--handler",
        default=env("HTTP_WORKER_HANDLER"),
        help="module:function run on each task (default: the demo's check-stock).",
    )
    parser.add_argument(
        "--limit", type=positive_int, default=env("HTTP_WORKER_LIMIT", "10"), help="Claim batch, 1-1000."
    )
    parser.add_argument(
        "--lock-timeout",
        type=positive_int,
        default=env("HTTP_WORKER_LOCK_TIMEOUT"),
        help="Seconds each claim and heartbeat locks a task for (default: the stage's).",
    )
    parser.add_argument("--once", action="store_true", help="Drain what is claimable now, then exit.")
    parser.add_argument("--max-tasks", type=positive_int, default=None, help="Exit after handling this many tasks.")
    parser.add_argument("--poll-interval", type=positive_float, default=0.5, help="First wait when idle, seconds.")
    parser.add_argument("--max-idle", type=positive_float, default=10.0, help="Longest wait when idle, seconds.")
    parser.add_argument("--timeout", type=positive_float, default=30.0, help="Per-request timeout, seconds.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log every batch.")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("an API token is required: --token or HTTP_WORKER_TOKEN")
    if not args.stage:
        parser.error("a stage is required: --stage or HTTP_WORKER_STAGE")
    if args.limit > 1000:
        parser.error(f"argument --limit: at most 1000, got {args.limit}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s http_worker %(levelname)s %(message)s",
    )
    try:
        handler = load_handler(args.handler) if args.handler else check_stock
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        print(f"http_worker: cannot load handler {args.handler!r}: {exc}", file=sys.stderr)
        return 2
    config = Config(
        url=args.url, token=args.token, stage=args.stage, handler=handler, limit=args.limit,
        lock_timeout=args.lock_timeout, once=args.once, max_tasks=args.max_tasks,
        poll_interval=args.poll_interval, max_idle=max(args.max_idle, args.poll_interval),
    )  # fmt: skip
    worker = Worker(config, Api(args.url, args.token, timeout=args.timeout))
    install_signals(worker)
    status = 0
    try:
        worker.run()
    except ApiError as exc:
        print(f"http_worker: {exc}", file=sys.stderr)
        status = 1
    except OSError as exc:
        print(f"http_worker: cannot reach {args.url}: {exc}", file=sys.stderr)
        status = 1
    except Abort as exc:
        print(
            f"http_worker: {exc} again: leaving now; locks held expire and the tasks are claimed again", file=sys.stderr
        )
        status = 130
    c = worker.counts
    print(f"http_worker {socket.gethostname()}:{os.getpid()}: {c['completed']} completed, "
          f"{c['released']} released, {c['lost']} lost, {c['unsettled']} unsettled, "
          f"{c['cancelled']} cancelled", flush=True)  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main())
