"""Reading an Abstra project: abstra.json checked as untrusted input, its stages, files, slugs and routes.

What abstra.json holds and how Abstra reads it is written down in the
import_abstra command's docstring (tasks_app/management/commands/import_abstra.py);
this module follows it. The project is untrusted input: the file is bounded
in size, depth and number of stages and transitions, stage files must lie
inside the project (no '..', no absolute path, no symbolic link out), and
nothing in it is run, imported or fetched: a stage's file is only located.
What can't be read is an AbstraImportError with one readable line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from django.utils.text import slugify

from tasks_app.limits import MAX_DOCUMENT_DEPTH, json_depth_exceeds
from tasks_app.models import Stage
from tasks_app.services.abstra_schemas import ReceiverRule

PROJECT_FILE = "abstra.json"
SUPPORTED_VERSION = "18.0"
MAX_PROJECT_BYTES = 2 * 1024 * 1024
MAX_STAGES = 500
MAX_TRANSITIONS = 5000
MAX_PATH_LENGTH = 255
SLUG_LENGTH = 90  # below Stage.slug's 100, leaving room for "-NNN"
# Abstra's order (STAGE_JSON_KEYS): of two stages with one id it keeps the first in this order.
STAGE_KEYS = ("forms", "hooks", "scripts", "jobs", "pages", "components")
KINDS = {"forms": Stage.Kind.FORM, "hooks": Stage.Kind.HOOK, "scripts": Stage.Kind.SCRIPT, "jobs": Stage.Kind.JOB}
RUN_FILES = ("scripts", "jobs")  # stages whose file runs here
TRANSITION_KEYS = {"id", "target_id", "target_type", "type", "task_type"}
KEYED = ("id", "target_id")  # Abstra's loader needs both (the id only to drop repeats)


class AbstraImportError(Exception):
    """The project can't be imported; the message is one readable line."""


@dataclass
class AbstraStage:
    """One stage of the project, where it is in abstra.json, and what it becomes here."""

    key: str  # "scripts"
    index: int
    entry: dict[str, Any]
    slug: str = ""
    file: str = ""
    routes: list[tuple[str, AbstraStage]] = field(default_factory=list)  # (task type or "", target)
    rule: ReceiverRule = field(default_factory=lambda: ReceiverRule(None))

    @property
    def where(self) -> str:
        return f"{self.key}[{self.index}]"

    @property
    def kind(self) -> str:
        return KINDS.get(self.key, self.key)


def shown(value: object) -> str:
    """A value of the project as a report quotes it: JSON, at most 200 characters."""
    return json.dumps(value, ensure_ascii=False)[:200]


def read_project(project_dir: Path) -> dict[str, Any]:
    """abstra.json as a dict, checked for size, depth, shape and version; AbstraImportError says why not."""
    if not project_dir.is_dir():
        raise AbstraImportError(f"{project_dir}: not a directory")
    path = project_dir / PROJECT_FILE
    if not path.is_file() or not path.resolve().is_relative_to(project_dir.resolve()):
        raise AbstraImportError(f"{path}: no {PROJECT_FILE} in the project directory")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PROJECT_BYTES + 1)
    except OSError as exc:
        raise AbstraImportError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_PROJECT_BYTES:
        raise AbstraImportError(f"{path}: larger than {MAX_PROJECT_BYTES} bytes; not an abstra.json")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise AbstraImportError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise AbstraImportError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise AbstraImportError(f"{path}: nested deeper than {MAX_DOCUMENT_DEPTH} levels") from None
    if json_depth_exceeds(data, MAX_DOCUMENT_DEPTH):
        raise AbstraImportError(f"{path}: nested deeper than {MAX_DOCUMENT_DEPTH} levels")
    if not isinstance(data, dict):
        raise AbstraImportError(f"{path}: must be a JSON object, not {type(data).__name__}")
    version = data.get("version")
    if version != SUPPORTED_VERSION:
        raise AbstraImportError(
            f"{path}: version {json.dumps(version)} is not supported (this import reads {SUPPORTED_VERSION}, "
            "abstra 3.32: open the project once in that Abstra, which migrates it, and import again)"
        )
    return data


