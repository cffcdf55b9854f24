"""A new user's first steps: `make run` on a busy port, and seed_tasks with `make run`'s worker running."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import Client
from jsonschema import Draft202012Validator

from tasks_app.demo import load_demo
from tasks_app.models import JobRun, Stage, Task, TaskEvent
from tests.support.chromium import DESKTOP, PHONE, chromium_page, needs_chromium
from tests.support.processes import ROOT, subprocess_env
from tests.support.users import make_user

committed = pytest.mark.django_db(transaction=True)


def run(*args: str, **options: Any) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


# -- seed_tasks writes what the demo's handlers read ------------------------------------------


def worker_outcomes(since_event: int) -> Counter[str]:
    """Kinds of the events written after `since_event` (by the worker and the scheduler, not the seeding)."""
    return Counter(TaskEvent.objects.filter(id__gt=since_event).values_list("kind", flat=True))


@committed
def test_the_demo_worker_works_seeded_tasks_without_errors(db: None) -> None:
    """Today's bug: seeded items were bare strings, check-stock raised TypeError and retried forever."""
    load_demo(with_orders=False)
    run("seed_tasks", "--count", "600", "--batch-size", "200")
    last_seeded = TaskEvent.objects.order_by("-id").values_list("id", flat=True)[0]
    last_task = Task.objects.order_by("-id").values_list("id", flat=True)[0]
    script_stages = list(Stage.objects.filter(kind=Stage.Kind.SCRIPT).values_list("slug", flat=True))
    claimable = Task.objects.filter(stage__slug__in=script_stages, status=Task.Status.PENDING).count()
    assert claimable > 10  # the seed leaves work for the worker at every script stage

    run("run_worker", once=True, no_scheduler=True)  # the demo's handlers, as `make run`'s worker runs them
    assert not Task.objects.filter(stage__slug__in=script_stages, status=Task.Status.PENDING, attempts=0).exists()
    run("run_scheduler", run_now="daily-digest")  # and its nightly job over the seeded tasks waiting there

    outcomes = worker_outcomes(last_seeded)
    errors = list(
        TaskEvent.objects.filter(id__gt=last_seeded, kind__in=["released", "failed"]).values_list("details", flat=True)
    )
    assert errors == []
    assert outcomes["completed"] >= claimable
    [job] = JobRun.objects.filter(stage__slug="daily-digest")
    assert job.status == JobRun.Status.SUCCEEDED and job.tasks_processed > 0, job.error
    # What they sent follows the demo's shapes: prices from the items, an invoice per order.
    invoiced = Task.objects.filter(type="invoiced", id__gt=last_task)
    assert invoiced.exists()
    for task in invoiced[:20]:
        assert task.payload["invoice"] == f"INV-{task.payload['order_id']}" and task.payload["total"] > 0


def test_seeded_orders_have_the_demo_shape(db: None) -> None:
    load_demo(with_orders=False)
    run("seed_tasks", "--count", "300")
    orders = Stage.objects.get(slug="orders")
    schema = orders.schemas["order"]
    validator = Draft202012Validator(schema)
    for task in Task.objects.filter(parent__isnull=True)[:300]:
        assert list(validator.iter_errors(task.payload)) == [], task.payload


# -- make run on a busy port ----------------------------------------------------------------


@contextmanager
def busy_port() -> Iterator[int]:
    """A port something listens on (as another `make run` would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def run_dev(addr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/run_dev.py"],
        cwd=ROOT,
        env={**subprocess_env(), "RUN_ADDR": addr},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_run_on_a_busy_port_exits_non_zero_with_a_hint() -> None:
    with busy_port() as port:
        done = run_dev(f"127.0.0.1:{port}")
    assert done.returncode != 0
    assert "Open http://" not in done.stdout
    [line] = done.stderr.strip().splitlines()
    assert f"127.0.0.1:{port} is already in use" in line and "RUN_ADDR=" in line


def test_a_bad_run_addr_is_one_line_too() -> None:
    done = run_dev("127.0.0.1:notaport")
    assert done.returncode != 0 and "Open http://" not in done.stdout
    [line] = done.stderr.strip().splitlines()
    assert "RUN_ADDR" in line and "notaport" in line


# -- the first page load: a favicon, a skip link ----------------------------------------------


def test_favicon_ico_answers_200_without_logging_in(client: Client) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response["Content-Type"] == "image/x-icon"
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert "max-age" in response["Cache-Control"]
    assert client.head("/favicon.ico").status_code == 200
    assert client.post("/favicon.ico").status_code == 405


def test_pages_link_an_icon_that_exists_and_open_with_a_skip_link(client: Client, db: None) -> None:
    html = client.get("/accounts/login/").content.decode()
    [href] = re.findall(r'<link rel="icon" href="([^"]+)"', html)
    assert href.startswith(settings.STATIC_URL) or href.startswith("/" + settings.STATIC_URL)
    assert finders.find(href.split(settings.STATIC_URL, 1)[1]) is not None
    body = html.split("<body>", 1)[1]
    first_link = re.search(r"<a [^>]*>", body)
    assert first_link and 'class="skip-link" href="#main"' in first_link.group(0)
    assert '<main id="main"' in body


@needs_chromium
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_first_load_has_no_404_and_the_skip_link_works(live_server: Any, viewport: Any) -> None:
    user = make_user("boss", superuser=True)
    failed: list[str] = []
    icons: list[int] = []
    with chromium_page(live_server.url, viewport=viewport) as page:
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        page.on("response", lambda r: icons.append(r.status) if "favicon" in r.url else None)
        page.goto(page.base + "/accounts/login/")
        page.wait_for_load_state("networkidle")
        # The linked icon, fetched as the browser would.
        href = page.eval_on_selector("link[rel=icon]", "el => el.href")
        assert page.request.get(href).status == 200
        assert page.request.get(page.base + "/favicon.ico").status == 200
    with chromium_page(live_server.url, viewport=viewport, user=user) as page:
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        page.goto(page.base + "/tasks/")
        # Keyboard: the first Tab reaches the skip link (visible once focused); Enter moves to the content.
        assert page.locator(".skip-link").bounding_box()["x"] < 0  # type: ignore[index]  # hidden until focused
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip-link"
        box = page.locator(".skip-link").bounding_box()
        assert box is not None and box["x"] >= 0
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
        for path in ["/overview/", "/admin/"]:
            page.goto(page.base + path)
            page.wait_for_load_state("networkidle")
    assert failed == []
    assert all(status == 200 for status in icons)
