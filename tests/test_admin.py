"""The admin: pages render, actions and forms go through the services, permissions hold.

Forms are posted the way a browser would: the fields are read from the
rendered page (see form_fields) and the test changes only what it means to.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib import messages
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import task_create
from tests.support.history import claim
from tests.support.pages import ESCAPED_SCRIPT, SCRIPT, STAGE_URL, TASK_URL, TRANSITION_URL, form_fields
from tests.support.users import all_view_codenames, logged_in, make_user


def change_url(task: Task) -> str:
    return f"{TASK_URL}{task.pk}/change/"


# -- posting forms like a browser (the fields come from tests.support.pages.form_fields) ----


def split_datetime(when: datetime) -> dict[str, str]:
    local = timezone.localtime(when)
    return {"available_at_0": local.strftime("%Y-%m-%d"), "available_at_1": local.strftime("%H:%M:%S")}


def post_action(client: Client, action: str, *tasks: Task, follow: bool = False) -> HttpResponse:
    data = {"action": action, "_selected_action": [t.pk for t in tasks], "index": 0}
    return client.post(TASK_URL, data, follow=follow)


def shown_messages(response: HttpResponse) -> list[tuple[int, str]]:
    return [(m.level, str(m)) for m in response.context["messages"]]


def snapshot(task: Task) -> dict[str, Any]:
    """Every stored column of a task, to show that nothing changed."""
    return Task.objects.filter(pk=task.pk).values().get()


# -- fixtures --------------------------------------------------------------------


@pytest.fixture
def boss(db: None) -> AbstractBaseUser:
    return make_user("boss", superuser=True)


@pytest.fixture
def boss_client(client: Client, boss: AbstractBaseUser) -> Client:
    client.force_login(boss)
    return client


@pytest.fixture
def viewer_client(db: None) -> Client:
    """A staff user with only the view permissions of tasks_app."""
    return logged_in(make_user("viewer", *all_view_codenames(), staff=True))


# -- pages render ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        STAGE_URL,
        TRANSITION_URL,
        TASK_URL,
        TASK_URL + "?status__exact=locked",
        TASK_URL + "?status__exact=failed",
        TASK_URL + "?q=order",
        TASK_URL + "?q=not-a-number",
        STAGE_URL + "add/",
        TRANSITION_URL + "add/",
        TASK_URL + "add/",
        "/admin/",
    ],
)
def test_admin_page_renders_200_with_tasks_of_every_status(
    boss_client: Client, every_state: dict[str, Task], url: str
) -> None:
    assert boss_client.get(url).status_code == 200


def test_task_changelist_lists_every_task_and_flags_the_expired_lock(
    boss_client: Client, every_state: dict[str, Task]
) -> None:
    response = boss_client.get(TASK_URL)
    listed = {row.pk for row in response.context["cl"].result_list}
    assert listed == {t.pk for t in every_state.values()}
    html = response.content.decode()
    assert html.count("Locked (lock expired)") == 1
    for label in ("Pending", "Completed", "Failed"):
        assert f">{label}</b>" in html


def test_task_search_by_id_finds_exactly_that_task(boss_client: Client, every_state: dict[str, Task]) -> None:
    target = every_state["failed"]
    response = boss_client.get(TASK_URL, {"q": str(target.pk)})
    assert [t.pk for t in response.context["cl"].result_list] == [target.pk]


@pytest.mark.parametrize("name", ["pending", "locked", "expired", "completed", "failed"])
def test_task_change_page_renders_200_with_its_history_and_read_only_lifecycle_fields(
    boss_client: Client, every_state: dict[str, Task], name: str
) -> None:
    task = every_state[name]
    response = boss_client.get(change_url(task))
    assert response.status_code == 200
    form = response.context["adminform"].form
    # A locked task's payload is being read by a handler: read-only until released.
    assert ("payload" in form.fields) == (task.status != Task.Status.LOCKED)
    assert not {"status", "attempts", "lock_token", "locked_by", "locked_until", "stage", "type"} & set(form.fields)
    html = response.content.decode()
    assert f"Task {task.pk}" in html
    assert "Created" in html  # the history inline lists the created event


def test_stage_change_page_shows_the_outgoing_transition_inline(boss_client: Client, world: dict[str, Stage]) -> None:
    url = f"{STAGE_URL}{world['review'].pk}/change/"
    response = boss_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="outgoing-group"' in html
    assert "outgoing transition" in html.lower()
    fields = form_fields(boss_client, url, form_id="stage_form")
    assert fields["outgoing-INITIAL_FORMS"] == "3"  # ship, notify, audit
    targets = {fields[f"outgoing-{i}-target"] for i in range(3)}
    assert targets == {str(world[s].pk) for s in ("ship", "notify", "audit")}


def test_stage_change_form_adds_an_outgoing_transition_through_the_inline(
    boss_client: Client, world: dict[str, Stage]
) -> None:
    url = f"{STAGE_URL}{world['review'].pk}/change/"
    data = form_fields(boss_client, url, form_id="stage_form")
    assert data["outgoing-TOTAL_FORMS"] == "4"  # three transitions and one blank row
    data.update({"outgoing-3-target": str(world["intake"].pk), "outgoing-3-task_type": "rework", "_save": "Save"})

    response = boss_client.post(url, data)

    assert response.status_code == 302, response.context["errors"]
    assert sorted(world["review"].outgoing.values_list("task_type", "target__slug")) == [
        ("approved", "audit"),
        ("approved", "ship"),
        ("declined", "notify"),
        ("rework", "intake"),
    ]


# -- actions -----------------------------------------------------------------------


def test_retry_action_makes_a_completed_task_pending_with_an_event_naming_the_user(
    boss_client: Client, every_state: dict[str, Task]
) -> None:
    task = every_state["completed"]
    response = post_action(boss_client, "retry", task, follow=True)

    assert response.status_code == 200
    assert shown_messages(response) == [(messages.SUCCESS, "Retried 1 task(s).")]
    task.refresh_from_db()
    assert task.status == Task.Status.PENDING
    assert task.completed_at is None
    assert task.available_at <= timezone.now()
    event = task.events.get(kind=TaskEvent.Kind.RETRIED)
    assert event.actor == "user:boss"
    assert event.details == {"previous_status": "completed"}


def test_release_action_makes_a_locked_task_pending_with_lock_fields_cleared(
    boss_client: Client, every_state: dict[str, Task]
) -> None:
    task = every_state["locked"]
    ended = claim(task.attempts, task.locked_by, task.locked_at)
    response = post_action(boss_client, "release", task)

    assert response.status_code == 302
    task.refresh_from_db()
    assert task.status == Task.Status.PENDING
    assert (task.lock_token, task.locked_by, task.locked_at, task.locked_until) == ("", "", None, None)
    event = task.events.get(kind=TaskEvent.Kind.FORCE_RELEASED)
    assert (event.actor, event.details) == ("user:boss", {"previous_status": "locked", **ended})


def test_mark_completed_action_completes_a_pending_task(boss_client: Client, every_state: dict[str, Task]) -> None:
    task = every_state["pending"]
    before = Task.objects.count()
    post_action(boss_client, "mark_completed", task)

    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED
    assert task.completed_at is not None
    assert task.events.get(kind=TaskEvent.Kind.MARKED_COMPLETED).actor == "user:boss"
    assert Task.objects.count() == before  # marking completed sends no successors


def test_action_on_a_task_in_the_wrong_state_changes_nothing_and_shows_a_warning(
    boss_client: Client, every_state: dict[str, Task]
) -> None:
    task = every_state["pending"]
    before = snapshot(task)
    events_before = TaskEvent.objects.count()

    response = post_action(boss_client, "retry", task, follow=True)

    assert response.status_code == 200
    expected = f"Cannot retry task {task.pk}: it is pending (allowed: completed, failed)."
    assert shown_messages(response) == [(messages.WARNING, expected)]
    assert expected in response.content.decode()
    assert snapshot(task) == before
    assert TaskEvent.objects.count() == events_before


def test_action_on_a_mixed_selection_changes_the_allowed_tasks_and_warns_about_the_rest(
    boss_client: Client, every_state: dict[str, Task]
) -> None:
    chosen = every_state["completed"], every_state["failed"], every_state["pending"]
    response = post_action(boss_client, "retry", *chosen, follow=True)

    shown = shown_messages(response)
    assert shown[0] == (messages.SUCCESS, "Retried 2 task(s).")
    assert shown[1][0] == messages.WARNING and f"Cannot retry task {every_state['pending'].pk}" in shown[1][1]
    statuses = Task.objects.filter(pk__in=[t.pk for t in every_state.values()]).values_list("status", flat=True)
    assert sorted(statuses) == ["locked", "locked", "pending", "pending", "pending"]


# -- add form ----------------------------------------------------------------------


def add_form(client: Client, stage: Stage, type: str, payload: str) -> dict[str, Any]:
    data = form_fields(client, TASK_URL + "add/")
    data.update(stage=str(stage.pk), type=type, payload=payload, _save="Save")
    return data


def test_add_form_creates_the_task_through_the_service_with_a_created_event(
    boss_client: Client, world: dict[str, Stage]
) -> None:
    data = add_form(boss_client, world["review"], "from-admin", '{"amount": 3}')

    response = boss_client.post(TASK_URL + "add/", data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    task = Task.objects.get()
    assert (task.stage_id, task.type, task.payload, task.status) == (
        world["review"].pk,
        "from-admin",
        {"amount": 3},
        Task.Status.PENDING,
    )
    assert [(e.kind, e.actor) for e in task.events.all()] == [("created", "user:boss")]
    assert response["Location"] == TASK_URL  # back to the changelist after "Save"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("payload", "[1,2]", "Payload must be a JSON object, not an array."),
        ("payload", '"text"', "Payload must be a JSON object, not "),
        ("payload", "7", "Payload must be a JSON object, not a number."),
        ("payload", "null", "Payload must be a JSON object, not null."),
        ("payload", "{bad", "Enter a valid JSON."),
        ("type", "", "This field is required."),
        ("type", "t" * 101, "Ensure this value has at most 100 characters (it has 101)."),
    ],
)
def test_add_form_rejects_bad_input_with_a_field_error_and_creates_nothing(
    boss_client: Client, world: dict[str, Stage], field: str, value: str, error: str
) -> None:
    data = add_form(boss_client, world["review"], "order", '{"amount": 1}')
    data[field] = value

    response = boss_client.post(TASK_URL + "add/", data)

    assert response.status_code == 200
    assert any(message.startswith(error) for message in response.context["adminform"].form.errors[field])
    assert (Task.objects.count(), TaskEvent.objects.count()) == (0, 0)


def test_add_form_names_a_json_string_payload_as_a_string(boss_client: Client, world: dict[str, Stage]) -> None:
    # The form's JSONField hands validate_payload a forms.JSONString, and the
    # message shows that internal class name: "... not JSONString.". Fails
    # until validate_payload names JSON kinds rather than Python classes.
    data = add_form(boss_client, world["review"], "order", '"text"')

    response = boss_client.post(TASK_URL + "add/", data)

    [message] = response.context["adminform"].form.errors["payload"]
    assert message.startswith("Payload must be a JSON object, not ")
    assert "JSONString" not in message


def test_add_form_accepts_an_empty_object_payload(boss_client: Client, world: dict[str, Stage]) -> None:
    # {} is a valid payload (the model default, what the add form shows, and
    # what create_task stores without --payload), though a form counts it as empty.
    data = add_form(boss_client, world["review"], "ping", "{}")

    response = boss_client.post(TASK_URL + "add/", data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Task.objects.get().payload == {}


def test_add_form_keeps_a_future_available_at(boss_client: Client, world: dict[str, Stage]) -> None:
    # available_at is an editable field of the add form, but TaskAdmin.save_model
    # does not pass it to task_create, so the task is claimable at once. Fails
    # until save_model passes available_at=obj.available_at.
    later = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    data = add_form(boss_client, world["review"], "order", '{"amount": 1}')
    data.update(split_datetime(later))

    response = boss_client.post(TASK_URL + "add/", data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Task.objects.get().available_at == later


# -- change form -------------------------------------------------------------------


def test_editing_the_payload_of_a_pending_task_records_an_edited_event(
    boss_client: Client, every_state: dict[str, Task]
) -> None:
    task = every_state["pending"]
    data = form_fields(boss_client, change_url(task))
    data.update(payload='{"amount": 99, "note": "fixed by hand"}', _save="Save")

    response = boss_client.post(change_url(task), data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    task.refresh_from_db()
    assert task.payload == {"amount": 99, "note": "fixed by hand"}
    assert task.status == Task.Status.PENDING
    event = task.events.get(kind=TaskEvent.Kind.EDITED)
    assert event.actor == "user:boss"
    assert event.details == {"before": {"amount": 10}, "after": {"amount": 99, "note": "fixed by hand"}}


def test_change_form_ignores_posted_status_lock_stage_and_type(
    boss_client: Client, every_state: dict[str, Task], world: dict[str, Stage]
) -> None:
    task = every_state["pending"]
    data = form_fields(boss_client, change_url(task))
    data.update(
        payload='{"amount": 11}',
        status="completed",
        attempts="7",
        lock_token="forged",
        locked_by="someone",
        completed_at_0="2020-01-01",
        completed_at_1="00:00:00",
        stage=str(world["ship"].pk),
        type="forged-type",
        _save="Save",
    )

    response = boss_client.post(change_url(task), data)

    assert response.status_code == 302
    task.refresh_from_db()
    assert task.payload == {"amount": 11}  # the one editable field did change
    assert (task.status, task.attempts, task.lock_token, task.locked_by, task.completed_at) == (
        Task.Status.PENDING,
        0,
        "",
        "",
        None,
    )
    assert (task.stage_id, task.type) == (world["review"].pk, "order")
    assert list(task.events.values_list("kind", flat=True)) == ["created", "edited"]


def test_saving_the_change_form_unchanged_records_no_event(boss_client: Client, every_state: dict[str, Task]) -> None:
    task = every_state["failed"]
    before = snapshot(task)
    events_before = TaskEvent.objects.count()
    data = form_fields(boss_client, change_url(task))
    data["_save"] = "Save"

    response = boss_client.post(change_url(task), data)

    assert response.status_code == 302
    assert snapshot(task) == before
    assert TaskEvent.objects.count() == events_before


def test_change_form_does_not_silently_drop_an_edited_available_at(
    boss_client: Client, every_state: dict[str, Task]
) -> None:
    # Scheduling belongs to the lifecycle: available_at is read-only on change,
    # so a posted value can't be silently dropped while the admin reports success.
    task = every_state["pending"]
    later = (timezone.now() + timedelta(days=2)).replace(microsecond=0)
    response = boss_client.get(change_url(task))
    if "available_at" not in response.context["adminform"].form.fields:
        return  # read-only: the form offers nothing it would drop
    data = form_fields(boss_client, change_url(task))
    data.update(split_datetime(later))
    data["_save"] = "Save"

    response = boss_client.post(change_url(task), data)

    assert response.status_code == 302
    task.refresh_from_db()
    assert task.available_at == later


def test_change_form_rejects_a_non_object_payload_and_keeps_the_old_one(
    boss_client: Client, every_state: dict[str, Task]
) -> None:
    task = every_state["pending"]
    data = form_fields(boss_client, change_url(task))
    data.update(payload="[1, 2]", _save="Save")

    response = boss_client.post(change_url(task), data)

    assert response.status_code == 200
    assert "Payload must be a JSON object, not an array." in response.context["adminform"].form.errors["payload"]
    task.refresh_from_db()
    assert task.payload == {"amount": 10}
    assert not task.events.filter(kind=TaskEvent.Kind.EDITED).exists()


def test_editing_the_payload_of_a_locked_task_is_refused_without_a_server_error(
    boss_client: Client, every_state: dict[str, Task]
) -> None:
    # The payload of a locked task is editable in the form, but
    # services.task_edit_payload refuses locked tasks with TaskStateError,
    # which TaskAdmin.save_model does not handle: the POST is a 500. Fails
    # until the admin makes the payload read-only for locked tasks (or turns
    # the refusal into a form error / message).
    task = every_state["locked"]
    before = snapshot(task)
    data = form_fields(boss_client, change_url(task))
    if "payload" in data:
        data["payload"] = '{"edited": true}'
    data["_save"] = "Save"

    response = boss_client.post(change_url(task), data, follow=True)

    assert response.status_code == 200
    assert snapshot(task) == before
    assert not task.events.filter(kind=TaskEvent.Kind.EDITED).exists()


# -- escaping ----------------------------------------------------------------------


def test_payload_html_is_escaped_in_the_changelist_and_the_change_page(
    boss_client: Client, world: dict[str, Stage]
) -> None:
    task = task_create(stage=world["review"], type="order", payload={"note": SCRIPT})

    changelist = boss_client.get(TASK_URL).content.decode()
    assert SCRIPT not in changelist
    assert ESCAPED_SCRIPT in changelist

    change_page = boss_client.get(change_url(task)).content.decode()
    assert SCRIPT not in change_page
    assert ESCAPED_SCRIPT in change_page


def test_a_long_payload_is_truncated_in_the_changelist(boss_client: Client, world: dict[str, Stage]) -> None:
    task_create(stage=world["review"], type="order", payload={"note": "x" * 200})
    html = boss_client.get(TASK_URL).content.decode()
    assert "x" * 200 not in html
    assert "x" * 60 + "...</code>" in html


# -- permissions -------------------------------------------------------------------


def test_view_only_staff_can_see_the_task_pages(viewer_client: Client, every_state: dict[str, Task]) -> None:
    assert viewer_client.get(TASK_URL).status_code == 200
    assert viewer_client.get(STAGE_URL).status_code == 200
    response = viewer_client.get(change_url(every_state["pending"]))
    assert response.status_code == 200
    assert 'name="_save"' not in response.content.decode()


def test_view_only_staff_is_offered_no_actions(viewer_client: Client, every_state: dict[str, Task]) -> None:
    response = viewer_client.get(TASK_URL)
    assert response.context["action_form"] is None


def test_view_only_staff_posting_an_action_changes_nothing(viewer_client: Client, every_state: dict[str, Task]) -> None:
    # Django (5.2) does not answer 403 here: a user without the actions'
    # "change" permission has no actions at all, so ModelAdmin.changelist_view
    # does not treat the POST as one and renders the changelist again (200).
    # What matters is that nothing happens.
    task = every_state["completed"]
    before = snapshot(task)
    events_before = TaskEvent.objects.count()

    response = post_action(viewer_client, "retry", task)

    assert response.status_code == 200
    assert response.context["action_form"] is None
    assert shown_messages(response) == []
    assert snapshot(task) == before
    assert TaskEvent.objects.count() == events_before


def test_view_only_staff_posting_the_change_form_gets_403(
    viewer_client: Client, boss_client: Client, every_state: dict[str, Task]
) -> None:
    task = every_state["pending"]
    before = snapshot(task)
    data = form_fields(boss_client, change_url(task))
    data.update(payload='{"amount": 1000}', _save="Save")

    response = viewer_client.post(change_url(task), data)

    assert response.status_code == 403
    assert snapshot(task) == before
    assert not task.events.filter(kind=TaskEvent.Kind.EDITED).exists()


def test_view_only_staff_cannot_add_a_task(viewer_client: Client, world: dict[str, Stage]) -> None:
    assert viewer_client.get(TASK_URL + "add/").status_code == 403
    response = viewer_client.post(TASK_URL + "add/", {"stage": world["review"].pk, "type": "x", "payload": "{}"})
    assert response.status_code == 403
    assert not Task.objects.exists()


@pytest.mark.parametrize("url", [TASK_URL, STAGE_URL, TRANSITION_URL, TASK_URL + "add/"])
def test_anonymous_user_is_redirected_to_the_login_page(client: Client, world: dict[str, Stage], url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={url}"


def test_anonymous_action_post_is_redirected_to_login_and_changes_nothing(
    client: Client, every_state: dict[str, Task]
) -> None:
    task = every_state["completed"]
    before = snapshot(task)

    response = post_action(client, "retry", task)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert snapshot(task) == before


def test_worker_registry_lists_live_and_dead_workers_read_only(boss_client: Client, settings: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from tasks_app.models import WorkerProcess

    settings.TASKS_WORKER_DEAD_AFTER = 60
    now = timezone.now()
    WorkerProcess.objects.create(worker_id="live-one", host="h1", pid=11, last_heartbeat=now, current_tasks=[1, 2])
    WorkerProcess.objects.create(worker_id="silent-one", host="h2", pid=12, last_heartbeat=now - timedelta(minutes=5))
    response = boss_client.get("/admin/tasks_app/workerprocess/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "live-one" in html and "silent-one" in html
    assert html.count('alt="True"') == 1 and html.count('alt="False"') == 1
    # Workers write the registry; people can't add or edit rows.
    assert boss_client.get("/admin/tasks_app/workerprocess/add/").status_code == 403


def test_task_forms_use_the_json_editor_widget(boss_client: Client, world: dict[str, Stage]) -> None:
    from tasks_app.services import task_create

    task = task_create(stage=world["review"], type="order", payload={"a": 1})
    for url in ("/admin/tasks_app/task/add/", f"/admin/tasks_app/task/{task.pk}/change/"):
        html = boss_client.get(url).content.decode()
        # The editor's textarea, its Format button, and its script and stylesheet.
        assert 'class="json-editor"' in html and 'class="json-format"' in html
        assert "tasks_app/json_editor.js" in html and "tasks_app/json_editor.css" in html
