"""The monitoring pages in a real browser: Debian's Chromium driven by Playwright.

Skipped (loudly, by scripts/ensure_chromium.sh and here) only when
/usr/bin/chromium is missing; `make test` installs it when run as root, as CI does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.urls import NoReverseMatch, reverse

from tasks_app.demo import load_demo
from tasks_app.models import Stage, Task, WorkerProcess
from tasks_app.services import task_claim, task_complete, task_create
from tasks_app.services.form_stages import form_task_open
from tests.support.chromium import DESKTOP, PHONE, chromium_page
from tests.support.users import make_user

CHROMIUM = "/usr/bin/chromium"
# `make screenshots` sets this to refresh the README's screenshots (test_screenshots_of_every_page).
SAVE_SCREENSHOTS = bool(os.environ.get("SAVE_SCREENSHOTS"))
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium"),
]


@pytest.fixture
def page(live_server: Any) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop vs the ORM in this thread
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.set_default_timeout(15_000)
        page.on("dialog", lambda dialog: dialog.accept())  # the confirmations
        page.base = live_server.url
        # While Playwright's loop runs, Django keeps this thread's connection
        # apart (asgiref keys it by context, not thread), and that connection
        # survives from one browser test to the next; on PostgreSQL the previous
        # test's teardown below has terminated it. Start on a fresh one.
        connection.close()
        yield page
        browser.close()
    if connection.vendor == "postgresql":
        # The live server's request threads may still hold a connection to the
        # test database, which would stop pytest-django from dropping it.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


def test_operator_works_the_task_pages_in_a_browser(page: Any, world: dict[str, Stage]) -> None:
    user = get_user_model().objects.create_superuser("boss", password="pw-12345")
    assert user.pk
    review = world["review"]
    done = task_create(stage=review, type="order", payload={"customer_id": 12345, "note": "<script>x</script>"})
    [claimed] = task_claim(stage=review, worker_id="w1")
    task_complete(task_id=claimed.pk, lock_token=claimed.lock_token, send=[("approved", {"customer_id": 12345})])
    for i in range(3):
        task_create(stage=world["ship"], type="approved", payload={"n": i})

    # Log in; the home page is the overview with the workflow graph.
    page.goto(page.base + "/")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", "pw-12345")
    page.click("button[type=submit]")
    page.wait_for_url("**/overview/")
    assert page.locator("svg.graph-wide g.stage[data-stage=review]").count() == 1  # the tall drawing: phones

    # Filter the list by stage and status (through the URL the filter form builds).
    page.goto(page.base + "/tasks/")
    page.check("#filters input[name=stage][value=review]")  # checkbox chips
    page.check("#filters input[name=status][value=completed]")
    page.click("form#filters button[type=submit]")
    page.wait_for_url("**stage=review**")
    rows = page.locator("#task-rows tr")
    assert rows.count() == 1 and rows.first.get_attribute("id") == f"task-{done.pk}"

    # Expand the payload in place: shown as text, never run as HTML.
    rows.first.locator("details summary").click()
    assert "<script>x</script>" in rows.first.locator("pre.json").inner_text()

    # Open the task and retry it.
    rows.first.locator(f"a[href='/tasks/{done.pk}/']").click()
    page.wait_for_url(f"**/tasks/{done.pk}/")
    assert page.locator(".timeline li").count() >= 2
    page.click("button:has-text('Retry')")
    page.wait_for_selector(".messages .msg-success")
    assert Task.objects.get(pk=done.pk).status == Task.Status.PENDING

    # Bulk action on everything matching a filter: mark the ship tasks completed.
    page.goto(page.base + "/tasks/?stage=ship&status=pending")
    page.select_option("form#bulk select[name=action]", "complete")
    page.select_option("form#bulk select[name=scope]", "all")
    page.click("form#bulk button[type=submit]")  # enabled once an action and rows (or all matching) are chosen
    assert page.locator("#bulk-question").inner_text() == "Mark 4 pending tasks at Ship as completed?"
    page.click("#bulk-confirm button[type=submit]")
    page.wait_for_selector(".messages .msg-success")
    assert "Marked completed 4 task(s)." in page.locator(".messages").inner_text()
    assert not Task.objects.filter(stage=world["ship"], status=Task.Status.PENDING).exists()

    # A task created elsewhere appears through auto-refresh, without a reload.
    page.goto(page.base + "/tasks/?stage=notify")
    page.evaluate("localStorage.setItem('tasks.autoRefresh', 'on')")
    page.reload()
    assert page.locator("#task-rows tr[id^=task-]").count() == 0
    new = task_create(stage=world["notify"], type="declined", payload={"late": True})
    page.wait_for_selector(f"#task-{new.pk}", timeout=15_000)
    page.goto(page.base + "/workers/")


# -- form stages ("My work") ---------------------------------------------------------------


@pytest.fixture
def form_flow(page: Any) -> dict[str, Stage]:
    """review (a form stage for the "reviewers") --approved--> invoice, --declined--> notify (reason required)."""
    from django.contrib.auth.models import Group

    from tasks_app.models import Transition

    reviewers = Group.objects.create(name="reviewers")
    review = Stage.objects.create(
        slug="review",
        name="Review",
        kind=Stage.Kind.FORM,
        schemas={
            "approved": {"title": "Approve", "type": "object", "properties": {"note": {"type": "string"}}},
            "declined": {
                "title": "Decline",
                "type": "object",
                "required": ["reason"],
                "properties": {"reason": {"type": "string"}},
            },
        },
    )
    review.groups.add(reviewers)
    stages = {"review": review}
    for slug, task_type in [("invoice", "approved"), ("notify", "declined")]:
        stages[slug] = Stage.objects.create(slug=slug, name=slug.title(), handler="tests.handlers.noop")
        Transition.objects.create(source=review, target=stages[slug], task_type=task_type)
    reviewer = get_user_model().objects.create_user("rita", password="pw-12345")
    reviewer.groups.add(reviewers)
    return stages


def log_in(page: Any, username: str, password: str) -> None:
    page.goto(page.base + "/work/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(on_my_work)


def on_my_work(url: str) -> bool:
    from urllib.parse import urlsplit

    return urlsplit(url).path == "/work/"  # not the login page's ?next=/work/


def open_from_my_work(page: Any, task: Task) -> None:
    page.goto(page.base + "/work/")
    row = page.locator("#waiting tr", has=page.locator(f"a[href='/work/{task.pk}/']"))
    row.locator("button:has-text('Open')").click()
    page.wait_for_url(f"**/work/{task.pk}/")
    assert Task.objects.get(pk=task.pk).locked_by == "user:rita"


def test_reviewer_approves_a_task_from_my_work_in_a_browser(page: Any, form_flow: dict[str, Stage]) -> None:
    task = task_create(stage=form_flow["review"], type="order", payload={"amount": 10})

    log_in(page, "rita", "pw-12345")
    assert page.locator("#waiting a", has_text=str(task.pk)).count() == 1
    open_from_my_work(page, task)
    page.fill("input[name='f-approved-note']", "pay it")
    page.click("form[data-type=approved] button:has-text('Approve')")
    page.wait_for_url(on_my_work)

    [successor] = Task.objects.filter(parent_id=task.pk)
    assert (successor.stage.slug, successor.type) == ("invoice", "approved")
    assert successor.payload == {"amount": 10, "note": "pay it"}
    assert Task.objects.get(pk=task.pk).status == Task.Status.COMPLETED
    message = page.locator(".messages .msg-success").inner_text()
    assert message == f"Task {task.pk}: approve, sent to invoice (task {successor.pk})."
    assert page.locator(f"a[href='/work/{task.pk}/']").count() == 0  # done: off the list


def test_reviewer_declines_only_with_a_reason_in_a_browser(page: Any, form_flow: dict[str, Stage]) -> None:
    task = task_create(stage=form_flow["review"], type="order", payload={"amount": 500})
    log_in(page, "rita", "pw-12345")
    open_from_my_work(page, task)
    reason = page.locator("input[name='f-declined-reason']")
    decline = page.locator("form[data-type=declined] button:has-text('Decline')")

    # The browser itself refuses to send the form without the required reason...
    decline.click()
    assert reason.evaluate("el => el.validity.valueMissing") is True
    page.wait_for_timeout(300)
    assert page.url.endswith(f"/work/{task.pk}/")
    # ...and so does the server when the browser's check is bypassed: a 400 page with the message.
    page.locator("form[data-type=declined]").evaluate("f => { f.noValidate = true; }")
    with page.expect_navigation() as navigation:
        decline.click()
    assert navigation.value.status == 400
    assert "This field is required." in page.locator("form[data-type=declined]").inner_text()
    current = Task.objects.get(pk=task.pk)
    assert (current.status, current.locked_by) == (Task.Status.LOCKED, "user:rita")
    assert not Task.objects.filter(parent_id=task.pk).exists()

    page.fill("input[name='f-declined-reason']", "too dear")
    page.click("form[data-type=declined] button:has-text('Decline')")
    page.wait_for_url(on_my_work)

    [successor] = Task.objects.filter(parent_id=task.pk)
    assert (successor.stage.slug, successor.type) == ("notify", "declined")
    assert successor.payload == {"amount": 500, "reason": "too dear"}
    assert f"sent to notify (task {successor.pk})" in page.locator(".messages .msg-success").inner_text()


# -- the content security policy ----------------------------------------------------------


def test_no_page_breaks_the_content_security_policy(page: Any, world: dict[str, Stage]) -> None:
    """Every page, the admin's JSON editor and the API docs run with script-src 'self' and no violation."""
    violations: list[str] = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    get_user_model().objects.create_superuser("boss", password="pw-12345")
    task = task_create(stage=world["review"], type="order", payload={"n": 1})
    page.goto(page.base + "/accounts/login/")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", "pw-12345")
    page.click("button[type=submit]")
    page.wait_for_url("**/overview/")
    for path in ["/overview/", "/tasks/", f"/tasks/{task.pk}/", "/work/", "/workers/", "/admin/",
                 "/admin/tasks_app/task/",  # its status badges
                 f"/admin/tasks_app/stage/{world['review'].pk}/change/"]:  # fmt: skip
        page.goto(page.base + path)
        page.wait_for_load_state("networkidle")
    # The admin's JSON editor (static JS) still validates as you type.
    page.fill("textarea[name=schemas]", "{not json")
    assert "in JSON at position" in page.locator(".json-status").inner_text()
    # Swagger UI renders from files only.
    page.goto(page.base + "/api/docs/")
    page.wait_for_selector(".swagger-ui .info", timeout=20_000)
    assert violations == []


