"""People's pages in Chromium (issue 14, section 4), at 1440x900 and then 390x844 in one browser whose
time zone is Asia/Tokyo: tz.js tells the server the zone, the task page shows its times there with the zone
named, and a reviewer walks task page -> My work (search) -> the decision page -> releases the task.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone

from tasks_app.models import Task, TaskEvent
from tasks_app.templatetags.people import local_text
from tests.support.chromium import DESKTOP, PHONE, chromium_page, needs_chromium
from tests.support.work import form_world, sent_order

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]

TOKYO = ZoneInfo("Asia/Tokyo")  # JST all year: no daylight saving to make the expected text move


def in_tokyo(value: Any) -> str:
    with timezone.override(TOKYO):
        return local_text(value, seconds=True)


def fits_the_width(page: Any) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    wide = page.evaluate("""() => [...document.querySelectorAll("body *")]
  .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
  .slice(0, 8).map(e => e.tagName + "." + e.className + " " + Math.round(e.getBoundingClientRect().right))""")
    assert overflow <= 0, f"the page scrolls {overflow} px sideways: {wide}"


def test_times_in_the_browsers_zone_and_my_work_to_decision_to_release(live_server: Any) -> None:
    world = form_world()
    order = sent_order(world, {"order_id": 42, "customer": {"email": "ann@example.com"}, "note": "<b>gift</b>"})
    sent_order(world, {"order_id": 43, "customer": {"email": "bo@example.com"}})

    with chromium_page(live_server.url, user=world.vera, timezone_id="Asia/Tokyo") as page:
        connection.close()  # a fresh connection under Playwright's loop (see test_browser_failures)
        for viewport in (DESKTOP, PHONE):
            page.set_viewport_size(viewport)
            page.goto(page.base + "/work/")  # any page: tz.js sets the cookie
            assert {"name": "tz", "value": "Asia/Tokyo"}.items() <= next(
                c for c in page.context.cookies() if c["name"] == "tz"
            ).items()

            # The task page: times in Tokyo, the zone named, the sender linked, the way to decide it.
            page.goto(page.base + f"/tasks/{order.pk}/")
            assert page.locator(".zone-note").inner_text() == "Times in Asia/Tokyo."
            created = page.locator("dt:text-is('Created') + dd").inner_text()
            assert created.startswith(in_tokyo(order.created_at) + " (")
            assert "JST" in created
            sent_by = page.locator("dt:text-is('Sent by') + dd a")
            assert sent_by.get_attribute("href") == f"/tasks/{order.parent_id}/"
            fits_the_width(page)

            # My work: search, the payload as titled key/values (escaped), open the task.
            page.goto(page.base + "/work/")
            page.fill("#work-q", "ann@example")
            page.locator("#work-search button[type=submit]").click()
            page.wait_for_url(lambda url: "q=ann" in url)
            rows = page.locator("#waiting tbody tr")
            assert rows.count() == 1
            payload = rows.first.locator("td.payload")
            assert "Order number" in payload.inner_text() and "ann@example.com" in payload.inner_text()
            assert "<b>gift</b>" in payload.inner_text()  # shown as text, not bold
            assert payload.locator("b").count() == 0
            fits_the_width(page)
            rows.first.locator("button.primary", has_text="Open").click()
            page.wait_for_url(f"**/work/{order.pk}/")

            # The decision page: one primary action, the lock's full date in Tokyo, release.
            held = Task.objects.get(pk=order.pk)
            with timezone.override(TOKYO):
                until = local_text(held.locked_until)
            assert page.locator("#lock").inner_text() == f"Open by you until {until}."
            assert until.endswith(" JST") and str(timezone.localtime(held.locked_until, TOKYO).year) in until
            assert page.locator(".decide button.primary").count() == 1
            assert page.locator(".decide button.primary").inner_text() == "Approve"
            fits_the_width(page)
            page.locator("#release button", has_text="Close without deciding").click()
            page.wait_for_url("**/work/")
            assert f"Task {order.pk} is back in the queue." in page.locator(".messages").inner_text()

            current = Task.objects.get(pk=order.pk)
            assert (current.status, current.locked_by) == (Task.Status.PENDING, "")
            event = TaskEvent.objects.filter(task_id=order.pk).latest("id")
            assert (event.kind, event.actor) == (TaskEvent.Kind.RELEASED, "user:vera")
