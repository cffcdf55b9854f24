"""Works everywhere (issue 14, section 5): an axe-core audit of every page and the phone layout, in Chromium.

One browser per viewport (desktop 1440x900, phone 390x844) walks every page of the app and the admin, on the
demo workflow with a few tasks in every state and hours of folded history (so figures and charts are drawn):
the login and lockout pages, the overview, the task list (with rows, with filters active, a lookup from the top
bar's box), the bulk confirmation, task detail (pending, failed with an error, retrying, completed with
history), edit payload, new task, the stage page of each kind (script, job, hook, form), workers, My work, the
decision page, and the admin's index and task changelist. Each must have no critical or serious axe
violation; dark mode is audited for contrast too. At 390 px no app page scrolls sideways, wide tables scroll in
a box of their own, cards stack. Every problem of both viewports is collected first, so one run names them all.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from tasks_app.demo import load_demo
from tasks_app.models import Stage, Task, WorkerProcess
from tasks_app.services import task_claim, task_complete, task_create, task_fail, task_release
from tasks_app.services.counters import counters_fold
from tasks_app.services.form_stages import form_task_open
from tasks_app.services.jobs import job_run_now
from tests.support.axe import axe_blocking, layout_problems
from tests.support.chromium import DESKTOP, PHONE, chromium_page, needs_chromium

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]

ERROR = 'ConnectionError: [Errno 111] Connection refused\n  File "handlers.py", line 12, in check_stock'
# The pages audited in dark mode too (contrast only: the other rules don't depend on the colours): the ones an
# operator keeps open, a stage page and the decision page.
DARK = {"overview", "task list", "task list filtered", "task detail failed", "stage script", "decision"}


def every_page(user: Any) -> list[tuple[str, str]]:
    """(name, path) of every page behind the login, on the demo workflow with tasks in every state and a few
    hours of history folded into the figures and charts."""
    stages = load_demo()  # its three sample orders wait at check-stock
    hours_ago = timezone.now() - timedelta(hours=3)
    for n in range(2):  # invoiced three hours ago, the second after a retry
        task_create(stage=stages["invoice"], type="approved", payload={"order_id": 900 + n}, now=hours_ago)
        [claim] = task_claim(stage=stages["invoice"], worker_id="w1", now=hours_ago + timedelta(seconds=5))
        if n:
            task_release(task_id=claim.pk, lock_token=claim.lock_token, error="Timeout", retry_in=0,
                         now=hours_ago + timedelta(seconds=6))  # fmt: skip
            [claim] = task_claim(stage=stages["invoice"], worker_id="w1", now=hours_ago + timedelta(seconds=20))
        task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("invoiced", {"order_id": 900 + n})],
                      now=hours_ago + timedelta(seconds=30))  # fmt: skip
    waiting = Task.objects.filter(stage=stages["check-stock"], status=Task.Status.PENDING).order_by("id")
    completed, failed, retrying = waiting[:3]
    [claim] = task_claim(stage=stages["check-stock"], worker_id="w1")
    assert claim.pk == completed.pk
    task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("in_stock", dict(claim.payload))])
    [claim] = task_claim(stage=stages["check-stock"], worker_id="w1")
    task_fail(task_id=claim.pk, lock_token=claim.lock_token, error=ERROR)
    [claim] = task_claim(stage=stages["check-stock"], worker_id="w1")
    task_release(task_id=claim.pk, lock_token=claim.lock_token, error=ERROR, retry_in=600)
    pending = Task.objects.get(parent_id=completed.pk)  # at review, a form stage
    deciding = task_create(stage=stages["review"], type="in_stock", payload={"order_id": 7, "customer": "x@y.z"})
    form_task_open(task=deciding, user=user)
    for n in range(4):
        task_create(stage=stages["invoice"], type="approved", payload={"order_id": 2000 + n, "items": []})
    job_run_now(stage=stages["daily-digest"], worker_id="user:boss")
    while counters_fold(now=timezone.now() + timedelta(minutes=5)):  # the workers' upkeep does this
        pass
    WorkerProcess.objects.create(worker_id="vm:4242:demo", host="vm", pid=4242, stages=[], concurrency=4,
                                 tasks_done=1250, tasks_released=7, tasks_failed=3)  # fmt: skip
    assert Task.objects.get(pk=failed.pk).status == Task.Status.FAILED
    assert Task.objects.get(pk=retrying.pk).attempts == 1
    kinds = {slug: stages[slug].kind for slug in ("check-stock", "daily-digest", "orders", "review")}
    assert kinds == {"check-stock": Stage.Kind.SCRIPT, "daily-digest": Stage.Kind.JOB, "orders": Stage.Kind.HOOK,
                     "review": Stage.Kind.FORM}  # fmt: skip
    return [
        ("overview", "/overview/"),
        ("task list", "/tasks/"),
        ("task list filtered", "/tasks/?stage=check-stock&status=failed&status=pending&q=ConnectionError"),
        ("lookup", "/tasks/lookup/?q=order_id:1001"),  # the top bar's box: a payload lookup, shown as the list
        ("task detail pending", f"/tasks/{pending.pk}/"),
        ("task detail failed", f"/tasks/{failed.pk}/"),
        ("task detail retrying", f"/tasks/{retrying.pk}/"),
        ("task detail completed", f"/tasks/{completed.pk}/"),
        ("edit payload", f"/tasks/{pending.pk}/edit/"),
        ("new task", "/tasks/new/"),
        ("stage script", "/stages/check-stock/"),
        ("stage job", "/stages/daily-digest/"),
        ("stage hook", "/stages/orders/"),
        ("stage form", "/stages/review/"),
        ("workers", "/workers/"),
        ("my work", "/work/"),
        ("decision", f"/work/{deciding.pk}/"),
        ("admin index", "/admin/"),
        ("admin tasks", "/admin/tasks_app/task/"),
    ]


def audit(page: Any, name: str, path: str, *, phone: bool) -> list[str]:
    """The page's problems, each prefixed with the page and viewport."""
    response = page.goto(page.base + path)
    if response is None or response.status != 200:
        return [f"{name} ({path}): HTTP {response.status if response else 'no response'}"]
    return check(page, name, phone=phone)


