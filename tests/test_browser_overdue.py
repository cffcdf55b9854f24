"""Overdue form tasks in Chromium (issue 16): My work's badge and count, the overview's count, live.

review (a form stage, tests.support.work) has a due time of an hour: two tasks arrived two hours ago (one of
them open by Alice), one a minute ago.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from tasks_app.services.form_stages import form_task_open
from tests.support.axe import axe_blocking
from tests.support.chromium import chromium_page, needs_chromium
from tests.support.due import arrived, people
from tests.support.users import make_user
from tests.support.work import form_world

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


def test_my_work_shows_the_overdue_badge_and_count_and_the_overview_counts_them_live(live_server: Any) -> None:
    world = form_world()
    review = people(world.review, due_after=3600)
    late = arrived(review, 7200, order_id=1)
    opened = arrived(review, 7300, order_id=2)
    young = arrived(review, 60, order_id=3)
    form_task_open(task=opened, user=world.alice)
    boss = make_user("boss", superuser=True)

    with chromium_page(live_server.url, user=world.alice) as page:
        connection.close()  # a fresh connection under Playwright's loop (see test_browser_failures)
        page.goto(page.base + "/work/")
        assert page.locator("#overdue-count").inner_text().startswith("2 overdue at your stages")
        assert page.locator(f"#waiting-{late.pk} .badge-overdue").inner_text() == "Overdue"
        assert page.locator(f"#mine-{opened.pk} .badge-overdue").inner_text() == "Overdue"
        assert page.locator(f"#waiting-{young.pk} .badge-overdue").count() == 0
        assert "Past its due time" in (page.locator(f"#waiting-{late.pk} .badge-overdue").get_attribute("title") or "")
        assert axe_blocking(page, contrast_only=True) == []  # the badge is readable

        page.goto(page.base + f"/work/{late.pk}/")
        assert page.locator(".badge-overdue").inner_text() == "Overdue"

    with chromium_page(live_server.url, user=boss) as page:
        connection.close()
        page.goto(page.base + "/overview/")
        count = page.locator("tr[data-stage='review'] [data-count='overdue']")
        assert count.inner_text() == "2 overdue"
        assert page.locator("tr[data-stage='intake'] [data-count='overdue']").count() == 0

        arrived(review, 9000, order_id=4)  # overview.js polls counts.json: the count follows
        page.wait_for_function(
            "() => document.querySelector(\"tr[data-stage='review'] [data-count='overdue']\").textContent"
            " === '3 overdue'",
            timeout=15_000,
        )
