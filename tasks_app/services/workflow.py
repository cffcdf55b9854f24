"""Workflows as code: the stages and transitions as a JSON file, dumped and loaded.

The file (version 1) is written to be kept in git and reviewed as a diff, so
the dump sorts stages by slug and transitions by (source, type, target),
writes every field in the fixed order of STAGE_FIELDS, indents by 2 and ends
with a newline. Schemas keep their stored key order, because a form stage
shows its fields in the order of a schema's properties.

    {"version": 1,
     "stages": [{"slug", "name", "kind", "handler", "description", "lock_timeout",
                 "max_attempts", "max_run_time", "max_concurrency", "rate_limit", "max_wait",
                 "on_timeout", "default_priority",
                 "priority_from", "dedupe_on", "notify", "notify_digest", "assignee_from", "assignee_only",
                 "remind_after", "remind_max", "due_after", "on_overdue", "is_paused", "schedule",
                 "join_rule", "join_key", "join_count", "join_timeout", "join_type",
                 "groups": [group names], "schemas": {type or "*": JSON Schema}}],
     "transitions": [{"source", "target", "type"}]}   # type "" routes every type

Hook secrets are never written: a file in git must not carry credentials.

Loading (`workflow_load`) is all or nothing:

1. `workflow_problems` checks the whole file before anything is written and
   returns every problem, each with its location (`stages[2] (slug 'ship'):
   ...`, `transitions[0]: ...`). Field rules are the Stage and Transition
   models' own validators (`clean_fields`, `Stage.clean`), plus what only the
   file can get wrong: JSON types, unknown or repeated keys, duplicate slugs
   and routes, stages a transition names, handlers that don't import.
2. If there are none, it applies the file in one transaction.

What a load does:

- Stages are matched by slug, then created or updated. The file is the whole
  description of a stage it names: an optional field left out takes the model
  default (deleting a line resets it), and `groups` is the complete list.
  Only stages that differ are saved.
- For every stage in the file, its outgoing transitions become exactly the
  file's: missing ones are deleted, new ones created. A transition may target
  a stage that is only in the database, but its source must be in the file.
- Stages not in the file, and their transitions, are left alone (the summary
  counts them). Nothing but transitions is ever deleted; named groups that
  don't exist are created.
- An existing stage keeps its hook secret; a new hook stage gets one
  generated (`Stage.save`).
- Handlers: script and job stages need one; a hook stage's is optional (a
  transform of the request body); a form stage must have none, since people
  work it and no handler would ever run; nor a join stage (services.join).
  Every handler named must be one the worker may run: a callable defined in
  a module TASKS_HANDLER_MODULES lists.
- Join stages: a join_type, and with a join_timeout the type join_timeout,
  must pass one of the stage's transitions in the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from django.contrib.auth.models import Group
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction
from django.db.models import Prefetch

from tasks_app.limits import MAX_DOCUMENT_DEPTH, NUL, json_depth_exceeds
from tasks_app.models import JOIN_FIELDS, JOIN_TIMEOUT_TYPE, Stage, Transition, json_kind
from tasks_app.services.handlers import HANDLER_ERROR_CODE, stage_handler_problems
from tasks_app.services.waiting import unrouted_send_ons

FORMAT_VERSION = 1
TOP_LEVEL_FIELDS = ("version", "stages", "transitions")
STAGE_FIELDS = (
    "slug",
    "name",
    "kind",
    "handler",
    "description",
    "lock_timeout",
    "max_attempts",
    "max_run_time",
    "max_concurrency",
    "rate_limit",
    "max_wait",
    "on_timeout",
    "default_priority",
    "priority_from",
    "dedupe_on",
    "notify",
    "notify_digest",
    "assignee_from",
    "assignee_only",
    "remind_after",
    "remind_max",
    "due_after",
    "on_overdue",
    "is_paused",
    "schedule",
    "join_rule",
    "join_key",
    "join_count",
    "join_timeout",
    "join_type",
    "groups",
    "schemas",
)
MODEL_FIELDS = tuple(f for f in STAGE_FIELDS if f != "groups")  # set as attributes; groups is the M2M
REQUIRED_STAGE_FIELDS = ("slug", "name")
TRANSITION_FIELDS = ("source", "target", "type")
REQUIRED_TRANSITION_FIELDS = ("source", "target")


def _is_str(v: object) -> bool:
    return isinstance(v, str)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_names(v: object) -> TypeGuard[list[str]]:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# field -> (what it must be, as people read it; the check)
FIELD_TYPES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "slug": ("a string", _is_str),
    "name": ("a string", _is_str),
    "kind": ("a string", _is_str),
    "handler": ("a string", _is_str),
    "description": ("a string", _is_str),
    "lock_timeout": ("a whole number", _is_int),
    "max_attempts": ("a whole number or null", lambda v: v is None or _is_int(v)),
    "max_run_time": ("a whole number or null", lambda v: v is None or _is_int(v)),
    "max_concurrency": ("a whole number or null", lambda v: v is None or _is_int(v)),
    "rate_limit": ('a rate limit (a string like "10/second")', _is_str),
    "max_wait": ("a whole number of seconds or null", lambda v: v is None or _is_int(v)),
    "on_timeout": ("a task type (a string)", _is_str),
    "default_priority": ("a whole number", _is_int),
    "priority_from": ("a payload field name (a string)", _is_str),
    "dedupe_on": ('an array of JSON pointers (strings like "/order_id")', _is_names),
    "notify": ('an object like {"groups": true} (form stages)', lambda v: isinstance(v, dict)),
    "notify_digest": ("a whole number of minutes", _is_int),
    "assignee_from": ('a JSON pointer (a string like "/approver", form stages)', _is_str),
    "assignee_only": ("true or false", lambda v: isinstance(v, bool)),
    "remind_after": ("a whole number of seconds or null (form stages)", lambda v: v is None or _is_int(v)),
    "remind_max": ("a whole number", _is_int),
    "due_after": ("a whole number of seconds or null (form stages)", lambda v: v is None or _is_int(v)),
    "on_overdue": ("a task type (a string)", _is_str),
    "is_paused": ("true or false", lambda v: isinstance(v, bool)),
    "schedule": ("a string", _is_str),
    "join_rule": ('"siblings", "count" or "" (join stages)', _is_str),
    "join_key": ('a JSON pointer (a string like "/order_id")', _is_str),
    "join_count": ("a whole number or null", lambda v: v is None or _is_int(v)),
    "join_timeout": ("a whole number of seconds or null", lambda v: v is None or _is_int(v)),
    "join_type": ("a task type (a string)", _is_str),
    "groups": ("an array of group names", _is_names),
    "schemas": ("an object", lambda v: isinstance(v, dict)),
    "source": ("a stage slug", _is_str),
    "target": ("a stage slug", _is_str),
    "type": ("a string", _is_str),
}
HINTS = {"hook_secret": "secrets are not kept in workflow files; an existing stage keeps its own"}


class WorkflowSyntaxError(ValueError):
    """The file is not JSON at all (one message, with line and column)."""


class WorkflowInvalid(Exception):
    """The file is JSON but cannot be loaded; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