def check(page: Any, name: str, *, phone: bool) -> list[str]:
    """The problems of the page on screen: axe's, and at a phone's width the layout's."""
    problems = axe_blocking(page)
    if phone and not name.startswith("admin"):  # the admin's layout is Django's own
        problems += layout_problems(page)
    where = f"{name} ({'phone' if phone else 'desktop'}, {page.url.removeprefix(page.base)})"
    return [f"{where}: {p}" for p in problems]


def log_in(page: Any, username: str, password: str) -> Any:
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation() as navigation:
        page.click("button[type=submit]")
    return navigation.value


def test_every_page_passes_axe_and_fits_a_phone(live_server: Any, settings: Any) -> None:
    settings.AXES_FAILURE_LIMIT = 1  # one wrong password shows the lockout page
    user = get_user_model().objects.create_superuser("boss", password="pw-12345")
    pages = every_page(user)
    problems: list[str] = []
    for viewport in (DESKTOP, PHONE):
        phone = viewport is PHONE
        with chromium_page(live_server.url, viewport=viewport) as page:
            # The login page, the lockout page (another username), then in through the login page.
            problems += audit(page, "login", "/accounts/login/", phone=phone)
            assert log_in(page, "intruder", "guess").status == 429
            problems += check(page, "locked out", phone=phone)
            page.goto(page.base + "/accounts/login/")
            log_in(page, "boss", "pw-12345")
            assert page.url.endswith("/overview/")
            for name, path in pages:
                problems += audit(page, name, path, phone=phone)
            # The bulk bar's confirmation page ("Retry 1 failed task at Check stock?").
            page.goto(page.base + "/tasks/?stage=check-stock&status=failed")
            page.select_option("form#bulk select[name=action]", "retry")
            page.select_option("form#bulk select[name=scope]", "all")
            with page.expect_navigation():
                page.click("form#bulk button[type=submit]")  # enabled once the server has counted
            assert page.locator("#bulk-question").count() == 1
            problems += check(page, "bulk confirmation", phone=phone)
            if not phone:
                page.emulate_media(color_scheme="dark")
                assert page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
                for name, path in pages:
                    if name in DARK:
                        page.goto(page.base + path)
                        problems += [f"{name} (dark, {path}): {p}" for p in axe_blocking(page, contrast_only=True)]
    print("\n".join(problems))
    assert problems == [], f"{len(problems)} problem(s):\n" + "\n".join(problems)
