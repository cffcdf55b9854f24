"""Form stages ("My work"): who may work on them, open / submit / cancel, and the schema forms.

The world here is its own (not the checkout workflow of the `world` fixture):

    triage (form, no groups) --*-->        review
    review (form, reviewers) --approved--> invoice
                             --declined--> notify
    ship (script)            --*-->        notify

Alice and Bob are reviewers; Carol may change tasks but is in no group (so
she works on triage only); Nobody has neither. Everything goes through the
URLs and the rendered HTML, like test_monitor_*; the mapping of a JSON
Schema to form fields (forms.schema) is tested directly at the end.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django import forms
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone

from tasks_app.forms.schema import form_fields, schema_form
from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.selectors.work import form_stages_for, may_work_on
from tasks_app.services import TaskError, task_create
from tasks_app.services.errors import TaskStateError
from tasks_app.services.form_stages import (
    TaskHeldError,
    form_task_cancel,
    form_task_open,
    form_task_submit,
    outgoing_types,
)
from tasks_app.templatetags.people import local_text
from tests.support.history import claim, claim_of
from tests.support.pages import ESCAPED_SCRIPT, LOGOUT_URL, SCRIPT, login_redirect, page, shown_messages
from tests.support.users import logged_in, make_user
from tests.support.world import db_state

S = Task.Status
K = TaskEvent.Kind
LOCK_TIMEOUT = 600
WORK_URL = "/work/"

APPROVE = {
    "title": "Approve",
    "type": "object",
    "properties": {"note": {"type": "string", "description": "For the invoice."}},
}
DECLINE = {
    "title": "Decline",
    "type": "object",
    "required": ["reason"],
    "properties": {
        "reason": {"type": "string", "minLength": 3},
        # A rule the form can't express: only the send service's schema check enforces it.
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
    },
}


# -- the world -------------------------------------------------------------------------


@pytest.fixture
def reviewers(db: None) -> Group:
    return Group.objects.create(name="reviewers")


@pytest.fixture
def stages(reviewers: Group) -> dict[str, Stage]:
    def stage(slug: str, kind: str, **kwargs: Any) -> Stage:
        handler = "tests.handlers.noop" if kind == Stage.Kind.SCRIPT else ""
        return Stage.objects.create(slug=slug, name=slug.title(), kind=kind, handler=handler, **kwargs)

    found = {
        "triage": stage("triage", Stage.Kind.FORM, lock_timeout=LOCK_TIMEOUT),
        "review": stage(
            "review", Stage.Kind.FORM, lock_timeout=LOCK_TIMEOUT, schemas={"approved": APPROVE, "declined": DECLINE}
        ),
        "invoice": stage("invoice", Stage.Kind.SCRIPT),
        "notify": stage("notify", Stage.Kind.SCRIPT),
        "ship": stage("ship", Stage.Kind.SCRIPT),
    }
    found["review"].groups.add(reviewers)
    for source, target, task_type in [
        ("triage", "review", ""),
        ("review", "invoice", "approved"),
        ("review", "notify", "declined"),
        ("ship", "notify", ""),
    ]:
        Transition.objects.create(source=found[source], target=found[target], task_type=task_type)
    return found


@pytest.fixture
def alice(reviewers: Group) -> AbstractBaseUser:
    user = make_user("alice")
    user.groups.add(reviewers)
    return user


@pytest.fixture
def bob(reviewers: Group) -> AbstractBaseUser:
    user = make_user("bob")
    user.groups.add(reviewers)
    return user


@pytest.fixture
def carol(db: None) -> AbstractBaseUser:
    return make_user("carol", "change_task", "view_task")


@pytest.fixture
def nobody(db: None) -> AbstractBaseUser:
    return make_user("nobody")


@pytest.fixture
def alice_client(alice: AbstractBaseUser) -> Client:
    return logged_in(alice)


@pytest.fixture
def bob_client(bob: AbstractBaseUser) -> Client:
    return logged_in(bob)


@pytest.fixture
def task(stages: dict[str, Stage]) -> Task:
    """A pending order waiting at review."""
    return task_create(stage=stages["review"], type="order", payload={"amount": 10})


def fresh(task: Task) -> Task:
    return Task.objects.get(pk=task.pk)


def expire_lock(task: Task) -> None:
    Task.objects.filter(pk=task.pk).update(locked_until=timezone.now() - timedelta(seconds=1))


def held_message(task: Task, holder: str) -> str:
    # With its date and zone ("until 8 Dec 2026, 13:22 UTC"): a lock may be held for a week.
    return f"Task {task.pk} is being worked on by {holder} until {local_text(fresh(task).locked_until)}."


def table(response: HttpResponse, table_id: str) -> str:
    """The HTML of one <table id=...> of a page."""
    match = re.search(rf'<table[^>]*id="{table_id}"[^>]*>(.*?)</table>', response.content.decode(), re.DOTALL)
    assert match, f"no table #{table_id}"
    return match.group(1)


def listed_ids(response: HttpResponse, table_id: str) -> list[int]:
    return [int(i) for i in re.findall(r'<a href="/work/(\d+)/">\d+</a>', table(response, table_id))]


def submit_types(response: HttpResponse) -> list[str]:
    """The buttons of the task page's outcome forms (name=type), in order."""
    return re.findall(r'<button type="submit" name="type" value="([^"]*)"', response.content.decode())


