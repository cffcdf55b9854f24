"""Importing an Abstra project (issue 17): `manage.py import_abstra PROJECT_DIR [--output FILE]`.

The fixture tests/fixtures/abstra_project is shaped as abstra 3.32 writes
abstra.json (version 18.0): a hook, two scripts, a form and a job with a
schedule; typed and untyped transitions; task schemas on the receiving
stages, one a flat schema. The other projects are written per test by
`project()` below. The flow test runs the fixture's own script files through
the imported transitions (the worker, a person on the form, the scheduler).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.schema_rules import WILDCARD, payload_errors
from tasks_app.services.abstra_import import import_abstra
from tasks_app.services.abstra_project import MAX_PROJECT_BYTES, MAX_STAGES
from tasks_app.services.abstra_schemas import REFUSE
from tasks_app.services.form_stages import form_task_open, form_task_submit
from tasks_app.services.schemas import validate_created, validate_sent
from tests.support.processes import manage
from tests.support.users import make_user

FIXTURE = Path(settings.BASE_DIR) / "tests" / "fixtures" / "abstra_project"
FIXTURE_DIR = "tests/fixtures/abstra_project"  # relative to BASE_DIR, as the handlers name it
ID = {
    "hook": "ec85040e-13df-41e8-b861-80b26cffa578",
    "check": "4eb3475e-49f8-4e50-a500-6db080e4aa9a",
    "form": "663eeed1-fca0-4127-bb11-f873bf90a2b0",
    "invoice": "1fa2a29a-acce-4af9-bc84-0931bced6a37",
    "digest": "6e7edfe0-f141-475a-96a4-232eb4a786c4",
}
ORDER_ID = {"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "integer"}}}


def run(*args: str, **options: Any) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def write_import(tmp_path: Path, project_dir: Path = FIXTURE, *args: str) -> tuple[str, Path]:
    """Run import_abstra with --output into tmp_path; the report and the file's path."""
    output = tmp_path / "workflow.json"
    report = run("import_abstra", str(project_dir), "--output", str(output), *args)
    return report, output


def stage_of(workflow: dict[str, Any], slug: str) -> dict[str, Any]:
    return next(s for s in workflow["stages"] if s["slug"] == slug)


# -- small projects, written per test ----------------------------------------------------------------------


def transition(target: str, task_type: str | None = None, id: str | None = None) -> dict[str, Any]:
    """A transition as Abstra writes it: task_type absent when blank."""
    t = {"id": id or f"t-{target}-{task_type}", "target_id": target, "target_type": "scripts", "type": "task"}
    return {**t, **({"task_type": task_type} if task_type is not None else {})}


def script(id: str, file: str, *transitions: dict[str, Any], task_schema: Any = None) -> dict[str, Any]:
    stage = {
        "id": id,
        "file": file,
        "title": id.title(),
        "workflow_position": [0, 0],
        "transitions": list(transitions),
        "input": False,
        "output": False,
        "is_initial": True,
    }
    return {**stage, **({"task_schema": task_schema} if task_schema is not None else {})}


