"""Who may name code: the TASKS_HANDLER_MODULES allow-list, and importing a handler path under it.

A stage's `handler` is a dotted path that workers, schedulers and the hook
view import and call, and whoever may edit a stage (API, admin, workflow
files) chooses it. So a path counts only when

1. it lies under a prefix of TASKS_HANDLER_MODULES, checked before anything
   is imported (importing a module runs it);
2. it imports and names a callable;
3. the callable's own `__module__` lies under a prefix too, so a re-export
   (`from os import system` in an allowed module) is refused.

The standard library never counts, whatever the setting says.

A handler ending in ".py" names a script file instead (an Abstra-style stage,
run top to bottom): it counts only when its real path lies inside a directory
of TASKS_SCRIPT_DIRS and is a regular .py file (load_script, below).

This module sits below the models (Stage.handler's validator uses it) and
imports nothing of the app; tasks_app.services.handlers builds the contract
the worker, scheduler, hook view and workflow loader use on top of it. It is
the one module that imports code by a dotted name (`import_string`) or
compiles a script file (`compile`; tests/test_architecture.py keeps both so),
so no path escapes the allow-lists.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

SETTING = "TASKS_HANDLER_MODULES"
# The code of a field error from the check below (the workflow loader reports those itself, with the stage's kind).
ERROR_CODE = "handler_not_allowed"


class HandlerPathError(Exception):
    """A handler path that is not allowed, does not import or names no callable; `reason` says which."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"'{path}' {reason}")
        self.path = path
        self.reason = reason


def is_stdlib(name: str) -> bool:
    return name.partition(".")[0] in sys.stdlib_module_names


def allowed_prefixes() -> tuple[str, ...]:
    """The module prefixes handlers may come from (read at each call: tests and settings overrides change it)."""
    return tuple(p for p in getattr(settings, SETTING, ()) if p and not is_stdlib(p))


def module_allowed(name: str) -> bool:
    """True if module `name` is one of the prefixes or inside one (on dotted boundaries: a.b allows a.b.c, not a.bc)."""
    return not is_stdlib(name) and any(name == p or name.startswith(p + ".") for p in allowed_prefixes())


def _allowed_list() -> str:
    return ", ".join(allowed_prefixes()) or "empty: no handler may run"


def load_handler(path: str) -> Callable[..., Any]:
    """The callable `path` names, if the allow-list lets it run; raises HandlerPathError otherwise."""
    parts = path.split(".")
    if len(parts) < 2 or not all(p.isidentifier() and not p.startswith("__") for p in parts):
        raise HandlerPathError(path, "is not a dotted path (module.function)")
    if not module_allowed(path):
        raise HandlerPathError(path, f"is not in a module that {SETTING} allows ({_allowed_list()})")
    try:
        obj = import_string(path)
    except Exception as exc:  # ImportError, or the module itself raising on import
        raise HandlerPathError(path, f"cannot be imported: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise HandlerPathError(path, "is not callable")
    # An instance's __module__ is its class's; an object without one is refused.
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str) or not module_allowed(module):
        raise HandlerPathError(
            path, f"is defined in module '{module}', which {SETTING} does not allow ({_allowed_list()})"
        )
    return obj


def handler_path_problem(path: str) -> str | None:
    """Why `path` may not be a handler ("'x' is not callable"), or None if it may (a script file: see below)."""
    try:
        if is_script(path):
            load_script(path)  # compiled too: a syntax error is refused when saved, not at the first task
        else:
            load_handler(path)
    except HandlerPathError as exc:
        return str(exc)
    return None


def validate_handler(value: str) -> None:
    """Stage.handler's field validator: every save path (API, admin, workflow files) runs it."""
    problem = handler_path_problem(value.strip())
    if problem is not None:
        raise ValidationError(f"Handler {problem}.", code=ERROR_CODE)