def error_items(response: HttpResponse) -> list[str]:
    return re.findall(r'<li class="msg-error">(.*?)</li>', response.content.decode(), re.DOTALL)


def opened(client: Client, task: Task) -> Task:
    response = client.post(f"/work/{task.pk}/open/")
    assert response.status_code == 302
    assert response["Location"] == f"/work/{task.pk}/"
    current = fresh(task)
    assert current.status == S.LOCKED
    return current


# -- login required, who may work where ----------------------------------------------------

GET_PAGES = ["/work/", "/work/{id}/"]
POSTS: list[tuple[str, dict[str, str]]] = [
    ("/work/{id}/open/", {}),
    ("/work/{id}/submit/", {"type": "approved", "f-approved-note": "ok"}),
    ("/work/{id}/cancel/", {}),
]
POST_IDS = [path.split("/")[-2] for path, _ in POSTS]


@pytest.mark.parametrize("template", GET_PAGES)
def test_anonymous_get_of_a_work_page_redirects_to_login(client: Client, task: Task, template: str) -> None:
    path = template.format(id=task.pk)

    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"] == login_redirect(path)


@pytest.mark.parametrize(("template", "data"), POSTS, ids=POST_IDS)
def test_anonymous_post_to_a_work_url_redirects_to_login_and_changes_nothing(
    client: Client, task: Task, template: str, data: dict[str, str]
) -> None:
    path = template.format(id=task.pk)
    before = db_state()

    response = client.post(path, data)

    assert response.status_code == 302
    assert response["Location"] == login_redirect(path)
    assert db_state() == before


@pytest.mark.parametrize("who", ["nobody", "carol"])
@pytest.mark.parametrize(("template", "data"), [("/work/{id}/", None), *POSTS], ids=["page", *POST_IDS])
def test_user_not_allowed_at_the_stage_gets_403_and_changes_nothing(
    request: pytest.FixtureRequest,
    alice_client: Client,
    task: Task,
    who: str,
    template: str,
    data: dict[str, str] | None,
) -> None:
    # The task is open by alice, so a submit or cancel would have something to act on.
    opened(alice_client, task)
    client = logged_in(request.getfixturevalue(who))
    path = template.format(id=task.pk)
    before = db_state()

    response = client.get(path) if data is None else client.post(path, data)

    assert response.status_code == 403
    assert db_state() == before


def test_task_of_a_non_form_stage_is_not_offered_even_to_a_superuser(stages: dict[str, Stage]) -> None:
    shipped = task_create(stage=stages["ship"], type="order", payload={})
    boss = make_user("boss", superuser=True)
    client = logged_in(boss)
    before = db_state()

    assert client.get(f"/work/{shipped.pk}/").status_code == 403
    assert client.post(f"/work/{shipped.pk}/open/").status_code == 403
    assert shipped.pk not in listed_ids(client.get(WORK_URL), "waiting")
    assert db_state() == before
    with pytest.raises(TaskStateError, match="not a form stage"):
        form_task_open(task=shipped, user=boss)
    assert fresh(shipped).status == S.PENDING


def test_unknown_task_is_404(alice_client: Client, stages: dict[str, Stage]) -> None:
    assert alice_client.get("/work/999999/").status_code == 404
    assert alice_client.post("/work/999999/open/").status_code == 404


@pytest.mark.parametrize("suffix", ["open/", "submit/", "cancel/"])
def test_get_of_a_post_only_url_is_405_and_changes_nothing(alice_client: Client, task: Task, suffix: str) -> None:
    before = db_state()

    assert alice_client.get(f"/work/{task.pk}/{suffix}").status_code == 405
    assert db_state() == before


