"""Importing an Abstra project: its abstra.json as this project's workflow file (services.workflow's format).

The format facts this relies on (abstra.json 18.0, as abstra 3.32 reads it)
are in the import_abstra command's docstring; reading the file as untrusted
input is services.abstra_project, the schema move services.abstra_schemas.

The mapping:

- scripts -> script stages, jobs -> job stages (same schedule), whose handler
  is the stage's file: `<scripts prefix>/<file>` (a handler ending in ".py" is a
  script file, tasks_app.handler_modules; the prefix is the project directory
  relative to BASE_DIR when it is inside it, else absolute), so the worker runs
  the file itself once TASKS_SCRIPT_DIRS lists that directory;
- hooks -> hook stages with no handler (the request body is the payload);
- forms -> form stages (people; a button per type the transitions pass);
- slugs from the file name (else the title), slugified, made unique with -2,
  -3 in the order above: never from the UUID, which goes in the description;
- transitions as they are (blank type = wildcard), after Abstra's own drops;
- task schemas moved from the receiving stages to the senders (abstra_schemas);
- schedules kept when TIME_ZONE is UTC; otherwise the job stage is imported
  paused and listed (a cron in another zone fires at other instants, and a
  fixed shift can't follow daylight saving time).

Stricter than Abstra, and refused (AbstraImportError, nothing written): a
transition to no stage, a file path outside the project, a script or job whose
file is missing or not a .py file, a file too large, too deep or with too many
stages. Everything else that has no equivalent here is listed with its
location (`forms[0].access_control`); layout (workflow_position), what
Abstra derives itself (is_initial, a stage's "type") and a hook's "enabled"
(which no part of Abstra 3.32 reads) are dropped silently.
The project's files are only located, never read, run or fetched.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from tasks_app.models import Stage
from tasks_app.services.abstra_project import (
    RUN_FILES,
    STAGE_KEYS,
    AbstraImportError,
    AbstraStage,
    read_project,
    read_stages,
    shown,
)
from tasks_app.services.abstra_schemas import Route, receiver_rule, sender_schemas
from tasks_app.services.workflow import FORMAT_VERSION, MODEL_FIELDS, STAGE_FIELDS, workflow_dumps, workflow_problems

__all__ = ["AbstraImportError", "ImportResult", "default_prefix", "import_abstra", "write_workflow"]

TOP_LEVEL_KEYS = {"version", *STAGE_KEYS, "workspace", "home", "inputs", "outputs"}
# Editor layout, derived by Abstra itself, or (a hook's "enabled") stored but read by no part of Abstra 3.32.
IGNORED_KEYS = {"workflow_position", "is_initial", "type", "enabled"}
MAPPED_KEYS = {"id", "title", "file", "transitions", "task_schema", "schedule"}
UTC_ZONES = {"UTC", "Etc/UTC", "Etc/UCT", "UCT", "GMT", "Etc/GMT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"}
# Stage keys with no equivalent here, listed when they hold more than Abstra's default: key -> why.
UNSUPPORTED = {
    "input": "a module input flag; this project has no modules",
    "output": "a module output flag; this project has no modules",
    "path": "Abstra's URL for the stage; here a hook is POST /hooks/<slug>/ and a form is on My work",
    "api_schema": "the hook's API contract; put a schema on the hook stage for the types it sends instead",
    "auto_start": "form UI option; not mapped",
    "end_message": "form UI text; not mapped",
    "start_message": "form UI text; not mapped",
    "error_message": "form UI text; not mapped",
    "timeout_message": "form UI text; not mapped",
    "start_button_text": "form UI text; not mapped",
    "notification_trigger": "e-mails the addresses in a payload field; here set notify (and groups) on the stage",
    "access_control": "who may open the form; here give the stage groups",
}


@dataclass
class ImportResult:
    """The workflow file's data, and the report that goes with it."""

    project: Path
    workflow: dict[str, Any]
    stages: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def report_lines(self) -> list[str]:
        """What a person reads: the stages, schemas moved, notes, what was not imported, the load check."""
        wf = self.workflow
        lines = [
            f"Abstra project {self.project}: {len(wf['stages'])} stage(s), {len(wf['transitions'])} transition(s).",
            "Stages:",
            *self.stages,
            "Transitions:",
            *[f"  {t['source']} -[{t['type'] or '*'}]-> {t['target']}" for t in wf["transitions"]],
        ]
        lines += ["Schemas moved to the sending stages:", *self.moved] if self.moved else []
        lines += ["Notes:", *[f"  {n}" for n in self.notes]] if self.notes else []
        lines += [f"Not imported ({len(self.unmapped)}):", *[f"  {u}" for u in self.unmapped]]
        if self.problems:
            lines += ["load_workflow would refuse the file as it is:", *[f"  {p}" for p in self.problems]]
        else:
            lines.append("load_workflow accepts the file as it is.")
        return lines


