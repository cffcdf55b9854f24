"""Priority (issue 15): where a task's priority comes from, and that claims and My work serve it first.

Runs on SQLite and, under scripts/with_postgres.py, on PostgreSQL (the claim's SQL differs).
"""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from tasks_app.limits import MAX_PRIORITY, MIN_PRIORITY
from tasks_app.models import Stage, Task
from tasks_app.selectors import work as work_selectors
from tasks_app.services import (
    task_claim,
    task_complete,
    task_create,
    task_duplicate,
    task_send,
    tasks_create_bulk,
)
from tasks_app.services.claim import task_claim_rows
from tasks_app.services.handlers import HandlerTask
from tasks_app.services.routing import NewTask, Send
from tasks_app.services.workflow import workflow_dump, workflow_problems
from tasks_app.worker import Worker
from tests.support.pages import form_fields


def handler_task(stage: Stage) -> HandlerTask:
    return HandlerTask(
        id=1, type="t", payload={}, stage=stage.slug, attempts=1, created_at=timezone.now(), parent_id=None,
        _stage=stage,
    )  # fmt: skip


# -- where the priority comes from --------------------------------------------------------------


def test_a_created_task_takes_its_stages_default_unless_given_one(world: dict[str, Stage]) -> None:
    ship = world["ship"]
    ship.default_priority = 5
    ship.save()
    assert task_create(stage=ship, type="order", payload={}).priority == 5
    assert task_create(stage=ship, type="order", payload={}, priority=-3).priority == -3
    assert task_create(stage=world["notify"], type="order", payload={}).priority == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (9, 9),
        (9.0, 9),  # an integral JSON number
        (5000, MAX_PRIORITY),  # clamped
        (-5000, MIN_PRIORITY),
        ("9", 2),  # not an integer: the stage's default
        (9.5, 2),
        (True, 2),
        (None, 2),
        ([9], 2),
    ],
)
def test_a_stage_reads_the_priority_from_the_payload_field_it_names(
    world: dict[str, Stage], value: object, expected: int
) -> None:
    ship = world["ship"]
    ship.default_priority, ship.priority_from = 2, "urgency"
    ship.save()
    assert task_create(stage=ship, type="order", payload={"urgency": value}).priority == expected
    assert task_create(stage=ship, type="order", payload={}).priority == 2  # field missing
    assert task_create(stage=ship, type="order", payload={"urgency": 7}, priority=1).priority == 1  # given wins


def test_bulk_create_gives_each_task_its_own_or_its_stages_priority(world: dict[str, Stage]) -> None:
    ship = world["ship"]
    ship.default_priority = 4
    ship.save()
    a, b, c = tasks_create_bulk(
        items=[(ship, "order", {}), NewTask(ship, "order", {}, priority=9), NewTask(world["audit"], "order", {})]
    )
    assert [Task.objects.get(pk=t.pk).priority for t in (a, b, c)] == [4, 9, 0]


def test_a_send_without_a_sending_task_takes_each_target_stages_priority(world: dict[str, Stage]) -> None:
    # The API's stage send, a hook, a job: no task sent it, so each target stage decides.
    Stage.objects.filter(slug="ship").update(default_priority=8)
    Stage.objects.filter(slug="audit").update(priority_from="p")
    sent = task_send(stage=world["review"], type="approved", payload={"p": -2})
    assert {t.stage.slug: Task.objects.get(pk=t.pk).priority for t in sent} == {"ship": 8, "audit": -2}
    sent = task_send(stage=world["review"], type="approved", payload={}, priority=3)
    assert {Task.objects.get(pk=t.pk).priority for t in sent} == {3}


