"""Running a script file as a handler: Abstra stage code, a Python file run top to bottom.

A stage whose handler ends in ".py" (tasks_app.handler_modules: the file
must lie in a TASKS_SCRIPT_DIRS directory) gets a ScriptHandler from
services.handlers.resolve_handler. Called like any handler, with the
HandlerTask of a script stage's claimed task or the JobContext of a job run,
it

1. checks the path again and takes the file's compiled code (load_script:
   compiled again only when the file's modification time or size changed, so
   an edited script runs in its new version from the next task on);
2. runs it in a fresh module namespace named "__main__" (as `python file.py`
   would), with the task API of tasks_app.abstra bound to this run
   (services.script_api) and `print` output captured for this thread;
3. leaves the output on the view/context (`output`, at most OUTPUT_LIMIT
   characters) for the history: the worker puts it in the completed, released
   or failed event's details, a job run in its tasks' completed events (or its
   error, when it fails).

What it raises is the handler's error, as for any handler: the worker's
failure policy (retries, backoff, max_attempts) applies. `sys.exit()` or
`exit(0)` end a script cleanly, as they end `python file.py` with status 0;
another exit status is an error.

`from abstra.tasks import ...` works unchanged: the script's own imports go
through an `__import__` that resolves `abstra` and `abstra.tasks` to this
project's API, unless a real `abstra` package is importable (then that one is
imported). Nothing is installed in site-packages or sys.modules: modules the
script imports see no alias.
"""

from __future__ import annotations

import builtins
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from tasks_app.handler_modules import HandlerPathError, load_script
from tasks_app.services import script_api
from tasks_app.services.script_api import ScriptRun, Served, set_current_run

__all__ = ["OUTPUT_LIMIT", "ScriptHandler", "TriggerReleased", "captured_output"]

# Characters of a run's output kept in its history; the rest is counted, not kept.
OUTPUT_LIMIT = 10_000


class TriggerReleased(Exception):
    """A `with task:` body on the trigger task raised and the script went on: the task is released, not completed."""


# -- print output, per thread -----------------------------------------------------------------------


class _Output:
    """A run's output, bounded: the first OUTPUT_LIMIT characters and a count of the rest."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def write(self, text: str) -> int:
        room = OUTPUT_LIMIT - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(len(text), room)
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def text(self) -> str:
        out = "".join(self.parts)
        return out + f"\n[... {self.dropped} more characters not kept]" if self.dropped else out


_capture = threading.local()
_install_lock = threading.Lock()


class _ThreadStream:
    """sys.stdout/sys.stderr: to the running thread's capture if it has one, else to the stream it replaced.

    Handler slots are threads of one process, so one global stream serves them
    all and each run's output goes to its own buffer, never another's.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        output: _Output | None = getattr(_capture, "output", None)
        if output is None:
            return int(self.inner.write(text))
        return output.write(text)

    def flush(self) -> None:
        if getattr(_capture, "output", None) is None:
            self.inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _install() -> None:
    """Put the per-thread streams in place (again, if something replaced them since: a test's capture)."""
    with _install_lock:
        if not isinstance(sys.stdout, _ThreadStream):
            sys.stdout = _ThreadStream(sys.stdout)
        if not isinstance(sys.stderr, _ThreadStream):
            sys.stderr = _ThreadStream(sys.stderr)


@contextmanager
def captured_output() -> Iterator[_Output]:
    """Capture what this thread prints (stdout and stderr, as a terminal interleaves them) while inside."""
    _install()
    previous = getattr(_capture, "output", None)
    output = _Output()
    _capture.output = output
    try:
        yield output
    finally:
        _capture.output = previous


# -- `import abstra.tasks` inside a script ----------------------------------------------------------


@cache
def _real_abstra() -> bool:
    """Is a real `abstra` package importable? Then scripts import it, not the alias (asked once)."""
    try:
        spec = importlib.util.find_spec("abstra")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None  # a bare directory (namespace package) does not count


@cache
def _alias_modules() -> tuple[types.ModuleType, types.ModuleType]:
    tasks = types.ModuleType("abstra.tasks", "This project's task API (tasks_app.abstra), for Abstra scripts.")
    for name in script_api.__all__:
        setattr(tasks, name, getattr(script_api, name))
    package = types.ModuleType("abstra", "An alias for Abstra scripts: only abstra.tasks is provided.")
    package.__path__ = []
    package.tasks = tasks  # type: ignore[attr-defined]
    return package, tasks


def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> types.ModuleType:
    """The script's __import__: `abstra` and `abstra.tasks` are this project's API unless the real one exists."""
    if level == 0 and (name == "abstra" or name.startswith("abstra.")) and not _real_abstra():
        package, tasks = _alias_modules()
        if name == "abstra":
            return package
        if name == "abstra.tasks":
            return tasks if fromlist else package
        raise ModuleNotFoundError(
            f"No module named {name!r}: this project provides abstra.tasks only (tasks_app.abstra)", name=name
        )
    return builtins.__import__(name, globals, locals, fromlist, level)


_SCRIPT_BUILTINS = {**vars(builtins), "__import__": _import}


# -- the handler --------------------------------------------------------------------------------------


def _run_of(target: Any) -> ScriptRun:
    """The run a handler call stands for: a script stage's view (one task) or a job context (its tasks)."""
    stage = target._stage
    if hasattr(target, "tasks"):  # a JobContext (services.handlers)
        served = [Served(t.id, t.type, t.payload) for t in target.tasks]
        run = ScriptRun(stage=stage, send=target.send, served=served, trigger=None)
        target.completed = run.completed  # services.jobs completes these, and gives the others back
        return run
    served = [Served(target.id, target.type, target.payload)]
    return ScriptRun(stage=stage, send=target.send, served=served, trigger=target.id)


class ScriptHandler:
    """A stage's script file as a handler: handler(view) for a script stage, handler(context) for a job."""

    def __init__(self, path: str, unavailable: Callable[[str], Exception]) -> None:
        self.path = path
        self.unavailable = unavailable  # the exception for a file that may not (or no longer) run

    def __repr__(self) -> str:
        return f"ScriptHandler({self.path!r})"

    def __call__(self, target: Any) -> None:
        try:
            script = load_script(self.path)  # the allow-list, checked at every run
        except HandlerPathError as exc:
            raise self.unavailable(f"Script '{exc.path}' {exc.reason}.") from exc
        run = _run_of(target)
        namespace = {
            "__name__": "__main__",
            "__file__": str(script.path),
            "__doc__": None,
            "__package__": None,
            "__spec__": None,
            "__builtins__": dict(_SCRIPT_BUILTINS),  # a copy: what one run changes there, the next never sees
        }
        previous = set_current_run(run)
        try:
            with captured_output() as output:
                try:
                    exec(script.code, namespace)
                except SystemExit as exc:
                    if exc.code not in (None, 0):  # `python file.py` would end with this status: a failure
                        raise
                finally:
                    target.output = output.text()
        finally:
            set_current_run(previous)
        if run.trigger is not None and run.trigger in run.released:
            cause = run.released[run.trigger]
            raise TriggerReleased(
                f"a `with task:` body raised {type(cause).__name__}: {cause}; the task goes back to pending"
            ) from cause