def project_stages(data: dict[str, Any], unmapped: list[str]) -> tuple[list[AbstraStage], dict[str, AbstraStage]]:
    """The stages of the kinds imported, and every stage by id (pages and components too, for the routes)."""
    by_id: dict[str, AbstraStage] = {}
    imported: list[AbstraStage] = []
    for key in STAGE_KEYS:
        entries = data.get(key, [])
        if not isinstance(entries, list):
            raise AbstraImportError(f"{key}: must be a list of stages")
        for index, entry in enumerate(entries):
            stage = AbstraStage(key, index, entry)
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
                raise AbstraImportError(f"{stage.where}: must be an object with a string 'id'")
            if entry["id"] in by_id:
                unmapped.append(f"{stage.where}: same id as {by_id[entry['id']].where}; Abstra ignores it too")
                continue
            by_id[entry["id"]] = stage
            if key in KINDS:
                imported.append(stage)
            else:
                unmapped.append(f"{stage.where}: a {key[:-1]} stage ({shown(entry.get('title'))}); no such kind here")
    if len(by_id) > MAX_STAGES:
        raise AbstraImportError(f"{PROJECT_FILE}: more than {MAX_STAGES} stages")
    return imported, by_id


def stage_file(project_dir: Path, stage: AbstraStage) -> str:
    """The stage's file, relative to the project: inside it, and for scripts and jobs a .py file that exists."""
    value, where = stage.entry.get("file"), f"{stage.where}.file"
    if not isinstance(value, str) or not value.strip():
        raise AbstraImportError(f"{where}: missing (a stage's Python file, relative to the project)")
    posix = PurePosixPath(value)
    unsafe = "\\" in value or "\x00" in value or ":" in value or len(value) > MAX_PATH_LENGTH
    if unsafe or posix.is_absolute() or ".." in posix.parts:
        raise AbstraImportError(f"{where}: {json.dumps(value)[:100]} is not a relative path inside the project")
    real = (project_dir / value).resolve()
    if not real.is_relative_to(project_dir.resolve()):
        raise AbstraImportError(f"{where}: {value} leads outside the project (a symbolic link?)")
    if stage.key in RUN_FILES and (posix.suffix != ".py" or not real.is_file()):
        raise AbstraImportError(f"{where}: {value} is not a .py file of the project")
    return posix.as_posix()


def assign_slugs(stages: list[AbstraStage]) -> None:
    """From the file name (else the title), unique in file order: the same project always gets the same slugs."""
    taken: set[str] = set()
    for stage in stages:
        title = stage.entry.get("title")
        base = slugify(PurePosixPath(stage.file).stem.replace("_", "-")).strip("-_")[:SLUG_LENGTH]
        if not base and isinstance(title, str):
            base = slugify(title).strip("-_")[:SLUG_LENGTH]
        base = base.strip("-_") or stage.kind
        slug, n = base, 1
        while slug in taken:
            n += 1
            slug = f"{base}-{n}"
        taken.add(slug)
        stage.slug = slug


def read_routes(stages: list[AbstraStage], by_id: dict[str, AbstraStage], unmapped: list[str]) -> None:
    """Fill each stage's routes from its transitions, as Abstra keeps them (its drops listed in `unmapped`)."""
    seen_ids: set[str] = set()
    count = 0
    for stage in stages:
        transitions = stage.entry.get("transitions", [])
        if not isinstance(transitions, list):
            raise AbstraImportError(f"{stage.where}.transitions: must be a list")
        targets: set[str] = set()
        for i, t in enumerate(transitions):
            where = f"{stage.where}.transitions[{i}]"
            count += 1
            if count > MAX_TRANSITIONS:
                raise AbstraImportError(f"{PROJECT_FILE}: more than {MAX_TRANSITIONS} transitions")
            if not isinstance(t, dict) or "type" not in t or not all(isinstance(t.get(k), str) for k in KEYED):
                raise AbstraImportError(f"{where}: must be an object with a string 'id' and 'target_id', and 'type'")
            target = by_id.get(t["target_id"])
            if target is None:
                raise AbstraImportError(f"{where}: target_id {t['target_id'][:60]!r} names no stage of the project")
            unmapped += [f"{where}.{k}: unknown key; not imported" for k in t if k not in TRANSITION_KEYS]
            if t["id"] in seen_ids or t["target_id"] in targets:
                unmapped.append(f"{where}: repeats a transition id or target of this stage; Abstra drops it too")
                continue
            seen_ids.add(t["id"])
            targets.add(t["target_id"])
            if target.key not in KINDS:
                unmapped.append(f"{where}: leads to {target.where}, a {target.key[:-1]} stage; not imported")
                continue
            task_type = t.get("task_type")
            stage.routes.append((task_type if isinstance(task_type, str) and task_type.strip() else "", target))


def read_stages(data: dict[str, Any], project_dir: Path, unmapped: list[str]) -> list[AbstraStage]:
    """The stages of the kinds imported, with their files, slugs and routes (Abstra's own drops applied)."""
    stages, by_id = project_stages(data, unmapped)
    for stage in stages:
        stage.file = stage_file(project_dir, stage)
    assign_slugs(stages)
    read_routes(stages, by_id, unmapped)
    return stages