def project(tmp_path: Path, *, name: str = "proj", files: bool = True, **lists: Any) -> Path:
    """An abstra.json with these stage lists (scripts=[...], ...) and an empty .py file per script and job."""
    root = tmp_path / name
    root.mkdir()
    data = {
        "version": "18.0",
        "workspace": {},
        "home": {"access_control": {"is_public": False, "required_roles": []}},
        "jobs": [],
        "hooks": [],
        "forms": [],
        "pages": [],
        "scripts": [],
        "components": [],
        **lists,
    }
    (root / "abstra.json").write_text(json.dumps(data, indent=2))
    for stage in [*data["scripts"], *data["jobs"]]:
        if files and isinstance(stage.get("file"), str) and ".." not in stage["file"]:
            path = root / stage["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("from abstra.tasks import get_trigger_task\n")
    return root


# -- the fixture's import ------------------------------------------------------------------------------------


def test_every_stage_kind_is_imported_with_its_handler(db: None) -> None:
    workflow = import_abstra(FIXTURE).workflow

    kinds = {s["slug"]: (s["kind"], s["handler"], s["schedule"]) for s in workflow["stages"]}
    assert kinds == {
        "new-order": ("hook", "", ""),
        "check-stock": ("script", f"{FIXTURE_DIR}/check_stock.py", ""),
        "review-order": ("form", "", ""),
        "invoice": ("script", f"{FIXTURE_DIR}/invoice.py", ""),
        "daily-digest": ("job", f"{FIXTURE_DIR}/daily_digest.py", "0 2 * * *"),
    }
    check = stage_of(workflow, "check-stock")
    # Named from the file, never from the UUID, which the description keeps for the way back.
    assert check["name"] == "Check stock" and ID["check"] in check["description"]
    assert all(ID["check"] not in s["slug"] for s in workflow["stages"])
    assert [s["slug"] for s in workflow["stages"]] == sorted(kinds)  # the dump's order


def test_transitions_keep_their_types_and_a_blank_one_is_a_wildcard(db: None) -> None:
    transitions = import_abstra(FIXTURE).workflow["transitions"]

    assert transitions == [
        {"source": "check-stock", "target": "review-order", "type": ""},  # no task_type in abstra.json
        {"source": "invoice", "target": "daily-digest", "type": ""},
        {"source": "new-order", "target": "check-stock", "type": "order"},
        {"source": "review-order", "target": "invoice", "type": "approved"},
        {"source": "review-order", "target": "daily-digest", "type": "declined"},
    ]


def test_task_schemas_move_from_the_receiving_stage_to_every_sender(db: None) -> None:
    abstra = json.loads((FIXTURE / "abstra.json").read_text())
    check_schema = abstra["scripts"][0]["task_schema"]
    form_schema = abstra["forms"][0]["task_schema"]
    invoice_schema = abstra["scripts"][1]["task_schema"]  # flat: Abstra applies it to every type
    digest_default = abstra["jobs"][0]["task_schema"]["default"]

    workflow = import_abstra(FIXTURE).workflow

    assert stage_of(workflow, "new-order")["schemas"] == {"order": check_schema["order"]}
    # check-stock routes every type into the form, which names two: any other type it refused.
    assert stage_of(workflow, "check-stock")["schemas"] == {
        WILDCARD: REFUSE,
        "in_stock": form_schema["in_stock"],
        "out_of_stock": form_schema["out_of_stock"],
    }
    assert stage_of(workflow, "review-order")["schemas"] == {"approved": invoice_schema, "declined": digest_default}
    assert stage_of(workflow, "invoice")["schemas"] == {WILDCARD: digest_default}
    assert stage_of(workflow, "daily-digest")["schemas"] == {}


def test_what_cannot_be_mapped_is_listed_with_its_location(db: None) -> None:
    unmapped = import_abstra(FIXTURE).unmapped

    assert [u.split(":")[0] for u in unmapped] == [
        "workspace",
        "forms[0].path",
        "forms[0].notification_trigger",
        "forms[0].access_control",
        "hooks[0].path",
    ]
    assert any('"required_roles": ["reviewers"]' in u for u in unmapped)


def test_each_form_and_hook_gets_a_note_and_the_report_says_where_scripts_must_be_allowed(db: None) -> None:
    report = run("import_abstra", str(FIXTURE))

    form = next(line for line in report.splitlines() if line.startswith("  forms[0] -> form 'review-order'"))
    assert "review_order.py" in form and "can't run here" in form and "(approved, declined)" in form
    hook = next(line for line in report.splitlines() if line.startswith("  hooks[0] -> hook 'new-order'"))
    assert "not run (no handler)" in hook and "POST /hooks/new-order/" in hook
    assert f"list {FIXTURE_DIR} in TASKS_SCRIPT_DIRS" in report
    assert "Not imported (5):" in report and "  forms[0].access_control: " in report


def test_without_output_nothing_is_written(db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = project(tmp_path, scripts=[script("a", "a.py")])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)

    report = run("import_abstra", str(copy))

    assert report.rstrip().endswith("Nothing was written: pass --output FILE to write the workflow file.")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert Stage.objects.count() == 0  # and nothing is loaded either


def test_the_written_file_loads_and_dumps_back_equal(db: None, tmp_path: Path, settings: Any) -> None:
    settings.TASKS_SCRIPT_DIRS = [FIXTURE_DIR]
    report, output = write_import(tmp_path)
    assert "load_workflow accepts the file as it is." in report

    run("load_workflow", str(output))

    # Compared as data: PostgreSQL's jsonb keeps no key order inside the schemas (see test_demo_file.py).
    assert json.loads(run("dump_workflow")) == json.loads(output.read_text())
    assert Stage.objects.count() == 5 and Transition.objects.count() == 5


def test_the_check_says_what_load_workflow_would_refuse(db: None, settings: Any) -> None:
    settings.TASKS_SCRIPT_DIRS = []

    problems = import_abstra(FIXTURE).problems

    assert len(problems) == 3 and all("TASKS_SCRIPT_DIRS" in p for p in problems)


def test_the_imported_stages_refuse_what_abstra_refused(db: None, tmp_path: Path, settings: Any) -> None:
    settings.TASKS_SCRIPT_DIRS = [FIXTURE_DIR]
    run("load_workflow", str(write_import(tmp_path)[1]))
    check, review = Stage.objects.get(slug="check-stock"), Stage.objects.get(slug="review-order")

    validate_sent(check, "in_stock", {"order_id": 1})
    with pytest.raises(ValidationError):
        validate_sent(check, "in_stock", {"order_id": "one"})
    with pytest.raises(ValidationError):  # the form's task_schema names no such type: Abstra refused the send
        validate_sent(check, "backorder", {"order_id": 1})
    with pytest.raises(ValidationError):  # created directly at the form: as if check-stock had sent it
        validate_created(review, "out_of_stock", {"order_id": 1})
    hook = Stage.objects.get(slug="new-order")
    refused = APIClient().post(
        "/hooks/new-order/?type=order",
        {"order_id": 1, "items": [{"sku": "lamp", "qty": 0}]},
        format="json",
        headers={"X-Hook-Token": hook.hook_secret},
    )
    assert refused.status_code == 400 and Task.objects.count() == 0


# -- the flow: tasks take the paths they took in Abstra --------------------------------------------------------


def test_orders_flow_through_the_imported_workflow_running_the_projects_scripts(
    db: None, tmp_path: Path, settings: Any
) -> None:
    """Hook -> check-stock (check_stock.py) -> review-order (a person) -> invoice (invoice.py) -> daily-digest
    (daily_digest.py, run now), and an out-of-stock order declined straight to the digest."""
    settings.TASKS_SCRIPT_DIRS = [FIXTURE_DIR]
    run("load_workflow", str(write_import(tmp_path)[1]))
    secret = Stage.objects.get(slug="new-order").hook_secret
    for order in (
        {"order_id": 1, "items": [{"sku": "lamp", "qty": 2}]},
        {"order_id": 2, "items": [{"sku": "desk", "qty": 1}]},
    ):
        response = APIClient().post(
            "/hooks/new-order/?type=order", order, format="json", headers={"X-Hook-Token": secret}
        )
        assert response.status_code == 202, response.content

    run("run_worker", once=True, no_scheduler=True)

    at_review = {t.payload["order_id"]: t for t in Task.objects.filter(stage__slug="review-order")}
    assert {i: (t.type, t.payload) for i, t in at_review.items()} == {
        1: ("in_stock", {"order_id": 1}),
        2: ("out_of_stock", {"order_id": 2, "missing": ["desk"]}),
    }
    checked = Task.objects.filter(stage__slug="check-stock")
    assert set(checked.values_list("status", flat=True)) == {Task.Status.COMPLETED}
    printed = TaskEvent.objects.filter(task__in=checked, kind="completed").values_list("details", flat=True)
    assert any("order 1: in stock" in json.dumps(d) for d in printed)  # print() output is in the history

    alice = make_user("alice", superuser=True)
    for order_id, type, fields in ((1, "approved", {"note": "rush"}), (2, "declined", {})):
        task = form_task_open(task=at_review[order_id], user=alice)
        form_task_submit(task_id=task.pk, user=alice, type=type, fields=fields)
    run("run_worker", once=True, no_scheduler=True)

    invoiced = Task.objects.get(stage__slug="daily-digest", type="invoiced")
    assert invoiced.payload == {"order_id": 1, "note": "rush"}
    assert Task.objects.get(stage__slug="daily-digest", type="declined").payload["order_id"] == 2

    run("run_scheduler", run_now="daily-digest")

    digest = Task.objects.filter(stage__slug="daily-digest")
    assert set(digest.values_list("status", flat=True)) == {Task.Status.COMPLETED}
    # get_tasks(where={"note": "rush"}) served the invoiced order first, then get_tasks() the declined one.
    output = json.dumps(TaskEvent.objects.get(task=invoiced, kind="completed").details)
    assert "rush order 1" in output and "declined order 2" in output
    assert not Task.objects.exclude(status=Task.Status.COMPLETED).exists()


# -- the schema move, in detail --------------------------------------------------------------------------------


def test_one_type_sent_into_two_receivers_must_match_both_schemas(db: None, tmp_path: Path) -> None:
    needs_a = {
        "type": "object",
        "required": ["a"],
        "$defs": {"n": {"type": "integer"}},
        "properties": {"a": {"$ref": "#/$defs/n"}},
    }
    needs_b = {"type": "object", "required": ["b"]}
    root = project(
        tmp_path,
        scripts=[
            script("src", "src.py", transition("one", "go"), transition("two")),
            script("one", "one.py", task_schema={"go": needs_a}),
            script("two", "two.py", task_schema=needs_b),
        ],
    )

    schemas = stage_of(import_abstra(root).workflow, "src")["schemas"]

    combined = schemas["go"]
    assert combined["allOf"][0]["properties"]["a"] == {"$ref": "#/allOf/0/$defs/n"}  # still points at its $defs
    assert payload_errors(combined, {"a": 1, "b": 2}) == []
    assert payload_errors(combined, {"a": 1}) and payload_errors(combined, {"b": 2})
    assert payload_errors(combined, {"a": "x", "b": 2})  # the moved $ref still checks
    # Other types reach "two" only (the wildcard), whose flat schema covers them all.
    assert schemas[WILDCARD] == needs_b


def test_a_receiver_without_the_type_or_a_default_refuses_it_and_true_accepts(db: None, tmp_path: Path) -> None:
    root = project(
        tmp_path,
        scripts=[
            script("src", "src.py", transition("named"), transition("open", "x")),
            script("named", "named.py", task_schema={"known": ORDER_ID, "free": True}),
            script("open", "open.py"),
        ],
    )

    schemas = stage_of(import_abstra(root).workflow, "src")["schemas"]

    # "x" reaches "named" too (the wildcard), which names no "x": refused, as "*" says already.
    assert schemas == {WILDCARD: REFUSE, "free": {}, "known": ORDER_ID}


def test_abstras_own_drops_are_followed_and_listed(db: None, tmp_path: Path) -> None:
    root = project(
        tmp_path,
        scripts=[
            script("a", "a.py", transition("b", "x", id="t1"), transition("b", "y", id="t2")),
            script("b", "b.py", transition("a", id="t1")),
            script("a", "again.py"),
        ],
    )

    result = import_abstra(root)

    # Abstra keeps the first transition between two stages, the first use of an id, the first of two stages.
    assert result.workflow["transitions"] == [{"source": "a", "target": "b", "type": "x"}]
    assert [u.split(":")[0] for u in result.unmapped[-3:]] == [
        "scripts[2]",
        "scripts[0].transitions[1]",
        "scripts[1].transitions[0]",
    ]


def test_slugs_are_unique_deterministic_and_fall_back_to_the_title(db: None, tmp_path: Path) -> None:
    hook = {**script("h1", "Hooks/__.py"), "title": "Order Intake!", "path": "intake"}
    root = project(
        tmp_path,
        scripts=[script("s1", "a/do_it.py"), script("s2", "b/do_it.py"), script("s3", "do-it.py")],
        hooks=[hook],
    )

    first = [s["slug"] for s in import_abstra(root).workflow["stages"]]

    assert first == ["do-it", "do-it-2", "do-it-3", "order-intake"]
    assert [s["slug"] for s in import_abstra(root).workflow["stages"]] == first


def test_scripts_prefix_and_a_project_outside_the_app(db: None, tmp_path: Path) -> None:
    root = project(tmp_path, scripts=[script("s", "jobs/run.py")])

    assert stage_of(import_abstra(root).workflow, "run")["handler"] == f"{root.resolve()}/jobs/run.py"
    named = import_abstra(root, scripts_prefix="abstra/orders/")
    assert stage_of(named.workflow, "run")["handler"] == "abstra/orders/jobs/run.py"


def test_schemas_that_cant_be_combined_refuse_the_type_and_are_listed(db: None, tmp_path: Path) -> None:
    anchored = {"$id": "https://example.com/a", "type": "object"}
    root = project(
        tmp_path,
        scripts=[
            script("src", "src.py", transition("one"), transition("two")),
            script("one", "one.py", task_schema={"go": anchored}),
            script("two", "two.py", task_schema={"go": ORDER_ID}),
        ],
    )

    result = import_abstra(root)

    assert stage_of(result.workflow, "src")["schemas"] == {WILDCARD: REFUSE}  # "go" refused like every type
    assert any(u.startswith("scripts[0]: the schemas of one, two for type 'go'") for u in result.unmapped)


def test_the_projects_files_are_never_run_and_refs_never_fetched(db: None, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    remote = {"go": {"$ref": "http://127.0.0.1:9/schema.json"}}
    root = project(
        tmp_path, scripts=[script("src", "src.py", transition("dst")), script("dst", "dst.py", task_schema=remote)]
    )
    for name in ("src.py", "dst.py", "abstra_hooks.py"):
        (root / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")

    result = import_abstra(root)

    assert not marker.exists()
    assert any("are never fetched" in p for p in result.problems)  # load_workflow would refuse it, unfetched


def test_a_schedule_outside_utc_comes_paused_and_listed(db: None, tmp_path: Path, settings: Any) -> None:
    job = {**script("j", "nightly.py"), "schedule": "0 2 * * *"}
    root = project(tmp_path, jobs=[job])
    assert stage_of(import_abstra(root).workflow, "nightly")["is_paused"] is False

    settings.TIME_ZONE = "Europe/Berlin"
    result = import_abstra(root)

    entry = stage_of(result.workflow, "nightly")
    assert entry["schedule"] == "0 2 * * *" and entry["is_paused"] is True
    assert any(u.startswith("jobs[0].schedule: '0 2 * * *' is UTC in Abstra") for u in result.unmapped)


def test_unknown_keys_pages_and_a_transition_to_a_page_are_listed(db: None, tmp_path: Path) -> None:
    page = {**script("p", "page.py"), "path": "p"}
    root = project(tmp_path, scripts=[{**script("s", "s.py", transition("p")), "retries": 3}], pages=[page])

    result = import_abstra(root)

    assert [u.split(":")[0] for u in result.unmapped] == ["pages[0]", "scripts[0].transitions[0]", "scripts[0].retries"]
    assert result.workflow["transitions"] == []


# -- bad input: one line, non-zero exit, nothing written ----------------------------------------------------


def bad_projects(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (project dir, what the one-line error says)."""
    invalid = project(tmp_path, name="invalid")
    (invalid / "abstra.json").write_text('{"version": "18.0", "scripts": [}')
    no_file = tmp_path / "no_file"
    no_file.mkdir()
    deep = project(tmp_path, name="deep")
    (deep / "abstra.json").write_text('{"version": "18.0", "x": ' + "[" * 600 + "]" * 600 + "}")
    big = project(tmp_path, name="big")
    (big / "abstra.json").write_text(json.dumps({"version": "18.0", "pad": "x" * MAX_PROJECT_BYTES}))
    outside = tmp_path / "secret.py"
    outside.write_text("")
    linked = project(tmp_path, name="linked", files=False, scripts=[script("s", "link.py")])
    (linked / "link.py").symlink_to(outside)
    many = [script(f"s{i}", "s.py") for i in range(MAX_STAGES + 1)]
    return {
        "missing dir": (tmp_path / "nope", "not a directory"),
        "no abstra.json": (no_file, "no abstra.json"),
        "invalid JSON": (invalid, "not valid JSON"),
        "unknown version": (project(tmp_path, name="v17", version="17.0"), 'version "17.0" is not supported'),
        "dangling target": (
            project(tmp_path, name="dangling", scripts=[script("s", "s.py", transition("gone"))]),
            "scripts[0].transitions[0]: target_id 'gone' names no stage",
        ),
        "dotdot path": (
            project(tmp_path, name="dotdot", scripts=[script("s", "../secret.py")]),
            'scripts[0].file: "../secret.py" is not a relative path inside the project',
        ),
        "absolute path": (
            project(tmp_path, name="absolute", scripts=[script("s", str(outside))]),
            "is not a relative path inside the project",
        ),
        "symlink out": (linked, "scripts[0].file: link.py leads outside the project"),
        "missing script": (
            project(tmp_path, name="nofile", files=False, scripts=[script("s", "s.py")]),
            "scripts[0].file: s.py is not a .py file of the project",
        ),
        "not python": (project(tmp_path, name="txt", scripts=[script("s", "s.txt")]), "is not a .py file"),
        "too deep": (deep, "nested deeper than 500 levels"),
        "too large": (big, f"larger than {MAX_PROJECT_BYTES} bytes"),
        "too many stages": (project(tmp_path, name="many", scripts=many), f"more than {MAX_STAGES} stages"),
    }


BAD = [
    "missing dir",
    "no abstra.json",
    "invalid JSON",
    "unknown version",
    "dangling target",
    "dotdot path",
    "absolute path",
    "symlink out",
    "missing script",
    "not python",
    "too deep",
    "too large",
    "too many stages",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_nothing_is_written(db: None, tmp_path: Path, case: str) -> None:
    root, says = bad_projects(tmp_path)[case]
    output = tmp_path / "out.json"

    with pytest.raises(CommandError) as error:
        run("import_abstra", str(root), "--output", str(output))

    message = str(error.value)
    assert says in message and "\n" not in message and message.endswith("; nothing was written.")
    assert not output.exists()


def test_the_command_exits_non_zero_with_one_line_on_stderr(db: None, tmp_path: Path) -> None:
    root = project(tmp_path, scripts=[script("s", "s.py", transition("gone"))])

    result = manage("import_abstra", str(root), "--output", str(tmp_path / "out.json"))

    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "names no stage" in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_an_output_that_cant_be_written_is_one_line(db: None, tmp_path: Path) -> None:
    output = tmp_path / "no-such-dir" / "workflow.json"

    with pytest.raises(CommandError) as error:
        run("import_abstra", str(FIXTURE), "--output", str(output))

    assert "cannot write it" in str(error.value) and "\n" not in str(error.value)
    assert not output.parent.exists()