# -- building the workflow -------------------------------------------------------------------------------


def _unmapped_keys(stage: AbstraStage) -> list[str]:
    """The stage's keys that hold something this project can't express."""
    found = []
    for key, value in stage.entry.items():
        if key in MAPPED_KEYS or key in IGNORED_KEYS:
            continue
        if key not in UNSUPPORTED:
            found.append(f"{stage.where}.{key}: unknown key; not imported")
        elif _holds_something(key, value):
            found.append(f"{stage.where}.{key}: {UNSUPPORTED[key]} (was {shown(value)})")
    return found


def _holds_something(key: str, value: object) -> bool:
    """Whether the key says more than Abstra's default (a default is nothing lost)."""
    if key == "path":
        return True
    if key == "notification_trigger":
        return isinstance(value, dict) and value.get("enabled") is True
    if key == "access_control":
        # AccessSettings.from_dict: a non-empty object without "is_public" is public.
        return (
            bool(value)
            and isinstance(value, dict)
            and (value.get("is_public", True) is True or bool(value.get("required_roles")))
        )
    return bool(value)


def _handler(stage: AbstraStage, prefix: str) -> str:
    """A script or job stage's handler: its file under the prefix (a script file, tasks_app.handler_modules)."""
    return f"{prefix.rstrip('/')}/{stage.file}" if prefix else stage.file


def _stage_entry(stage: AbstraStage, prefix: str, schemas: dict[str, Any], paused: bool) -> dict[str, Any]:
    """The workflow file's entry: every field in STAGE_FIELDS order, the model's defaults where Abstra says nothing."""
    title = stage.entry.get("title")
    name = title.strip()[:200] if isinstance(title, str) and title.strip() else stage.slug
    defaults = Stage()
    values: dict[str, Any] = {f: getattr(defaults, f) for f in MODEL_FIELDS}
    schedule = stage.entry.get("schedule")
    values.update(
        slug=stage.slug,
        name=name,
        kind=stage.kind,
        handler=_handler(stage, prefix) if stage.key in RUN_FILES else "",
        description=f"Imported from Abstra: {stage.key[:-1]} '{name}' ({stage.file}, id {stage.entry['id']}).",
        schedule=schedule.strip() if stage.key == "jobs" and isinstance(schedule, str) else "",
        is_paused=paused,
        schemas=schemas,
        groups=[],
    )
    return {f: values[f] for f in STAGE_FIELDS}


def _schedule_paused(stage: AbstraStage, unmapped: list[str]) -> bool:
    """A job's cron is UTC in Abstra and TIME_ZONE here: kept when they agree, else the job comes paused."""
    schedule = stage.entry.get("schedule")
    if stage.key != "jobs":
        return False
    if not isinstance(schedule, str) or not schedule.strip():
        raise AbstraImportError(f"{stage.where}.schedule: a job needs a cron schedule")
    if settings.TIME_ZONE in UTC_ZONES:
        return False
    unmapped.append(
        f"{stage.where}.schedule: '{schedule.strip()}' is UTC in Abstra but would be read in TIME_ZONE "
        f"{settings.TIME_ZONE}; imported paused: rewrite it for {settings.TIME_ZONE}, then unpause"
    )
    return True


def _notes(stage: AbstraStage) -> list[str]:
    types = sorted({t or "(the task's own type)" for t, _target in stage.routes})
    passes = ", ".join(types) or "none: it has no transitions"
    if stage.key == "forms":
        return [
            f"{stage.where} -> form '{stage.slug}': Abstra ran {stage.file} as a web form; it can't run here. "
            f"People work its tasks on My work, with one button per type its transitions pass ({passes}) "
            "and fields from its schema for that type."
        ]
    if stage.key == "hooks":
        return [
            f"{stage.where} -> hook '{stage.slug}': {stage.file} is not run (no handler): POST /hooks/{stage.slug}/"
            f"?type=<type> with the stage's secret sends the JSON body itself as the payload (types: {passes})."
        ]
    return []