# -- script files: a handler ending in ".py" -------------------------------------------------------
#
# An Abstra stage is a Python file run top to bottom (README, "Coming from Abstra"). Such a handler
# names the file, relative to BASE_DIR or absolute, and counts only when its real path (symlinks and
# '..' resolved) lies inside a directory of TASKS_SCRIPT_DIRS and is a regular ".py" file. The file is
# read and compiled here, under that check, at every run whose file changed (load_script's cache):
# like import_string above, this is the one place that turns a name into code.

SCRIPT_SETTING = "TASKS_SCRIPT_DIRS"
SCRIPT_SUFFIX = ".py"


def is_script(path: str) -> bool:
    """Does this handler name a script file rather than a dotted path?"""
    return path.strip().endswith(SCRIPT_SUFFIX)


def script_dir_problem(real: Path) -> str | None:
    """What is wrong with a (resolved) script directory: the root, BASE_DIR or above would let all code run."""
    base = Path(settings.BASE_DIR).resolve()
    if real == Path(real.anchor) or real == base or real in base.parents:
        return "is the filesystem root, the project directory or above it; name a directory of scripts"
    return None


def script_dirs() -> tuple[Path, ...]:
    """The real directories scripts may lie in (read at each call: tests and settings overrides change it).

    An entry settings.py would refuse (set in Python, say) counts for nothing; tasks_app.checks reports it.
    """
    base = Path(settings.BASE_DIR)
    listed = [(base / str(entry)).resolve() for entry in getattr(settings, SCRIPT_SETTING, ()) if str(entry).strip()]
    return tuple(real for real in listed if script_dir_problem(real) is None)


def _script_dirs_listed() -> str:
    listed = [str(entry) for entry in getattr(settings, SCRIPT_SETTING, ()) if str(entry).strip()]
    return ", ".join(listed) or "empty: no script may run"


def script_path(path: str) -> Path:
    """The real path of script file `path` if TASKS_SCRIPT_DIRS lets it run; HandlerPathError otherwise."""
    name = path.strip()
    if "\x00" in name:
        raise HandlerPathError(name, "is not a file path")
    real = (Path(settings.BASE_DIR) / name).resolve()
    if not any(real.is_relative_to(directory) for directory in script_dirs()):
        raise HandlerPathError(
            name, f"is not a script file inside a directory that {SCRIPT_SETTING} allows ({_script_dirs_listed()})"
        )
    if not real.exists():
        raise HandlerPathError(name, "is a script file that does not exist")
    if not real.is_file() or real.suffix != SCRIPT_SUFFIX:
        raise HandlerPathError(name, f"is not a regular {SCRIPT_SUFFIX} file")
    return real


@dataclass(frozen=True)
class Script:
    """A script file, compiled: its real path and its code (run by tasks_app.services.scripts)."""

    path: Path
    code: CodeType


# (real path) -> ((mtime_ns, size), Script): a worker compiles a file again only after it changed.
_compiled: dict[Path, tuple[tuple[int, int], Script]] = {}
_compiled_lock = threading.Lock()


def load_script(path: str) -> Script:
    """Check `path` against TASKS_SCRIPT_DIRS (at every call) and return its compiled code.

    The code is cached by the file's modification time and size, so an edited
    file runs in its new version from the next task on, and a file that stops
    being allowed (setting, symlink changed, deleted) runs no more.
    HandlerPathError says why a file may not run, or does not compile.
    """
    real = script_path(path)
    try:
        stat = real.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with _compiled_lock:
            cached = _compiled.get(real)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        source = real.read_bytes()
        code = compile(source, str(real), "exec", dont_inherit=True)
    except (OSError, SyntaxError, ValueError) as exc:
        raise HandlerPathError(path.strip(), f"cannot be read or compiled: {type(exc).__name__}: {exc}") from exc
    script = Script(real, code)
    with _compiled_lock:
        _compiled[real] = (stamp, script)
    return script