class _JSONObject(dict[str, Any]):
    """A parsed JSON object that remembers keys given twice (json keeps only the last, silently)."""

    repeated: list[str]


def _kind(value: object) -> str:
    return "an object" if isinstance(value, dict) else json_kind(value)


# -- dump ----------------------------------------------------------------------


def workflow_dump() -> dict[str, Any]:
    """Every stage and transition as a version-1 workflow (no hook secrets)."""
    stages = Stage.objects.order_by("slug").prefetch_related(
        Prefetch("groups", queryset=Group.objects.order_by("name"))
    )
    transitions = Transition.objects.select_related("source", "target").order_by(
        "source__slug", "task_type", "target__slug"
    )
    return {
        "version": FORMAT_VERSION,
        "stages": [
            {
                **{f: getattr(s, f) for f in MODEL_FIELDS if f != "schemas"},
                "groups": [g.name for g in s.groups.all()],
                # As stored, not sorted: form fields follow the order of a schema's properties.
                "schemas": s.schemas,
            }
            for s in stages
        ],
        "transitions": [{"source": t.source.slug, "target": t.target.slug, "type": t.task_type} for t in transitions],
    }


def workflow_dumps(data: dict[str, Any]) -> str:
    """The file's text: indent 2, key order as given, one trailing newline."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# -- parse and validate -----------------------------------------------------------


def workflow_parse(text: str) -> Any:
    """Parse a workflow file's text; raise WorkflowSyntaxError if it is not JSON."""

    def pairs(items: list[tuple[str, Any]]) -> _JSONObject:
        obj = _JSONObject()
        obj.repeated = []
        for key, value in items:
            if key in obj:
                obj.repeated.append(key)
            obj[key] = value
        return obj

    too_deep = WorkflowSyntaxError(f"nested deeper than {MAX_DOCUMENT_DEPTH} levels")
    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise WorkflowSyntaxError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise too_deep from None
    # The checks walk the document recursively (_repeated_keys, schema validation).
    if json_depth_exceeds(data, MAX_DOCUMENT_DEPTH):
        raise too_deep
    return data