def test_form_stages_for_follows_groups_change_permission_and_superuser(
    stages: dict[str, Stage], alice: AbstractBaseUser, carol: AbstractBaseUser, nobody: AbstractBaseUser
) -> None:
    boss = make_user("boss", superuser=True)
    # Carol joins a group that is on no stage: still only the stages without groups.
    carol.groups.add(Group.objects.create(name="bystanders"))
    both_ways = make_user("dora", "change_task")
    both_ways.groups.add(Group.objects.get(name="reviewers"))

    def slugs(user: Any) -> list[str]:
        return sorted(form_stages_for(user).values_list("slug", flat=True))

    assert slugs(boss) == ["review", "triage"]  # form stages only, never script stages
    assert slugs(alice) == ["review"]
    assert slugs(carol) == ["triage"]
    assert slugs(both_ways) == ["review", "triage"]
    assert slugs(nobody) == []
    assert slugs(AnonymousUser()) == []
    assert may_work_on(alice, stages["review"]) and not may_work_on(alice, stages["triage"])
    assert not may_work_on(boss, stages["ship"])


# -- reading never changes anything; CSRF ----------------------------------------------------


def test_get_of_the_task_page_and_the_list_changes_nothing(alice_client: Client, task: Task) -> None:
    before = db_state()

    response = alice_client.get(f"/work/{task.pk}/")
    assert alice_client.get(WORK_URL).status_code == 200

    assert response.status_code == 200
    assert db_state() == before
    assert fresh(task).status == S.PENDING
    # The page offers Open (a POST), not the decision forms.
    assert f"/work/{task.pk}/open/" in page(response).post_actions()
    assert submit_types(response) == []


@pytest.mark.parametrize(("template", "data"), POSTS, ids=POST_IDS)
def test_post_without_csrf_token_is_refused_and_changes_nothing(
    alice: AbstractBaseUser, alice_client: Client, task: Task, template: str, data: dict[str, str]
) -> None:
    opened(alice_client, task)
    browser = logged_in(alice, enforce_csrf_checks=True)
    before = db_state()

    response = browser.post(template.format(id=task.pk), data)

    assert response.status_code == 403
    assert db_state() == before


