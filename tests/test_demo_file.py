"""The demo workflow is a workflow file (tasks_app/workflows/demo.json), loaded by the workflow loader.

What load_demo creates is exactly the file: a dump after it equals the file
(modulo the order of stages and transitions, and of keys inside schemas, which
PostgreSQL's jsonb does not keep), and the file on its own passes
`load_workflow --dry-run`, so it is also a working example of the format.
"""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tasks_app.demo import STAGES, WORKFLOW_FILE
from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services.workflow import STAGE_FIELDS, TRANSITION_FIELDS


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def shipped() -> dict[str, Any]:
    return json.loads(WORKFLOW_FILE.read_text(encoding="utf-8"))


def unordered(workflow: dict[str, Any]) -> dict[str, Any]:
    """The workflow with stages sorted by slug and transitions by route, as the dump orders them."""
    return {
        **workflow,
        "stages": sorted(workflow["stages"], key=lambda s: s["slug"]),
        "transitions": sorted(workflow["transitions"], key=lambda t: (t["source"], t["type"], t["target"])),
    }


def counts() -> tuple[int, int, int, int]:
    return Stage.objects.count(), Transition.objects.count(), Task.objects.count(), TaskEvent.objects.count()


def test_the_shipped_file_passes_a_dry_run_on_an_empty_database(db: None) -> None:
    out = run("load_workflow", "--dry-run", str(WORKFLOW_FILE))

    lines = out.splitlines()
    assert lines[0] == f"stages: {len(STAGES)} created, 0 updated, 0 unchanged; 0 not in the file left untouched"
    assert lines[1] == f"transitions: {len(shipped()['transitions'])} created, 0 deleted"
    assert "  + group reviewers" in lines and lines[-1] == "dry run: nothing was changed."
    assert counts() == (0, 0, 0, 0)


def test_a_dump_after_load_demo_is_the_shipped_file(db: None) -> None:
    run("load_demo")

    assert unordered(json.loads(run("dump_workflow"))) == unordered(shipped())


def test_the_shipped_file_is_written_as_dump_workflow_writes(db: None) -> None:
    # Every field, in the dump's order: the demo shows the whole format, and a dump diffs against it cleanly.
    data = shipped()
    assert list(data) == ["version", "stages", "transitions"]
    assert all(list(stage) == list(STAGE_FIELDS) for stage in data["stages"])
    assert all(list(transition) == list(TRANSITION_FIELDS) for transition in data["transitions"])
    text = WORKFLOW_FILE.read_text(encoding="utf-8")
    assert text == json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def test_after_load_demo_loading_the_file_changes_nothing(db: None) -> None:
    run("load_demo")
    secret = Stage.objects.get(slug="orders").hook_secret

    out = run("load_workflow", str(WORKFLOW_FILE))

    assert out.splitlines()[:2] == [
        f"stages: 0 created, 0 updated, {len(STAGES)} unchanged; 0 not in the file left untouched",
        "transitions: 0 created, 0 deleted",
    ]
    # The curl load_demo printed still works: the hook keeps its secret.
    assert Stage.objects.get(slug="orders").hook_secret == secret


def test_load_demo_resets_the_demo_stages_to_the_file_as_load_workflow_does(db: None) -> None:
    run("load_demo", "--no-orders")
    Stage.objects.filter(slug="invoice").update(is_paused=True, lock_timeout=7, description="edited")
    Stage.objects.get(slug="review").groups.clear()
    invoice, digest = Stage.objects.get(slug="invoice"), Stage.objects.get(slug="send-digest")
    Transition.objects.create(source=invoice, target=digest, task_type="extra")
    # A stage of one's own, and its transitions, are left alone.
    mine = Stage.objects.create(slug="mine", name="Mine", handler="tasks_app.demo.send_digest")
    Transition.objects.create(source=mine, target=invoice, task_type="")

    run("load_demo", "--no-orders")

    demo = {s["slug"] for s in STAGES}
    dumped = json.loads(run("dump_workflow"))
    assert unordered({**dumped, "stages": [s for s in dumped["stages"] if s["slug"] in demo]}) == unordered(
        {**shipped(), "transitions": [*shipped()["transitions"], {"source": "mine", "target": "invoice", "type": ""}]}
    )
    assert Stage.objects.filter(slug="mine").exists()


def test_load_demo_refuses_in_one_line_and_writes_nothing_when_its_handlers_may_not_run(
    db: None, settings: Any
) -> None:
    settings.TASKS_HANDLER_MODULES = ["tests"]
    with pytest.raises(CommandError, match=r"^the demo's handlers \(tasks_app\.demo\) are not in") as info:
        run("load_demo")
    assert "\n" not in str(info.value)
    assert counts() == (0, 0, 0, 0)