# -- screenshots of every page (`make screenshots`) -----------------------------------------------

VARIANTS = {"": (DESKTOP, "light"), "-phone": (PHONE, "light"), "-dark": (DESKTOP, "dark")}


def screenshot_pages(stages: dict[str, Stage], user: Any) -> list[tuple[str, str]]:
    """(name, path) of every page, on the demo workflow with seeded history."""
    detail = Task.objects.filter(stage=stages["invoice"], status=Task.Status.COMPLETED, parent__isnull=False).first()
    failed = Task.objects.filter(status=Task.Status.FAILED).first()
    waiting = Task.objects.filter(stage=stages["review"], status=Task.Status.PENDING).order_by("id")
    form_task = form_task_open(task=waiting[0], user=user)
    assert detail and failed
    pages = [
        ("overview", "/overview/"),
        ("task-list", "/tasks/"),
        ("task-list-failed", "/tasks/?status=failed"),
        ("task-detail", f"/tasks/{detail.pk}/"),
        ("task-detail-failed", f"/tasks/{failed.pk}/"),
        ("my-work", "/work/"),
        ("form-task", f"/work/{form_task.pk}/"),
        ("workers", "/workers/"),
        ("admin-tasks", "/admin/tasks_app/task/"),
    ]
    try:  # the stage page, where this tree has it
        pages.insert(3, ("stage", reverse("tasks_app:stage-detail", args=["check-stock"])))
    except NoReverseMatch:
        pass
    return pages


