"""Workflows as code: dump_workflow and load_workflow (tasks_app.services.workflow).

Most tests run the commands in-process with call_command; one runs
`manage.py load_workflow` for real to check the exit status and what a person
sees on stderr.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError

from tasks_app.models import Stage, Transition
from tasks_app.services.workflow import (
    STAGE_FIELDS,
    WorkflowInvalid,
    workflow_dump,
    workflow_load,
    workflow_problems,
)
from tests.support.processes import manage

ORDER_SCHEMA = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}


def dump() -> str:
    out = io.StringIO()
    call_command("dump_workflow", stdout=out)
    return out.getvalue()


def load(path: Path | str, *args: str) -> str:
    """load_workflow, returning what it wrote to stdout (raises CommandError on failure)."""
    out = io.StringIO()
    call_command("load_workflow", str(path), *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def write(tmp_path: Path, data: Any, name: str = "workflow.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def stage(slug: str, **fields: Any) -> dict[str, Any]:
    """A file's stage entry with only the required fields (and any given)."""
    return {"slug": slug, "name": slug.title(), **fields}


def entry(data: dict[str, Any], slug: str) -> dict[str, Any]:
    """The stage entry with this slug in a dumped file."""
    return next(s for s in data["stages"] if s["slug"] == slug)


def snapshot() -> tuple[Any, ...]:
    """Everything a load may touch, including what the dump leaves out (secrets, timestamps)."""
    return (
        workflow_dump(),
        sorted(Stage.objects.values_list("slug", "hook_secret", "updated_at")),
        sorted(Transition.objects.values_list("id", "source__slug", "target__slug", "task_type")),
        sorted(Group.objects.values_list("name", flat=True)),
    )


@pytest.fixture
def full_world(world: dict[str, Stage]) -> dict[str, Stage]:
    """The conftest world plus every field set somewhere: a job, a form with groups, schemas, limits."""
    digest = Stage.objects.create(
        slug="digest", name="Digest", kind=Stage.Kind.JOB, handler="tests.handlers.noop", schedule="0 2 * * *"
    )
    desk = Stage.objects.create(slug="desk", name="Desk", kind=Stage.Kind.FORM, description="People decide.")
    desk.groups.set([Group.objects.create(name="reviewers"), Group.objects.create(name="leads")])
    Stage.objects.filter(slug="review").update(
        schemas={"approved": ORDER_SCHEMA, "*": {"type": "object"}}, max_attempts=3, max_run_time=60, lock_timeout=90
    )
    Stage.objects.filter(slug="notify").update(is_paused=True)
    Transition.objects.create(source=world["ship"], target=digest, task_type="shipped")
    Transition.objects.create(source=digest, target=desk, task_type="")
    return {**world, "digest": digest, "desk": desk}


# -- dump ------------------------------------------------------------------------


def test_dump_is_sorted_with_fixed_keys_and_no_hook_secret(full_world: dict[str, Stage]) -> None:
    text = dump()
    data = json.loads(text)

    assert text.endswith("}\n") and text.startswith('{\n  "version": 1,\n  "stages": [\n')
    assert list(data) == ["version", "stages", "transitions"]
    assert [s["slug"] for s in data["stages"]] == ["audit", "desk", "digest", "intake", "notify", "review", "ship"]
    assert all(tuple(s) == STAGE_FIELDS for s in data["stages"])
    assert data["transitions"][:2] == [
        {"source": "digest", "target": "desk", "type": ""},
        {"source": "intake", "target": "review", "type": ""},
    ]
    desk = data["stages"][1]
    assert desk["groups"] == ["leads", "reviewers"]  # sorted by name
    # A file in git must not carry credentials.
    assert full_world["intake"].hook_secret and full_world["intake"].hook_secret not in text
    assert "hook_secret" not in text


def test_dump_of_an_empty_database(db: None) -> None:
    assert dump() == '{\n  "version": 1,\n  "stages": [],\n  "transitions": []\n}\n'


# -- load: applying ----------------------------------------------------------------


def test_round_trip_restores_a_wiped_workflow(full_world: dict[str, Stage], tmp_path: Path) -> None:
    before = dump()
    path = write(tmp_path, before)
    Transition.objects.all().delete()
    Stage.objects.all().delete()
    Group.objects.all().delete()

    out = load(path)

    assert dump() == before
    assert "stages: 7 created, 0 updated, 0 unchanged" in out
    assert "transitions: 6 created, 0 deleted" in out
    assert "groups: 2 created" in out