def test_open_and_submit_with_the_pages_csrf_token_work(alice: AbstractBaseUser, task: Task) -> None:
    browser = logged_in(alice, enforce_csrf_checks=True)
    token = page(browser.get(WORK_URL)).csrf_token()

    response = browser.post(f"/work/{task.pk}/open/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert fresh(task).locked_by == "user:alice"

    token = page(browser.get(f"/work/{task.pk}/")).csrf_token()
    response = browser.post(
        f"/work/{task.pk}/submit/", {"csrfmiddlewaretoken": token, "type": "approved", "f-approved-note": "ok"}
    )
    assert response.status_code == 302
    assert fresh(task).status == S.COMPLETED


# -- the list --------------------------------------------------------------------------------


def test_list_shows_the_waiting_tasks_of_the_users_stages_only(
    stages: dict[str, Stage], alice_client: Client, carol: AbstractBaseUser, bob_client: Client
) -> None:
    review_1 = task_create(stage=stages["review"], type="order", payload={"n": 1})
    review_2 = task_create(stage=stages["review"], type="order", payload={"n": 2})
    held_by_bob = task_create(stage=stages["review"], type="order", payload={"n": 3})
    triage = task_create(stage=stages["triage"], type="order", payload={"n": 4})
    script = task_create(stage=stages["ship"], type="order", payload={"n": 5})
    done = task_create(stage=stages["review"], type="order", payload={"n": 6})
    opened(bob_client, held_by_bob)
    opened(bob_client, done)
    assert bob_client.post(f"/work/{done.pk}/submit/", {"type": "approved"}).status_code == 302

    alices = alice_client.get(WORK_URL)
    carols = logged_in(carol).get(WORK_URL)

    assert alices.status_code == 200
    # Waiting: pending tasks and tasks others hold (they can try; they'll be told who has it).
    assert listed_ids(alices, "waiting") == [review_1.pk, review_2.pk, held_by_bob.pk]
    assert listed_ids(alices, "mine") == []
    assert "Nothing open." in page(alices).text
    assert {f"/work/{t.pk}/open/" for t in (review_1, review_2, held_by_bob)} <= set(page(alices).post_actions())
    assert listed_ids(carols, "waiting") == [triage.pk]
    assert script.pk not in listed_ids(carols, "waiting")


def test_list_of_a_user_in_no_group_says_so(nobody: AbstractBaseUser, task: Task) -> None:
    response = logged_in(nobody).get(WORK_URL)

    assert response.status_code == 200
    assert "You are not in the group of any form stage." in page(response).text
    assert f"/work/{task.pk}/" not in response.content.decode()
    assert page(response).post_actions() == [LOGOUT_URL]


def test_list_shows_the_users_open_tasks_under_open_by_you(
    alice_client: Client, bob_client: Client, stages: dict[str, Stage], task: Task
) -> None:
    other = task_create(stage=stages["review"], type="order", payload={"amount": 2})
    opened(alice_client, task)

    alices = alice_client.get(WORK_URL)
    bobs = bob_client.get(WORK_URL)

    assert "Open by you" in page(alices).text
    assert listed_ids(alices, "mine") == [task.pk]
    assert f'href="/work/{task.pk}/">Continue' in table(alices, "mine")
    assert listed_ids(alices, "waiting") == [other.pk]
    assert listed_ids(bobs, "mine") == []
    assert listed_ids(bobs, "waiting") == [task.pk, other.pk]


# -- open --------------------------------------------------------------------------------------


def test_open_locks_the_task_to_the_user_for_the_stages_lock_timeout(alice_client: Client, task: Task) -> None:
    before = timezone.now()
    current = opened(alice_client, task)
    after = timezone.now()

    assert current.locked_by == "user:alice"
    assert current.lock_token
    assert current.attempts == 1
    assert before + timedelta(seconds=LOCK_TIMEOUT) <= current.locked_until <= after + timedelta(seconds=LOCK_TIMEOUT)
    # Like a worker's claim, opening writes no event: the row holds it until the submit, cancel or expiry.
    assert list(TaskEvent.objects.filter(task=task).values_list("kind", flat=True)) == [K.CREATED]
    assert before <= current.locked_at <= after and current.reclaimed_from == ""

    response = alice_client.get(f"/work/{task.pk}/")
    assert response.status_code == 200
    assert submit_types(response) == ["approved", "declined"]
    html = response.content.decode()
    assert ">Approve</button>" in html and ">Decline</button>" in html
    names = {i.get("name") for i in page(response).inputs}
    assert {"f-approved-note", "f-declined-reason", "f-declined-code"} <= names
    assert f"/work/{task.pk}/cancel/" in page(response).post_actions()


def test_reopening_your_own_task_changes_nothing(alice_client: Client, task: Task) -> None:
    first = opened(alice_client, task)
    before = db_state()

    again = opened(alice_client, task)

    assert db_state() == before
    assert (again.lock_token, again.attempts, again.locked_until) == (first.lock_token, 1, first.locked_until)


def test_second_person_is_told_who_holds_the_task_and_it_is_unchanged(
    alice_client: Client, bob_client: Client, task: Task
) -> None:
    opened(alice_client, task)
    before = db_state()

    response = bob_client.post(f"/work/{task.pk}/open/", follow=True)

    assert response.redirect_chain == [(f"/work/{task.pk}/", 302)]
    assert shown_messages(response) == [("warning", held_message(task, "alice"))]
    assert "alice is working on this task" in page(response).text
    assert submit_types(response) == []
    assert f"/work/{task.pk}/cancel/" not in page(response).post_actions()
    assert db_state() == before
    # The plain page says so as well.
    assert "alice is working on this task" in page(bob_client.get(f"/work/{task.pk}/")).text


def test_task_of_a_paused_stage_cannot_be_opened(alice_client: Client, stages: dict[str, Stage], task: Task) -> None:
    Stage.objects.filter(pk=stages["review"].pk).update(is_paused=True)
    before = db_state()

    response = alice_client.post(f"/work/{task.pk}/open/", follow=True)

    assert response.redirect_chain == [(WORK_URL, 302)]
    assert shown_messages(response) == [("warning", "Stage 'review' is paused; its tasks can't be opened.")]
    assert db_state() == before


def test_completed_task_cannot_be_opened(alice_client: Client, task: Task) -> None:
    opened(alice_client, task)
    alice_client.post(f"/work/{task.pk}/submit/", {"type": "approved"}, follow=True)  # shows its message
    before = db_state()

    response = alice_client.post(f"/work/{task.pk}/open/", follow=True)

    assert shown_messages(response) == [("warning", f"Task {task.pk} is completed; it can't be opened.")]
    assert db_state() == before


# -- submit ------------------------------------------------------------------------------------


def test_submit_approve_completes_the_task_and_sends_the_merged_payload(
    alice_client: Client, stages: dict[str, Stage], task: Task
) -> None:
    claimed_at = opened(alice_client, task).locked_at

    response = alice_client.post(
        f"/work/{task.pk}/submit/", {"type": "approved", "f-approved-note": "  pay it  "}, follow=True
    )

    assert response.status_code == 200
    assert response.redirect_chain == [(WORK_URL, 302)]
    done = fresh(task)
    assert done.status == S.COMPLETED
    assert done.lock_token == ""
    [successor] = Task.objects.filter(parent=task)
    assert successor.stage == stages["invoice"]
    assert successor.type == "approved"
    assert successor.status == S.PENDING
    assert successor.source_stage == stages["review"]
    assert successor.payload == {"amount": 10, "note": "pay it"}
    assert shown_messages(response) == [("success", f"Task {task.pk}: approve, sent to invoice (task {successor.pk}).")]
    [completed] = TaskEvent.objects.filter(task=task, kind=K.COMPLETED)
    assert completed.actor == "user:alice"
    assert completed.details["sent"] == [successor.pk]
    assert claim_of(completed) == claim(1, "user:alice", claimed_at)  # the person's claim it ended
    [created] = TaskEvent.objects.filter(task=successor, kind=K.CREATED)
    assert created.details == {"parent": task.pk}
    # Done: gone from alice's list.
    assert task.pk not in listed_ids(response, "mine") + listed_ids(response, "waiting")


def test_submit_leaves_out_empty_optional_answers(alice_client: Client, task: Task) -> None:
    opened(alice_client, task)

    alice_client.post(
        f"/work/{task.pk}/submit/", {"type": "declined", "f-declined-reason": "too dear", "f-declined-code": ""}
    )

    [successor] = Task.objects.filter(parent=task)
    assert successor.stage.slug == "notify"
    assert successor.payload == {"amount": 10, "reason": "too dear"}


def test_blank_filter_offers_the_tasks_own_type(carol: AbstractBaseUser, stages: dict[str, Stage]) -> None:
    triaged = task_create(stage=stages["triage"], type="order", payload={"amount": 3})
    client = logged_in(carol)
    opened(client, triaged)

    assert submit_types(client.get(f"/work/{triaged.pk}/")) == ["order"]
    response = client.post(f"/work/{triaged.pk}/submit/", {"type": "order"}, follow=True)

    [successor] = Task.objects.filter(parent=triaged)
    assert (successor.stage.slug, successor.type, successor.payload) == ("review", "order", {"amount": 3})
    assert shown_messages(response) == [("success", f"Task {triaged.pk}: order, sent to review (task {successor.pk}).")]


def test_outgoing_types_are_the_transitions_types_in_order_without_repeats(stages: dict[str, Stage]) -> None:
    review = stages["review"]
    assert outgoing_types(review, "order") == ["approved", "declined"]
    Transition.objects.create(source=review, target=stages["ship"], task_type="")
    Transition.objects.create(source=review, target=stages["ship"], task_type="approved")
    assert outgoing_types(review, "order") == ["approved", "declined", "order"]
    assert outgoing_types(review, "declined") == ["approved", "declined"]
    assert outgoing_types(stages["invoice"], "order") == []


def assert_refused_and_still_held(response: HttpResponse, task: Task, before: Any, token: str) -> None:
    assert response.status_code == 400
    assert db_state() == before
    current = fresh(task)
    assert (current.status, current.locked_by, current.lock_token) == (S.LOCKED, "user:alice", token)
    assert not Task.objects.filter(parent=task).exists()
    # The decision forms are shown again, so the person can correct and resend.
    assert submit_types(response) == ["approved", "declined"]


def test_submit_missing_a_required_field_is_400_with_the_message_and_sends_nothing(
    alice_client: Client, task: Task
) -> None:
    token = opened(alice_client, task).lock_token
    before = db_state()

    response = alice_client.post(f"/work/{task.pk}/submit/", {"type": "declined", "f-declined-code": "ABC"})

    assert_refused_and_still_held(response, task, before, token)
    assert "This field is required." in response.content.decode()
    # What was typed is kept.
    assert 'name="f-declined-code" value="ABC"' in response.content.decode()


def test_submit_breaking_a_rule_the_form_checks_is_400(alice_client: Client, task: Task) -> None:
    token = opened(alice_client, task).lock_token
    before = db_state()

    response = alice_client.post(f"/work/{task.pk}/submit/", {"type": "declined", "f-declined-reason": "no"})

    assert_refused_and_still_held(response, task, before, token)
    assert "Ensure this value has at least 3 characters (it has 2)." in response.content.decode()


def test_submit_breaking_a_schema_rule_only_the_service_checks_is_400_with_its_message(
    alice_client: Client, task: Task
) -> None:
    token = opened(alice_client, task).lock_token
    before = db_state()

    response = alice_client.post(
        f"/work/{task.pk}/submit/", {"type": "declined", "f-declined-reason": "too dear", "f-declined-code": "abc"}
    )

    assert_refused_and_still_held(response, task, before, token)
    assert error_items(response) == [
        "Does not match the &#x27;declined&#x27; schema of stage &#x27;review&#x27;: "
        "code: &#x27;abc&#x27; does not match &#x27;^[A-Z]{3}$&#x27;"
    ]


@pytest.mark.parametrize("type", ["bogus", "", "order"])
def test_submit_with_a_type_that_is_not_a_button_is_400(alice_client: Client, task: Task, type: str) -> None:
    token = opened(alice_client, task).lock_token
    before = db_state()

    response = alice_client.post(f"/work/{task.pk}/submit/", {"type": type})

    assert_refused_and_still_held(response, task, before, token)
    assert error_items(response) == [f"&#x27;{type}&#x27; is not an outcome of this stage."]


def test_submit_without_opening_first_is_refused(alice_client: Client, task: Task) -> None:
    before = db_state()

    response = alice_client.post(f"/work/{task.pk}/submit/", {"type": "approved"}, follow=True)

    assert shown_messages(response) == [("warning", f"Task {task.pk} is pending; open it again to work on it.")]
    assert db_state() == before


def test_submit_of_a_task_someone_else_holds_is_refused(alice_client: Client, bob_client: Client, task: Task) -> None:
    opened(alice_client, task)
    before = db_state()

    response = bob_client.post(f"/work/{task.pk}/submit/", {"type": "approved"}, follow=True)

    assert response.redirect_chain == [(f"/work/{task.pk}/", 302)]
    assert shown_messages(response) == [("warning", held_message(task, "alice"))]
    assert db_state() == before


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_hands_the_task_back_without_counting_the_attempt(alice_client: Client, task: Task) -> None:
    Task.objects.filter(pk=task.pk).update(attempts=2)  # two earlier attempts
    claimed_at = opened(alice_client, task).locked_at
    assert fresh(task).attempts == 3

    response = alice_client.post(f"/work/{task.pk}/cancel/", follow=True)

    assert response.redirect_chain == [(WORK_URL, 302)]
    assert shown_messages(response) == [("info", f"Task {task.pk} is back in the queue.")]
    current = fresh(task)
    assert current.status == S.PENDING
    assert current.attempts == 2
    assert (current.locked_by, current.lock_token, current.locked_until) == ("", "", None)
    assert current.available_at <= timezone.now()
    [released] = TaskEvent.objects.filter(task=task, kind=K.RELEASED)
    assert released.actor == "user:alice"
    # The claim it hands back was attempt 3, though the attempt is not counted.
    assert released.details == {**claim(3, "user:alice", claimed_at), "reason": "closed by alice"}
    assert listed_ids(response, "waiting") == [task.pk]
    assert not Task.objects.filter(parent=task).exists()


def test_cancel_of_a_task_someone_else_holds_is_refused(alice_client: Client, bob_client: Client, task: Task) -> None:
    opened(alice_client, task)
    before = db_state()

    response = bob_client.post(f"/work/{task.pk}/cancel/", follow=True)

    assert shown_messages(response) == [("warning", held_message(task, "alice"))]
    assert db_state() == before


# -- escaping ------------------------------------------------------------------------------------


def test_payload_is_escaped_on_the_list_and_the_task_page(alice_client: Client, stages: dict[str, Stage]) -> None:
    evil = task_create(stage=stages["review"], type="order", payload={"note": SCRIPT})

    listing = alice_client.get(WORK_URL).content.decode()
    before_open = alice_client.get(f"/work/{evil.pk}/").content.decode()
    opened(alice_client, evil)
    while_open = alice_client.get(f"/work/{evil.pk}/").content.decode()

    for html in (listing, before_open, while_open):
        assert SCRIPT not in html
        assert ESCAPED_SCRIPT in html
    # The approve form's "note" field starts from the payload's value, escaped too.
    assert f'name="f-approved-note" value="{ESCAPED_SCRIPT}"' in while_open


def test_type_named_in_a_refusal_is_escaped(alice_client: Client, task: Task) -> None:
    opened(alice_client, task)

    response = alice_client.post(f"/work/{task.pk}/submit/", {"type": SCRIPT})

    assert response.status_code == 400
    assert SCRIPT not in response.content.decode()
    assert ESCAPED_SCRIPT in response.content.decode()


# -- lock expiry -----------------------------------------------------------------------------------


def test_expired_lock_lets_another_user_open_it_and_the_first_users_submit_is_refused(
    alice_client: Client, bob_client: Client, task: Task
) -> None:
    opened(alice_client, task)
    expire_lock(task)

    bobs = opened(bob_client, task)
    assert bobs.locked_by == "user:bob"
    assert bobs.attempts == 2
    assert bobs.locked_until > timezone.now()
    before = db_state()

    response = alice_client.post(f"/work/{task.pk}/submit/", {"type": "approved", "f-approved-note": "x"}, follow=True)

    assert shown_messages(response) == [("warning", held_message(task, "bob"))]
    assert "bob is working on this task" in page(response).text
    assert db_state() == before
    assert not Task.objects.filter(parent=task).exists()
    # Bob can still decide it.
    assert bob_client.post(f"/work/{task.pk}/submit/", {"type": "approved"}).status_code == 302
    assert fresh(task).status == S.COMPLETED


def test_reopening_your_own_task_after_the_lock_expired_locks_it_again(alice_client: Client, task: Task) -> None:
    opened(alice_client, task)
    expire_lock(task)
    before = timezone.now()

    again = opened(alice_client, task)

    assert again.locked_by == "user:alice"
    assert again.locked_until >= before + timedelta(seconds=LOCK_TIMEOUT)
    assert again.attempts == 1  # the same person carrying on: no new attempt
    assert task.events.filter(kind="lock_extended", actor="user:alice").count() == 1


def test_an_expired_lock_on_the_last_attempt_is_not_reported_as_someone_working(
    alice_client: Client, bob_client: Client, task: Task
) -> None:
    Stage.objects.filter(pk=task.stage_id).update(max_attempts=1)
    opened(alice_client, task)
    expire_lock(task)

    response = bob_client.post(f"/work/{task.pk}/open/", follow=True)

    text = response.content.decode()
    assert "used all 1 attempts" in text and "being worked on" not in text
    assert fresh(task).locked_by == "user:alice"


def test_task_page_offers_open_when_the_holders_lock_expired(
    alice_client: Client, bob_client: Client, task: Task
) -> None:
    opened(alice_client, task)
    expire_lock(task)

    response = bob_client.get(f"/work/{task.pk}/")

    assert f"/work/{task.pk}/open/" in page(response).post_actions()


# -- the services directly ---------------------------------------------------------------------


def test_services_open_submit_cancel_and_who_holds_it(
    alice: AbstractBaseUser, bob: AbstractBaseUser, stages: dict[str, Stage], task: Task
) -> None:
    held = form_task_open(task=task, user=alice)
    with pytest.raises(TaskHeldError) as refused:
        form_task_open(task=task, user=bob)
    assert (refused.value.holder, refused.value.locked_until) == ("alice", held.locked_until)
    with pytest.raises(TaskHeldError):
        form_task_submit(task_id=task.pk, user=bob, type="approved", fields={})
    with pytest.raises(TaskHeldError):
        form_task_cancel(task_id=task.pk, user=bob)

    form_task_cancel(task_id=task.pk, user=alice)
    with pytest.raises(TaskError, match="pending; open it again"):
        form_task_cancel(task_id=task.pk, user=alice)

    form_task_open(task=task, user=bob)
    [sent] = form_task_submit(task_id=task.pk, user=bob, type="declined", fields={"reason": "late"})
    assert (sent.stage, sent.payload, sent.parent_id) == (stages["notify"], {"amount": 10, "reason": "late"}, task.pk)


# -- forms.schema: JSON Schema properties -> form fields -------------------------------------------

EVERY_KIND = {
    "type": "object",
    "required": ["name", "colour", "count", "agree"],
    "properties": {
        "name": {"type": "string", "title": "Full name", "description": "As on the card.", "maxLength": 20},
        "essay": {"type": "string", "maxLength": 1000},
        "memo": {"type": "string", "format": "textarea"},
        "colour": {"enum": ["red", "green"]},
        "size": {"type": "integer", "enum": [1, 2, 3]},
        "count": {"type": "integer", "minimum": 1, "maximum": 5},
        "ratio": {"type": "number", "minimum": 0, "default": 0.5},
        "agree": {"type": "boolean"},
        "rush": {"type": "boolean", "default": True},
        "extra": {"type": "object"},
        "tags": {"type": "array"},
        "anything": {},
        "ignored": True,
    },
}


def form_for(data: dict[str, str] | None = None, payload: dict[str, Any] | None = None) -> forms.Form:
    return schema_form(EVERY_KIND, data=data, payload=payload or {}, prefix="f-x")


def test_schema_form_has_one_field_per_property_of_the_right_kind() -> None:
    form = form_for()
    f = form.fields

    assert list(f) == [
        "name",
        "essay",
        "memo",
        "colour",
        "size",
        "count",
        "ratio",
        "agree",
        "rush",
        "extra",
        "tags",
        "anything",
    ]
    assert type(f["name"]) is forms.CharField and isinstance(f["name"].widget, forms.TextInput)
    assert (f["name"].label, f["name"].help_text, f["name"].max_length) == ("Full name", "As on the card.", 20)
    assert isinstance(f["essay"].widget, forms.Textarea) and isinstance(f["memo"].widget, forms.Textarea)
    assert isinstance(f["colour"], forms.TypedChoiceField)
    assert f["colour"].choices == [('"red"', "red"), ('"green"', "green")]  # required: no blank choice
    assert f["size"].choices == [("", "—"), ("1", "1"), ("2", "2"), ("3", "3")]
    assert type(f["count"]) is forms.IntegerField
    assert type(f["ratio"]) is forms.FloatField
    assert type(f["agree"]) is forms.BooleanField
    for name in ("extra", "tags", "anything"):
        assert type(f[name]) is forms.JSONField
    assert f["essay"].label == "Essay"
    # Field names carry the form's prefix, so several forms share one page.
    assert form["name"].html_name == "f-x-name"


def test_schema_form_required_follows_the_schema_except_for_booleans() -> None:
    f = form_for().fields

    assert {name for name, field in f.items() if field.required} == {"name", "colour", "count"}
    assert "required" in str(form_for()["name"]) and "required" not in str(form_for()["essay"])


def test_schema_form_initial_values_come_from_the_payload_then_the_default() -> None:
    form = form_for(
        payload={"name": "Ann", "colour": "green", "size": 2, "count": 3, "agree": False, "extra": {"a": 1}}
    )
    f = form.fields

    assert (f["name"].initial, f["count"].initial, f["agree"].initial) == ("Ann", 3, False)
    assert (f["colour"].initial, f["size"].initial) == ('"green"', "2")  # enums: the JSON of the value
    assert f["extra"].initial == {"a": 1}
    assert (f["ratio"].initial, f["rush"].initial, f["essay"].initial) == (0.5, True, None)
    assert 'value="Ann"' in str(form["name"])
    assert '<option value="&quot;green&quot;" selected>green</option>' in str(form["colour"])


def test_schema_form_cleans_each_kind_and_leaves_out_empty_optional_answers() -> None:
    form = form_for(
        {
            "f-x-name": " Ann ",
            "f-x-essay": "",
            "f-x-colour": '"red"',
            "f-x-size": "",
            "f-x-count": "4",
            "f-x-ratio": "",
            # agree and rush unchecked: a browser sends nothing for them
            "f-x-extra": '{"a": [1, 2]}',
            "f-x-tags": "",
        }
    )

    assert form.is_valid(), form.errors
    assert form_fields(form) == {
        "name": "Ann",
        "colour": "red",
        "count": 4,
        "agree": False,
        "rush": False,
        "extra": {"a": [1, 2]},
    }


def test_schema_form_cleans_enum_numbers_floats_and_checked_booleans() -> None:
    form = form_for(
        {
            "f-x-name": "Ann",
            "f-x-colour": '"green"',
            "f-x-size": "3",
            "f-x-count": "1",
            "f-x-ratio": "2.5",
            "f-x-agree": "on",
            "f-x-anything": "null",
        }
    )

    assert form.is_valid(), form.errors
    assert form_fields(form) == {
        "name": "Ann",
        "colour": "green",
        "size": 3,
        "count": 1,
        "ratio": 2.5,
        "agree": True,
        "rush": False,
    }


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"f-x-colour": '"red"', "f-x-count": "1"}, "name"),  # required string missing
        ({"f-x-name": "   ", "f-x-colour": '"red"', "f-x-count": "1"}, "name"),  # only spaces
        ({"f-x-name": "x" * 21, "f-x-colour": '"red"', "f-x-count": "1"}, "name"),  # maxLength
        ({"f-x-name": "Ann", "f-x-colour": '"blue"', "f-x-count": "1"}, "colour"),  # not in the enum
        ({"f-x-name": "Ann", "f-x-colour": '"red"', "f-x-count": "6"}, "count"),  # maximum
        ({"f-x-name": "Ann", "f-x-colour": '"red"', "f-x-count": "1.5"}, "count"),  # not an integer
        ({"f-x-name": "Ann", "f-x-colour": '"red"', "f-x-count": "1", "f-x-ratio": "-1"}, "ratio"),  # minimum
        ({"f-x-name": "Ann", "f-x-colour": '"red"', "f-x-count": "1", "f-x-extra": "{nope"}, "extra"),  # not JSON
    ],
)
def test_schema_form_refuses_what_the_schema_forbids(data: dict[str, str], field: str) -> None:
    form = form_for(data)

    assert not form.is_valid()
    assert list(form.errors) == [field]


def test_schema_form_without_a_schema_has_no_fields() -> None:
    assert schema_form(None, payload={"a": 1}, prefix="f-x").fields == {}
    assert schema_form({"type": "object"}, payload={}, prefix="f-x").fields == {}
    empty = schema_form(None, data={"type": "x"}, payload={}, prefix="f-x")
    assert empty.is_valid() and form_fields(empty) == {}
