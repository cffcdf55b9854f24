"""The workflow's figures and hourly charts in Chromium (issue 14 section 3), at 1440x900 and 390x844 in one
browser: the stage page's figures, window switch, slowest task link and its two SVG charts (bars drawn, each
with a tooltip); the overview's figures table with a chart per stage and the graph's notes; no sideways scroll.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from tasks_app.models import Stage, Task
from tasks_app.services import task_claim, task_complete, task_create, task_release
from tasks_app.services.counters import counters_fold
from tests.support.chromium import DESKTOP, PHONE, chromium_page, needs_chromium

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]

SHOTS = os.environ.get("FIGURES_SCREENSHOTS", "")  # a folder: save what the test saw there (for people)


def history(world: dict[str, Stage]) -> Task:
    """Tasks through review over the last hours (approved, declined, one retried), folded; the slowest one."""
    now = timezone.now()
    slowest = None
    for i, (sent, hours_ago) in enumerate([("approved", 2), ("approved", 2), ("declined", 5), ("approved", 30)]):
        created = now - timedelta(hours=hours_ago, seconds=i)
        task = task_create(stage=world["review"], type="order", payload={"i": i}, now=created)
        [claim] = task_claim(stage=world["review"], worker_id="w1", now=created + timedelta(seconds=2))
        assert claim.pk == task.pk
        if i == 2:  # an error first, then a second attempt
            task_release(task_id=claim.pk, lock_token=claim.lock_token, error="Boom", retry_in=0,
                         now=created + timedelta(seconds=3))  # fmt: skip
            [claim] = task_claim(stage=world["review"], worker_id="w1", now=created + timedelta(seconds=40))
            slowest = task
        task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[(sent, {})],
                      now=created + timedelta(seconds=60 if i == 2 else 5))  # fmt: skip
    while counters_fold(now=now + timedelta(minutes=5)):
        pass
    assert slowest is not None
    return slowest


def no_sideways_scroll(page: Any) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls {overflow} px sideways"


def shot(page: Any, name: str) -> None:
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def test_the_figures_and_charts_on_the_stage_page_and_the_overview(live_server: Any, world: dict[str, Stage]) -> None:
    user = get_user_model().objects.create_superuser("boss", password="pw-12345")
    slowest = history(world)
    with chromium_page(live_server.url, viewport=DESKTOP, user=user) as page:
        for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            page.goto(page.base + "/stages/review/")
            figures = page.locator("section#figures")
            assert "last 24 hours" in figures.locator("h2").inner_text()
            takes = figures.locator("dt:text-is('Takes') + dd").inner_text()
            # In 24 h, 2 approved sends went to ship and audit each, 1 declined to notify: 5 departures.
            assert "approved → ship 40%" in takes and "declined → notify 20%" in takes
            wait = figures.locator("dt:text-is('Wait') + dd").inner_text()
            assert wait.startswith("median ") and "p95" in wait
            charts = figures.locator("svg.hourly-chart")
            assert charts.count() == 2
            for i in range(2):
                box = charts.nth(i).bounding_box()
                assert box is not None and box["width"] > 200 and box["height"] > 40
                assert box["x"] + box["width"] <= viewport["width"]
            bars = charts.nth(0).locator("rect.bar-completed")
            assert bars.count() == 3  # the three hours (2 h, 5 h and 30 h ago) that had completions
            assert charts.nth(0).locator("rect.bar-retried").count() == 1
            assert "completed" in bars.first.locator("title").text_content()
            assert charts.nth(1).locator("rect.bar-errors").count() == 1  # the release 5 h ago
            assert charts.nth(0).get_attribute("role") == "img"
            no_sideways_scroll(page)
            shot(page, f"stage-{name}")

            figures.locator("a", has_text="7 days").click()
            page.wait_for_url("**window=7d**")
            assert "last 7 days" in page.locator("section#figures h2").inner_text()
            assert "approved → ship 43%" in page.locator("section#figures dt:text-is('Takes') + dd").inner_text()

            page.locator(f"section#figures table.slowest a[href='/tasks/{slowest.pk}/']").click()
            page.wait_for_url(f"**/tasks/{slowest.pk}/")

            # The overview: the graph carries the shares and the medians, the figures table a chart per stage.
            page.goto(page.base + "/overview/")
            graph = page.locator(f"#graph svg.graph-{'wide' if viewport is DESKTOP else 'tall'}")
            assert graph.is_visible()
            labels = graph.locator("g.edge-label").all_text_contents()
            assert any("40%" in label for label in labels) and any("20%" in label for label in labels)
            assert graph.locator("text.note", has_text="wait").count() == 1  # review's box
            table = page.locator("section#figures table.figures-table")
            assert table.locator("tbody tr").count() == Stage.objects.count()
            review_row = table.locator("tbody tr", has_text="Review")
            assert "declined → notify 20%" in review_row.inner_text()
            mini = review_row.locator("svg.hourly-chart.small")
            assert mini.is_visible() and mini.locator("rect.bar-completed").count() == 3
            no_sideways_scroll(page)
            shot(page, f"overview-{name}")