def test_successors_inherit_the_senders_priority_unless_the_send_gives_one(world: dict[str, Stage]) -> None:
    Stage.objects.filter(slug__in=["ship", "audit"]).update(default_priority=-9)  # not used for sent tasks
    task_create(stage=world["review"], type="order", payload={"amount": 1}, priority=6)
    [claimed] = task_claim(stage=world["review"], worker_id="w")
    kids = task_complete(
        task_id=claimed.pk,
        lock_token=claimed.lock_token,
        send=[("approved", {}), Send("declined", {}, priority=-4)],
    )
    assert sorted((k.stage.slug, Task.objects.get(pk=k.pk).priority) for k in kids) == [
        ("audit", 6),
        ("notify", -4),
        ("ship", 6),
    ]
    # task_send with a parent: the same rule.
    parent = Task.objects.get(pk=claimed.pk)
    [one, two] = task_send(stage=world["review"], type="approved", payload={}, parent=parent)
    assert {Task.objects.get(pk=one.pk).priority, Task.objects.get(pk=two.pk).priority} == {6}


def test_a_handlers_sends_inherit_or_override_through_the_worker(world: dict[str, Stage]) -> None:
    review = world["review"]
    inherit = task_create(stage=review, type="order", payload={"amount": 1}, priority=7)
    Worker(stage_slugs=["review"], worker_id="w-p").run(once=True)
    assert sorted(Task.objects.filter(parent=inherit).values_list("stage__slug", "priority")) == [
        ("audit", 7),
        ("ship", 7),
    ]
    Stage.objects.filter(pk=review.pk).update(handler="tests.handlers.send_with_options")
    override = task_create(stage=review, type="order", payload={"priority": -1}, priority=7)
    Worker(stage_slugs=["review"], worker_id="w-p").run(once=True)
    assert set(Task.objects.filter(parent=override).values_list("priority", flat=True)) == {-1}


@pytest.mark.parametrize("bad", [MAX_PRIORITY + 1, MIN_PRIORITY - 1, 1.5, "3", True])
def test_a_handlers_send_refuses_a_bad_priority_at_once(review: Stage, bad: object) -> None:
    task = handler_task(review)
    with pytest.raises(ValueError, match="priority must be"):
        task.send("approved", {}, priority=bad)  # type: ignore[arg-type]
    assert task.sent == []


# -- the claim's order ----------------------------------------------------------------------------


def make_mixed(stage: Stage) -> list[Task]:
    return [
        task_create(stage=stage, type="order", payload={"n": n}, priority=p)
        for n, p in enumerate([0, 5, -1, 5, 0, 10, -1])
    ]


def expected_order(tasks: list[Task]) -> list[int]:
    return [t.pk for t in sorted(tasks, key=lambda t: (-t.priority, t.pk))]


def test_the_claim_serves_priority_then_id(world: dict[str, Stage]) -> None:
    tasks = make_mixed(world["ship"])
    order = expected_order(tasks)
    got = [t.pk for t in task_claim(stage=world["ship"], worker_id="a", limit=3)]
    assert got == order[:3]  # the batch comes back in that order too
    got += [t.pk for t in task_claim(stage=world["ship"], worker_id="b", limit=1)]
    got += [t.pk for t in task_claim(stage=world["ship"], worker_id="c", limit=10)]
    assert got == order


def test_the_workers_light_claim_serves_the_same_order(world: dict[str, Stage]) -> None:
    tasks = make_mixed(world["ship"])
    rows = task_claim_rows(stage=world["ship"], worker_id="a", limit=10)
    assert [r.id for r in rows] == expected_order(tasks)
    assert [r.priority for r in rows] == sorted((t.priority for t in tasks), reverse=True)


def test_a_high_priority_task_not_yet_due_waits(world: dict[str, Stage]) -> None:
    now = timezone.now()
    ship = world["ship"]
    later = task_create(
        stage=ship, type="order", payload={}, priority=9, available_at=now + timedelta(hours=1), now=now
    )
    low = task_create(stage=ship, type="order", payload={}, priority=0, now=now)
    assert [t.pk for t in task_claim(stage=world["ship"], worker_id="a", limit=5, now=now)] == [low.pk]
    # Two hours on: it is due, and first (low's lock has expired too, but its priority is lower).
    assert [t.pk for t in task_claim(stage=ship, worker_id="a", limit=1, now=now + timedelta(hours=2))] == [later.pk]


