"""The worker loop behind `manage.py run_worker`.

A pass claims a batch per stage in one short transaction, then runs each
task's handler outside any transaction and completes (or releases) it in a
transaction of its own. Delivery is at-least-once: a worker that dies
between a handler and its completion leaves the task locked until the lock
expires, and the task runs again, so handlers must be idempotent.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone
from django.utils.module_loading import import_string

from tasks_app import services
from tasks_app.models import Stage, Task
from tasks_app.services.routing import Send

logger = logging.getLogger("tasks_app.worker")


class PermanentFailure(Exception):
    """Raise from a handler to fail the task at once, without retries (e.g. a payload it can't read)."""


class HandlerImportError(Exception):
    pass


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class HandlerTask:
    """What a handler sees: a copy of the task's data and `send()` for successors."""

    id: int
    type: str
    payload: dict[str, Any]
    stage: str
    attempts: int
    created_at: datetime
    parent_id: int | None
    _stage: Stage = field(repr=False)
    sent: list[Send] = field(default_factory=list, repr=False)

    def send(self, type: str, payload: dict[str, Any] | None = None) -> None:
        """Queue a successor of `type`; it is created when this task completes, in the same transaction."""
        payload = {} if payload is None else payload
        services.validate_task_input(type=type, payload=payload)
        # Fail fast (and clearly) if nothing routes this type.
        services.matching_transitions(stage=self._stage, type=type)
        self.sent.append((type, copy.deepcopy(payload)))


def resolve_handler(stage: Stage, cache: dict[str, Callable[[HandlerTask], Any]]) -> Callable[[HandlerTask], Any]:
    path = stage.handler.strip()
    if not path:
        raise HandlerImportError(f"Stage '{stage.slug}' has no handler configured.")
    if path not in cache:
        try:
            handler = import_string(path)
        except Exception as exc:  # ImportError, or the module itself raising on import
            raise HandlerImportError(
                f"Cannot import handler '{path}' of stage '{stage.slug}': {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(handler):
            raise HandlerImportError(f"Handler '{path}' of stage '{stage.slug}' is not callable.")
        cache[path] = handler
    return cache[path]


@dataclass
class Stats:
    done: int = 0
    failed: int = 0
    released: int = 0
    claimed: int = 0
    lost: int = 0


class Worker:
    def __init__(
        self,
        *,
        stage_slugs: Sequence[str] = (),
        batch_size: int = 10,
        lock_timeout: int | None = None,
        poll_interval: float | None = None,
        worker_id: str | None = None,
        max_tasks: int | None = None,
        stdout: IO[str] | None = None,
    ) -> None:
        self.stage_slugs = list(stage_slugs)
        self.batch_size = batch_size
        self.lock_timeout = lock_timeout
        self.poll_interval = settings.TASKS_POLL_INTERVAL if poll_interval is None else poll_interval
        self.worker_id = worker_id or default_worker_id()
        self.max_tasks = max_tasks
        self.stdout = stdout
        self.stop_requested = False
        self.stats = Stats()
        self._handlers: dict[str, Callable[[HandlerTask], Any]] = {}
        self._next_expiry = 0.0

    # -- one step -------------------------------------------------------
    def stages(self) -> list[Stage]:
        """The script stages this worker serves, re-read each pass (pauses and edits take effect)."""
        qs = Stage.objects.filter(kind=Stage.Kind.SCRIPT, is_paused=False)
        if self.stage_slugs:
            qs = qs.filter(slug__in=self.stage_slugs)
        return list(qs.order_by("id"))

    def _room(self) -> int:
        if self.max_tasks is None:
            return self.batch_size
        return max(0, min(self.batch_size, self.max_tasks - self._processed()))

    def _processed(self) -> int:
        return self.stats.done + self.stats.failed + self.stats.released + self.stats.lost

    def run_once(self) -> bool:
        """Claim and process one batch per stage; True if any task was claimed."""
        did_work = False
        for stage in self.stages():
            room = self._room()
            if self.stop_requested or room == 0:
                break
            tasks = services.task_claim(
                stage=stage, worker_id=self.worker_id, limit=room, lock_timeout=self.lock_timeout
            )
            self.stats.claimed += len(tasks)
            did_work = did_work or bool(tasks)
            for i, task in enumerate(tasks):
                if self.stop_requested:
                    self._unclaim(tasks[i:])
                    break
                self.process(task)
        return did_work

    def _unclaim(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            try:
                services.task_unclaim(task_id=task.pk, lock_token=task.lock_token)
            except services.TaskLockLost:
                pass

    def process(self, task: Task) -> None:
        """Run one claimed task's handler and record the outcome; never raises for the task's faults."""
        stage = task.stage
        try:
            handler = resolve_handler(stage, self._handlers)
            view = HandlerTask(
                id=task.pk,
                type=task.type,
                payload=copy.deepcopy(task.payload),
                stage=stage.slug,
                attempts=task.attempts,
                created_at=task.created_at,
                parent_id=task.parent_id,
                _stage=stage,
            )
            handler(view)
            services.task_complete(task_id=task.pk, lock_token=task.lock_token, send=view.sent)
            self.stats.done += 1
        except services.TaskLockLost as exc:
            # Our lock expired and someone else holds the task now; their run counts.
            self.stats.lost += 1
            logger.warning("task %s: lock lost: %s", task.pk, exc)
        except (HandlerImportError, services.NoRouteError, PermanentFailure) as exc:
            self._fail(task, exc)
        except Exception as exc:  # the handler's own failure: release with backoff
            self._release(task, exc)

    def _fail(self, task: Task, exc: Exception) -> None:
        logger.error("task %s failed permanently: %s", task.pk, exc)
        try:
            services.task_fail(
                task_id=task.pk, lock_token=task.lock_token, error=_describe(exc), traceback=traceback.format_exc()
            )
            self.stats.failed += 1
        except services.TaskLockLost:
            self.stats.lost += 1
        except Exception:
            logger.exception("task %s: could not record the failure; its lock will expire", task.pk)

    def _release(self, task: Task, exc: Exception) -> None:
        logger.exception("task %s: handler raised", task.pk)
        try:
            released = services.task_release(
                task_id=task.pk, lock_token=task.lock_token, error=_describe(exc), traceback=traceback.format_exc()
            )
            if released.status == Task.Status.FAILED:
                self.stats.failed += 1
            else:
                self.stats.released += 1
        except services.TaskLockLost:
            self.stats.lost += 1
        except Exception:
            logger.exception("task %s: could not release it; its lock will expire", task.pk)

    def expire_locks_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = now + float(settings.TASKS_EXPIRE_INTERVAL)
        count = services.tasks_expire_locks(now=timezone.now())
        if count:
            logger.info("expired %d lock(s)", count)

    # -- the loop -------------------------------------------------------
    def run(self, *, once: bool = False) -> Stats:
        """Work until stopped (or, with once=True, until nothing is claimable)."""
        self._say(f"worker {self.worker_id} started (batch {self.batch_size})")
        while not self.stop_requested:
            if not connection.in_atomic_block:
                close_old_connections()
            try:
                self.expire_locks_if_due()
                did_work = self.run_once()
            except Exception:
                # Database trouble and the like: log, back off, try again.
                logger.exception("worker pass failed; retrying after %.1fs", self.poll_interval)
                connection.close()
                did_work = False
                if once:
                    raise
            if self.max_tasks is not None and self._processed() >= self.max_tasks:
                break
            if not did_work:
                if once:
                    break
                self._sleep(self.poll_interval)
        s = self.stats
        self._say(f"worker {self.worker_id} stopped: {s.done} done, {s.failed} failed, {s.released} released")
        return self.stats

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.25))

    def _say(self, line: str) -> None:
        if self.stdout is not None:
            self.stdout.write(line + "\n")
            self.stdout.flush()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
