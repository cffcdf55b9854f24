"""The decision page /work/<id>/ (issue 14, section 4): buttons that look like what they do, field errors
a screen reader finds, a lock's full date and zone, and the holder's release (and nobody else's).
"""

from __future__ import annotations

import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone

from tasks_app.models import Task, TaskEvent
from tasks_app.services.form_stages import form_task_open
from tests.support.pages import page
from tests.support.users import logged_in
from tests.support.work import FormWorld, form_world, sent_order
from tests.support.world import db_state

pytestmark = pytest.mark.django_db


def opened_by(world: FormWorld, user: object) -> Task:
    return form_task_open(task=sent_order(world, {"order_id": 42}), user=user)


def buttons(html: str) -> list[tuple[str, str]]:
    """(class, text) of every submit button in the decision card."""
    card = html[html.index('class="card decide"') :]
    return [
        (c, " ".join(t.split()))
        for c, t in re.findall(r'<button type="submit"[^>]*class="([^"]*)"[^>]*>(.*?)</button>', card)
    ]


def test_one_primary_action_and_secondary_buttons_for_the_rest() -> None:
    world = form_world()
    task = opened_by(world, world.alice)

    html = logged_in(world.alice).get(f"/work/{task.pk}/").content.decode()

    assert buttons(html) == [("primary", "Approve"), ("secondary", "Decline"), ("secondary", "Close without deciding")]


def test_close_without_deciding_is_a_post_form_with_a_csrf_token() -> None:
    world = form_world()
    task = opened_by(world, world.alice)

    response = logged_in(world.alice).get(f"/work/{task.pk}/")

    form = re.search(
        r'<form method="post" action="/work/\d+/cancel/"[^>]*>(.*?)</form>', response.content.decode(), re.DOTALL
    )
    assert form, "no release form"
    assert 'name="csrfmiddlewaretoken"' in form.group(1)
    assert re.search(r'<button type="submit" class="secondary">Close without deciding</button>', form.group(1))
    assert 'class="link"' not in form.group(1)


def test_a_pending_task_offers_open_as_the_primary_action() -> None:
    world = form_world()
    task = sent_order(world, {"order_id": 1})

    html = logged_in(world.alice).get(f"/work/{task.pk}/").content.decode()

    assert buttons(html) == [("primary", "Open")]


def test_a_field_error_marks_the_field_invalid_and_points_at_its_message() -> None:
    world = form_world()
    task = opened_by(world, world.alice)

    response = logged_in(world.alice).post(f"/work/{task.pk}/submit/", {"type": "declined", "f-declined-reason": "no"})

    assert response.status_code == 400
    html = response.content.decode()
    field = next(i for i in page(response).inputs if i.get("name") == "f-declined-reason")
    assert field["aria-invalid"] == "true"
    described = field["aria-describedby"].split()
    # Each id it names is on the page: the help text and the error list with the message.
    assert described == ["id_f-declined-reason_helptext", "id_f-declined-reason_error"]
    assert re.search(r'<small class="muted" id="id_f-declined-reason_helptext">Told to them.</small>', html)
    error = re.search(r'<ul class="errorlist" id="id_f-declined-reason_error"><li>(.*?)</li></ul>', html)
    assert error and "at least 3 characters" in error.group(1)
    assert '<div class="field has-error">' in html
    # The other outcome's fields are not marked.
    note = next(i for i in page(response).inputs if i.get("name") == "f-approved-note")
    assert "aria-invalid" not in note


def test_someone_elses_lock_shows_its_full_date_and_zone() -> None:
    world = form_world()
    task = opened_by(world, world.bob)  # review's lock timeout is a week
    client = logged_in(world.alice)
    client.cookies["tz"] = "Europe/Paris"

    text = page(client.get(f"/work/{task.pk}/")).text

    until = task.locked_until.astimezone(ZoneInfo("Europe/Paris"))
    assert until - timezone.now() > timedelta(days=6)
    assert f"bob is working on this task until {until.day} {until:%b %Y, %H:%M} {until.tzname()}." in text