# -- My work -------------------------------------------------------------------------------------


def test_my_work_orders_by_priority_then_age_across_pages(world: dict[str, Stage], monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(work_selectors, "PAGE_SIZE", 3)
    tasks = make_mixed(world["ship"])
    queue = work_selectors.work_queue([world["ship"]])
    seen: list[int] = []
    page = work_selectors.work_page(queue)
    seen += [t.pk for t in page.tasks]
    while page.next_cursor:
        page = work_selectors.work_page(queue, after=page.next_cursor)
        seen += [t.pk for t in page.tasks]
    assert seen == expected_order(tasks)
    # Back from the last page (its cursor holds a negative priority).
    back = work_selectors.work_page(queue, before=page.previous_cursor or "")
    assert [t.pk for t in back.tasks] == expected_order(tasks)[3:6]


def test_the_my_work_page_lists_waiting_tasks_by_priority_then_age_across_pages(
    world: dict[str, Stage], admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(work_selectors, "PAGE_SIZE", 3)
    form = Stage.objects.create(slug="desk", name="Desk", kind=Stage.Kind.FORM)
    tasks = make_mixed(form)
    seen: list[int] = []
    url: str | None = "/work/"
    while url:
        html = admin_client.get(url).content.decode()
        seen += [int(pk) for pk in re.findall(r'<tr id="waiting-(\d+)"', html)]
        found = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = "/work/" + unescape(found.group(1)) if found else None
    assert seen == expected_order(tasks)


# -- the workflow file, the admin, the API's stage fields ------------------------------------------


def test_the_workflow_file_round_trips_the_priority_fields(world: dict[str, Stage], tmp_path: Path) -> None:
    Stage.objects.filter(slug="review").update(default_priority=-7, priority_from="urgency")
    dumped = workflow_dump()
    entry = next(s for s in dumped["stages"] if s["slug"] == "review")
    assert (entry["default_priority"], entry["priority_from"]) == (-7, "urgency")
    assert list(entry).index("default_priority") == list(entry).index("on_timeout") + 1  # the fixed key order

    entry["default_priority"], entry["priority_from"] = 40, "rank"
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(dumped))
    call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=io.StringIO())
    review = Stage.objects.get(slug="review")
    assert (review.default_priority, review.priority_from) == (40, "rank")
    assert workflow_dump() == dumped
    # Left out of a file: the model defaults.
    del entry["default_priority"], entry["priority_from"]
    path.write_text(json.dumps(dumped))
    call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=io.StringIO())
    review.refresh_from_db()
    assert (review.default_priority, review.priority_from) == (0, "")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"default_priority": 1001}, "default_priority: Ensure this value is less than or equal to 1000."),
        ({"default_priority": -1001}, "default_priority: Ensure this value is greater than or equal to -1000."),
        ({"default_priority": "high"}, "default_priority must be a whole number, not a string"),
        ({"default_priority": 1.5}, "default_priority must be a whole number"),
        ({"priority_from": 3}, "priority_from must be a payload field name (a string)"),
        ({"priority_from": "x" * 101}, "priority_from: Ensure this value has at most 100 characters"),
    ],
)
def test_the_workflow_file_refuses_bad_priority_fields(db: None, fields: dict[str, Any], message: str) -> None:
    entry = {"slug": "s", "name": "S", "handler": "tests.handlers.noop", **fields}
    problems = workflow_problems({"version": 1, "stages": [entry], "transitions": []})
    assert any(message in p for p in problems), problems