def test_screenshots_of_every_page(live_server: Any) -> None:
    """Every page at desktop (1440x900), phone (390x844) and dark, on the demo with 400 seeded tasks: each
    answers 200 and dark is dark. With SAVE_SCREENSHOTS (`make screenshots`) it writes docs/screenshots/."""
    stages = load_demo()
    call_command("seed_tasks", "--count", "400", stdout=StringIO())
    WorkerProcess.objects.create(worker_id="vm:4242:demo", host="vm", pid=4242, stages=[], concurrency=4,
                                 tasks_done=1250, tasks_failed=3)  # fmt: skip
    user = make_user("admin", superuser=True)
    pages = screenshot_pages(stages, user)
    backgrounds: dict[str, set[str]] = {}
    for suffix, (viewport, scheme) in VARIANTS.items():
        with chromium_page(live_server.url, viewport=viewport, color_scheme=scheme) as page:
            page.goto(page.base + "/accounts/login/")
            save(page, "login" + suffix)
        with chromium_page(live_server.url, viewport=viewport, color_scheme=scheme, user=user) as page:
            for name, path in pages:
                response = page.goto(page.base + path)
                assert response is not None and response.status == 200, (name, suffix)
                page.wait_for_load_state("networkidle")
                if not name.startswith("admin"):
                    backgrounds.setdefault(scheme, set()).add(
                        page.evaluate("getComputedStyle(document.body).backgroundColor")
                    )
                save(page, name + suffix)
    assert len(backgrounds["light"]) == 1 and len(backgrounds["dark"]) == 1
    assert backgrounds["light"] != backgrounds["dark"]


def save(page: Any, name: str) -> None:
    if SAVE_SCREENSHOTS:
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
