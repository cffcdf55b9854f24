"""Failures are visible where people look (issue 14, section 1), in Chromium at 1440x900 and 390x844: the list's
last error (expand to read all of it), "Retrying · attempt N", free text over the last error, the stage page
(error groups linking to their tasks, Pause/Resume, Run now) and the per-stage counts on the overview.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from tasks_app.models import JobRun, Stage, Task, Transition
from tasks_app.services import task_claim, task_create, task_fail, task_release
from tests.support.chromium import DESKTOP, PHONE, chromium_page, needs_chromium

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]

VIEWPORTS = pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
ERROR = 'ConnectionError: [Errno 111] Connection refused\n  File "handlers.py", line 12, in check_stock'


def fail_once(stage: Stage, error: str, *, for_good: bool = False) -> Task:
    task = task_create(stage=stage, type="order", payload={"order_id": 42})
    [claim] = task_claim(stage=stage, worker_id="w1")
    assert claim.pk == task.pk
    if for_good:
        task_fail(task_id=claim.pk, lock_token=claim.lock_token, error=error)
    else:
        task_release(task_id=claim.pk, lock_token=claim.lock_token, error=error, retry_in=600)
    return task


def no_sideways_scroll(page: Any) -> None:
    """Nothing scrolls the whole page sideways (tables scroll inside their own box)."""
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    wide = page.evaluate(WIDEST) if overflow > 0 else []
    assert overflow <= 0, f"the page scrolls {overflow} px sideways; too wide: {wide}"


# The elements that reach past the viewport's right edge, outermost first (what the failure message names).
WIDEST = """() => [...document.querySelectorAll("body *")]
  .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
  .slice(0, 8).map(e => e.tagName + "." + e.className + " " + Math.round(e.getBoundingClientRect().right))"""


@VIEWPORTS
def test_the_list_shows_the_last_error_and_the_retry_and_finds_tasks_by_their_error(
    live_server: Any, world: dict[str, Stage], viewport: dict[str, int]
) -> None:
    user = get_user_model().objects.create_superuser("boss", password="pw-12345")
    retrying = fail_once(world["review"], ERROR)
    failed = fail_once(world["notify"], "ValueError: no address", for_good=True)
    task_create(stage=world["ship"], type="order", payload={"fine": True})

    with chromium_page(live_server.url, viewport=viewport, user=user) as page:
        page.goto(page.base + "/tasks/")
        row = page.locator(f"#task-{retrying.pk}")
        assert row.locator(".badge").inner_text().startswith("Retrying · attempt 2 · next in ")
        summary = row.locator("td.last-error summary")
        assert summary.inner_text() == "ConnectionError: [Errno 111] Connection refused"
        assert "check_stock" in (summary.get_attribute("title") or "")  # all of it on hover
        assert not row.locator("td.last-error pre").is_visible()
        summary.click()  # and on expand
        assert "line 12, in check_stock" in row.locator("td.last-error pre").inner_text()
        assert page.locator(f"#task-{failed.pk} td.last-error summary").inner_text() == "ValueError: no address"
        no_sideways_scroll(page)

        # The task's page says the same as its row.
        page.goto(page.base + f"/tasks/{retrying.pk}/")
        assert page.locator(".row .badge").first.inner_text().startswith("Retrying · attempt 2 · next in ")

        # Free text finds it by its error.
        page.goto(page.base + "/tasks/")
        if not page.locator("form#filters").is_visible():  # folded on a phone ("Filters")
            page.locator("#filter-box summary").click()
        page.fill("form#filters input[name=q]", "ConnectionError")
        page.locator("form#filters button[type=submit]").click()
        page.wait_for_url("**q=ConnectionError**")
        ids = page.locator("#task-rows tr").evaluate_all("rows => rows.map(r => r.id)")
        assert ids == [f"task-{retrying.pk}"]


@VIEWPORTS
def test_the_stage_page_groups_errors_links_their_tasks_and_pauses_and_resumes(
    live_server: Any, world: dict[str, Stage], viewport: dict[str, int]
) -> None:
    user = get_user_model().objects.create_superuser("boss", password="pw-12345")
    refused = [fail_once(world["review"], ERROR) for _ in range(2)]
    fail_once(world["review"], "ValueError: amount is negative", for_good=True)

    with chromium_page(live_server.url, viewport=viewport, user=user) as page:
        # Under Playwright's loop this thread gets a connection of its own (asgiref keys it by context), which a
        # previous browser test's teardown may have terminated on PostgreSQL: start on a fresh one.
        connection.close()
        # From the overview: the stage's box opens its page.
        page.goto(page.base + "/overview/")
        assert page.locator("#attempts-review td").nth(1).inner_text() == "2"  # retrying now
        page.locator("a.stage-link:visible:has(g.stage[data-stage=review])").click()  # the drawing on screen
        page.wait_for_url("**/stages/review/")
        assert page.locator("h1").inner_text().startswith("Review")
        # The hourly charts (history, errors) are drawn server-side: SVG with its text summary, no canvas.
        assert page.locator("figure.chart svg.hourly-chart[role=img]").count() >= 2
        assert page.locator("canvas").count() == 0
        no_sideways_scroll(page)

        groups = page.locator("table.errors tbody tr")
        assert groups.count() == 2
        assert groups.first.locator("code").inner_text() == "ConnectionError: [Errno 111] Connection refused"
        groups.first.locator("a", has_text="2 tasks").click()
        page.wait_for_url("**/tasks/?**error=**")
        ids = set(page.locator("#task-rows tr").evaluate_all("rows => rows.map(r => r.id)"))
        assert ids == {f"task-{t.pk}" for t in refused}

        page.goto(page.base + "/stages/review/")
        page.locator("button", has_text="Pause").click()  # confirmed (the dialog is accepted)
        page.wait_for_selector(".messages .msg-success")
        assert "Stage review is paused now." in page.locator(".messages").inner_text()
        assert Stage.objects.get(slug="review").is_paused
        page.locator("button", has_text="Resume").click()
        page.wait_for_selector(".messages .msg-success")
        assert not Stage.objects.get(slug="review").is_paused


@VIEWPORTS
def test_run_now_runs_a_job_stage_from_its_page(live_server: Any, db: None, viewport: dict[str, int]) -> None:
    user = get_user_model().objects.create_superuser("boss", password="pw-12345")
    job = Stage.objects.create(
        slug="nightly", name="Nightly", kind=Stage.Kind.JOB, schedule="0 3 * * *", handler="tests.handlers.digest"
    )
    outbox = Stage.objects.create(slug="outbox", name="Outbox", kind=Stage.Kind.SCRIPT, handler="tests.handlers.noop")
    Transition.objects.create(source=job, target=outbox, task_type="digest")
    task_create(stage=job, type="order", payload={})

    with chromium_page(live_server.url, viewport=viewport, user=user) as page:
        page.goto(page.base + "/stages/nightly/")
        assert "Next due:" in page.locator("body").inner_text()
        page.locator("button", has_text="Run now").click()
        page.wait_for_selector(".messages .msg-success")
        assert "Ran job nightly: 1 task(s) taken, 1 sent." in page.locator(".messages").inner_text()
        assert page.locator("table.tasks tbody tr").first.locator(".badge").inner_text() == "Succeeded"
        no_sideways_scroll(page)
    assert JobRun.objects.get(stage=job).worker_id == "user:boss"