def _moved_lines(stage: AbstraStage, schemas: dict[str, Any]) -> list[str]:
    if not schemas:
        return []
    receivers = sorted({t.slug for _type, t in stage.routes if t.rule.types or t.rule.refuses_all})
    return [f"  {stage.slug}: {', '.join(schemas)} (from the task_schema of {', '.join(receivers)})"]


def default_prefix(project_dir: Path) -> str:
    """The project directory as handlers name it: relative to BASE_DIR when inside it, else absolute."""
    real, base = project_dir.resolve(), Path(settings.BASE_DIR).resolve()
    return real.relative_to(base).as_posix() if real.is_relative_to(base) else real.as_posix()


def import_abstra(project_dir: Path, *, scripts_prefix: str | None = None) -> ImportResult:
    """Read PROJECT_DIR/abstra.json and build this project's workflow file from it, with a report.

    1. read and check abstra.json (read_project), then its stages and files;
    2. slugs, routes (Abstra's drops applied), each receiver's task_schema;
    3. each stage's entry, with the schemas moved to it; the transitions;
    4. what load_workflow would say about the result (nothing is loaded).
    """
    data = read_project(project_dir)
    unmapped = [f"{k}: unknown top-level key; not imported" for k in data if k not in TOP_LEVEL_KEYS]
    if data.get("workspace"):
        unmapped.append("workspace: the branding of Abstra's web UI; not imported")
    if isinstance(data.get("home"), dict) and _holds_something("access_control", data["home"].get("access_control")):
        unmapped.append("home.access_control: who may open Abstra's home page; not imported")
    unmapped += [f"{k}: module {k} (components); not imported" for k in ("inputs", "outputs") if data.get(k)]
    stages = read_stages(data, project_dir, unmapped)
    for stage in stages:
        stage.rule = receiver_rule(stage.entry.get("task_schema"), f"{stage.where}.task_schema", unmapped)
    prefix = default_prefix(project_dir) if scripts_prefix is None else scripts_prefix
    result = ImportResult(project_dir, {})
    entries = []
    for stage in stages:
        unmapped += _unmapped_keys(stage)
        routes: list[Route] = [(t, target.rule, target.slug) for t, target in stage.routes]
        schemas = sender_schemas(routes, stage.where, unmapped)
        entries.append(_stage_entry(stage, prefix, schemas, _schedule_paused(stage, unmapped)))
        result.moved += _moved_lines(stage, schemas)
        result.notes += _notes(stage)
        handler = f", runs {_handler(stage, prefix)}" if stage.key in RUN_FILES else ""
        result.stages.append(f"  {stage.kind:6} {stage.slug}  <- {stage.where} '{entries[-1]['name']}'{handler}")
    _receivers_unused(stages, unmapped)
    transitions = [{"source": s.slug, "target": t.slug, "type": type} for s in stages for type, t in s.routes]
    result.workflow = {
        "version": FORMAT_VERSION,
        "stages": sorted(entries, key=lambda e: e["slug"]),
        "transitions": sorted(transitions, key=lambda t: (t["source"], t["type"], t["target"])),
    }
    result.unmapped = unmapped
    result.notes += _run_notes(stages, prefix)
    result.problems = workflow_problems(result.workflow)
    return result


def _receivers_unused(stages: list[AbstraStage], unmapped: list[str]) -> None:
    """A task_schema on a stage nothing sends into was never applied by Abstra: nothing to move."""
    received = {id(target) for s in stages for _t, target in s.routes}
    for stage in stages:
        if id(stage) not in received and (stage.rule.types or stage.rule.refuses_all):
            unmapped.append(f"{stage.where}.task_schema: no imported stage sends into this one; no sender to carry it")


def _run_notes(stages: list[AbstraStage], prefix: str) -> list[str]:
    notes = []
    if any(s.key in RUN_FILES for s in stages):
        notes.append(
            f"Script and job stages run the project's files: list {prefix or 'their directory'} in TASKS_SCRIPT_DIRS "
            "(environment, comma-separated) before loading; `from abstra.tasks import ...` works unchanged."
        )
    existing = sorted(Stage.objects.filter(slug__in=[s.slug for s in stages]).values_list("slug", flat=True))
    if existing:
        notes.append(f"Stages already in the database, which a load would update: {', '.join(existing)}.")
    return notes


def write_workflow(result: ImportResult, output: Path) -> None:
    """Write the workflow file atomically: a reader never sees half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(workflow_dumps(result.workflow))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is for secrets; this file is meant for git
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