def test_your_own_lock_shows_its_full_date_and_zone() -> None:
    world = form_world()
    task = opened_by(world, world.alice)
    client = logged_in(world.alice)
    client.cookies["tz"] = "America/New_York"

    text = page(client.get(f"/work/{task.pk}/")).text

    until = task.locked_until.astimezone(ZoneInfo("America/New_York"))
    assert f"Open by you until {until.day} {until:%b %Y, %H:%M} {until.tzname()}." in text


def test_the_holder_releases_the_task_from_the_page() -> None:
    world = form_world()
    task = opened_by(world, world.alice)
    client = logged_in(world.alice, enforce_csrf_checks=True)
    shown = page(client.get(f"/work/{task.pk}/"))
    assert f"/work/{task.pk}/cancel/" in shown.post_actions()

    response = client.post(f"/work/{task.pk}/cancel/", {"csrfmiddlewaretoken": shown.csrf_token()}, follow=True)

    assert f"Task {task.pk} is back in the queue." in page(response).text
    current = Task.objects.get(pk=task.pk)
    assert (current.status, current.locked_by, current.lock_token, current.attempts) == (Task.Status.PENDING, "", "", 0)
    event = TaskEvent.objects.filter(task_id=task.pk).latest("id")
    assert (event.kind, event.actor) == (TaskEvent.Kind.RELEASED, "user:alice")
    assert event.details["reason"] == "closed by alice"


def test_someone_who_does_not_hold_the_task_cannot_release_it() -> None:
    world = form_world()
    task = opened_by(world, world.bob)
    before = db_state()
    client = logged_in(world.alice)
    shown = page(client.get(f"/work/{task.pk}/"))

    response = client.post(f"/work/{task.pk}/cancel/", follow=True)

    assert f"/work/{task.pk}/cancel/" not in shown.post_actions()  # not offered...
    assert "is being worked on by bob" in page(response).text  # ...and refused when sent anyway
    assert db_state() == before
    current = Task.objects.get(pk=task.pk)
    assert (current.status, current.locked_by, current.lock_token) == (Task.Status.LOCKED, "user:bob", task.lock_token)


def test_release_after_the_lock_was_taken_over_changes_nothing() -> None:
    world = form_world()
    task = opened_by(world, world.alice)
    Task.objects.filter(pk=task.pk).update(locked_until=timezone.now() - timedelta(seconds=1))
    taken = form_task_open(task=Task.objects.get(pk=task.pk), user=world.bob)  # the expired lock is taken over
    before = db_state()

    response = logged_in(world.alice).post(f"/work/{task.pk}/cancel/", follow=True)

    assert "is being worked on by bob" in page(response).text
    assert db_state() == before
    assert Task.objects.get(pk=task.pk).lock_token == taken.lock_token


def test_release_without_the_csrf_token_is_refused() -> None:
    world = form_world()
    task = opened_by(world, world.alice)
    before = db_state()

    response = Client(enforce_csrf_checks=True)
    response.force_login(world.alice)

    assert response.post(f"/work/{task.pk}/cancel/").status_code == 403
    assert db_state() == before


def test_the_payload_card_is_titled_key_values_and_escaped() -> None:
    world = form_world()
    task = form_task_open(
        task=sent_order(world, {"order_id": 42, "x": "<script>alert(1)</script>", "customer": {"email": "a@b.c"}}),
        user=world.alice,
    )

    response = logged_in(world.alice).get(f"/work/{task.pk}/")

    html = response.content.decode()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    text = page(response).text
    assert "Order number order_id 42" in text
    assert "Customer customer E-mail email a@b.c" in text
    assert f'href="/tasks/{task.pk}/payload.json"' in html  # the raw JSON, one link away


def test_opening_a_task_someone_holds_says_until_when_with_the_date() -> None:
    world = form_world()
    task = opened_by(world, world.bob)
    client = logged_in(world.alice)
    client.cookies["tz"] = "Europe/Paris"

    response = client.post(f"/work/{task.pk}/open/", follow=True)

    until = task.locked_until.astimezone(ZoneInfo("Europe/Paris"))
    expected = f"Task {task.pk} is being worked on by bob until {until.day} {until:%b %Y, %H:%M} {until.tzname()}."
    assert [str(m) for m in response.context["messages"]] == [expected]
