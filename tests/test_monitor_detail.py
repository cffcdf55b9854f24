"""Monitoring pages: the task detail (payload, details, lock, history, lineage) and the workers page.

Read through the URLs and the rendered HTML only (tests.support.pages).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from html import unescape
from typing import Any

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app.models import Stage, Task, WorkerProcess
from tasks_app.services import task_claim, task_complete, task_create, task_release
from tasks_app.templatetags.people import local_text
from tests.support.pages import page


def definitions(html: str) -> dict[str, str]:
    """The <dt>/<dd> pairs of a page, as text."""
    return {
        unescape(re.sub(r"<[^>]+>", "", dt)).strip(): " ".join(unescape(re.sub(r"<[^>]+>", "", dd)).split())
        for dt, dd in re.findall(r"<dt>(.*?)</dt>\s*<dd[^>]*>(.*?)</dd>", html, re.DOTALL)
    }


# -- task detail ----------------------------------------------------------------------------


def test_task_detail_shows_the_payload_as_highlighted_pretty_json(admin_client: Client, review: Stage) -> None:
    payload = {"amount": 10, "name": "Ann", "ok": True, "gone": None, "nested": {"ratio": -2.5, "list": [1, "x"]}}
    task = task_create(stage=review, type="order", payload=payload)

    html = admin_client.get(f"/tasks/{task.pk}/").content.decode()

    block = re.search(r'<pre class="json">(.*?)</pre>', html, re.DOTALL)
    assert block, "no payload block"
    highlighted = block.group(1)
    assert '<span class="j-key">&quot;amount&quot;</span>: <span class="j-number">10</span>' in highlighted
    assert '<span class="j-key">&quot;name&quot;</span>: <span class="j-string">&quot;Ann&quot;</span>' in highlighted
    assert '<span class="j-literal">true</span>' in highlighted
    assert '<span class="j-literal">null</span>' in highlighted
    assert '<span class="j-number">-2.5</span>' in highlighted
    assert '<span class="j-string">&quot;x&quot;</span>' in highlighted
    # Stripped of its spans, the block is the pretty-printed payload.
    assert unescape(re.sub(r"<[^>]+>", "", highlighted)) == json.dumps(payload, indent=2, sort_keys=True)


def test_task_detail_highlights_a_string_that_looks_like_a_key(admin_client: Client, review: Stage) -> None:
    task = task_create(stage=review, type="order", payload={"a": 'x": 1', "b": "true"})

    html = admin_client.get(f"/tasks/{task.pk}/").content.decode()

    assert '<span class="j-string">&quot;x\\&quot;: 1&quot;</span>' in html
    assert '<span class="j-string">&quot;true&quot;</span>' in html


def test_task_detail_shows_the_lock_of_a_locked_task(admin_client: Client, every_state: dict[str, Task]) -> None:
    task = every_state["locked"]

    response = admin_client.get(f"/tasks/{task.pk}/")

    assert response.status_code == 200
    dl = definitions(response.content.decode())
    assert dl["Status"] == "Locked"
    assert dl["Locked by"] == "w1"
    assert dl["Locked at"].startswith(local_text(task.locked_at, seconds=True) + " (")
    assert dl["Lock until"].startswith(local_text(task.locked_until, seconds=True) + " (")
    assert dl["Attempts"] == "1"
    assert "Locked by w1, " in page(response).text


def test_task_detail_shows_an_expired_lock_as_expired(admin_client: Client, every_state: dict[str, Task]) -> None:
    task = every_state["expired"]

    text = page(admin_client.get(f"/tasks/{task.pk}/")).text

    assert "Locked by w-gone, lock expired " in text


def test_task_detail_shows_the_details_of_a_pending_task(admin_client: Client, pending_task: Task) -> None:
    dl = definitions(admin_client.get(f"/tasks/{pending_task.pk}/").content.decode())

    assert (dl["Status"], dl["Stage"], dl["Sent by"], dl["Attempts"]) == ("Pending", "review", "—", "0")
    assert (dl["Locked by"], dl["Locked at"], dl["Lock until"], dl["Completed"]) == ("—", "—", "—", "—")
    assert dl["Created"].startswith(local_text(pending_task.created_at, seconds=True))


def test_task_detail_history_of_a_released_task_shows_error_traceback_and_retry_time(
    admin_client: Client, review: Stage
) -> None:
    task = task_create(stage=review, type="order", payload={}, actor="user:ann")
    [claim] = task_claim(stage=review, worker_id="w1")
    traceback = 'Traceback (most recent call last):\n  File "handler.py", line 3\nValueError: bad amount'
    released = task_release(
        task_id=claim.pk, lock_token=claim.lock_token, error="ValueError: bad amount", traceback=traceback, retry_in=60
    )

    response = admin_client.get(f"/tasks/{task.pk}/")

    html = response.content.decode()
    timeline = re.search(r'<ol class="timeline">(.*?)</ol>', html, re.DOTALL)
    assert timeline, "no history"
    entries = re.findall(r'<li class="ev-(\w+)">', timeline.group(1))
    assert entries == ["created", "claimed", "released"]
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", timeline.group(1))).split())
    assert "Created by user:ann" in text
    assert "Claimed by w1" in text
    assert "Released by w1" in text
    assert "ValueError: bad amount" in text
    assert "Traceback" in text
    assert f"<pre>{traceback.replace(chr(34), '&quot;')}</pre>" in timeline.group(1)
    assert f"retry at {local_text(released.available_at, seconds=True)} (in " in text
    assert definitions(html)["Last error"] == "ValueError: bad amount"


def test_task_detail_history_of_a_failed_task_shows_the_failure(
    admin_client: Client, every_state: dict[str, Task]
) -> None:
    task = every_state["failed"]

    html = admin_client.get(f"/tasks/{task.pk}/").content.decode()

    assert re.findall(r'<li class="ev-(\w+)">', html) == ["created", "claimed", "failed"]
    assert "ValueError: it broke" in page(admin_client.get(f"/tasks/{task.pk}/")).text


def test_task_detail_shows_children_and_the_completed_event_links_the_tasks_it_sent(
    admin_client: Client, review: Stage
) -> None:
    parent = task_create(stage=review, type="order", payload={"amount": 1})
    [claim] = task_claim(stage=review, worker_id="w1")
    ship_child, audit_child = task_complete(
        task_id=claim.pk, lock_token=claim.lock_token, send=[("approved", {"amount": 1})]
    )

    response = admin_client.get(f"/tasks/{parent.pk}/")

    p = page(response)
    assert f"/tasks/{ship_child.pk}/" in p.hrefs()
    assert f"/tasks/{audit_child.pk}/" in p.hrefs()
    assert f"Children: task {ship_child.pk} (approved at ship), task {audit_child.pk} (approved at audit)" in p.text
    assert f"sent task {ship_child.pk}, task {audit_child.pk}" in p.text
    assert "Parent: —" in p.text


def test_task_detail_of_a_child_links_its_parent_named_by_stage_slug(admin_client: Client, review: Stage) -> None:
    # The parent is shown as "(order at <stage_id>)", a number, where the
    # children and every other place on the page show the stage slug.
    parent = task_create(stage=review, type="order", payload={"amount": 1})
    [claim] = task_claim(stage=review, worker_id="w1")
    child, _ = task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("approved", {"amount": 1})])

    p = page(admin_client.get(f"/tasks/{child.pk}/"))

    assert f"/tasks/{parent.pk}/" in p.hrefs()
    assert f"Parent: task {parent.pk} (order at review)" in p.text
    assert "Children: —" in p.text
    assert (
        definitions(admin_client.get(f"/tasks/{child.pk}/").content.decode())["Sent by"]
        == f"task {parent.pk} at review"
    )


def test_task_detail_of_a_missing_task_is_404(admin_client: Client, db: None) -> None:
    assert admin_client.get("/tasks/999999/").status_code == 404


def test_task_detail_query_count_does_not_grow_with_children_and_events(admin_client: Client, review: Stage) -> None:
    def queries(task: Task) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(f"/tasks/{task.pk}/").status_code == 200
        return len(ctx.captured_queries)

    def parent_with(sends: int) -> Task:
        task_create(stage=review, type="order", payload={})
        [claim] = task_claim(stage=review, worker_id="w1")
        task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("approved", {})] * sends)
        return claim

    assert queries(parent_with(1)) == queries(parent_with(15))


# -- workers ------------------------------------------------------------------------------


def make_worker(worker_id: str, *, heartbeat_ago: timedelta, stopped: bool = False, **fields: Any) -> WorkerProcess:
    now = timezone.now()
    return WorkerProcess.objects.create(
        worker_id=worker_id,
        host="host-1",
        pid=4242,
        started_at=now - timedelta(hours=2),
        last_heartbeat=now - heartbeat_ago,
        stopped_at=(now - heartbeat_ago) if stopped else None,
        **fields,
    )


def worker_rows(html: str) -> dict[str, dict[str, str]]:
    """The workers table, by worker id: {column header: cell text}."""

    def text(fragment: str) -> str:
        return " ".join(unescape(re.sub(r"<[^>]+>", "", fragment)).split())

    headers = [text(th) for th in re.findall(r"<th>(.*?)</th>", html, re.DOTALL)]
    rows: dict[str, dict[str, str]] = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", html, re.DOTALL):
        cells = [text(td) for td in re.findall(r"<td>(.*?)</td>", tr, re.DOTALL)]
        if cells and len(cells) == len(headers):
            rows[cells[0]] = dict(zip(headers, cells, strict=True))
    return rows


def test_workers_page_shows_alive_dead_and_stopped_workers(admin_client: Client, db: None) -> None:
    make_worker("w-alive", heartbeat_ago=timedelta(seconds=2), stages=["review", "ship"], current_tasks=[1, 2, 3])
    make_worker("w-dead", heartbeat_ago=timedelta(minutes=10), tasks_done=7, tasks_failed=2)
    make_worker("w-stopped", heartbeat_ago=timedelta(minutes=1), stopped=True, tasks_done=5)
    make_worker("w-stopped-just-now", heartbeat_ago=timedelta(seconds=1), stopped=True)

    response = admin_client.get("/workers/")

    assert response.status_code == 200
    rows = worker_rows(response.content.decode())
    assert {w: r["State"] for w, r in rows.items()} == {
        "w-alive": "alive",
        "w-dead": "dead",
        "w-stopped": "stopped",
        "w-stopped-just-now": "stopped",
    }
    alive = rows["w-alive"]
    assert (alive["Host"], alive["PID"], alive["Stages"], alive["Holding"]) == ("host-1", "4242", "review, ship", "3")
    dead = rows["w-dead"]
    assert (dead["Stages"], dead["Done"], dead["Failed"], dead["Holding"]) == ("all script stages", "7", "2", "0")


def test_workers_page_uses_the_dead_after_setting(admin_client: Client, settings: Any, db: None) -> None:
    settings.TASKS_WORKER_DEAD_AFTER = 5
    make_worker("w-quiet", heartbeat_ago=timedelta(seconds=30))

    assert worker_rows(admin_client.get("/workers/").content.decode())["w-quiet"]["State"] == "dead"


def test_workers_page_without_workers_says_none_has_run(admin_client: Client, db: None) -> None:
    response = admin_client.get("/workers/")

    assert response.status_code == 200
    assert "No worker has run yet." in page(response).text
