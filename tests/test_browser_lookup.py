"""The top bar's lookup box in Chromium (issue 14, section 2), at 1440x900 then 390x844 in one browser:
"/" focuses it from anywhere but a text field, `#<id>` + Enter opens the task, `items=lamp` + Enter lists
the task whose items array holds "lamp" (and not the others), with the filter shown in the list's form.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model

from tasks_app.models import Stage
from tasks_app.services import task_create
from tests.support.chromium import DESKTOP, PHONE, chromium_page, needs_chromium

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


def test_slash_focuses_the_lookup_box_which_opens_a_task_by_id_and_finds_a_payload_value(
    live_server: Any, world: dict[str, Stage]
) -> None:
    user = get_user_model().objects.create_superuser("boss", password="pw-12345")
    lamp = task_create(stage=world["review"], type="order", payload={"order_id": 1, "items": ["lamp", "desk"]})
    desk = task_create(stage=world["review"], type="order", payload={"order_id": 2, "items": ["desk"]})

    with chromium_page(live_server.url, viewport=DESKTOP, user=user) as page:
        for viewport in (DESKTOP, PHONE):
            page.set_viewport_size(viewport)
            page.goto(page.base + "/overview/")
            box = page.locator("#lookup-q")
            assert box.is_visible()
            edge = box.bounding_box()
            assert edge is not None and edge["x"] >= 0 and edge["x"] + edge["width"] <= viewport["width"]

            page.locator("body").click(position={"x": 5, "y": 300})  # nothing focused that takes text
            page.keyboard.press("/")
            assert page.evaluate("document.activeElement.id") == "lookup-q"
            page.keyboard.type(f"#{desk.pk}")
            page.keyboard.press("Enter")
            page.wait_for_url(f"**/tasks/{desk.pk}/")

            page.keyboard.press("/")
            assert page.evaluate("document.activeElement.id") == "lookup-q"
            page.keyboard.type("items=lamp")
            page.keyboard.press("Enter")
            page.wait_for_url("**/tasks/?payload=items*lamp")
            ids = page.locator("#task-rows tr").evaluate_all("rows => rows.map(r => r.id)")
            assert ids == [f"task-{lamp.pk}"]
            assert page.locator("form#filters input[name=payload]").input_value() == "items=lamp"
            assert "Searched tasks" in page.locator("#searched-range").inner_text()

            # "/" typed into a text field is text, not a jump to the box.
            page.locator("#lookup-q").fill("a")
            page.keyboard.press("/")
            assert page.locator("#lookup-q").input_value() == "a/"
