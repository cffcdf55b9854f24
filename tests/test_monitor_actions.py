"""Monitoring pages: the buttons and forms that change tasks.

retry / release / complete, duplicate, edit payload, create task and the bulk
form of the list, each posted as a browser would and checked by its effect on
the database and the message shown after the redirect. Permissions, CSRF
and redirects to `next` are in test_monitor_access.
"""

from __future__ import annotations

import json
import re
from html import unescape

import pytest
from django.test import Client

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import task_claim, task_complete, task_create
from tests.support.history import claim
from tests.support.pages import LIST_URL, page, shown_messages
from tests.support.world import db_state

S = Task.Status
K = TaskEvent.Kind


def textarea(html: str, name: str) -> str:
    """What a browser submits for a <textarea> (it drops the newline right after the tag)."""
    match = re.search(rf'<textarea name="{name}"[^>]*>(.*?)</textarea>', html, re.DOTALL)
    assert match, f"no textarea {name}"
    return unescape(match.group(1)).removeprefix("\n")


def error_text(html: str) -> str:
    match = re.search(r'<p class="error">(.*?)</p>', html, re.DOTALL)
    assert match, "no error shown"
    return unescape(match.group(1))


# -- retry, release, complete -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "action", "verb", "status", "kind"),
    [
        ("completed", "retry", "Retried", S.PENDING, K.RETRIED),
        ("failed", "retry", "Retried", S.PENDING, K.RETRIED),
        ("locked", "release", "Released", S.PENDING, K.FORCE_RELEASED),
        ("expired", "release", "Released", S.PENDING, K.FORCE_RELEASED),
        ("pending", "complete", "Marked completed", S.COMPLETED, K.MARKED_COMPLETED),
        ("locked", "complete", "Marked completed", S.COMPLETED, K.MARKED_COMPLETED),
        ("failed", "complete", "Marked completed", S.COMPLETED, K.MARKED_COMPLETED),
    ],
)
def test_action_changes_the_task_records_an_event_and_shows_a_success_message(
    admin_client: Client, every_state: dict[str, Task], name: str, action: str, verb: str, status: str, kind: str
) -> None:
    task = every_state[name]
    previous = task.status
    # A locked task's action ends its claim: the event carries the claim, as every end of a claim does.
    ended = claim(task.attempts, task.locked_by, task.locked_at, task.reclaimed_from) if previous == "locked" else {}

    response = admin_client.post(f"/tasks/{task.pk}/{action}/", follow=True)

    assert response.status_code == 200
    assert response.redirect_chain == [(f"/tasks/{task.pk}/", 302)]
    assert shown_messages(response) == [("success", f"{verb} task {task.pk}.")]
    assert f'<li class="msg-success">{verb} task {task.pk}.</li>' in response.content.decode()
    task.refresh_from_db()
    assert task.status == status
    event = task.events.order_by("id").last()
    assert event is not None
    assert (event.kind, event.actor, event.details) == (kind, "user:admin", {"previous_status": previous, **ended})


def test_retry_clears_the_completion_and_makes_the_task_claimable_now(
    admin_client: Client, every_state: dict[str, Task]
) -> None:
    task = every_state["completed"]

    admin_client.post(f"/tasks/{task.pk}/retry/")

    task.refresh_from_db()
    assert task.completed_at is None
    assert [t.pk for t in task_claim(stage=task.stage, worker_id="w2")] == [task.pk]


def test_release_takes_the_lock_away_from_its_worker(admin_client: Client, every_state: dict[str, Task]) -> None:
    task = every_state["locked"]

    admin_client.post(f"/tasks/{task.pk}/release/")

    task.refresh_from_db()
    assert (task.status, task.lock_token, task.locked_by, task.locked_until) == (S.PENDING, "", "", None)


def test_mark_completed_sends_no_successors(admin_client: Client, every_state: dict[str, Task]) -> None:
    task = every_state["pending"]  # at review, which routes "order" nowhere but would route "approved"
    count = Task.objects.count()

    admin_client.post(f"/tasks/{task.pk}/complete/")

    task.refresh_from_db()
    assert task.status == S.COMPLETED and task.completed_at is not None
    assert Task.objects.count() == count