def _shown(text: str) -> str:
    return text.replace(NUL, "\\x00")


def _nul_problems(data: Any) -> list[str]:
    """Where strings or keys contain U+0000: PostgreSQL can store none, nor even be asked about one."""
    problems, stack = [], [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str) and NUL in value:
            problems.append(f"{where or 'top level'}: contains the NUL character (U+0000), which is not allowed")
        elif isinstance(value, dict | list):
            items = list(value.items() if isinstance(value, dict) else enumerate(value))
            for key, item in reversed(items):  # reversed onto the stack: reported in file order
                if isinstance(key, str) and NUL in key:
                    problems.append(f"{where or 'top level'}: key '{_shown(key)}' contains the NUL character (U+0000)")
                label = f"[{key}]" if isinstance(key, int) else f"{'.' if where else ''}{_shown(key)}"
                stack.append((item, where + label))
    return problems


def _repeated_keys(value: Any, where: str) -> Iterable[str]:
    """Keys given twice in one object, anywhere inside `value` (`schemas.order: key 'type' ...`)."""
    if isinstance(value, dict):
        for key in getattr(value, "repeated", ()):
            yield f"{where + ': ' if where else ''}key '{key}' is given more than once (only the last would count)"
        for key, item in value.items():
            yield from _repeated_keys(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _repeated_keys(item, f"{where}[{i}]")


def _shape_problems(entry: dict[str, Any], allowed: tuple[str, ...], required: tuple[str, ...]) -> list[str]:
    """Missing, unknown and wrongly typed keys of one object."""
    problems = [f"missing required field '{f}'" for f in required if f not in entry]
    for key, value in entry.items():
        if key not in allowed:
            hint = HINTS.get(key, "expected " + ", ".join(allowed))
            problems.append(f"unknown field '{key}' ({hint})")
        elif not FIELD_TYPES[key][1](value):
            found = "an array with other things in it" if isinstance(value, list) else _kind(value)
            problems.append(f"{key} must be {FIELD_TYPES[key][0]}, not {found}")
    return problems


def _well_typed(entry: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k in allowed and FIELD_TYPES[k][1](v)}


def _field_lines(errors: dict[str, list[str]]) -> list[str]:
    """ValidationError.message_dict as lines, in the file's field order."""
    order = {f: i for i, f in enumerate(STAGE_FIELDS)}
    return [
        msg if name == NON_FIELD_ERRORS else f"{name}: {msg}"
        for name in sorted(errors, key=lambda n: order.get(n, -1))
        for msg in errors[name]
    ]


def _stage_field_problems(entry: dict[str, Any]) -> list[str]:
    """The Stage model's own validation (field validators, then Stage.clean) of the usable fields."""
    ok = _well_typed(entry, STAGE_FIELDS)
    # Missing or wrongly typed fields are reported already; validating them again would only repeat it.
    unusable = {f for f in MODEL_FIELDS if f in entry and f not in ok} | {
        f for f in REQUIRED_STAGE_FIELDS if f not in entry
    }
    stage = Stage(**{k: v for k, v in ok.items() if k != "groups"})
    errors: dict[str, list[str]] = {}
    try:
        stage.clean_fields(exclude=[*unusable, "hook_secret", "created_at", "updated_at"])
    except ValidationError as exc:
        for name, field_errors in exc.error_dict.items():
            # _handler_problems reports the handler's allow-list check, knowing the stage's kind.
            kept = [e for e in field_errors if not (name == "handler" and e.code == HANDLER_ERROR_CODE)]
            if kept:
                errors[name] = ValidationError(kept).messages
    # Stage.clean relates kind and schedule, and on_timeout and max_wait: only meaningful when all are.
    related = {"kind", "schedule", "max_wait", "on_timeout", "handler", "notify", *JOIN_FIELDS}
    related |= {"assignee_from"}  # Stage._clean_people: form stages only (assign, issue 16)
    related |= {"remind_after", "due_after", "on_overdue"}  # Stage._clean_people: form stages only
    if not related & (unusable | errors.keys()):
        try:
            stage.clean()
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                errors.setdefault(name, []).extend(messages)
    return _field_lines(errors)


def _handler_problems(entry: dict[str, Any]) -> list[str]:
    """Whether the stage's kind wants a handler, and whether the one named may run (services.handlers)."""
    kind, handler = entry.get("kind", Stage.Kind.SCRIPT), entry.get("handler", "")
    if kind not in Stage.Kind.values or not isinstance(handler, str):
        return []  # already reported as a field problem
    if kind == Stage.Kind.JOIN:
        return []  # Stage.clean says that a join stage runs none
    return stage_handler_problems(kind, handler)


def _group_problems(entry: dict[str, Any]) -> list[str]:
    names = entry.get("groups")
    if not _is_names(names):
        return []
    problems: list[str] = []
    seen: set[str] = set()
    for name in names:
        if name in seen:
            problems.append(f"groups: '{name}' is listed twice")
        seen.add(name)
        try:
            Group(name=name).clean_fields()
        except ValidationError as exc:
            problems += [f"groups: '{name}': {m}" for m in exc.messages]
    return problems


def _stage_problems(index: int, entry: object) -> list[str]:
    where = f"stages[{index}]"
    if not isinstance(entry, dict):
        return [f"{where}: must be an object, not {_kind(entry)}"]
    if isinstance(entry.get("slug"), str):
        where += f" (slug '{entry['slug']}')"
    problems = [
        *_repeated_keys(entry, ""),
        *_shape_problems(entry, STAGE_FIELDS, REQUIRED_STAGE_FIELDS),
        *_stage_field_problems(entry),
        *_handler_problems(entry),
        *_group_problems(entry),
    ]
    return [f"{where}: {p}" for p in problems]


def _route(entry: dict[str, Any]) -> tuple[str, str, str]:
    return entry["source"], entry["target"], entry.get("type", "")


def _route_label(route: tuple[str, str, str]) -> str:
    source, target, type = route
    return f"{source} -[{type or '*'}]-> {target}"  # as Transition.__str__


def _transition_problems(index: int, entry: object, in_file: set[str] | None, in_db: set[str]) -> list[str]:
    """One transition's problems; `in_file` is None when the stages list is unusable (don't guess then)."""
    where = f"transitions[{index}]"
    if not isinstance(entry, dict):
        return [f"{where}: must be an object, not {_kind(entry)}"]
    problems = [*_repeated_keys(entry, ""), *_shape_problems(entry, TRANSITION_FIELDS, REQUIRED_TRANSITION_FIELDS)]
    ok = _well_typed(entry, TRANSITION_FIELDS)
    source, target, type = ok.get("source"), ok.get("target"), ok.get("type")
    if in_file is not None and source is not None and source not in in_file:
        problems.append(
            f"source stage '{source}' is not in this file; a file sets the transitions of its own stages only"
            if source in in_db
            else f"unknown source stage '{source}'"
        )
    if in_file is not None and target is not None and target not in in_file | in_db:
        problems.append(f"unknown target stage '{target}'")
    if type is not None:
        try:
            Transition(task_type=type).clean_fields(exclude=["source", "target"])
        except ValidationError as exc:
            problems += [f"type: {m}" for m in exc.messages]
        if type != type.strip():
            problems.append(f"type '{type}' has spaces around it (types match exactly)")
    return [f"{where}: {p}" for p in problems]


def _top_level_problems(data: dict[str, Any]) -> list[str]:
    problems = [f"top level: key '{k}' is given more than once" for k in getattr(data, "repeated", ())]
    problems += [f"missing top-level field '{f}'" for f in TOP_LEVEL_FIELDS if f not in data]
    problems += [
        f"unknown field '{k}' at the top level (expected {', '.join(TOP_LEVEL_FIELDS)})"
        for k in data
        if k not in TOP_LEVEL_FIELDS
    ]
    version = data.get("version", FORMAT_VERSION)
    if not _is_int(version) or version != FORMAT_VERSION:
        problems.append(f"version {json.dumps(version)} is not supported (this app reads version {FORMAT_VERSION})")
    for key in ("stages", "transitions"):
        if key in data and not isinstance(data[key], list):
            problems.append(f"{key} must be an array, not {_kind(data[key])}")
    return problems


def workflow_problems(data: Any) -> list[str]:
    """Every reason `data` cannot be loaded, each prefixed with where it is; [] if it can."""
    if not isinstance(data, dict):
        return [f"the file must be a JSON object with {', '.join(TOP_LEVEL_FIELDS)}, not {_kind(data)}"]
    if nul := _nul_problems(data):
        return nul  # alone: the other checks would query the database with these strings
    problems = _top_level_problems(data)
    stages, transitions = data.get("stages"), data.get("transitions", [])
    in_file: set[str] | None = None
    if isinstance(stages, list):
        first: dict[str, int] = {}
        for i, entry in enumerate(stages):
            problems += _stage_problems(i, entry)
            slug = entry.get("slug") if isinstance(entry, dict) else None
            if isinstance(slug, str) and slug in first:
                problems.append(f"stages[{i}] (slug '{slug}'): duplicate slug, also used by stages[{first[slug]}]")
            elif isinstance(slug, str):
                first[slug] = i
        in_file = set(first)
    if isinstance(transitions, list):
        mentioned = {e.get(k) for e in transitions if isinstance(e, dict) for k in ("source", "target")}
        named = {s for s in mentioned if isinstance(s, str)} - (in_file or set())
        in_db = set(Stage.objects.filter(slug__in=named).values_list("slug", flat=True))
        seen: dict[tuple[str, str, str], int] = {}
        for i, entry in enumerate(transitions):
            problems += _transition_problems(i, entry, in_file, in_db)
            if isinstance(entry, dict) and _is_str(entry.get("source")) and _is_str(entry.get("target")):
                route = _route(entry)
                if route in seen:
                    problems.append(
                        f"transitions[{i}]: same route as transitions[{seen[route]}] ({_route_label(route)})"
                    )
                seen.setdefault(route, i)
        if isinstance(stages, list):
            problems += _timeout_route_problems(stages, transitions)
            problems += _join_route_problems(stages, transitions)
    return problems


def _timeout_route_problems(stages: list[Any], transitions: list[Any]) -> list[str]:
    """A stage's on_timeout and on_overdue types must pass one of its transitions in the file (else no overdue
    task could go on)."""
    routes = [_route(e) for e in transitions if isinstance(e, dict) and _is_str(e.get("source")) and "target" in e]
    problems = []
    for i, entry in enumerate(stages):
        if not isinstance(entry, dict) or not _is_str(entry.get("slug")):
            continue
        slug = entry["slug"]
        types = [t for source, _, t in routes if source == slug and isinstance(t, str)]
        for name, type in unrouted_send_ons(entry, types):
            problems.append(
                f"stages[{i}] (slug '{slug}'): {name} '{type}' has no route: no transition out of '{slug}' "
                "passes that type"
            )
    return problems


def _join_route_problems(stages: list[Any], transitions: list[Any]) -> list[str]:
    """A join stage's join_type, and with a join_timeout the join_timeout type, must pass one of its transitions."""
    routes = [_route(e) for e in transitions if isinstance(e, dict) and _is_str(e.get("source")) and "target" in e]
    problems = []
    for i, entry in enumerate(stages):
        if not isinstance(entry, dict) or entry.get("kind") != Stage.Kind.JOIN or not _is_str(entry.get("slug")):
            continue
        slug = entry["slug"]
        types = [entry["join_type"]] if _is_str(entry.get("join_type")) and entry["join_type"] else []
        if _is_int(entry.get("join_timeout")):
            types.append(JOIN_TIMEOUT_TYPE)
        for type in types:
            if not any(source == slug and t in ("", type) for source, _, t in routes):
                problems.append(
                    f"stages[{i}] (slug '{slug}'): the join sends '{type}' but no transition out of '{slug}' "
                    "passes that type"
                )
    return problems


# -- load ----------------------------------------------------------------------


@dataclass
class WorkflowSummary:
    """What a load changed (or, in a dry run, would change)."""

    dry_run: bool = False
    stages_created: list[str] = field(default_factory=list)
    stages_updated: dict[str, list[str]] = field(default_factory=dict)  # slug -> fields that changed
    stages_unchanged: list[str] = field(default_factory=list)
    stages_untouched: int = 0  # in the database, not in the file
    transitions_created: list[str] = field(default_factory=list)
    transitions_deleted: list[str] = field(default_factory=list)
    groups_created: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A summary line per kind of object, then one line per change (+ created, ~ updated, - deleted)."""
        return [
            f"stages: {len(self.stages_created)} created, {len(self.stages_updated)} updated, "
            f"{len(self.stages_unchanged)} unchanged; {self.stages_untouched} not in the file left untouched",
            f"transitions: {len(self.transitions_created)} created, {len(self.transitions_deleted)} deleted",
            *([f"groups: {len(self.groups_created)} created"] if self.groups_created else []),
            *[f"  + stage {slug}" for slug in self.stages_created],
            *[f"  ~ stage {slug}: {', '.join(fields)}" for slug, fields in self.stages_updated.items()],
            *[f"  + transition {label}" for label in self.transitions_created],
            *[f"  - transition {label}" for label in self.transitions_deleted],
            *[f"  + group {name}" for name in self.groups_created],
            *(["dry run: nothing was changed."] if self.dry_run else []),
        ]


def _stage_values(entry: dict[str, Any], defaults: Stage) -> dict[str, Any]:
    """The model fields the entry sets, defaults filled in for those it leaves out."""
    return {f: entry[f] if f in entry else getattr(defaults, f) for f in MODEL_FIELDS}


def _groups_by_name(entries: list[dict[str, Any]], summary: WorkflowSummary) -> dict[str, Group]:
    names = {name for e in entries for name in e.get("groups", [])}
    groups = {g.name: g for g in Group.objects.filter(name__in=names)}
    for name in sorted(names - groups.keys()):
        groups[name] = Group.objects.create(name=name)
        summary.groups_created.append(name)
    return groups


def _sync_stage(entry: dict[str, Any], stage: Stage | None, groups: dict[str, Group], summary: WorkflowSummary) -> None:
    """Create or update one stage; save it only if something differs."""
    values = _stage_values(entry, Stage())
    names = sorted(set(entry.get("groups", [])))
    if stage is None:
        stage = Stage(**values)
        stage.save()  # generates a new hook stage's secret
        stage.groups.set([groups[n] for n in names])
        summary.stages_created.append(stage.slug)
        return
    changed = [f for f, v in values.items() if getattr(stage, f) != v]
    if sorted(g.name for g in stage.groups.all()) != names:
        changed.append("groups")
        stage.groups.set([groups[n] for n in names])
    if not changed:
        summary.stages_unchanged.append(stage.slug)
        return
    for name, value in values.items():
        setattr(stage, name, value)
    stage.save()  # keeps hook_secret; a stage turned into a hook stage gets one
    summary.stages_updated[stage.slug] = changed


def _sync_transitions(entries: list[dict[str, Any]], slugs: list[str], summary: WorkflowSummary) -> None:
    """Make the outgoing transitions of the file's stages exactly the file's."""
    want = {_route(e) for e in entries}
    have = {
        (t.source.slug, t.target.slug, t.task_type): t.pk
        for t in Transition.objects.filter(source__slug__in=slugs).select_related("source", "target")
    }
    gone, new = sorted(have.keys() - want), sorted(want - have.keys())
    Transition.objects.filter(pk__in=[have[r] for r in gone]).delete()
    ids = dict(Stage.objects.filter(slug__in={s for r in new for s in r[:2]}).values_list("slug", "pk"))
    Transition.objects.bulk_create(
        [Transition(source_id=ids[s], target_id=ids[t], task_type=type) for s, t, type in new]
    )
    summary.transitions_deleted = [_route_label(r) for r in gone]
    summary.transitions_created = [_route_label(r) for r in new]


def workflow_load(data: Any, *, dry_run: bool = False) -> WorkflowSummary:
    """Validate `data` (raising WorkflowInvalid with every problem) and apply it in one transaction.

    A dry run applies it the same way and rolls back, so its summary is exactly what a real load would do.
    """
    problems = workflow_problems(data)
    if problems:
        raise WorkflowInvalid(problems)
    entries = sorted(data["stages"], key=lambda e: e["slug"])
    slugs = [e["slug"] for e in entries]
    summary = WorkflowSummary(dry_run=dry_run)
    with transaction.atomic():
        # Lock the rows being updated, in slug order: an admin edit or a second load waits for this one.
        locked = Stage.objects.select_for_update().filter(slug__in=slugs).order_by("slug")
        existing = {s.slug: s for s in locked.prefetch_related("groups")}
        summary.stages_untouched = Stage.objects.exclude(slug__in=slugs).count()
        groups = _groups_by_name(entries, summary)
        for entry in entries:
            _sync_stage(entry, existing.get(entry["slug"]), groups, summary)
        _sync_transitions(data["transitions"], slugs, summary)
        if dry_run:
            transaction.set_rollback(True)
    return summary
