"""The task API of Abstra stage scripts, on this engine (public as tasks_app.abstra; README "Coming from Abstra").

A script file a worker runs (a stage whose handler ends in ".py",
services.scripts) calls these functions; they act on the *run* the script is
part of, which services.scripts sets for the running thread (`ScriptRun`):

- a script stage's run holds one claimed task, the trigger: get_trigger_task()
  is it, get_tasks() serves it (if `where` matches), send_task() queues a
  successor, created when the run ends cleanly in the same transaction as the
  trigger's completion (the worker's, as for any handler);
- a job stage's run holds the tasks the run claimed: get_tasks()/iter_tasks()
  serve them, complete() marks each for completion in the run's transaction,
  and the ones not completed go back to pending when the run ends
  (services.jobs).

Stricter than Abstra, on purpose: sending a type no transition of the stage
routes raises NoRouteError (Abstra prints a warning and drops the task); tasks
are served oldest first (Abstra: newest first); a payload that is not JSON
after the normalisation below is an error naming where.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from collections.abc import Callable, Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from tasks_app.models import Stage
from tasks_app.models import Task as TaskRow

__all__ = [
    "IncompatibleStage",
    "NotInAScript",
    "Task",
    "TaskNotWaiting",
    "TaskWriteAttempt",
    "get_sent_tasks",
    "get_tasks",
    "get_trigger_task",
    "iter_tasks",
    "send_task",
    "to_json_payload",
]

# Abstra's bounds for get_tasks: no limit means 100, and at most 10,000 (iter_tasks walks them all).
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


class NotInAScript(RuntimeError):
    """A task API function called outside a script file that a worker or a job run is running."""


class IncompatibleStage(RuntimeError):
    """get_trigger_task() in a job stage's run: a job has no trigger task."""


class TaskNotWaiting(RuntimeError):
    """lock()/complete() of a task this run does not hold (a sent task, or one already completed)."""


class TaskWriteAttempt(TypeError):
    """task[key] = value: a task's payload is read-only (send a new task instead)."""


# -- the run a script is part of ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Served:
    """A task the run holds, as it was claimed."""

    id: int
    type: str
    payload: dict[str, Any]


@dataclasses.dataclass
class ScriptRun:
    """What one run of a script file acts on (services.scripts sets it for the running thread)."""

    stage: Stage
    send: Callable[[str, dict[str, Any]], None]  # the handler view's or job context's send
    served: list[Served]  # in claim order: highest priority first, then oldest
    trigger: int | None  # a script stage's claimed task; None in a job stage
    completed: set[int] = dataclasses.field(default_factory=set)
    # A `with task:` body raised: the task goes back to pending, and for a script stage's trigger the run fails.
    released: dict[int, BaseException] = dataclasses.field(default_factory=dict)

    def holds(self, task_id: int) -> bool:
        return any(s.id == task_id for s in self.served)


_local = threading.local()


def current_run() -> ScriptRun:
    run: ScriptRun | None = getattr(_local, "run", None)
    if run is None:
        raise NotInAScript(
            "The task API works inside a script file a worker runs (a script or job stage whose handler "
            "ends in .py); there is no run in this thread."
        )
    return run


def set_current_run(run: ScriptRun | None) -> ScriptRun | None:
    """Make `run` this thread's run (None: none); returns the previous one, to put back."""
    previous: ScriptRun | None = getattr(_local, "run", None)
    _local.run = run
    return previous


# -- payload normalisation, as Abstra's to_json_serializable -------------------------------------


def _json_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)  # a str subclass (an enum member) as its plain value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float | Decimal):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{where}: {value!r} is not a JSON number (NaN and infinities are refused)")
        return int(value) if isinstance(value, Decimal) and value == value.to_integral_value() else number
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_object(vars(value), where)
    if isinstance(value, dict):
        return _json_object(value, where)
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{where}: a {type(value).__name__} is not JSON; send str, numbers, booleans, None, lists, dicts, "
        "dates, datetimes, UUIDs, sets, tuples or dataclasses"
    )


def _json_object(value: Any, where: str) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; JSON object keys are strings")
        out[str.__str__(key)] = _json_value(item, f"{where}[{key!r}]")
    return out


