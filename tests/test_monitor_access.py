"""Monitoring pages: login, permissions, CSRF, escaping and safe redirects.

Everything goes through the URLs and the rendered HTML, the way a browser
would use the pages (tests.support.pages reads them).
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpResponse
from django.shortcuts import resolve_url
from django.test import Client

from tasks_app.models import Stage, Task
from tasks_app.services import task_claim, task_create, task_fail
from tests.support.pages import (
    ESCAPED_SCRIPT,
    LIST_URL,
    LOGIN_URL,
    LOGOUT_URL,
    SCRIPT,
    login_redirect,
    page,
)
from tests.support.users import logged_in, make_user
from tests.support.world import db_state

# Every URL that changes something, as (path template, POST data); {id} is a task id.
ACTION_POSTS: list[tuple[str, dict[str, str]]] = [
    ("/tasks/{id}/retry/", {}),
    ("/tasks/{id}/release/", {}),
    ("/tasks/{id}/complete/", {}),
    ("/tasks/{id}/duplicate/", {}),
    ("/tasks/{id}/edit/", {"payload": '{"amount": 666}'}),
    ("/tasks/new/", {"stage": "review", "type": "order", "payload": '{"amount": 1}'}),
    ("/tasks/bulk/", {"action": "complete", "scope": "all", "query": ""}),
]
ACTION_IDS = [path.split("/")[-2] for path, _ in ACTION_POSTS]

# Pages behind login, as path templates.
PAGES = [
    "/overview/",
    "/tasks/",
    "/tasks/?status=pending&stage=review",
    "/tasks/{id}/",
    "/tasks/{id}/edit/",
    "/tasks/new/",
    "/tasks/rows/",
    "/workers/",
]


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture
def viewer_client(db: None) -> Client:
    """Only the view permissions of tasks_app."""
    return logged_in(make_user("viewer", "view_task", "view_taskevent", "view_stage", "view_workerprocess"))


@pytest.fixture
def nobody_client(db: None) -> Client:
    """Logged in, with no permission at all."""
    return logged_in(make_user("nobody"))


# -- login required ------------------------------------------------------------------


@pytest.mark.parametrize("template", PAGES)
def test_anonymous_get_of_a_page_redirects_to_login_with_next(
    client: Client, pending_task: Task, template: str
) -> None:
    path = template.format(id=pending_task.pk)

    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"] == login_redirect(path)


@pytest.mark.parametrize(("template", "data"), ACTION_POSTS, ids=ACTION_IDS)
def test_anonymous_post_to_an_action_url_redirects_to_login_and_changes_nothing(
    client: Client, every_state: dict[str, Task], template: str, data: dict[str, str]
) -> None:
    path = template.format(id=every_state["completed"].pk)
    before = db_state()

    response = client.post(path, data)

    assert response.status_code == 302
    assert response["Location"] == login_redirect(path)
    assert db_state() == before


def test_home_page_leads_an_anonymous_user_to_the_login_page(client: Client, db: None) -> None:
    response = client.get("/", follow=True)

    assert response.status_code == 200
    assert response.redirect_chain[-1][0].startswith(LOGIN_URL + "?next=")
    assert response.templates[0].name == "registration/login.html"


def test_login_page_renders_a_form_with_username_password_and_csrf_token(client: Client, db: None) -> None:
    response = client.get(LOGIN_URL)

    assert response.status_code == 200
    p = page(response)
    assert LOGIN_URL in p.post_actions()
    names = {i.get("name") for i in p.inputs}
    assert {"username", "password", "csrfmiddlewaretoken", "next"} <= names
    assert p.csrf_token()


def test_logging_in_through_the_form_with_csrf_checks_returns_to_the_page_asked_for(pending_task: Task) -> None:
    make_user("alice", "view_task")
    browser = Client(enforce_csrf_checks=True)
    login_url = browser.get(LIST_URL)["Location"]
    form = page(browser.get(login_url))
    fields = {i["name"]: i.get("value", "") for i in form.inputs if i.get("name")}
    assert fields["next"] == LIST_URL

    response = browser.post(LOGIN_URL, {**fields, "username": "alice", "password": "pw"}, follow=True)

    assert response.status_code == 200
    assert response.redirect_chain == [(LIST_URL, 302)]
    assert response.context["user"].get_username() == "alice"
    assert f'id="task-{pending_task.pk}"' in response.content.decode()


def test_login_with_a_wrong_password_shows_an_error_and_stays_anonymous(client: Client, db: None) -> None:
    make_user("alice", "view_task")

    response = client.post(LOGIN_URL, {"username": "alice", "password": "wrong"})

    assert response.status_code == 200
    assert "didn't match" in response.content.decode()
    assert client.get(LIST_URL).status_code == 302


def test_login_post_without_csrf_token_is_refused(db: None) -> None:
    make_user("alice", "view_task")
    browser = Client(enforce_csrf_checks=True)

    response = browser.post(LOGIN_URL, {"username": "alice", "password": "pw"})

    assert response.status_code == 403
    assert browser.get(LIST_URL).status_code == 302  # still anonymous


@pytest.mark.parametrize(
    ("next_url", "expected"),
    [
        ("/tasks/?status=failed", "/tasks/?status=failed"),
        ("/workers/", "/workers/"),
        ("https://evil.example/steal", None),
        ("//evil.example/steal", None),
        ("javascript:alert(1)", None),
    ],
)
def test_login_follows_a_local_next_and_ignores_an_external_one(
    client: Client, db: None, next_url: str, expected: str | None
) -> None:
    make_user("alice", "view_task")

    response = client.post(LOGIN_URL, {"username": "alice", "password": "pw", "next": next_url})

    assert response.status_code == 302
    assert response["Location"] == (expected or resolve_url(settings.LOGIN_REDIRECT_URL))


def test_logout_form_on_every_page_logs_out(admin_client: Client, pending_task: Task) -> None:
    assert LOGOUT_URL in page(admin_client.get(LIST_URL)).post_actions()

    response = admin_client.post(LOGOUT_URL)

    assert response.status_code == 302
    assert admin_client.get(LIST_URL).status_code == 302


# -- permissions ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pending", "locked", "expired", "completed", "failed"])
def test_viewer_sees_the_task_detail_without_any_action_form_or_edit_link(
    viewer_client: Client, every_state: dict[str, Task], name: str
) -> None:
    task = every_state[name]

    response = viewer_client.get(f"/tasks/{task.pk}/")

    assert response.status_code == 200
    p = page(response)
    assert p.post_actions() == [LOGOUT_URL]
    assert not [h for h in p.hrefs() if h.endswith("/edit/") or h.startswith("/tasks/new/")]


def test_viewer_sees_the_task_list_without_action_forms_checkboxes_or_new_task_link(
    viewer_client: Client, every_state: dict[str, Task]
) -> None:
    response = viewer_client.get(LIST_URL)

    assert response.status_code == 200
    html = response.content.decode()
    for task in every_state.values():
        assert f'id="task-{task.pk}"' in html
    p = page(response)
    assert p.post_actions() == [LOGOUT_URL]
    assert not [i for i in p.inputs if i.get("name") == "ids"]
    assert "/tasks/new/" not in p.hrefs()


@pytest.mark.parametrize("path", ["/workers/", "/overview/"])
def test_viewer_sees_the_other_pages_without_action_forms(
    viewer_client: Client, every_state: dict[str, Task], path: str
) -> None:
    response = viewer_client.get(path)

    assert response.status_code == 200
    assert page(response).post_actions() == [LOGOUT_URL]


@pytest.mark.parametrize(("template", "data"), ACTION_POSTS, ids=ACTION_IDS)
@pytest.mark.parametrize("name", ["pending", "locked", "completed", "failed"])
def test_viewer_post_to_an_action_url_is_refused_403_and_changes_nothing(
    viewer_client: Client, every_state: dict[str, Task], name: str, template: str, data: dict[str, str]
) -> None:
    path = template.format(id=every_state[name].pk)
    before = db_state()

    response = viewer_client.post(path, data)

    assert response.status_code == 403
    assert db_state() == before


@pytest.mark.parametrize("template", ["/tasks/{id}/edit/", "/tasks/new/"])
def test_viewer_get_of_a_form_page_is_refused_403(viewer_client: Client, pending_task: Task, template: str) -> None:
    assert viewer_client.get(template.format(id=pending_task.pk)).status_code == 403


@pytest.mark.parametrize(
    "template", ["/overview/", "/tasks/", "/tasks/?status=pending", "/tasks/{id}/", "/tasks/rows/"]
)
def test_user_without_view_task_gets_403_on_the_task_pages(
    nobody_client: Client, pending_task: Task, template: str
) -> None:
    response = nobody_client.get(template.format(id=pending_task.pk))

    assert response.status_code == 403
    assert b"amount" not in response.content


def test_user_without_view_workerprocess_gets_403_on_the_workers_page(db: None) -> None:
    client = logged_in(make_user("tasks-only", "view_task"))

    assert client.get("/workers/").status_code == 403


def test_change_only_user_sees_state_actions_but_cannot_duplicate_or_create(every_state: dict[str, Task]) -> None:
    client = logged_in(make_user("changer", "view_task", "change_task"))
    task = every_state["completed"]
    before = db_state()

    actions = page(client.get(f"/tasks/{task.pk}/")).post_actions()
    list_page = page(client.get(LIST_URL))

    assert f"/tasks/{task.pk}/retry/" in actions
    assert f"/tasks/{task.pk}/duplicate/" not in actions
    assert "/tasks/new/" not in list_page.hrefs()
    assert client.post(f"/tasks/{task.pk}/duplicate/").status_code == 403
    assert client.post("/tasks/new/", {"stage": "review", "type": "x", "payload": "{}"}).status_code == 403
    assert client.post("/tasks/bulk/", {"action": "duplicate", "ids": [task.pk]}).status_code == 403
    assert db_state() == before


def test_add_only_user_can_duplicate_but_sees_no_state_actions(every_state: dict[str, Task]) -> None:
    client = logged_in(make_user("adder", "view_task", "add_task"))
    task = every_state["failed"]

    actions = page(client.get(f"/tasks/{task.pk}/")).post_actions()

    assert f"/tasks/{task.pk}/duplicate/" in actions
    assert not [a for a in actions if a.endswith(("/retry/", "/release/", "/complete/"))]
    before = db_state()
    assert client.post(f"/tasks/{task.pk}/retry/").status_code == 403
    assert client.post(f"/tasks/{task.pk}/edit/", {"payload": "{}"}).status_code == 403
    assert db_state() == before


@pytest.mark.parametrize(
    ("name", "offered"),
    [
        ("pending", {"complete", "duplicate", "cancel"}),
        ("locked", {"release", "complete", "duplicate", "cancel"}),
        ("completed", {"retry", "duplicate"}),
        ("failed", {"retry", "complete", "duplicate", "cancel"}),
    ],
)
def test_operator_is_offered_the_actions_that_apply_to_the_task_state(
    admin_client: Client, every_state: dict[str, Task], name: str, offered: set[str]
) -> None:
    task = every_state[name]

    p = page(admin_client.get(f"/tasks/{task.pk}/"))

    prefix = f"/tasks/{task.pk}/"
    assert {a.removeprefix(prefix).strip("/") for a in p.post_actions() if a.startswith(prefix)} == offered
    assert (f"{prefix}edit/" in p.hrefs()) == (task.status != Task.Status.LOCKED)


# -- CSRF ---------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "data"), ACTION_POSTS, ids=ACTION_IDS)
def test_action_post_without_csrf_token_is_refused_403_and_changes_nothing(
    admin_user: AbstractBaseUser, every_state: dict[str, Task], template: str, data: dict[str, str]
) -> None:
    browser = logged_in(admin_user, enforce_csrf_checks=True)
    path = template.format(id=every_state["failed"].pk)
    before = db_state()

    response = browser.post(path, data)

    assert response.status_code == 403
    assert db_state() == before


def test_action_post_with_the_csrf_token_of_the_page_is_accepted(
    admin_user: AbstractBaseUser, every_state: dict[str, Task]
) -> None:
    browser = logged_in(admin_user, enforce_csrf_checks=True)
    task = every_state["failed"]
    token = page(browser.get(f"/tasks/{task.pk}/")).csrf_token()

    response = browser.post(f"/tasks/{task.pk}/retry/", {"csrfmiddlewaretoken": token})

    assert response.status_code == 302
    task.refresh_from_db()
    assert task.status == Task.Status.PENDING


# -- escaping -----------------------------------------------------------------------


@pytest.fixture
def script_task(review: Stage) -> Task:
    return task_create(stage=review, type=f"t{SCRIPT}", payload={"note": SCRIPT, SCRIPT: "key"})


def assert_escaped(response: HttpResponse) -> str:
    html = response.content.decode()
    assert "<script>alert" not in html
    assert "alert(1)" in html
    return html


def test_script_in_payload_and_type_shows_as_text_on_the_task_list(admin_client: Client, script_task: Task) -> None:
    html = assert_escaped(admin_client.get(LIST_URL))

    assert ESCAPED_SCRIPT in html
    assert SCRIPT in page(admin_client.get(LIST_URL)).text  # what the reader sees


def test_script_in_payload_and_type_shows_as_text_on_the_task_detail(admin_client: Client, script_task: Task) -> None:
    response = admin_client.get(f"/tasks/{script_task.pk}/")

    html = assert_escaped(response)
    assert ESCAPED_SCRIPT in html
    assert f'"note": "{SCRIPT}"' in page(response).text


def test_script_in_payload_shows_as_text_in_the_edit_form(admin_client: Client, script_task: Task) -> None:
    Task.objects.filter(pk=script_task.pk).update(payload={"note": f"</textarea>{SCRIPT}"})

    html = assert_escaped(admin_client.get(f"/tasks/{script_task.pk}/edit/"))

    assert "</textarea><script>" not in html
    assert f"&lt;/textarea&gt;{ESCAPED_SCRIPT}" in html


def test_script_in_worker_id_error_and_traceback_shows_as_text_on_the_detail(
    admin_client: Client, review: Stage
) -> None:
    task_create(stage=review, type="order", payload={})
    [claim] = task_claim(stage=review, worker_id=f"w{SCRIPT}")
    assert f"w{ESCAPED_SCRIPT}" in assert_escaped(admin_client.get(f"/tasks/{claim.pk}/"))  # locked by it
    task_fail(task_id=claim.pk, lock_token=claim.lock_token, error=f"E{SCRIPT}", traceback=f"T{SCRIPT}")

    html = assert_escaped(admin_client.get(f"/tasks/{claim.pk}/"))

    assert f"E{ESCAPED_SCRIPT}" in html
    assert f"T{ESCAPED_SCRIPT}" in html


@pytest.mark.parametrize(
    "query",
    [
        {"q": SCRIPT},
        {"type": SCRIPT},
        {"payload": f'note="{SCRIPT}"'},
        {"stage": SCRIPT},  # an invalid choice: the error message repeats the value
        {"status": SCRIPT},
        {"created_after": SCRIPT},
        {"sort": SCRIPT, "cursor": SCRIPT},
    ],
    ids=lambda q: "+".join(q),
)
def test_filter_input_echoed_on_the_task_list_is_escaped(
    admin_client: Client, pending_task: Task, query: dict[str, str]
) -> None:
    response = admin_client.get(LIST_URL, query)

    # An invalid filter or cursor is a 400 page that shows its error (the value escaped).
    invalid = {"stage", "status", "created_after", "cursor"}
    assert response.status_code == (400 if invalid & query.keys() else 200)
    assert "<script>alert" not in response.content.decode()


def test_input_echoed_by_the_create_form_after_an_error_is_escaped(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    response = admin_client.post(
        "/tasks/new/", {"stage": f"x{SCRIPT}", "type": '"><script>alert(1)</script>', "payload": SCRIPT}
    )

    assert response.status_code == 400
    assert "<script>alert" not in response.content.decode()


# -- safe redirects after an action ---------------------------------------------------------


@pytest.mark.parametrize("next_url", ["/tasks/?status=pending&stage=ship", "/workers/"])
def test_action_redirects_to_a_local_next(admin_client: Client, every_state: dict[str, Task], next_url: str) -> None:
    task = every_state["completed"]

    response = admin_client.post(f"/tasks/{task.pk}/retry/", {"next": next_url})

    assert response.status_code == 302
    assert response["Location"] == next_url


@pytest.mark.parametrize(
    "next_url",
    [
        "https://evil.example/",
        "//evil.example/",
        "http://evil.example/tasks/",
        "https:///evil.example/",
        "javascript:alert(1)",
        "\\\\evil.example/",
    ],
)
@pytest.mark.parametrize("action", ["retry", "complete"])
def test_action_ignores_an_external_next_and_redirects_to_the_task(
    admin_client: Client, every_state: dict[str, Task], next_url: str, action: str
) -> None:
    task = every_state["failed"]

    response = admin_client.post(f"/tasks/{task.pk}/{action}/", {"next": next_url})

    assert response.status_code == 302
    assert response["Location"] == f"/tasks/{task.pk}/"


def test_failed_duplicate_ignores_an_external_next(admin_client: Client, db: None) -> None:
    response = admin_client.post("/tasks/999999/duplicate/", {"next": "https://evil.example/"})

    assert response.status_code == 302
    assert response["Location"] == LIST_URL
