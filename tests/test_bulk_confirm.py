"""Bulk actions on the task list (issue 14, section 2): Apply leads to a confirmation naming the action, the exact
number of tasks (counted then) and the filter; only its Confirm acts. No action, no rows or no permission: refused,
nothing changed. Every changed task gets its history event.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import task_claim, task_create, task_fail
from tests.support.pages import ESCAPED_SCRIPT, LIST_URL, SCRIPT, page, shown_messages
from tests.support.users import logged_in, make_user
from tests.support.world import db_state

BULK_URL = "/tasks/bulk/"


@pytest.fixture
def check_stock(world: dict[str, Stage]) -> Stage:
    return Stage.objects.create(slug="check-stock", name="Check stock", kind=Stage.Kind.SCRIPT, handler="x.y")


def failed_task(stage: Stage, type: str = "order") -> Task:
    task = task_create(stage=stage, type=type, payload={})
    [claim] = task_claim(stage=stage, worker_id="w1")
    assert claim.pk == task.pk
    task_fail(task_id=claim.pk, lock_token=claim.lock_token, error="ValueError: no")
    return task


def confirm_page(client: Client, data: dict[str, Any]) -> tuple[str, dict[str, list[str]]]:
    """POST the list's bulk form: the confirmation's question and what its Confirm button would post."""
    response = client.post(BULK_URL, data)
    assert response.status_code == 200
    shown = page(response)
    question = shown.text.split("Confirm a bulk action ", 1)[1].split("?", 1)[0] + "?"
    return question, shown.submitted("bulk-confirm")


def test_apply_asks_with_the_action_the_exact_count_and_the_filter_then_confirm_acts(
    admin_client: Client, check_stock: Stage, world: dict[str, Stage]
) -> None:
    chosen = [failed_task(check_stock) for _ in range(3)]
    failed_task(check_stock, type="refund")  # another type
    failed_task(world["review"])  # another stage
    later = timezone.now() + timedelta(hours=1)
    task_create(stage=check_stock, type="order", payload={}, available_at=later)  # pending (and not claimed below)
    query = "stage=check-stock&status=failed&type=order&sort=id"
    before = db_state()

    question, confirm = confirm_page(admin_client, {"action": "retry", "scope": "all", "query": query})

    assert question == "Retry 3 failed tasks at Check stock (type: order)?"
    assert db_state() == before  # asking changes nothing
    assert confirm["confirm"] == ["1"] and confirm["query"] == [query] and confirm["upto"] == [str(chosen[-1].pk)]

    late = failed_task(check_stock)  # matches too, but came after the question was asked
    response = admin_client.post(BULK_URL, confirm, follow=True)

    assert response.redirect_chain == [(f"{LIST_URL}?{query}", 302)]
    assert shown_messages(response) == [("success", "Retried 3 task(s).")]
    statuses = dict(Task.objects.values_list("id", "status"))
    assert [statuses[t.pk] for t in chosen] == [Task.Status.PENDING] * 3
    assert statuses[late.pk] == Task.Status.FAILED  # not counted, so not acted on
    retried = TaskEvent.objects.filter(kind=TaskEvent.Kind.RETRIED, actor="user:admin")
    assert sorted(retried.values_list("task_id", flat=True)) == [t.pk for t in chosen]


@pytest.mark.parametrize(
    ("action", "query", "question"),
    [
        ("complete", "status=failed&status=pending", "Mark 2 failed or pending tasks as completed?"),
        ("release", "stage=check-stock&stage=review", "Release the locks of 2 tasks at Check stock or Review?"),
        ("duplicate", "payload=a%3D1", "Duplicate 1 task (payload contains: a=1) among tasks {searched}?"),
    ],
)
def test_the_question_names_each_action_and_filter(
    admin_client: Client, check_stock: Stage, world: dict[str, Stage], action: str, query: str, question: str
) -> None:
    first = failed_task(check_stock)
    last = task_create(stage=world["review"], type="order", payload={"a": 1})
    searched = f"#{first.pk:,}–#{last.pk:,}"  # a payload lookup reads one range of ids, as the list says

    asked = confirm_page(admin_client, {"action": action, "scope": "all", "query": query})[0]
    assert asked == question.format(searched=searched)


def test_selected_rows_are_named_and_counted_as_they_exist(admin_client: Client, check_stock: Stage) -> None:
    a, b = failed_task(check_stock), failed_task(check_stock)

    question, confirm = confirm_page(
        admin_client, {"action": "retry", "scope": "selected", "ids": [b.pk, a.pk, 999_999], "query": ""}
    )

    assert question == f"Retry 2 selected tasks (#{a.pk}, #{b.pk})?"
    assert confirm["ids"] == [str(a.pk), str(b.pk)] and "upto" not in confirm


def test_over_the_limit_the_question_says_the_first_n_and_the_result_says_more_remain(
    admin_client: Client, check_stock: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tasks_app.views.actions.BULK_LIMIT", 2)
    tasks = [failed_task(check_stock) for _ in range(3)]

    question, confirm = confirm_page(admin_client, {"action": "retry", "scope": "all", "query": "status=failed"})
    assert question == "Retry the first 2 of more than 2 failed tasks?"
    response = admin_client.post(BULK_URL, confirm, follow=True)

    assert shown_messages(response) == [("success", "Retried 2 task(s). Stopped after 2; run it again for the rest.")]
    assert [Task.objects.get(pk=t.pk).status for t in tasks] == ["pending", "pending", "failed"]


def test_the_question_escapes_stage_names(admin_client: Client, world: dict[str, Stage]) -> None:
    evil = Stage.objects.create(slug="evil", name=SCRIPT, kind=Stage.Kind.SCRIPT, handler="x.y")
    failed_task(evil)

    response = admin_client.post(BULK_URL, {"action": "retry", "scope": "all", "query": "stage=evil"})

    html = response.content.decode()
    assert SCRIPT not in html
    assert f"Retry 1 task at {ESCAPED_SCRIPT}?" in html


@pytest.mark.parametrize("confirm", ["", "1"])
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"action": "", "scope": "selected", "ids": ["{failed}"]}, "Choose an action."),
        ({"action": "bogus", "scope": "all"}, "Choose an action."),
        ({"action": "retry", "scope": "selected"}, "No tasks selected."),
        ({"action": "retry", "scope": "selected", "ids": ["999999"]}, "No tasks selected."),
        ({"action": "retry", "scope": "all", "query": "stage=ship&status=failed"}, "No tasks match the filter."),
    ],
)
def test_no_action_or_no_rows_is_refused_with_a_message_and_changes_nothing(
    admin_client: Client, check_stock: Stage, data: dict[str, Any], message: str, confirm: str
) -> None:
    failed = failed_task(check_stock)
    posted = {k: [v.format(failed=failed.pk) for v in vs] if isinstance(vs, list) else vs for k, vs in data.items()}
    before = db_state()

    response = admin_client.post(BULK_URL, {**posted, "query": posted.get("query", "sort=id"), "confirm": confirm})

    assert response.status_code == 302
    assert shown_messages(admin_client.get(response["Location"])) == [("warning", message)]
    assert db_state() == before


@pytest.mark.parametrize(
    ("codenames", "action"),
    [(("view_task",), "retry"), (("view_task", "add_task"), "complete"), (("view_task", "change_task"), "duplicate")],
)
@pytest.mark.parametrize("confirm", ["", "1"])
def test_an_action_the_user_may_not_take_is_refused_403_before_asking_and_changes_nothing(
    check_stock: Stage, codenames: tuple[str, ...], action: str, confirm: str
) -> None:
    failed = failed_task(check_stock)
    client = logged_in(make_user("someone", *codenames))
    before = db_state()

    for scope in ("selected", "all"):
        data = {"action": action, "scope": scope, "ids": [failed.pk], "query": "", "confirm": confirm}
        assert client.post(BULK_URL, data).status_code == 403
    assert db_state() == before


def test_the_bulk_bar_counts_all_matching_tasks_up_to_the_limit(
    admin_client: Client, check_stock: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        failed_task(check_stock)

    assert admin_client.get("/tasks/bulk/count/", {"status": "failed"}).json() == {
        "count": 3,
        "more": False,
        "limit": 5000,
    }
    monkeypatch.setattr("tasks_app.views.actions.BULK_LIMIT", 2)
    assert admin_client.get("/tasks/bulk/count/?status=failed").json() == {"count": 2, "more": True, "limit": 2}
    bad = admin_client.get("/tasks/bulk/count/", {"status": "sleeping"})
    assert bad.status_code == 400 and "status" in bad.json()["errors"]
    assert logged_in(make_user("nobody")).get("/tasks/bulk/count/").status_code == 403


def test_the_list_bar_posts_to_the_confirmation_without_a_browser_dialog(
    admin_client: Client, check_stock: Stage
) -> None:
    failed = failed_task(check_stock)

    shown = page(admin_client.get(LIST_URL, {"status": "failed"}))

    form = next(f for f in shown.forms if f.get("id") == "bulk")
    assert form["method"] == "post" and form["action"] == BULK_URL and "data-confirm" not in form
    assert form["data-count-url"] == "/tasks/bulk/count/?status=failed"
    assert shown.submitted("bulk")["query"] == ["status=failed"]
    ticks = [i for i in shown.inputs if i.get("name") == "ids"]
    assert [(i["value"], i["form"]) for i in ticks] == [(str(failed.pk), "bulk")]


def test_a_text_search_names_the_id_range_it_read(admin_client: Client, check_stock: Stage) -> None:
    tasks = [failed_task(check_stock) for _ in range(2)]
    task_create(stage=check_stock, type="order", payload={}, available_at=timezone.now() + timedelta(hours=1))
    newest = Task.objects.order_by("-id").first()
    assert newest is not None
    query = "status=failed&q=ValueError"

    question, _ = confirm_page(admin_client, {"action": "retry", "scope": "all", "query": query})

    # As the list says "Searched tasks #a–#b": free text reads one range of ids (the newest ones).
    assert question == f"Retry 2 failed tasks (text: ValueError) among tasks #{tasks[0].pk:,}–#{newest.pk:,}?"
