"""The task list's filters and bulk bar in Chromium (issue 14, section 2 and the 390 px point of section 5), one
browser at 1440x900 then 390x844: checkbox chips, removable active-filter chips, "N selected", Apply disabled until
an action and rows are chosen, the confirmation's sentence; on a phone the filters fold and nothing scrolls sideways.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from tasks_app.models import Stage, Task
from tasks_app.services import task_claim, task_create, task_fail
from tests.support.chromium import PHONE, chromium_page, needs_chromium

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


def failed_task(stage: Stage) -> Task:
    task = task_create(stage=stage, type="order", payload={"order_id": 42})
    [claim] = task_claim(stage=stage, worker_id="w1")
    task_fail(task_id=claim.pk, lock_token=claim.lock_token, error="ValueError: out of lamps")
    return task


def page_overflow(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth"))


def chip_texts(page: Any) -> list[str]:
    """The active-filter chips as they read (a screen reader hears "Remove filter" first)."""
    texts = page.locator("#active-filters a.chip").all_inner_texts()
    return [" ".join(t.split()).removeprefix("Remove filter ") for t in texts]


def on_screen(page: Any, selector: str) -> None:
    box = page.locator(selector).bounding_box()
    width = page.evaluate("document.documentElement.clientWidth")
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, f"{selector} is off screen: {box}"


def test_filter_chips_and_bulk_bar_on_desktop_and_phone(live_server: Any, world: dict[str, Stage]) -> None:
    user = get_user_model().objects.create_superuser("boss", password="pw-12345")
    stock = Stage.objects.create(slug="check-stock", name="Check stock", kind=Stage.Kind.SCRIPT, handler="x.y")
    failed = [failed_task(stock) for _ in range(3)]
    for n in range(12):  # enough rows with wide payloads to make the table wider than a phone
        task_create(stage=world["review"], type="order", payload={"order_id": n, "note": "a long note " * 8})

    with chromium_page(live_server.url, user=user) as page:
        # Desktop: the filters are open; stage and status are chips of real checkboxes, usable by keyboard.
        page.goto(page.base + "/tasks/?status=failed")
        assert page.locator("#filter-box").evaluate("d => d.open")
        assert page.locator("#filter-box summary").inner_text() == "Filters (1)"
        assert page.locator("#filters input[name=status][value=failed]").is_checked()
        page.locator("#filters input[name=stage][value=check-stock]").focus()
        page.keyboard.press("Space")
        assert page.locator("label.chip[title=check-stock]").inner_text().split() == ["Check", "stock", "check-stock"]
        page.locator("#filters button[type=submit]").click()
        page.wait_for_url("**stage=check-stock**")
        assert chip_texts(page) == ["Stage: Check stock ×", "Status: Failed ×"]

        # Bulk bar: "N selected" as rows are ticked; Apply waits for an action and rows.
        apply = page.locator("form#bulk button[type=submit]")
        assert page.locator("#bulk-status").inner_text() == "0 selected"
        assert apply.is_disabled()
        page.locator(f"#task-{failed[0].pk} input[name=ids]").check()
        page.locator(f"#task-{failed[2].pk} input[name=ids]").check()
        assert page.locator("#bulk-status").inner_text() == "2 selected"
        assert apply.is_disabled()  # no action yet
        page.select_option("form#bulk select[name=action]", "retry")
        assert apply.is_enabled()
        page.select_option("form#bulk select[name=scope]", "all")
        expect(page.locator("#bulk-status")).to_have_text("all 3 matching")  # counted by the server
        assert apply.is_enabled()
        no_overflow = page_overflow(page)
        assert no_overflow <= 0, f"the desktop page scrolls {no_overflow} px sideways"

        # The confirmation names the action, the exact number and the filter; Confirm acts.
        apply.click()
        page.wait_for_url("**/tasks/bulk/")
        assert page.locator("#bulk-question").inner_text() == "Retry 3 failed tasks at Check stock?"
        assert {t.status for t in Task.objects.filter(stage=stock)} == {Task.Status.FAILED}
        page.locator("#bulk-confirm button", has_text="Confirm").click()
        page.wait_for_selector(".messages .msg-success")
        assert "Retried 3 task(s)." in page.locator(".messages").inner_text()
        assert {t.status for t in Task.objects.filter(stage=stock)} == {Task.Status.PENDING}

        # Removing one chip keeps the other filter.
        page.locator("#active-filters a.chip", has_text="Stage: Check stock").click()
        page.wait_for_load_state()
        assert chip_texts(page) == ["Status: Failed ×"]

        # Phone: the filters fold to "Filters (N)", the table scrolls in its own box, nothing scrolls the page.
        page.set_viewport_size(PHONE)
        page.goto(page.base + "/tasks/?status=pending&sort=id")
        assert not page.locator("#filter-box").evaluate("d => d.open")
        assert page.locator("#filter-box summary").inner_text() == "Filters (1)"
        assert not page.locator("#filters button[type=submit]").is_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        table_box = page.locator(".table-scroll").evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert table_box[0] > table_box[1], "the table should scroll inside its own box"
        for selector in ("form#bulk button[type=submit]", "form#bulk select[name=action]", "#bulk-status"):
            on_screen(page, selector)
        page.locator(f"#task-{failed[1].pk} input[name=ids]").check()
        assert page.locator("#bulk-status").inner_text() == "1 selected"
        page.locator("#filter-box summary").click()  # unfold: every field and button fits
        for selector in ("#filters button[type=submit]", "#id_created_after", "#tz-note", "label.chip[title=review]"):
            on_screen(page, selector)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
