"""The task API of Abstra stage scripts, for script files this engine runs (README, "Coming from Abstra").

An Abstra script runs unchanged as a stage's handler: name the file (a
handler ending in ".py", inside a TASKS_SCRIPT_DIRS directory) and keep
`from abstra.tasks import send_task, get_trigger_task, get_tasks, ...`, which
a script run resolves to this module's functions unless the real `abstra`
package is installed (services.scripts). Or import them from here:

    from tasks_app.abstra import get_trigger_task, send_task

    task = get_trigger_task()
    print("checking order", task["order_id"])
    send_task("in_stock", {"order_id": task["order_id"]})

- send_task(type, payload, show_warning=True): a task of `type` out of this
  stage, through its transitions, created when the run ends cleanly in the
  same transaction as the completion. A type no transition routes raises
  NoRouteError (Abstra warns and drops it). The payload is normalised as
  Abstra does (dates and datetimes to ISO strings, UUIDs to strings, sets and
  tuples to lists, dataclasses to dicts, Decimals to numbers); anything else
  raises, naming the key.
- get_trigger_task(): in a script stage, the task the worker claimed for this
  run. The run ending cleanly completes it; complete() is allowed (and
  idempotent); a `with task:` body that raises releases it (the run fails).
- get_tasks(limit=None, offset=0, where=None), iter_tasks(where=None): the
  tasks the run holds and has not completed, oldest first; `where` is
  equality on top-level payload keys. In a job stage these are the tasks the
  run claimed; complete() on each completes it in the run's transaction, and
  the ones not completed go back to pending when the run ends.
- get_sent_tasks(limit=None, offset=0, where=None): tasks this stage sent in
  earlier runs, newest first (as Abstra).
- Task: .id, .type, .payload (a copy), get(key, default), task[key]
  (assignment raises TaskWriteAttempt), lock(), complete(), and `with task:`
  (locks; completes on a clean exit; releases on an exception).
"""

from tasks_app.services.script_api import (
    IncompatibleStage,
    NotInAScript,
    Task,
    TaskNotWaiting,
    TaskWriteAttempt,
    get_sent_tasks,
    get_tasks,
    get_trigger_task,
    iter_tasks,
    send_task,
    to_json_payload,
)

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
