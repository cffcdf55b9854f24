"""Assign (issue 16): a task's assignee from the payload, by hand (page, API, admin), and what it changes.

intake --approval--> approve (a form stage of the approvers group: ann, bob; carl is in no group) plus the
suite's world (tests.support.world). approve reads its assignee at /approver.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import close_old_connections, transaction
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from tasks_app.models import Notification, Stage, Task, TaskEvent, Transition
from tasks_app.services import (
    TaskStateError,
    task_claim,
    task_complete,
    task_create,
    task_duplicate,
    task_send,
    tasks_create_bulk,
)
from tasks_app.services.assign import assignment_open_to_all, open_refusal, task_assign
from tasks_app.services.cancel import task_cancel
from tasks_app.services.form_stages import form_task_open
from tasks_app.services.notifications import notifications_drain
from tasks_app.services.reminders import tasks_remind
from tasks_app.services.workflow import workflow_dump, workflow_load, workflow_problems
from tests.support.pages import STAGE_URL, TASK_URL, form_fields, page, shown_messages
from tests.support.threads import run_at_once
from tests.support.users import logged_in, make_user, token_client
from tests.support.world import make_world

ASSIGNED = TaskEvent.Kind.ASSIGNED
pytestmark = pytest.mark.django_db(transaction=False)


def people_world(**stage: Any) -> dict[str, Any]:
    """The world, its approve form stage (assignee at /approver unless told), and its people."""
    world: dict[str, Any] = make_world()
    approvers = Group.objects.create(name="approvers")
    approve = Stage.objects.create(
        slug="approve", name="Approve", kind=Stage.Kind.FORM, **{"assignee_from": "/approver", **stage}
    )
    approve.groups.add(approvers)
    Transition.objects.create(source=world["intake"], target=approve, task_type="approval")
    Transition.objects.create(source=approve, target=world["ship"], task_type="approved")
    world["approve"] = approve
    for name in ("ann", "bob"):
        user = make_user(name)
        user.groups.add(approvers)
        world[name] = user
    world["carl"] = make_user("carl")  # in no group: may not work on approve
    world["boss"] = make_user("boss", "view_task", "change_task")  # a task editor, not in the group
    return world


def arrive(world: dict[str, Any], **payload: Any) -> Task:
    sent = task_send(stage=world["intake"], type="approval", payload={"title": "New laptop", **payload})
    [task] = [t for t in sent if t.stage_id == world["approve"].pk]
    return Task.objects.select_related("stage", "assignee").get(pk=task.pk)


def assigned_events(task: Task) -> list[dict[str, Any]]:
    return [e.details | {"actor": e.actor} for e in task.events.filter(kind=ASSIGNED).order_by("id")]


# -- on arrival ---------------------------------------------------------------------------------


def test_an_arrival_is_assigned_from_the_payload_by_username_or_email() -> None:
    world = people_world()
    by_name = arrive(world, approver="ann")
    by_email = arrive(world, approver="BOB@example.COM")  # an address, case-insensitively

    assert by_name.assignee == world["ann"]
    assert by_email.assignee == world["bob"]
    assert assigned_events(by_name) == [{"assignee": "ann", "previous": None, "from": "/approver", "actor": "arrival"}]
    assert list(by_name.events.order_by("id").values_list("kind", flat=True)) == ["assigned", "created"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("nobody", "no such user"),
        ("gone", "the user is inactive"),
        ("twin@example.com", "2 active users have this email address"),
        ("carl", "the user may not work on stage 'approve'"),
        ("https://evil.example/x", "not a username or email address"),
        ("{{ 7*7 }}", "not a username or email address"),
        ("a" * 255, "longer than 254 characters"),
        (42, "not a username or email address (a non-empty string)"),
        (["ann"], "not a username or email address (a non-empty string)"),
        ("", "not a username or email address (a non-empty string)"),
    ],
)
def test_an_untrusted_value_leaves_the_task_unassigned_with_the_reason(value: object, reason: str) -> None:
    world = people_world()
    gone = make_user("gone")
    gone.is_active = False
    gone.save()
    for name in ("twin1", "twin2"):
        twin = make_user(name)
        twin.email = "twin@example.com"
        twin.save()
        twin.groups.add(world["approve"].groups.get())

    task = arrive(world, approver=value)

    assert task.assignee is None
    [event] = assigned_events(task)
    assert event == {
        "assignee": None,
        "previous": None,
        "from": "/approver",
        "reason": reason,
        "actor": "arrival",
    }


def test_a_missing_or_null_field_assigns_nobody_and_says_nothing() -> None:
    world = people_world()
    for task in (arrive(world), arrive(world, approver=None)):
        assert task.assignee is None
        assert assigned_events(task) == []


def test_every_arrival_path_assigns_and_a_rolled_back_arrival_leaves_nothing() -> None:
    world = people_world()
    approve = world["approve"]
    created = task_create(stage=approve, type="approval", payload={"approver": "ann"})
    bulk = tasks_create_bulk(items=[(approve, "approval", {"approver": "bob"}), (approve, "x", {"approver": "ann"})])
    sent = arrive(world, approver="bob")
    # A completion's successors (a worker's, one transaction), and an operator's duplicate (read again).
    task_create(stage=world["intake"], type="approval", payload={})
    [claim] = task_claim(stage=world["intake"], worker_id="w1")
    successors = task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("approval", {"approver": "ann"})])
    [succeeded] = [t for t in successors if t.stage_id == approve.pk]
    copy = task_duplicate(task_id=sent.pk, actor="user:boss")
    assert [Task.objects.get(pk=t.pk).assignee for t in [created, *bulk, sent, succeeded, copy]] == [
        world["ann"],
        world["bob"],
        world["ann"],
        world["bob"],
        world["ann"],
        world["bob"],
    ]
    assert assigned_events(succeeded) == [
        {"assignee": "ann", "previous": None, "from": "/approver", "actor": "arrival"}
    ]
    before = TaskEvent.objects.filter(kind=ASSIGNED).count()
    with pytest.raises(RuntimeError), transaction.atomic():
        arrive(world, approver="ann")
        raise RuntimeError("the arrival rolls back")
    assert TaskEvent.objects.filter(kind=ASSIGNED).count() == before


def test_a_duplicate_arrival_assigns_nothing_more() -> None:
    world = people_world(dedupe_on=["/order"])
    first = arrive(world, approver="ann", order=1)
    again = task_create(stage=world["approve"], type="approval", payload={"approver": "bob", "order": 1})
    assert again.deduplicated and again.pk == first.pk
    assert Task.objects.get(pk=first.pk).assignee == world["ann"]
    assert len(assigned_events(first)) == 1


# -- by hand -------------------------------------------------------------------------------------


def test_task_assign_sets_and_clears_with_events_and_refuses_finished_tasks() -> None:
    world = people_world()
    task = arrive(world)
    task_assign(task_id=task.pk, assignee=world["ann"], actor="user:boss")
    task_assign(task_id=task.pk, assignee=world["bob"], actor="user:boss")
    task_assign(task_id=task.pk, assignee=None, actor="user:boss")
    assert Task.objects.get(pk=task.pk).assignee is None
    assert assigned_events(task) == [
        {"assignee": "ann", "previous": None, "actor": "user:boss"},
        {"assignee": "bob", "previous": "ann", "actor": "user:boss"},
        {"assignee": None, "previous": "bob", "actor": "user:boss"},
    ]

    Task.objects.filter(pk=task.pk).update(status=Task.Status.COMPLETED, completed_at=timezone.now())
    with pytest.raises(TaskStateError, match="completed; only a pending or open task can be assigned"):
        task_assign(task_id=task.pk, assignee=world["ann"], actor="user:boss")
    assert len(assigned_events(task)) == 3


def test_task_assign_refuses_users_who_may_not_work_on_the_stage() -> None:
    world = people_world()
    task = arrive(world)
    world["bob"].is_active = False
    world["bob"].save()
    for user, message in [(world["carl"], "may not work on stage 'approve'"), (world["bob"], "inactive")]:
        with pytest.raises(ValidationError, match=message):
            task_assign(task_id=task.pk, assignee=user, actor="user:boss")
    assert assigned_events(task) == []


def test_assigning_by_hand_queues_a_mail_to_the_new_assignee() -> None:
    world = people_world()
    task = arrive(world)
    task_assign(task_id=task.pk, assignee=world["ann"], actor="user:boss")
    task_assign(task_id=task.pk, assignee=world["bob"], actor="user:bob")  # assigning oneself: no mail
    assert list(Notification.objects.values_list("task_id", "channel", "recipient", "kind")) == [
        (task.pk, "email", "ann@example.com", "arrival")
    ]
    notifications_drain()  # the workers' upkeep delivers it
    assert [m.to for m in mail.outbox] == [["ann@example.com"]]
    assert f"Task #{task.pk} waits for you at Approve" in mail.outbox[0].subject


# -- who may open --------------------------------------------------------------------------------


def test_an_assigned_task_opens_for_its_assignee_and_task_editors_only() -> None:
    world = people_world()
    task = arrive(world, approver="ann")
    now = timezone.now()
    assert not assignment_open_to_all(task, now)
    assert open_refusal(task, world["ann"], now) is None
    assert open_refusal(task, world["boss"], now) is None  # change-task permission
    assert open_refusal(task, world["bob"], now) == (
        f"Task {task.pk} is assigned to ann; only they or a user who may change tasks can open it."
    )
    with pytest.raises(TaskStateError, match="assigned to ann"):
        form_task_open(task=task, user=world["bob"])
    assert Task.objects.get(pk=task.pk).status == Task.Status.PENDING
    opened = form_task_open(task=task, user=world["ann"])
    assert opened.locked_by == "user:ann"


def test_a_task_assigned_to_a_deactivated_user_opens_for_anyone_of_the_stage() -> None:
    world = people_world()
    task = arrive(world, approver="ann")
    world["ann"].is_active = False
    world["ann"].save()
    task = Task.objects.select_related("stage", "assignee").get(pk=task.pk)
    assert open_refusal(task, world["bob"], timezone.now()) is None
    assert form_task_open(task=task, user=world["bob"]).locked_by == "user:bob"


def test_an_overdue_assigned_task_opens_for_anyone_of_the_stage() -> None:
    world = people_world(due_after=3600)
    task = arrive(world, approver="ann")
    due = task.created_at + timedelta(seconds=3600)
    refusal = open_refusal(task, world["bob"], task.created_at)
    assert refusal == f"Task {task.pk} is assigned to ann until it is overdue at {timezone.localtime(due):%H:%M}."
    with pytest.raises(TaskStateError, match="until it is overdue at"):
        form_task_open(task=task, user=world["bob"], now=due - timedelta(seconds=1))

    later = due + timedelta(seconds=1)
    assert assignment_open_to_all(task, later)
    assert form_task_open(task=task, user=world["bob"], now=later).locked_by == "user:bob"


def test_without_assignee_only_anyone_of_the_stage_opens_an_assigned_task() -> None:
    world = people_world(assignee_only=False)
    task = arrive(world, approver="ann")
    assert assignment_open_to_all(task, timezone.now())
    bob = page(logged_in(world["bob"]).get(reverse("tasks_app:my-work")))
    assert "assigned to ann" in bob.text and f"/work/{task.pk}/open/" in bob.post_actions()
    assert form_task_open(task=task, user=world["bob"]).locked_by == "user:bob"


# -- the REST API --------------------------------------------------------------------------------


def test_the_api_assigns_clears_and_refuses_with_field_messages_and_409() -> None:
    world = people_world()
    task = arrive(world)
    boss = token_client(world["boss"])
    url = f"/api/tasks/{task.pk}/assign/"

    ok = boss.post(url, {"assignee": "ann"}, format="json")
    assert ok.status_code == 200 and ok.json()["assignee"] == "ann"
    assert boss.get(f"/api/tasks/{task.pk}/").json()["assignee"] == "ann"
    for name, message in [("nobody", "No user is named 'nobody'."), ("carl", "may not work on stage 'approve'")]:
        bad = boss.post(url, {"assignee": name}, format="json")
        assert bad.status_code == 400 and message in bad.json()["assignee"][0]
    assert boss.post(url, {"assignee": 5 * "x" * 100}, format="json").status_code == 400  # bounded
    cleared = boss.post(url, {"assignee": None}, format="json")
    assert cleared.status_code == 200 and cleared.json()["assignee"] is None

    viewer = token_client(make_user("viewer", "view_task"))
    assert viewer.post(url, {"assignee": "ann"}, format="json").status_code == 403
    Task.objects.filter(pk=task.pk).update(status=Task.Status.CANCELLED, completed_at=timezone.now())
    finished = boss.post(url, {"assignee": "ann"}, format="json")
    assert finished.status_code == 409 and "only a pending or open task can be assigned" in finished.json()["detail"]
    assert [e["assignee"] for e in assigned_events(task)] == ["ann", None]


def test_the_api_create_takes_an_assignee_and_bulk_refuses_one() -> None:
    people_world()
    boss = token_client(make_user("maker", "view_task", "add_task", "change_task"))
    made = boss.post(
        "/api/tasks/", {"stage": "approve", "type": "approval", "payload": {}, "assignee": "bob"}, format="json"
    )
    assert made.status_code == 201 and made.json()["assignee"] == "bob"
    task = Task.objects.get(pk=made.json()["id"])
    assert list(task.events.order_by("id").values_list("kind", flat=True)) == ["created", "assigned"]

    count = Task.objects.count()
    unknown = boss.post(
        "/api/tasks/", {"stage": "approve", "type": "approval", "payload": {}, "assignee": "nobody"}, format="json"
    )
    assert unknown.status_code == 400 and "nobody" in unknown.json()["assignee"][0]
    bulk = boss.post(
        "/api/tasks/bulk/",
        {"tasks": [{"stage": "approve", "type": "approval", "payload": {}, "assignee": "bob"}]},
        format="json",
    )
    assert bulk.status_code == 400 and "only accepted by single creates" in json.dumps(bulk.json())
    assert Task.objects.count() == count


def test_the_task_list_and_the_api_filter_by_assignee() -> None:
    world = people_world()
    ann1, ann2, bob1, nobody = (arrive(world, approver=a) for a in ("ann", "ann", "bob", None))
    boss = token_client(world["boss"])
    expect = {
        "ann": [ann2.pk, ann1.pk],
        "bob": [bob1.pk],
        "none": [nobody.pk],
        "any": [bob1.pk, ann2.pk, ann1.pk],
        "nobody-at-all": [],
    }
    for value, ids in expect.items():
        got = boss.get("/api/tasks/", {"stage": "approve", "assignee": value})
        assert [r["id"] for r in got.json()["results"]] == ids, value

    listed = logged_in(world["boss"]).get(reverse("tasks_app:task-list"), {"assignee": "ann"})
    text = listed.content.decode()
    assert listed.status_code == 200 and text.count("assigned to ann") == 2 and "assigned to bob" not in text
    assert page(listed).submitted("filters")["assignee"] == ["ann"]  # the filter form keeps it
    assert "Remove filter Assignee: ann" in page(listed).text  # its chip
    assert boss.get("/api/tasks/", {"assignee": "a\x00b"}).status_code == 400


def test_the_openapi_schema_has_the_assignee_and_the_assign_verb() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    task = schema["components"]["schemas"]["Task"]["properties"]["assignee"]
    assert task["nullable"] is True and task["readOnly"] is True
    assign = schema["paths"]["/api/tasks/{id}/assign/"]["post"]
    body = assign["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert schema["components"]["schemas"][body]["properties"]["assignee"]["nullable"] is True
    listed = {p["name"] for p in schema["paths"]["/api/tasks/"]["get"]["parameters"]}
    assert "assignee" in listed
    stage = schema["components"]["schemas"]["Stage"]["properties"]
    assert {"assignee_from", "assignee_only"} <= stage.keys()
    create = schema["components"]["schemas"]["TaskCreate"]["properties"]
    assert create["assignee"]["nullable"] is True


# -- the task page and the admin -----------------------------------------------------------------


def test_the_task_page_shows_the_assignee_and_its_form_assigns_for_task_editors() -> None:
    world = people_world()
    task = arrive(world, approver="ann")
    boss = logged_in(world["boss"])
    url = reverse("tasks_app:task-detail", args=[task.pk])
    shown = page(boss.get(url))
    assert "Assigneeann" in shown.text
    assert "to ann, from the payload's /approver" in shown.text  # the history
    choices = shown.submitted("assign-form")
    assert choices["assignee"] == ["ann"]  # the current one selected
    assert 'value="bob"' in boss.get(url).content.decode() and 'value="carl"' not in boss.get(url).content.decode()

    done = boss.post(reverse("tasks_app:task-assign", args=[task.pk]), {"assignee": "bob"}, follow=True)
    assert ("success", f"Task {task.pk} assigned to bob.") in shown_messages(done)
    refused = boss.post(reverse("tasks_app:task-assign", args=[task.pk]), {"assignee": "carl"}, follow=True)
    assert ("warning", "User 'carl' may not work on stage 'approve'.") in shown_messages(refused)
    cleared = boss.post(reverse("tasks_app:task-assign", args=[task.pk]), {"assignee": ""}, follow=True)
    assert ("success", f"Task {task.pk} unassigned.") in shown_messages(cleared)
    assert [e["assignee"] for e in assigned_events(task)] == ["ann", "bob", None]

    reader = logged_in(make_user("reader", "view_task"))
    assert "assign-form" not in reader.get(url).content.decode()
    assert reader.post(reverse("tasks_app:task-assign", args=[task.pk]), {"assignee": "bob"}).status_code == 403
    assert Task.objects.get(pk=task.pk).assignee is None


def test_the_admin_assigns_a_task_and_filters_by_assignee() -> None:
    world = people_world()
    task = arrive(world)
    arrive(world, approver="bob")
    client = logged_in(make_user("root", superuser=True))
    url = f"{TASK_URL}{task.pk}/change/"
    data = form_fields(client, url, form_id="task_form")

    refused = client.post(url, {**data, "assignee": str(world["carl"].pk), "_save": "Save"})
    assert refused.status_code == 200 and "may not work on stage" in refused.content.decode()
    saved = client.post(url, {**data, "assignee": str(world["ann"].pk), "_save": "Save"})
    assert saved.status_code == 302
    assert Task.objects.get(pk=task.pk).assignee == world["ann"]
    assert assigned_events(task) == [{"assignee": "ann", "previous": None, "actor": "user:root"}]

    listed = client.get(TASK_URL, {"assigned": "no", "stage__id__exact": world["approve"].pk})
    assert listed.status_code == 200 and listed.context["cl"].result_count == 0
    listed = client.get(TASK_URL, {"assigned": "yes"})
    assert listed.context["cl"].result_count == 2


# -- My work --------------------------------------------------------------------------------------


def test_my_work_lists_the_tasks_assigned_to_me_first_and_others_as_assigned() -> None:
    world = people_world(due_after=3600)
    older = arrive(world)  # unassigned, older: first in the queue's age order
    mine = arrive(world, approver="ann")
    bobs = arrive(world, approver="bob")

    ann = page(logged_in(world["ann"]).get(reverse("tasks_app:my-work")))
    text = ann.text
    assert (
        text.index("Assigned to me")
        < text.index("Open by you")
        < text.index("Waiting highest priority first, then oldest")
    )
    assert f"/work/{mine.pk}/open/" in ann.post_actions()
    assert f"/work/{older.pk}/open/" in ann.post_actions()
    assert f"/work/{bobs.pk}/open/" not in ann.post_actions()  # bob's, not overdue: no Open
    due = timezone.localtime(bobs.created_at + timedelta(seconds=3600))
    assert f"assigned to bob until it is overdue at {due:%H:%M}" in text
    html = logged_in(world["ann"]).get(reverse("tasks_app:my-work")).content.decode()
    assert html.count(f'id="assigned-{mine.pk}"') == 1 and f'id="waiting-{mine.pk}"' not in html

    client = logged_in(world["ann"])
    refused = client.post(reverse("tasks_app:work-open", args=[bobs.pk]), follow=True)
    assert ("warning", f"Task {bobs.pk} is assigned to bob until it is overdue at {due:%H:%M}.") in shown_messages(
        refused
    )
    assert Task.objects.get(pk=bobs.pk).status == Task.Status.PENDING

    Task.objects.filter(pk=bobs.pk).update(created_at=timezone.now() - timedelta(hours=2))  # now overdue
    assert f"/work/{bobs.pk}/open/" in page(client.get(reverse("tasks_app:my-work"))).post_actions()
    client.post(reverse("tasks_app:work-open", args=[bobs.pk]))
    assert Task.objects.get(pk=bobs.pk).locked_by == "user:ann"


# -- notifications -------------------------------------------------------------------------------


def test_an_assigned_arrival_tells_the_assignee_instead_of_the_groups() -> None:
    world = people_world(notify={"groups": True, "emails_from": "/cc"})
    assigned = arrive(world, approver="ann", cc="watcher@example.com")
    unassigned = arrive(world, approver="carl")  # refused: the groups are told
    rows = sorted(Notification.objects.values_list("task_id", "recipient"))
    assert rows == sorted(
        [
            (assigned.pk, "ann@example.com"),
            (assigned.pk, "watcher@example.com"),  # the payload's addresses still are
            (unassigned.pk, "ann@example.com"),
            (unassigned.pk, "bob@example.com"),
        ]
    )


# -- the stage's fields on every path ------------------------------------------------------------


def test_the_api_sets_the_stage_fields_and_refuses_bad_ones() -> None:
    world = people_world()
    admin = token_client(make_user("root", superuser=True))
    bad = admin.patch("/api/stages/approve/", {"assignee_from": "approver"}, format="json")
    assert bad.status_code == 400 and "starts with '/'" in bad.json()["assignee_from"][0]
    script = admin.patch("/api/stages/ship/", {"assignee_from": "/approver"}, format="json")
    assert script.status_code == 400
    assert script.json()["assignee_from"] == ["Only form stages have this: people work their tasks."]
    ok = admin.patch("/api/stages/approve/", {"assignee_from": "/people/0", "assignee_only": False}, format="json")
    assert ok.status_code == 200 and (ok.json()["assignee_from"], ok.json()["assignee_only"]) == ("/people/0", False)
    assert not Stage.objects.get(pk=world["approve"].pk).assignee_only


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"assignee_from": "approver"}, "assignee_from: A JSON pointer starts with '/'"),
        ({"assignee_from": "/a~2"}, "'~' must be followed by 0 or 1"),
        ({"assignee_from": 5}, "assignee_from must be a JSON pointer"),
        ({"assignee_only": "yes"}, "assignee_only must be true or false"),
        ({"kind": "script", "handler": "tests.handlers.noop", "assignee_from": "/a"}, "Only form stages have this"),
    ],
)
def test_bad_stage_fields_in_a_workflow_file_are_one_line(db: None, fields: dict[str, Any], message: str) -> None:
    data = {"version": 1, "stages": [{"slug": "f", "name": "F", "kind": "form", **fields}], "transitions": []}
    problems = workflow_problems(data)
    assert len(problems) == 1 and message in problems[0] and "\n" not in problems[0], problems


def test_the_stage_fields_survive_a_dump_and_load_round_trip_and_show_on_the_stage_page() -> None:
    world = people_world(assignee_only=False)
    dumped = workflow_dump()
    entry = next(s for s in dumped["stages"] if s["slug"] == "approve")
    assert (entry["assignee_from"], entry["assignee_only"]) == ("/approver", False)
    Stage.objects.filter(pk=world["approve"].pk).update(assignee_from="", assignee_only=True)
    workflow_load(dumped)
    approve = Stage.objects.get(slug="approve")
    assert (approve.assignee_from, approve.assignee_only) == ("/approver", False)
    assert workflow_dump() == dumped

    viewer = logged_in(make_user("stager", "view_stage", "view_task"))
    shown = page(viewer.get(reverse("tasks_app:stage-detail", args=["approve"])))
    assert "Assigneefrom the payload's /approver" in shown.text
    assert "anyone of the stage may open an assigned task" in shown.text


def test_the_admin_stage_form_sets_and_refuses_the_stage_fields() -> None:
    world = people_world()
    client = logged_in(make_user("root", superuser=True))
    url = f"{STAGE_URL}{world['approve'].pk}/change/"
    data = form_fields(client, url, form_id="stage_form")
    refused = client.post(url, {**data, "assignee_from": "approver", "_save": "Save"})
    assert refused.status_code == 200 and "starts with &#x27;/&#x27;" in refused.content.decode()
    data.pop("assignee_only", None)  # an unticked box submits nothing
    saved = client.post(url, {**data, "assignee_from": "/who", "_save": "Save"})
    assert saved.status_code == 302
    approve = Stage.objects.get(pk=world["approve"].pk)
    assert (approve.assignee_from, approve.assignee_only) == ("/who", False)

    ship = f"{STAGE_URL}{world['ship'].pk}/change/"  # a script stage: nobody to assign
    data = form_fields(client, ship, form_id="stage_form")
    refused = client.post(ship, {**data, "assignee_from": "/who", "_save": "Save"})
    assert refused.status_code == 200 and "Only form stages have this" in refused.content.decode()
    assert Stage.objects.get(pk=world["ship"].pk).assignee_from == ""


# -- races (PostgreSQL: real row locks, one connection per thread) -------------------------------


def racer(task_id: int, roles: list[tuple[str, Any]]) -> Callable[[], None]:
    """Work for run_at_once: each thread takes the next role (assign a user, or cancel the task)."""
    left, take = iter(roles), threading.Lock()

    def work() -> None:
        with take:
            role, user = next(left)
        try:
            if role == "assign":
                task_assign(task_id=task_id, assignee=user, actor="user:boss")
            else:
                task_cancel(task_id=task_id, actor="user:boss", reason="race")
        except TaskStateError:
            pass  # refused: finished, or assigned by the other meanwhile

    return work


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_racing_assignments_and_a_cancel_keep_the_history_a_chain() -> None:
    world = people_world()
    for _ in range(8):
        task = arrive(world)
        roles = [("assign", world["ann"]), ("assign", world["bob"]), ("cancel", None)]
        work = racer(task.pk, roles)
        assert run_at_once(work, threads=3) == []
        close_old_connections()
        events = list(task.events.exclude(kind="created").order_by("id").values_list("kind", "details"))
        assert events[-1][0] == "cancelled"  # nothing is assigned once the task is finished
        chain = [details for kind, details in events if kind == ASSIGNED]
        previous = None
        for details in chain:  # each assignment saw the one before it: none was lost
            assert details["previous"] == previous
            previous = details["assignee"]
        final = Task.objects.select_related("assignee").get(pk=task.pk)
        assert (final.assignee.username if final.assignee else None) == previous


def test_a_reminder_of_an_assigned_task_goes_to_the_assignee() -> None:
    world = people_world(notify={"groups": True}, remind_after=3600)
    task = arrive(world, approver="bob")
    Notification.objects.all().delete()  # the arrival's mail: not what this test is about

    tasks_remind(now=task.created_at + timedelta(seconds=3601))

    assert list(Notification.objects.values_list("task_id", "recipient", "kind")) == [
        (task.pk, "bob@example.com", "reminder")
    ]
