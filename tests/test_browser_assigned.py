"""Assign (issue 16) in Chromium: My work shows "Assigned to me" first to the assignee, another reviewer sees
the task as "assigned to alice" and can't open it, and a task editor assigns a task on its page.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from tasks_app.models import Stage, Task, TaskEvent
from tests.support.chromium import chromium_page, needs_chromium
from tests.support.users import make_user
from tests.support.work import form_world, sent_order

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


def test_my_work_puts_the_assignees_tasks_first_and_others_cannot_open_them(live_server: Any) -> None:
    world = form_world()
    Stage.objects.filter(pk=world.review.pk).update(assignee_from="/approver")
    queued = sent_order(world, {"order_id": 1})  # older and unassigned: first in the queue
    hers = sent_order(world, {"order_id": 2, "approver": "alice"})
    assert Task.objects.get(pk=hers.pk).assignee == world.alice

    with chromium_page(live_server.url, user=world.bob) as page:
        connection.close()  # a fresh connection under Playwright's loop (see test_browser_failures)
        page.goto(page.base + "/work/")
        assert page.locator("#assigned").count() == 0  # nothing is bob's
        row = page.locator(f"#waiting-{hers.pk}")
        assert "assigned to alice" in row.locator(".badge-assignee").inner_text()
        assert "is assigned to alice; only they or a user who may change tasks can open it" in row.inner_text()
        assert row.locator("button", has_text="Open").count() == 0
        assert page.locator(f"#waiting-{queued.pk} button", has_text="Open").count() == 1

    with chromium_page(live_server.url, user=world.alice) as page:
        connection.close()
        page.goto(page.base + "/work/")
        headings = page.locator("main h2").all_inner_texts()
        assert headings.index("Assigned to me") < headings.index("Open by you")
        assert page.locator("#assigned tbody tr").count() == 1
        assert page.locator(f"#waiting-{hers.pk}").count() == 0  # not listed twice
        page.locator(f"#assigned-{hers.pk} button", has_text="Open").click()
        page.wait_for_url(f"**/work/{hers.pk}/")
    assert Task.objects.get(pk=hers.pk).locked_by == "user:alice"


def test_a_task_editor_assigns_a_task_on_its_page(live_server: Any) -> None:
    world = form_world()
    order = sent_order(world, {"order_id": 3})
    boss = make_user("boss", "view_task", "change_task", "view_taskevent")

    with chromium_page(live_server.url, user=boss) as page:
        connection.close()
        page.goto(page.base + f"/tasks/{order.pk}/")
        assert page.locator("dt:text-is('Assignee') + dd").inner_text() == "—"
        choices = page.locator("#assignee-choice option").all_inner_texts()
        assert choices == ["— nobody —", "alice", "bob", "vera"]  # the reviewers group: who may work on it
        page.select_option("#assignee-choice", "bob")
        page.locator("#assign-form button[type=submit]").click()
        page.wait_for_selector(".messages")
        assert f"Task {order.pk} assigned to bob." in page.locator(".messages").inner_text()
        assert page.locator("dt:text-is('Assignee') + dd").inner_text() == "bob"
        assert "to bob" in page.locator(".timeline li.ev-assigned").inner_text()

    event = TaskEvent.objects.get(task_id=order.pk, kind=TaskEvent.Kind.ASSIGNED)
    assert (event.actor, event.details) == ("user:boss", {"assignee": "bob", "previous": None})
