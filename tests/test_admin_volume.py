"""The admin at volume: the task changelist never counts (or lists the distinct types of) the whole task
table; the payload column stays one line; the names read right (worker processes, a stage's slug)."""

from __future__ import annotations

import re
from html import unescape as html_unescape
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tasks_app.models import Stage, Task, WorkerProcess
from tasks_app.paginators import EstimatedCountPaginator
from tasks_app.services import task_create, tasks_create_bulk
from tests.support.chromium import DESKTOP, PHONE, chromium_page, needs_chromium
from tests.support.pages import TASK_URL, page
from tests.support.users import logged_in, make_user

TASK_TABLE = Task._meta.db_table


def boss() -> Client:
    return logged_in(make_user("boss", superuser=True))


def make_many(world: dict[str, Stage]) -> list[Task]:
    """120 tasks: more than one page of the changelist (100 a page)."""
    return list(tasks_create_bulk(items=[(world["intake"], "order", {"n": i}) for i in range(120)]))


def task_table_queries(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if re.search(rf'\bFROM "?{TASK_TABLE}"?', q["sql"])]


def unbounded_counts(sqls: list[str]) -> list[str]:
    """COUNT queries over the task table that are not over a LIMITed subquery (a full count)."""
    return [sql for sql in sqls if "COUNT(" in sql.upper() and " LIMIT " not in sql.upper()]


def test_the_changelist_runs_no_full_count_of_the_task_table(world: dict[str, Stage]) -> None:
    admin_client, _ = boss(), make_many(world)
    for url in [TASK_URL, TASK_URL + "?p=2", TASK_URL + "?status__exact=pending", TASK_URL + "?q=order"]:
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(url)
        assert response.status_code == 200, url
        sqls = task_table_queries(captured)
        assert sqls, url  # the capture sees the changelist's queries
        assert unbounded_counts(sqls) == [], url
        # Nor a SELECT DISTINCT over every task (Django's filter for a CharField lists the types that way).
        assert [sql for sql in sqls if "DISTINCT" in sql.upper()] == [], url


def test_the_changelist_queries_do_not_grow_with_its_rows(world: dict[str, Stage]) -> None:
    admin_client = boss()
    """Each row shows its stage and source stage and names its task (the checkbox's label): all joined."""

    def queries_for(n: int) -> int:
        Task.objects.all().delete()
        items = [(world["review"], "order", {"n": i}) for i in range(n)]
        Task.objects.filter(pk__in=[t.pk for t in tasks_create_bulk(items=items)]).update(source_stage=world["intake"])
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(TASK_URL).status_code == 200
        return len(captured.captured_queries)

    assert queries_for(3) == queries_for(40)


def test_the_changelist_still_says_how_many_and_pages(world: dict[str, Stage]) -> None:
    admin_client, _ = boss(), make_many(world)
    text = page(admin_client.get(TASK_URL)).text
    assert re.search(r"\b120 tasks\b", text) and "about" not in text
    second = admin_client.get(TASK_URL + "?p=2")
    assert second.status_code == 200
    assert len(re.findall(r'name="_selected_action"', second.content.decode())) == 20


def test_above_the_cap_the_count_is_an_estimate_and_says_so(world: dict[str, Stage], monkeypatch: Any) -> None:
    admin_client, _ = boss(), make_many(world)
    monkeypatch.setattr(EstimatedCountPaginator, "cap", 50)
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(TASK_URL)
    assert unbounded_counts(task_table_queries(captured)) == []
    html = response.content.decode()
    assert 'class="estimated-count"' in html and re.search(r"about \d+", page(response).text)
    # Every page it offers opens (an estimate above the real count would offer empty ones: those 404 nowhere).
    assert admin_client.get(TASK_URL + "?p=2").status_code == 200


def test_the_payload_column_is_a_one_line_preview(world: dict[str, Stage]) -> None:
    admin_client = boss()
    task_create(stage=world["intake"], type="order", payload={"note": "x" * 2000, "<b>": "<script>alert(1)</script>"})
    html = admin_client.get(TASK_URL).content.decode()
    [cell] = re.findall(r'<code class="payload-preview">([^<]*)</code>', html)
    assert len(html_unescape(cell)) <= 120 and cell.endswith("...")
    assert "<script>alert(1)" not in html  # escaped
    css = Path(str(finders.find("tasks_app/admin.css"))).read_text()
    rule = re.search(r"code\.payload-preview \{([^}]*)\}", css)
    assert rule and "white-space: nowrap" in rule.group(1) and "text-overflow: ellipsis" in rule.group(1)


@needs_chromium
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_changelist_rows_stay_one_line_and_the_payload_column_shows(
    live_server: Any, world: dict[str, Stage], viewport: Any
) -> None:
    user = make_user("boss", superuser=True)
    for i in range(5):
        payload = {"order_id": i, "customer": "ada@example.com", "items": [{"sku": "lamp", "qty": 1}] * 20}
        task_create(stage=world["intake"], type="order", payload=payload)
    with chromium_page(live_server.url, viewport=viewport, user=user) as page:
        page.goto(page.base + TASK_URL)
        cells = page.locator("#result_list td.field-payload_preview")
        assert cells.count() == 5
        code_line = page.eval_on_selector("code.payload-preview", "el => parseFloat(getComputedStyle(el).lineHeight)")
        for i in range(5):
            box = page.locator("code.payload-preview").nth(i).bounding_box()
            assert box is not None and box["width"] > 0
            assert box["height"] <= code_line * 1.5  # one line, however long the payload
            row = page.locator("#result_list tbody tr").nth(i).bounding_box()
            assert row is not None and row["height"] < 60
        if viewport == DESKTOP:
            # The column is on screen, not behind a horizontal scroll of the results box.
            box = cells.first.bounding_box()
            assert box is not None and box["x"] + box["width"] <= viewport["width"]
            assert box["width"] >= 150
            assert page.eval_on_selector(".results", "el => el.scrollWidth <= el.clientWidth")


def test_the_type_filter_lists_the_routed_types_and_filters(world: dict[str, Stage]) -> None:
    admin_client = boss()
    task_create(stage=world["ship"], type="approved", payload={})
    task_create(stage=world["notify"], type="declined", payload={})
    listed = page(admin_client.get(TASK_URL))
    assert "?type=approved" in listed.hrefs() and "?type=declined" in listed.hrefs()
    rows = page(admin_client.get(TASK_URL + "?type=declined")).text
    assert "declined" in rows and "approved" not in rows.split("By type")[0]


def test_the_admin_says_worker_processes(db: None) -> None:
    admin_client = boss()
    WorkerProcess.objects.create(worker_id="w-1", host="h", pid=1)
    for url in ["/admin/", "/admin/tasks_app/workerprocess/"]:
        text = page(admin_client.get(url)).text
        assert "Worker processes" in text or "worker processes" in text, url
        assert "processs" not in text, url


def test_breadcrumbs_name_the_task_s_stage_by_slug(world: dict[str, Stage]) -> None:
    admin_client = boss()
    task = task_create(stage=world["review"], type="order", payload={})
    html = admin_client.get(f"{TASK_URL}{task.pk}/change/").content.decode()
    crumbs = re.search(r'<div class="breadcrumbs">(.*?)</div>', html, re.S)
    assert crumbs, html[:500]
    assert f"Task {task.pk} (order) at review" in crumbs.group(1)
    assert f"at {world['review'].pk}<" not in crumbs.group(1).replace("\n", "")