@pytest.mark.parametrize(
    ("name", "action", "message"),
    [
        ("pending", "retry", "Cannot retry task {id}: it is pending (allowed: completed, failed)."),
        ("locked", "retry", "Cannot retry task {id}: it is locked (allowed: completed, failed)."),
        ("pending", "release", "Cannot release task {id}: it is pending (allowed: locked)."),
        ("completed", "release", "Cannot release task {id}: it is completed (allowed: locked)."),
        (
            "completed",
            "complete",
            "Cannot mark completed task {id}: it is completed (allowed: pending, locked, failed).",
        ),
    ],
)
def test_action_not_allowed_in_the_task_state_shows_a_warning_and_changes_nothing(
    admin_client: Client, every_state: dict[str, Task], name: str, action: str, message: str
) -> None:
    task = every_state[name]
    before = db_state()

    response = admin_client.post(f"/tasks/{task.pk}/{action}/", follow=True)

    assert response.status_code == 200
    expected = message.format(id=task.pk)
    assert shown_messages(response) == [("warning", expected)]
    assert f'<li class="msg-warning">{expected}</li>' in response.content.decode()
    assert db_state() == before


def test_release_clicked_after_the_worker_finished_is_a_warning_not_an_error(
    admin_client: Client, review: Stage
) -> None:
    task = task_create(stage=review, type="order", payload={"amount": 1})
    [claim] = task_claim(stage=review, worker_id="w1")
    release_form = f"/tasks/{task.pk}/release/"
    assert release_form in page(admin_client.get(f"/tasks/{task.pk}/")).post_actions()
    task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("approved", {})])  # the worker wins
    before = db_state()

    response = admin_client.post(release_form, follow=True)

    assert response.status_code == 200
    assert shown_messages(response) == [
        ("warning", f"Cannot release task {task.pk}: it is completed (allowed: locked).")
    ]
    assert db_state() == before


def test_action_on_a_deleted_task_shows_a_warning_page_not_a_404(admin_client: Client, pending_task: Task) -> None:
    # The task was deleted (admin) while its page was open: the warning must be
    # shown on the list, not lost on the deleted task's 404.
    task_id = pending_task.pk
    Task.objects.filter(pk=task_id).delete()

    response = admin_client.post(f"/tasks/{task_id}/complete/", follow=True)

    assert response.status_code == 200
    assert shown_messages(response) == [("warning", f"Task {task_id} does not exist.")]


def test_unknown_action_is_404_and_changes_nothing(admin_client: Client, every_state: dict[str, Task]) -> None:
    task = every_state["failed"]
    before = db_state()

    assert admin_client.post(f"/tasks/{task.pk}/delete/").status_code == 404
    assert db_state() == before


@pytest.mark.parametrize("action", ["retry", "release", "complete", "duplicate"])
def test_get_on_an_action_url_is_refused_405_and_changes_nothing(
    admin_client: Client, every_state: dict[str, Task], action: str
) -> None:
    before = db_state()

    assert admin_client.get(f"/tasks/{every_state['failed'].pk}/{action}/").status_code == 405
    assert db_state() == before


# -- duplicate ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pending", "locked", "completed", "failed"])
def test_duplicate_creates_a_pending_copy_and_shows_it(
    admin_client: Client, every_state: dict[str, Task], name: str
) -> None:
    original = every_state[name]
    before = Task.objects.filter(pk=original.pk).values().get()

    response = admin_client.post(f"/tasks/{original.pk}/duplicate/", follow=True)

    copy = Task.objects.latest("id")
    assert copy.pk != original.pk
    assert response.status_code == 200
    assert response.redirect_chain == [(f"/tasks/{copy.pk}/", 302)]
    assert shown_messages(response) == [("success", f"Created task {copy.pk}, a copy of task {original.pk}.")]
    assert (copy.stage_id, copy.type, copy.payload, copy.status, copy.attempts) == (
        original.stage_id,
        original.type,
        original.payload,
        S.PENDING,
        0,
    )
    assert Task.objects.filter(pk=original.pk).values().get() == before
    assert [(e.kind, e.actor, e.details) for e in copy.events.all()] == [
        (K.CREATED, "user:admin", {"duplicate_of": original.pk})
    ]
    event = original.events.order_by("id").last()
    assert event is not None and (event.kind, event.details) == (K.DUPLICATED, {"copy": copy.pk})