def to_json_payload(payload: Any) -> dict[str, Any]:
    """A payload as JSON, normalised as Abstra's send_task does; TypeError/ValueError name the key path.

    dates and datetimes -> ISO strings, UUIDs -> strings, sets and tuples ->
    lists, dataclasses -> dicts (of their fields, recursively), Decimals ->
    numbers. Anything else is an error, and so is a payload that is not a dict.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"a task payload must be a dict, not a {type(payload).__name__}")
    return _json_object(payload, "payload")


def _where(where: Any) -> dict[str, Any]:
    if where is None:
        return {}
    if not isinstance(where, dict):
        raise TypeError(f"where must be a dict of top-level payload keys to values, not a {type(where).__name__}")
    return _json_object(where, "where")  # where={"on": date(...)} finds what send_task stored


def _matches(payload: dict[str, Any], where: dict[str, Any]) -> bool:
    return all(key in payload and payload[key] == value for key, value in where.items())


# -- tasks --------------------------------------------------------------------------------------------


class Task:
    """A task as a script sees it: read-only data, and lock()/complete() for the tasks its run holds."""

    __slots__ = ("_id", "_payload", "_run", "_type")

    def __init__(self, run: ScriptRun | None, id: int, type: str, payload: dict[str, Any]) -> None:
        self._run = run  # None: a task this run does not hold (get_sent_tasks)
        self._id = id
        self._type = type
        self._payload = payload

    def __repr__(self) -> str:
        return f"Task(id={self._id}, type={self._type!r}, payload={self._payload!r})"

    @property
    def id(self) -> int:
        return self._id

    @property
    def type(self) -> str:
        return self._type

    @property
    def payload(self) -> dict[str, Any]:
        """A copy: changing it changes nothing stored."""
        return copy.deepcopy(self._payload)

    def get_payload(self) -> dict[str, Any]:
        return self.payload

    def get(self, key: str, default: Any = None) -> Any:
        return copy.deepcopy(self._payload.get(key, default))

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._payload[key])

    def __setitem__(self, key: str, value: Any) -> None:
        raise TaskWriteAttempt("A task's payload is read-only; send a new task with send_task() instead.")

    def __delitem__(self, key: str) -> None:
        raise TaskWriteAttempt("A task's payload is read-only; send a new task with send_task() instead.")

    def _held(self) -> ScriptRun:
        run = self._run
        if run is None or not run.holds(self._id):
            raise TaskNotWaiting(f"Task {self._id} is not held by this run (only the tasks it serves can be).")
        return run

    def lock(self) -> None:
        """The run already holds the lock of every task it serves (a lock that expires, as every lock here)."""
        if self._id in self._held().completed:
            raise TaskNotWaiting(f"Task {self._id} is already completed by this run.")

    def complete(self) -> None:
        """Mark the task completed when the run ends, in its transaction (calling it again changes nothing)."""
        run = self._held()
        run.released.pop(self._id, None)
        run.completed.add(self._id)

    def __enter__(self) -> Task:
        self.lock()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None:
            self.complete()
        else:
            self._held().released[self._id] = exc  # back to pending when the run ends
        return False


def _task(run: ScriptRun, served: Served) -> Task:
    return Task(run, served.id, served.type, served.payload)


# -- the functions --------------------------------------------------------------------------------


def send_task(type: str, payload: dict[str, Any], show_warning: bool = True) -> None:
    """Send a task of `type` out of this stage (created when the run ends cleanly, in its transaction).

    Raises NoRouteError if no transition of the stage passes `type` (whatever
    show_warning says: Abstra's warning-and-drop is not kept), and the stage
    schema's ValidationError if it refuses the payload.
    """
    run = current_run()
    run.send(type, to_json_payload(payload))


def get_trigger_task() -> Task:
    """The task this run of a script stage was started for (claimed by the worker)."""
    run = current_run()
    if run.trigger is None:
        raise IncompatibleStage(
            "get_trigger_task() is for script stages; a job stage's run serves its tasks with get_tasks()."
        )
    [served] = [s for s in run.served if s.id == run.trigger]
    return _task(run, served)


def _limit(limit: int | None) -> int:
    if limit is None or limit < 1:
        return DEFAULT_LIMIT
    return min(limit, MAX_LIMIT)


def get_tasks(limit: int | None = None, offset: int = 0, where: dict[str, Any] | None = None) -> list[Task]:
    """The tasks this run holds and has not completed, oldest first, whose payload matches `where`.

    `where`: equality on top-level payload keys. limit: None means 100, at most 10,000.
    """
    run = current_run()
    wanted = _where(where)
    waiting = [s for s in run.served if s.id not in run.completed and _matches(s.payload, wanted)]
    start = max(offset, 0)
    return [_task(run, s) for s in waiting[start : start + _limit(limit)]]


def iter_tasks(where: dict[str, Any] | None = None) -> Iterator[Task]:
    """Every task get_tasks() would give, oldest first, skipping one completed since the iteration began."""
    run = current_run()
    wanted = _where(where)
    for served in [s for s in run.served if _matches(s.payload, wanted)]:
        if served.id not in run.completed:
            yield _task(run, served)


def get_sent_tasks(limit: int | None = None, offset: int = 0, where: dict[str, Any] | None = None) -> list[Task]:
    """Tasks this stage sent (earlier runs' sends: this run's are created when it ends), newest first as in Abstra.

    limit: None means 100 unless `where` is given (then all, as in Abstra), at most 10,000 here.
    """
    run = current_run()
    wanted = _where(where)
    cap = DEFAULT_LIMIT if limit is None and where is None else MAX_LIMIT if limit is None else _limit(limit)
    rows = TaskRow.objects.filter(source_stage=run.stage).order_by("-created_at", "-id")
    found: list[Task] = []
    skipped = 0
    for id, type, payload in rows.values_list("id", "type", "payload").iterator(chunk_size=500):
        if not _matches(payload, wanted):
            continue
        if skipped < offset:
            skipped += 1
            continue
        found.append(Task(None, id, type, payload))
        if len(found) >= cap:
            break
    return found
