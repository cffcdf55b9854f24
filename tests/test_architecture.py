"""Imports flow down, and the handler contract lives in one module (issue 12, items 1 and 2).

Read from the source with `ast`, not by importing: what matters is what each
module asks for, whatever happens to be loaded already in this process.

- No module under tasks_app/services imports the worker, the views or the API,
  directly or through what it imports (a service is a library for all three).
- The app's module-level imports form no cycle, and the models import no
  service (their validators use tasks_app.schema_rules, which imports no model).
- Nothing of the app is imported inside a function, except the few lazy
  imports listed below with their reason: a function-level import is how a
  circle gets dodged instead of removed.
- `import_string` (importing code by its dotted name) appears in one module,
  tasks_app.handler_modules, under the TASKS_HANDLER_MODULES allow-list; and
  the objects user code receives are defined only in services/handlers.py.
- A script file (a handler ending in .py) is compiled in tasks_app.handler_modules
  only, under the TASKS_SCRIPT_DIRS allow-list, and run in services/scripts.py only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from tasks_app import handler_modules, worker
from tasks_app.services import handlers as contract
from tasks_app.services import jobs
from tasks_app.worker import handlers as worker_handlers

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tasks_app"
LAYERS_ABOVE_SERVICES = ("tasks_app.worker", "tasks_app.views", "tasks_app.api")

# Function-level imports of app modules that stay, keyed by (file, function, module imported), with the reason.
LAZY_IMPORTS = {
    ("tasks_app/apps.py", "ready", "tasks_app.checks"): (
        "Django imports apps.py while it loads the app registry; the checks import the models, which need it "
        "loaded, and ready() is where Django wants checks registered"
    ),
    ("tasks_app/apps.py", "ready", "tasks_app.services.pg"): (
        "the connection_created receiver (plan_cache_mode for the prepared statements); importing "
        "tasks_app.services loads its package, which imports the models, before the registry is ready"
    ),
}

# What user code receives and how it is resolved and called: defined in services/handlers.py only.
CONTRACT_NAMES = {
    "HandlerTask",
    "JobContext",
    "JobTask",
    "PermanentFailure",
    "HandlerImportError",
    "HandlerAborted",
    "resolve_handler",
    "call_handler",
    "call_transform",
    "transform_result",
    "checked_send",
}
CONTRACT_MODULE = "tasks_app/services/handlers.py"


# -- reading the source -----------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(APP.rglob("*.py"))}


@cache
def tree(name: str) -> ast.Module:
    path = modules()[name]
    return ast.parse(path.read_text(), filename=str(path))


def rel(name: str) -> str:
    return modules()[name].relative_to(ROOT).as_posix()


def imported(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement in module `name` loads (`from a import b` loads a.b if that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = name if modules()[name].name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]


def function_imports(name: str) -> Iterator[tuple[str, ast.Import | ast.ImportFrom]]:
    """(function name, import statement) for every import inside a def of module `name`."""
    return imports_in_functions(tree(name))


def imports_in_functions(module: ast.Module) -> Iterator[tuple[str, ast.Import | ast.ImportFrom]]:
    """(function name, import statement) for every import inside a def (nested defs included)."""
    for function in ast.walk(module):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    yield function.name, node


def in_function(name: str) -> set[int]:
    return {id(node) for _function, node in function_imports(name)}


def any_level_imports(name: str) -> set[str]:
    """The app modules `name` imports anywhere: at its top or inside a function."""
    inside = {m for _function, node in function_imports(name) for m in imported(name, node) if m in modules()}
    return set(module_level_imports(name)) | inside


@cache
def module_level_imports(name: str) -> frozenset[str]:
    """The app modules `name` imports when it is imported (if/try blocks at module level included)."""
    inside = in_function(name)
    found: set[str] = set()
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in inside:
            found.update(m for m in imported(name, node) if m in modules())
    return frozenset(found)


def loaded_by(name: str) -> set[str]:
    """Every app module importing `name` loads: what it imports, recursively, and the packages above each."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        stack += [".".join(parts[:i]) for i in range(1, len(parts))]
        stack += module_level_imports(current)
    return seen


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def service_modules() -> list[str]:
    return [m for m in modules() if under(m, ("tasks_app.services",))]


# -- imports flow down --------------------------------------------------------------------------------


def test_the_scan_sees_the_app() -> None:
    # A scan that found nothing would pass every test below.
    assert {"tasks_app.models", "tasks_app.services.handlers", "tasks_app.worker.loop"} <= modules().keys()
    assert len(service_modules()) >= 10
    assert "tasks_app.services.routing" in module_level_imports("tasks_app.services.handlers")


def test_no_service_module_imports_the_worker_views_or_api() -> None:
    offenders = [
        f"{rel(name)}: imports {target}"
        for name in service_modules()
        for target in sorted(any_level_imports(name))
        if under(target, LAYERS_ABOVE_SERVICES)
    ]
    assert offenders == []


def test_importing_a_service_loads_no_worker_view_or_api_module() -> None:
    """Not through another module either: services/jobs.py once loaded five worker modules, the run loop included."""
    loaded = {name: sorted(m for m in loaded_by(name) if under(m, LAYERS_ABOVE_SERVICES)) for name in service_modules()}
    assert {name: modules for name, modules in loaded.items() if modules} == {}