def test_duplicate_of_a_missing_task_warns_on_the_task_list(admin_client: Client, db: None) -> None:
    response = admin_client.post("/tasks/999999/duplicate/", follow=True)

    assert response.status_code == 200
    assert response.redirect_chain == [(LIST_URL, 302)]
    assert shown_messages(response) == [("warning", "Task 999999 does not exist.")]
    assert Task.objects.count() == 0


# -- edit payload ------------------------------------------------------------------------


def test_edit_form_shows_the_current_payload_pretty_printed(admin_client: Client, review: Stage) -> None:
    payload = {"b": [1, 2], "a": "Zoë <b>", "n": None}
    task = task_create(stage=review, type="order", payload=payload)

    response = admin_client.get(f"/tasks/{task.pk}/edit/")

    assert response.status_code == 200
    shown = textarea(response.content.decode(), "payload")
    assert shown == json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False)


@pytest.mark.parametrize("name", ["pending", "completed", "failed"])
def test_edit_form_saves_a_changed_payload_with_an_edited_event(
    admin_client: Client, every_state: dict[str, Task], name: str
) -> None:
    task = every_state[name]
    old = task.payload
    shown = json.loads(textarea(admin_client.get(f"/tasks/{task.pk}/edit/").content.decode(), "payload"))
    new = {**shown, "fixed": "by hand", "n": 2}

    response = admin_client.post(f"/tasks/{task.pk}/edit/", {"payload": json.dumps(new, indent=2)}, follow=True)

    assert response.status_code == 200
    assert response.redirect_chain == [(f"/tasks/{task.pk}/", 302)]
    assert shown_messages(response) == [("success", f"Saved the payload of task {task.pk}.")]
    task.refresh_from_db()
    assert task.payload == new
    assert task.status == name
    event = task.events.order_by("id").last()
    assert event is not None
    assert (event.kind, event.actor, event.details) == (K.EDITED, "user:admin", {"before": old, "after": new})
    assert "Payload edited" in page(response).text  # the history shows it


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("[1, 2]", 'Payload must be a JSON object, like {"customer_id": 12345}.'),
        ('"text"', "Payload must be a JSON object"),
        ("null", "Payload must be a JSON object"),
        ("42", "Payload must be a JSON object"),
        ("{bad", "Payload is not valid JSON"),
        ('{"a": 1,}', "Payload is not valid JSON"),
        ('{"a": NaN}', "Payload"),
        ('{"a": "nul \\u0000 here"}', "NUL"),
    ],
)
def test_edit_form_refuses_a_payload_that_is_not_a_json_object_with_400_and_keeps_the_text(
    admin_client: Client, pending_task: Task, raw: str, error: str
) -> None:
    before = db_state()

    response = admin_client.post(f"/tasks/{pending_task.pk}/edit/", {"payload": raw})

    assert response.status_code == 400
    html = response.content.decode()
    assert error in error_text(html)
    assert textarea(html, "payload") == raw  # the text is kept for fixing
    assert db_state() == before


def test_edit_of_a_locked_task_is_refused_with_400_and_changes_nothing(
    admin_client: Client, every_state: dict[str, Task]
) -> None:
    task = every_state["locked"]
    before = db_state()

    response = admin_client.post(f"/tasks/{task.pk}/edit/", {"payload": '{"x": 1}'})

    assert response.status_code == 400
    assert error_text(response.content.decode()).startswith(f"Cannot edit the payload of task {task.pk}: it is locked")
    assert db_state() == before


def test_edit_of_a_missing_task_is_404(admin_client: Client, db: None) -> None:
    assert admin_client.get("/tasks/999999/edit/").status_code == 404
    assert admin_client.post("/tasks/999999/edit/", {"payload": "{}"}).status_code == 404


# -- create ---------------------------------------------------------------------------------


def test_create_form_preselects_the_stage_from_the_query(admin_client: Client, world: dict[str, Stage]) -> None:
    html = admin_client.get("/tasks/new/", {"stage": "ship"}).content.decode()

    assert re.findall(r'<option value="([\w-]+)"\s+selected>', html) == ["ship"]
    assert set(re.findall(r'<option value="([\w-]+)"', html)) == set(world)