def test_round_trip_undoes_edits(full_world: dict[str, Stage], tmp_path: Path) -> None:
    before = dump()
    path = write(tmp_path, before)
    Stage.objects.filter(slug="review").update(handler="tests.handlers.noop", schemas={}, max_attempts=None)
    Stage.objects.filter(slug="digest").update(schedule="*/5 * * * *")
    full_world["desk"].groups.set([])
    Transition.objects.filter(source__slug="review", task_type="declined").delete()
    Transition.objects.create(source=full_world["ship"], target=full_world["audit"], task_type="extra")

    out = load(path)

    assert dump() == before
    assert "  ~ stage review: handler, max_attempts, schemas" in out
    assert "  ~ stage digest: schedule" in out
    assert "  ~ stage desk: groups" in out
    assert "  + transition review -[declined]-> notify" in out
    assert "  - transition ship -[extra]-> audit" in out


def test_load_creates_a_fresh_workflow_in_an_empty_database(db: None, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "version": 1,
            "stages": [
                stage("in", kind="hook", schemas={"order": ORDER_SCHEMA}),
                stage("check", handler="tests.handlers.approve_small", max_attempts=5),
                stage("nightly", kind="job", handler="tests.handlers.noop", schedule="30 1 * * *"),
                stage("desk", kind="form", groups=["ops"]),
            ],
            "transitions": [
                {"source": "in", "target": "check", "type": "order"},
                {"source": "check", "target": "desk"},
                {"source": "check", "target": "nightly", "type": "approved"},
            ],
        },
    )

    out = load(path)

    assert "stages: 4 created, 0 updated, 0 unchanged; 0 not in the file left untouched" in out
    assert "transitions: 3 created, 0 deleted" in out
    check = Stage.objects.get(slug="check")
    assert (check.kind, check.handler, check.max_attempts, check.name) == (
        "script",
        "tests.handlers.approve_small",
        5,
        "Check",
    )
    assert Stage.objects.get(slug="nightly").schedule == "30 1 * * *"
    assert Stage.objects.get(slug="in").schemas == {"order": ORDER_SCHEMA}
    assert list(Stage.objects.get(slug="desk").groups.values_list("name", flat=True)) == ["ops"]
    assert sorted(map(str, Transition.objects.all())) == [
        "check -[*]-> desk",
        "check -[approved]-> nightly",
        "in -[order]-> check",
    ]
    # A new hook stage gets a secret generated, as one made in the admin does.
    assert len(Stage.objects.get(slug="in").hook_secret) >= 32


def test_omitted_optional_fields_take_the_model_defaults(
    world: dict[str, Stage], tmp_path: Path, settings: Any
) -> None:
    Stage.objects.filter(slug="ship").update(description="old", max_attempts=4, is_paused=True, lock_timeout=7)
    data = json.loads(dump())
    data["stages"] = [stage("ship", handler="tests.handlers.noop")]  # the file says nothing else about ship
    data["transitions"] = []

    load(write(tmp_path, data))

    ship = Stage.objects.get(slug="ship")
    assert (ship.description, ship.max_attempts, ship.is_paused) == ("", None, False)
    assert ship.lock_timeout == settings.TASKS_LOCK_TIMEOUT


def test_update_saves_only_the_stages_that_differ(world: dict[str, Stage], tmp_path: Path) -> None:
    data = json.loads(dump())
    entry(data, "review")["lock_timeout"] = 45
    stamps = dict(Stage.objects.values_list("slug", "updated_at"))

    out = load(write(tmp_path, data))

    assert "stages: 0 created, 1 updated, 4 unchanged" in out
    assert "  ~ stage review: lock_timeout" in out
    assert "transitions: 0 created, 0 deleted" in out
    after = dict(Stage.objects.values_list("slug", "updated_at"))
    assert {s for s in stamps if stamps[s] != after[s]} == {"review"}
    assert Stage.objects.get(slug="review").lock_timeout == 45


def test_transitions_removed_from_the_file_are_deleted(world: dict[str, Stage], tmp_path: Path) -> None:
    data = json.loads(dump())
    data["transitions"] = [t for t in data["transitions"] if t["type"] != "approved"]
    kept_ids = set(Transition.objects.exclude(task_type="approved").values_list("id", flat=True))

    out = load(write(tmp_path, data))

    assert "transitions: 0 created, 2 deleted" in out
    assert "  - transition review -[approved]-> audit" in out
    assert "  - transition review -[approved]-> ship" in out
    # The others are kept as they were, not deleted and recreated.
    assert set(Transition.objects.values_list("id", flat=True)) == kept_ids