def test_the_api_reads_and_writes_a_stages_priority_fields(world: dict[str, Stage], admin: APIClient) -> None:
    response = admin.patch("/api/stages/ship/", {"default_priority": 5, "priority_from": "urgency"}, format="json")
    assert response.status_code == 200, response.data
    assert (response.data["default_priority"], response.data["priority_from"]) == (5, "urgency")
    response = admin.patch("/api/stages/ship/", {"default_priority": 1001}, format="json")
    assert response.status_code == 400 and "default_priority" in response.data
    assert Stage.objects.get(slug="ship").default_priority == 5


def test_the_admin_edits_a_stages_priority_and_shows_and_sets_a_tasks(
    world: dict[str, Stage], admin_client: Client
) -> None:
    url = f"/admin/tasks_app/stage/{world['ship'].pk}/change/"
    data = form_fields(admin_client, url, form_id="stage_form")
    assert data["default_priority"] == "0" and data["priority_from"] == ""
    data.update(default_priority="3", priority_from="urgency", _save="Save")
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    ship = Stage.objects.get(slug="ship")
    assert (ship.default_priority, ship.priority_from) == (3, "urgency")

    add = "/admin/tasks_app/task/add/"
    data = form_fields(admin_client, add)
    data.update(stage=str(ship.pk), type="order", payload='{"urgency": 8}', _save="Save")
    assert admin_client.post(add, data).status_code == 302  # priority left blank: the stage's (from the payload)
    data.update(priority="-4")
    assert admin_client.post(add, data).status_code == 302
    assert list(Task.objects.order_by("id").values_list("priority", flat=True)) == [8, -4]
    # Shown (read-only) on a task's page: it is set when the task is created.
    page = admin_client.get(f"/admin/tasks_app/task/{Task.objects.order_by('id').last().pk}/change/")
    assert "priority" not in page.context["adminform"].form.fields
    assert '<div class="readonly">-4</div>' in page.content.decode()


def test_a_duplicate_keeps_its_originals_priority(world: dict[str, Stage]) -> None:
    original = task_create(stage=world["ship"], type="order", payload={}, priority=-8)
    assert task_duplicate(task_id=original.pk, actor="test").priority == -8


def test_the_task_page_and_the_list_show_a_tasks_priority(world: dict[str, Stage], admin_client: Client) -> None:
    urgent = task_create(stage=world["review"], type="order", payload={"n": 1}, priority=7)
    plain = task_create(stage=world["review"], type="order", payload={"n": 2})

    page = admin_client.get(f"/tasks/{urgent.pk}/").content.decode()
    assert '<dd class="task-priority">7 ' in page
    assert '<dd class="task-priority">0 ' in admin_client.get(f"/tasks/{plain.pk}/").content.decode()

    listing = admin_client.get("/tasks/").content.decode()
    row = listing[listing.index(f'<tr id="task-{urgent.pk}">') :]
    assert ">priority 7</span>" in row[: row.index("</tr>")]
    row = listing[listing.index(f'<tr id="task-{plain.pk}">') :]
    assert "priority" not in row[: row.index("</tr>")]  # the default says nothing


def test_the_openapi_schema_documents_priority_with_its_bounds() -> None:
    document = SchemaGenerator().get_schema(request=None, public=True)
    schemas = document["components"]["schemas"]
    for name in ("TaskCreate", "SendItem"):  # create, bulk create; stage send, complete's and bulk complete's sends
        priority = schemas[name]["properties"]["priority"]
        assert (priority["type"], priority["minimum"], priority["maximum"]) == ("integer", MIN_PRIORITY, MAX_PRIORITY)
        assert "priority" not in schemas[name].get("required", [])
    assert schemas["BulkCompleteItem"]["properties"]["send"]["items"] == {"$ref": "#/components/schemas/SendItem"}
    assert schemas["Task"]["properties"]["priority"]["readOnly"] is True
    stage = schemas["Stage"]["properties"]
    assert (stage["default_priority"]["minimum"], stage["default_priority"]["maximum"]) == (MIN_PRIORITY, MAX_PRIORITY)
    assert stage["priority_from"]["type"] == "string"