def test_create_form_creates_a_pending_task_at_the_chosen_stage_and_shows_it(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    data = {"stage": "ship", "type": "manual", "payload": '{"customer_id": 12345, "note": "by hand"}'}

    response = admin_client.post("/tasks/new/", data, follow=True)

    task = Task.objects.get()
    assert response.status_code == 200
    assert response.redirect_chain == [(f"/tasks/{task.pk}/", 302)]
    assert shown_messages(response) == [("success", f"Created task {task.pk} at ship.")]
    assert (task.stage.slug, task.type, task.payload, task.status) == (
        "ship",
        "manual",
        {"customer_id": 12345, "note": "by hand"},
        S.PENDING,
    )
    assert [(e.kind, e.actor) for e in task.events.all()] == [(K.CREATED, "user:admin")]


def test_create_form_with_an_empty_payload_creates_an_empty_object(admin_client: Client, review: Stage) -> None:
    response = admin_client.post("/tasks/new/", {"stage": "review", "type": "ping", "payload": ""})

    assert response.status_code == 302
    assert Task.objects.get().payload == {}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"stage": "no-such-stage"}, "Unknown stage 'no-such-stage'."),
        ({"stage": ""}, "Unknown stage ''."),
        ({"payload": "{bad"}, "Payload is not valid JSON"),
        ({"payload": "[1, 2]"}, "Payload must be a JSON object"),
        ({"type": ""}, "Type must be a non-empty string."),
        ({"type": "   "}, "Type must be a non-empty string."),
        ({"type": "t" * 101}, "Type must be at most 100 characters (got 101)."),
        ({"payload": '{"a": "\\u0000"}'}, "NUL"),
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else None,
)
def test_create_form_refuses_bad_input_with_400_an_error_and_creates_nothing(
    admin_client: Client, world: dict[str, Stage], data: dict[str, str], error: str
) -> None:
    posted = {"stage": "review", "type": "order", "payload": '{"amount": 1}', **data}

    response = admin_client.post("/tasks/new/", posted)

    assert response.status_code == 400
    html = response.content.decode()
    assert error in error_text(html)
    assert textarea(html, "payload") == posted["payload"]  # the input is kept for fixing
    assert (Task.objects.count(), TaskEvent.objects.count()) == (0, 0)


# -- bulk form of the list ---------------------------------------------------------------


def test_bulk_retry_of_selected_rows_retries_those_it_can_and_counts_the_rest(
    admin_client: Client, every_state: dict[str, Task]
) -> None:
    chosen = [every_state[n].pk for n in ("completed", "failed", "pending")]

    response = admin_client.post(
        "/tasks/bulk/",
        {"action": "retry", "scope": "selected", "ids": chosen, "query": "sort=id", "confirm": "1"},
        follow=True,
    )

    assert response.redirect_chain == [(f"{LIST_URL}?sort=id", 302)]
    assert shown_messages(response) == [
        ("success", "Retried 2 task(s). 1 skipped: not in a state this action applies to.")
    ]
    statuses = dict(Task.objects.filter(pk__in=chosen).values_list("id", "status"))
    assert set(statuses.values()) == {S.PENDING}


def test_bulk_action_on_all_matching_tasks_uses_the_list_filter(
    admin_client: Client, every_state: dict[str, Task]
) -> None:
    before = {t.pk: t.status for t in every_state.values()}

    response = admin_client.post(
        "/tasks/bulk/", {"action": "complete", "scope": "all", "query": "status=failed", "confirm": "1"}
    )

    assert response.status_code == 302
    after = dict(Task.objects.values_list("id", "status"))
    failed = every_state["failed"].pk
    assert after[failed] == S.COMPLETED
    assert {pk: s for pk, s in after.items() if pk != failed} == {pk: s for pk, s in before.items() if pk != failed}


def test_bulk_without_an_action_warns_and_changes_nothing(admin_client: Client, every_state: dict[str, Task]) -> None:
    before = db_state()

    response = admin_client.post(
        "/tasks/bulk/", {"action": "", "scope": "all", "ids": [every_state["failed"].pk]}, follow=True
    )

    assert shown_messages(response) == [("warning", "Choose an action.")]
    assert db_state() == before