def test_stages_not_in_the_file_and_their_transitions_are_left_alone(world: dict[str, Stage], tmp_path: Path) -> None:
    data = json.loads(dump())
    data["stages"] = [s for s in data["stages"] if s["slug"] == "intake"]
    data["transitions"] = [{"source": "intake", "target": "audit", "type": ""}]  # a target only in the database
    review_routes = set(Transition.objects.filter(source__slug="review").values_list("id", flat=True))

    out = load(write(tmp_path, data))

    assert "stages: 0 created, 0 updated, 1 unchanged; 4 not in the file left untouched" in out
    assert "  + transition intake -[*]-> audit" in out
    assert "  - transition intake -[*]-> review" in out
    assert Stage.objects.count() == 5
    assert set(Transition.objects.filter(source__slug="review").values_list("id", flat=True)) == review_routes


def test_hook_secret_is_kept_when_a_hook_stage_is_loaded(world: dict[str, Stage], tmp_path: Path) -> None:
    secret = world["intake"].hook_secret
    data = json.loads(dump())
    entry(data, "intake")["description"] = "changed"

    out = load(write(tmp_path, data))

    assert "  ~ stage intake: description" in out
    intake = Stage.objects.get(slug="intake")
    assert (intake.description, intake.hook_secret) == ("changed", secret)


def test_dry_run_reports_the_changes_and_changes_nothing(full_world: dict[str, Stage], tmp_path: Path) -> None:
    data = json.loads(dump())
    data["stages"].append(stage("new", kind="hook", groups=["brand-new"]))
    entry(data, "audit")["name"] = "Audit log"
    data["transitions"] = data["transitions"][1:] + [{"source": "new", "target": "audit", "type": ""}]
    path = write(tmp_path, data)
    before = snapshot()

    out = load(path, "--dry-run")

    assert snapshot() == before
    assert out.splitlines()[:3] == [
        "stages: 1 created, 1 updated, 6 unchanged; 0 not in the file left untouched",
        "transitions: 1 created, 1 deleted",
        "groups: 1 created",
    ]
    assert "  + stage new" in out and "  ~ stage audit: name" in out and "  + group brand-new" in out
    assert out.endswith("dry run: nothing was changed.\n")
    # The same file without --dry-run does what the dry run said.
    assert load(path).replace("dry run: nothing was changed.\n", "") == out.replace(
        "dry run: nothing was changed.\n", ""
    )


def test_load_reads_standard_input(world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(dump())
    entry(data, "audit")["name"] = "Audit trail"
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(data)))

    out = load("-")

    assert "  ~ stage audit: name" in out
    assert Stage.objects.get(slug="audit").name == "Audit trail"


# -- load: validation -----------------------------------------------------------