def test_the_models_import_no_service_and_the_schema_rules_no_model() -> None:
    """models.py and services/schemas.py imported each other; the pure rules now sit below both."""
    assert "tasks_app.schema_rules" in modules()
    assert not {m for m in any_level_imports("tasks_app.models") if under(m, ("tasks_app.services",))}
    assert not {m for m in loaded_by("tasks_app.models") if under(m, ("tasks_app.services",))}
    assert "tasks_app.models" not in loaded_by("tasks_app.schema_rules")
    assert "tasks_app.models" not in loaded_by("tasks_app.handler_modules")
    assert "tasks_app.schema_rules" in module_level_imports("tasks_app.models")


def lazy_edges(name: str) -> set[str]:
    """What the LAZY_IMPORTS entries let module `name` import inside its functions."""
    return {target for path, _function, target in LAZY_IMPORTS if path == rel(name)}


def test_the_apps_imports_form_no_cycle() -> None:
    """At the top or inside a function, the app's imports go one way (but for the listed lazy ones).

    A function-level import is how a circle gets dodged, so those count too:
    with no cycle, every module could import what it needs at its top.
    """
    graph = {name: (any_level_imports(name) - lazy_edges(name)) & modules().keys() for name in modules()}
    done: set[str] = set()

    def cycle_from(start: str) -> list[str] | None:
        # Iterative depth-first search; returns the first cycle found (as a path back to its start).
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
                on_path.add(child)
        return None

    cycles = [cycle for name in sorted(graph) if name not in done and (cycle := cycle_from(name))]
    assert cycles == []


def test_no_function_level_import_of_an_app_module_but_the_listed_lazy_ones() -> None:
    found = {
        (rel(name), function, target)
        for name in modules()
        for function, node in function_imports(name)
        for target in imported(name, node)
        if under(target, ("tasks_app", "workflowsite"))
    }
    assert found - LAZY_IMPORTS.keys() == set(), "import at the top, or list it in LAZY_IMPORTS with the reason"
    assert LAZY_IMPORTS.keys() - found == set(), "a listed lazy import is gone: drop it from LAZY_IMPORTS"
    assert all(reason.strip() for reason in LAZY_IMPORTS.values())


def test_the_function_level_scan_finds_an_import_inside_a_def() -> None:
    source = (
        "import os\n"
        "def f():\n"
        "    from tasks_app.models import Stage\n"
        "    def g():\n"
        "        import tasks_app.limits\n"
        "class C:\n"
        "    def method(self):\n"
        "        from tasks_app import limits\n"
    )
    found = {(f, m) for f, node in imports_in_functions(ast.parse(source)) for m in imported("tasks_app.models", node)}
    assert found >= {("f", "tasks_app.models"), ("g", "tasks_app.limits"), ("method", "tasks_app.limits")}
    assert not any(m == "os" for _f, m in found)


# -- one handler contract -----------------------------------------------------------------------------


def names_used(name: str) -> set[str]:
    """Every identifier module `name` binds, imports or reads (names, attributes, import aliases)."""
    found: set[str] = set()
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.alias):
            found.add(node.name.rpartition(".")[2])
    return found


def test_import_string_appears_in_one_module() -> None:
    """Code is imported by its dotted name in one place, under the handler allow-list."""
    users = [rel(name) for name in modules() if "import_string" in names_used(name)]
    assert users == ["tasks_app/handler_modules.py"]


def test_handler_paths_are_loaded_only_by_the_contract_module() -> None:
    # handler_modules.load_handler imports; services/handlers.py wraps it for the worker, jobs, hooks and loader.
    users = sorted(rel(name) for name in modules() if "load_handler" in names_used(name))
    assert users == ["tasks_app/handler_modules.py", CONTRACT_MODULE]


def test_what_handlers_receive_is_defined_in_the_contract_module_only() -> None:
    definitions = {
        (rel(name), node.name)
        for name in modules()
        for node in ast.walk(tree(name))
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in CONTRACT_NAMES
    }
    assert definitions == {(CONTRACT_MODULE, n) for n in CONTRACT_NAMES}


def test_the_contract_objects_are_the_same_wherever_they_are_imported_from() -> None:
    # README: handlers raise tasks_app.worker.PermanentFailure; the worker, jobs and hooks share the one class.
    assert worker.PermanentFailure is worker_handlers.PermanentFailure is contract.PermanentFailure
    assert worker.HandlerTask is worker_handlers.HandlerTask is contract.HandlerTask
    assert jobs.JobContext is contract.JobContext
    assert handler_modules.load_handler.__module__ == "tasks_app.handler_modules"


def bare_names(name: str) -> set[str]:
    """The plain names module `name` reads or binds (not attributes: `re.compile` is not `compile`)."""
    return {node.id for node in ast.walk(tree(name)) if isinstance(node, ast.Name)}


def test_script_files_become_code_in_one_module_and_run_in_one() -> None:
    """A script file (a handler ending in .py) is compiled only under the TASKS_SCRIPT_DIRS check, run in one place."""
    assert [rel(name) for name in modules() if "compile" in bare_names(name)] == ["tasks_app/handler_modules.py"]
    runners = [rel(name) for name in modules() if bare_names(name) & {"exec", "eval"}]
    assert runners == ["tasks_app/services/scripts.py"]
    loaders = sorted(rel(name) for name in modules() if "load_script" in names_used(name))
    assert loaders == ["tasks_app/handler_modules.py", CONTRACT_MODULE, "tasks_app/services/scripts.py"]
