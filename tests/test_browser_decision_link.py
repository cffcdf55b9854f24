"""One-click decisions from the mail in Chromium (issue 16): a reviewer who is not logged in opens the link a
mail gave her, logs in, lands on the confirmation page, confirms, and sees the result in My work; the same link
opened again says it was used.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core import mail
from django.db import connection

from tasks_app.models import DecisionLinkUse, Task, TaskEvent
from tasks_app.services.notifications import notifications_drain
from tests.support.chromium import PHONE, chromium_page, needs_chromium
from tests.support.work import form_world, sent_order

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


def test_a_mailed_link_logs_in_confirms_and_decides(live_server: Any, settings: Any) -> None:
    settings.TASKS_BASE_URL = live_server.url  # the mail's links point at this server
    world = form_world()
    world.review.notify = {"groups": True}
    world.review.save()
    order = sent_order(world, {"order_id": 42, "customer": {"email": "<b>ann</b>@example.com"}})
    notifications_drain()
    [message] = [m for m in mail.outbox if m.to == [world.alice.email]]
    [link] = re.findall(r"(http://\S+/work/decide/\S+/)", message.body)
    assert link.startswith(live_server.url)

    with chromium_page(live_server.url) as page:  # not logged in: the link goes through the login page
        connection.close()  # a fresh connection under Playwright's loop (see test_browser_failures)
        page.goto(link)
        page.wait_for_url("**/accounts/login/**")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "pw")
        page.click("button[type=submit]")
        page.wait_for_url(link)

        # The confirmation: what will happen, the payload as My work shows it (escaped), nothing done yet.
        assert page.locator("h1").inner_text() == f"Approve task {order.pk}?"
        confirm = page.locator("#decision-confirm")
        assert "Order number" in confirm.inner_text() and "<b>ann</b>@example.com" in confirm.inner_text()
        assert confirm.locator("b").count() == 0
        assert Task.objects.get(pk=order.pk).status == Task.Status.PENDING
        assert not DecisionLinkUse.objects.exists()
        page.set_viewport_size(PHONE)
        assert page.locator("#confirm-decision").is_visible()

        page.locator("#confirm-decision").click()
        page.wait_for_url("**/work/")
        [successor] = Task.objects.filter(parent_id=order.pk)
        shown = page.locator(".messages").inner_text()
        assert f"Task {order.pk}: approve, sent to invoice (task {successor.pk})." in shown
        event = TaskEvent.objects.get(task_id=order.pk, kind=TaskEvent.Kind.COMPLETED)
        assert (event.actor, event.details["decided_via"]) == ("user:alice", "mail link")

        # The same link again: refused, with the reason.
        response = page.goto(link)
        assert response is not None and response.status == 410
        assert "already been used" in page.locator("#link-refusal").inner_text()
        assert Task.objects.filter(parent_id=order.pk).count() == 1