def test_a_file_with_many_problems_lists_every_one_and_changes_nothing(
    full_world: dict[str, Stage], tmp_path: Path
) -> None:
    data = json.loads(dump())
    by_slug = {s["slug"]: s for s in data["stages"]}
    # Valid changes too: none of them may be applied while anything is wrong.
    by_slug["audit"]["name"] = "Renamed"
    data["stages"].append(stage("fresh", handler="tests.handlers.noop", groups=["new-group"]))
    by_slug["ship"]["handler"] = "nowhere.at_all"
    by_slug["notify"]["handler"] = "tests.handlers.NOT_THERE"
    by_slug["digest"]["schedule"] = "61 * * * *"
    by_slug["review"]["schedule"] = "0 2 * * *"
    by_slug["review"]["schemas"] = {"approved": {"type": "banana"}}
    by_slug["desk"]["handler"] = "tests.handlers.noop"
    by_slug["desk"]["kind"] = "robot"
    by_slug["intake"]["lock_timeout"] = "soon"
    by_slug["intake"]["hook_secret"] = "s3cret"
    data["stages"].append(stage("Bad Slug!", handler="tests.handlers.noop", max_attempts=0))
    data["stages"].append(stage("audit", handler="tests.handlers.noop"))
    data["stages"].append({"name": "no slug", "handler": "tests.handlers.noop"})
    data["stages"].append(stage("job2", kind="job", handler="tests.handlers.noop"))
    data["transitions"] += [
        {"source": "ship", "target": "nope", "type": ""},
        {"source": "ghost", "target": "ship", "type": ""},
        {"source": "review", "target": "ship", "type": "approved"},
        {"source": "review", "target": "ship", "type": "x" * 101},
        {"source": "review", "target": 7},
    ]
    path = write(tmp_path, data)
    n = len(data["transitions"])
    before = snapshot()

    with pytest.raises(CommandError) as caught:
        load(path)

    assert snapshot() == before
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: {len(lines) - 1} problem(s); nothing was changed."
    i = {s["slug"]: n for n, s in enumerate(data["stages"]) if "slug" in s}
    expected = [
        # Refused before anything is imported: it is outside TASKS_HANDLER_MODULES.
        f"stages[{i['ship']}] (slug 'ship'): handler 'nowhere.at_all' is not in a module that TASKS_HANDLER_MODULES",
        f"stages[{i['notify']}] (slug 'notify'): handler 'tests.handlers.NOT_THERE' cannot be imported: ImportError",
        f"stages[{i['digest']}] (slug 'digest'): schedule: '61 * * * *' is not a 5-field cron expression",
        f"stages[{i['review']}] (slug 'review'): schedule: Only job stages have a schedule.",
        f"stages[{i['review']}] (slug 'review'): schemas: Schema for type 'approved' is not a valid JSON Schema",
        f"stages[{i['desk']}] (slug 'desk'): kind: Value 'robot' is not a valid choice.",
        f"stages[{i['intake']}] (slug 'intake'): lock_timeout must be a whole number, not a string",
        f"stages[{i['intake']}] (slug 'intake'): unknown field 'hook_secret'",
        f"stages[{i['Bad Slug!']}] (slug 'Bad Slug!'): slug: Enter a valid “slug”",
        f"stages[{i['Bad Slug!']}] (slug 'Bad Slug!'): max_attempts: Ensure this value is greater than or equal to 1.",
        f"stages[{i['audit']}] (slug 'audit'): duplicate slug, also used by stages[0]",
        f"stages[{len(data['stages']) - 2}]: missing required field 'slug'",
        f"stages[{i['job2']}] (slug 'job2'): schedule: A job stage needs a schedule.",
        f"transitions[{n - 5}]: unknown target stage 'nope'",
        f"transitions[{n - 4}]: unknown source stage 'ghost'",
        f"transitions[{n - 3}]: same route as transitions[",
        f"transitions[{n - 2}]: type: Ensure this value has at most 100 characters (it has 101).",
        f"transitions[{n - 1}]: target must be a stage slug, not a number",
    ]
    for message in expected:
        assert any(line.startswith("  " + message) for line in lines[1:]), message
    assert len(lines) - 1 == len(expected)  # and nothing else, e.g. no echo of a problem already reported


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (stage("s"), "stages[0] (slug 's'): handler: a script stage needs one"),
        (stage("j", kind="job", schedule="0 * * * *"), "stages[0] (slug 'j'): handler: a job stage needs one"),
        (stage("f", kind="form", handler="tests.handlers.noop"), "handler: form stages are worked by people"),
        (stage("h", kind="hook", handler="tests.handlers.gone"), "handler 'tests.handlers.gone' cannot be imported"),
        (stage("s", handler="tests.support.processes.ROOT"), "handler 'tests.support.processes.ROOT' is not callable"),
        (stage("s", handler="tests.handlers.noop", is_paused="no"), "is_paused must be true or false, not a string"),
        (stage("s", handler="tests.handlers.noop", groups="ops"), "groups must be an array of group names"),
        (stage("s", handler="tests.handlers.noop", groups=["a", "a"]), "groups: 'a' is listed twice"),
        (stage("s", handler="tests.handlers.noop", groups=["a", 1]), "groups must be an array of group names, not"),
        (stage("s", handler="tests.handlers.noop", groups=[""]), "groups: '': This field cannot be blank."),
        (stage("s", handler="tests.handlers.noop", lock_timeout=0), "lock_timeout: Ensure this value is greater"),
        (stage("s", handler="tests.handlers.noop", schemas=[]), "schemas must be an object, not an array"),
        (stage("s", handler="tests.handlers.noop", max_run_time=1.5), "max_run_time must be a whole number or null"),
        ({"slug": "s", "handler": "tests.handlers.noop"}, "stages[0] (slug 's'): missing required field 'name'"),
        ("s", "stages[0]: must be an object, not a string"),
    ],
)
def test_stage_problems(db: None, entry: Any, message: str) -> None:
    problems = workflow_problems({"version": 1, "stages": [entry], "transitions": []})

    assert any(message in p for p in problems), problems


def test_hook_and_form_stages_need_no_handler(db: None) -> None:
    data = {"version": 1, "stages": [stage("h", kind="hook"), stage("f", kind="form")], "transitions": []}

    assert workflow_problems(data) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "the file must be a JSON object with version, stages, transitions, not an array"),
        ({"version": 1, "stages": []}, "missing top-level field 'transitions'"),
        ({"version": 2, "stages": [], "transitions": []}, "version 2 is not supported"),
        ({"version": True, "stages": [], "transitions": []}, "version true is not supported"),
        ({"version": 1, "stages": {}, "transitions": []}, "stages must be an array, not an object"),
        ({"version": 1, "stages": [], "transitions": [], "extra": 1}, "unknown field 'extra' at the top level"),
    ],
)
def test_top_level_problems(db: None, data: Any, message: str) -> None:
    assert any(message in p for p in workflow_problems(data)), workflow_problems(data)


def test_a_transition_may_not_set_routes_of_a_stage_missing_from_the_file(world: dict[str, Stage]) -> None:
    data = {"version": 1, "stages": [], "transitions": [{"source": "review", "target": "ship", "type": "x"}]}

    assert workflow_problems(data) == [
        "transitions[0]: source stage 'review' is not in this file; a file sets the transitions of its own stages only"
    ]


def test_keys_given_twice_are_reported_where_they_are(db: None, tmp_path: Path) -> None:
    text = """{"version": 1, "stages": [
      {"slug": "s", "name": "A", "name": "B", "handler": "tests.handlers.noop",
       "schemas": {"t": {"type": "object", "type": "array"}}}
    ], "transitions": []}"""

    with pytest.raises(CommandError) as caught:
        load(write(tmp_path, text))

    assert str(caught.value).splitlines()[1:] == [
        "  stages[0] (slug 's'): key 'name' is given more than once (only the last would count)",
        "  stages[0] (slug 's'): schemas.t: key 'type' is given more than once (only the last would count)",
    ]


def test_invalid_json_is_one_readable_line(world: dict[str, Stage], tmp_path: Path) -> None:
    path = write(tmp_path, '{"version": 1,\n  "stages": [,]\n}')

    with pytest.raises(CommandError) as caught:
        load(path)

    assert str(caught.value) == f"{path}: not valid JSON: Expecting value at line 2, column 14; nothing was changed."


def test_a_missing_file_is_one_readable_line(db: None, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"nope\.json: cannot read it: No such file or directory$"):
        load(tmp_path / "nope.json")


def test_the_service_refuses_invalid_data_by_itself(world: dict[str, Stage]) -> None:
    before = snapshot()

    with pytest.raises(WorkflowInvalid) as caught:
        workflow_load({"version": 1, "stages": [stage("x")], "transitions": []})

    assert caught.value.problems == [
        "stages[0] (slug 'x'): handler: a script stage needs one (the dotted path of a callable)"
    ]
    assert snapshot() == before


# -- the real command line ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_command_line_exit_status_and_output(world: dict[str, Stage], tmp_path: Path) -> None:
    dumped = manage("dump_workflow")
    assert dumped.returncode == 0 and dumped.stdout == dump()
    good = write(tmp_path, dumped.stdout, "good.json")
    data = json.loads(dumped.stdout)
    data["stages"][0]["handler"] = "tests.no_such_module.run"
    data["transitions"].append({"source": "audit", "target": "nope"})
    bad = write(tmp_path, data, "bad.json")
    before = snapshot()

    failed = manage("load_workflow", str(bad))

    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.splitlines() == [
        f"CommandError: {bad}: 2 problem(s); nothing was changed.",
        "  stages[0] (slug 'audit'): handler 'tests.no_such_module.run' cannot be imported: ModuleNotFoundError: "
        "No module named 'tests.no_such_module'",
        f"  transitions[{len(data['transitions']) - 1}]: unknown target stage 'nope'",
    ]
    assert snapshot() == before

    ok = manage("load_workflow", str(good))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "stages: 0 created, 0 updated, 5 unchanged; 0 not in the file left untouched"
