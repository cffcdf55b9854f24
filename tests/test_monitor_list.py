"""Monitoring pages: the task list: columns, filters, free text, sorting, keyset pages.

Read through the URLs and the rendered HTML only (tests.support.pages).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app.models import Stage, Task
from tasks_app.services import task_claim, task_complete, task_create, task_release, tasks_create_bulk
from tests.support.pages import LIST_URL, Page, page

# -- reading the task table (tests.support.pages.Page) -----------------------------------------


def table(client: Client, query: dict[str, Any] | None = None) -> Page:
    """The list page: its task table is Page.headers, .rows and .order."""
    response = client.get(LIST_URL, query)
    assert response.status_code == 200
    return Page(response.content.decode())


def listed(client: Client, query: dict[str, Any] | None = None) -> list[int]:
    return table(client, query).order


def row_html(html: str, task: Task) -> str:
    match = re.search(rf'<tr id="task-{task.pk}">(.*?)</tr>', html, re.DOTALL)
    assert match, f"no row for task {task.pk}"
    return match.group(1)


# -- task list: columns -------------------------------------------------------------------


def test_task_list_shows_every_column_for_tasks_in_every_state(
    admin_client: Client, every_state: dict[str, Task]
) -> None:
    t = table(admin_client)

    assert {"ID", "Created", "Type", "Sent by", "At stage", "Status", "Attempts", "Payload"} <= set(t.headers)
    assert set(t.rows) == {task.pk for task in every_state.values()}
    for task in every_state.values():
        row = t.rows[task.pk]
        assert row["ID"] == str(task.pk)
        assert row["Created"].endswith(" ago")
        assert row["Type"] == "order"
        assert row["Sent by"] == "—"
        assert row["At stage"] == task.stage.slug
        assert row["Attempts"] == str(task.attempts)
        assert json.dumps(task.payload) in row["Payload"]
    status = {name: t.rows[task.pk]["Status"] for name, task in every_state.items()}
    assert status["pending"].startswith("Pending for ")
    assert re.fullmatch(r"Locked by w1, (4|5) min left", status["locked"])
    assert status["expired"].startswith("Locked by w-gone, lock expired ")
    assert status["expired"].endswith(" ago")
    assert status["completed"].startswith("Completed in ")
    assert status["failed"] == "Failed after 1 attempt"


def test_task_list_status_badge_carries_the_status_as_class_and_title(
    admin_client: Client, every_state: dict[str, Task]
) -> None:
    html = admin_client.get(LIST_URL).content.decode()

    for task in every_state.values():
        badge = re.search(r'<span class="badge badge-(\w+)" title="(\w+)">', row_html(html, task))
        assert badge and badge.groups() == (task.status, task.get_status_display())


def test_task_list_links_each_id_to_the_task_detail(admin_client: Client, pending_task: Task) -> None:
    html = admin_client.get(LIST_URL).content.decode()

    assert f'<a href="/tasks/{pending_task.pk}/">{pending_task.pk}</a>' in row_html(html, pending_task)


def test_task_list_shows_retry_time_of_a_released_task_and_failed_after_n_attempts(
    admin_client: Client, review: Stage
) -> None:
    review.max_attempts = 2
    review.save()
    task = task_create(stage=review, type="order", payload={})
    [claim] = task_claim(stage=review, worker_id="w1")
    task_release(task_id=claim.pk, lock_token=claim.lock_token, error="E1", retry_in=600)
    status = table(admin_client).rows[task.pk]["Status"]
    assert status in ("Retrying · attempt 2 · next in 10 min", "Retrying · attempt 2 · next in 9 min")

    [claim] = task_claim(stage=review, worker_id="w1", now=timezone.now() + timedelta(seconds=601))
    task_release(task_id=claim.pk, lock_token=claim.lock_token, error="E2")

    row = table(admin_client).rows[task.pk]
    assert (row["Status"], row["Attempts"]) == ("Failed after 2 attempts", "2")


def test_task_list_shows_the_sending_stage_of_a_successor(admin_client: Client, review: Stage) -> None:
    parent = task_create(stage=review, type="order", payload={"amount": 1})
    [claim] = task_claim(stage=review, worker_id="w1")
    ship_child, audit_child = task_complete(
        task_id=claim.pk, lock_token=claim.lock_token, send=[("approved", {"amount": 1})]
    )

    rows = table(admin_client).rows

    assert rows[parent.pk]["Sent by"] == "—"
    assert (rows[ship_child.pk]["Sent by"], rows[ship_child.pk]["At stage"]) == ("review", "ship")
    assert (rows[audit_child.pk]["Sent by"], rows[audit_child.pk]["At stage"]) == ("review", "audit")


def test_task_list_previews_a_long_payload_truncated_and_keeps_the_whole_in_the_expansion(
    admin_client: Client, review: Stage
) -> None:
    task = task_create(stage=review, type="order", payload={"text": "x" * 200, "z": "END"})

    row = row_html(admin_client.get(LIST_URL).content.decode(), task)

    preview = unescape(re.search(r"<code>(.*?)</code>", row, re.DOTALL).group(1))  # type: ignore[union-attr]
    assert len(preview) == 90 and preview.endswith("...")
    assert "END" not in preview
    assert '"z": "END"' in unescape(row)


def test_task_list_says_so_when_no_task_matches(admin_client: Client, world: dict[str, Stage]) -> None:
    response = admin_client.get(LIST_URL)

    assert response.status_code == 200
    assert "No tasks match." in page(response).text


def test_task_list_query_count_does_not_grow_with_the_rows(admin_client: Client, review: Stage) -> None:
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(LIST_URL).status_code == 200
        return len(ctx.captured_queries)

    task_create(stage=review, type="order", payload={})
    few = queries()
    tasks_create_bulk(items=[(review, "order", {})] * 11)
    for claim in task_claim(stage=review, worker_id="w1", limit=12):
        task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("approved", {})])

    assert Task.objects.filter(source_stage=review).count() == 24
    assert queries() == few


def test_rows_fragment_for_auto_refresh_has_the_filtered_rows_only(
    admin_client: Client, every_state: dict[str, Task]
) -> None:
    response = admin_client.get("/tasks/rows/", {"status": "failed"})

    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html
    assert re.findall(r'<tr id="task-(\d+)"', html) == [str(every_state["failed"].pk)]


# -- task list: filters -----------------------------------------------------------------


@pytest.fixture
def varied(world: dict[str, Stage]) -> dict[str, Task]:
    """Tasks that differ in stage, status, type, creation time, payload and parent."""
    base = timezone.now() - timedelta(days=10)
    made = {
        "old_order": task_create(
            stage=world["review"], type="order", payload={"customer_id": 12345, "city": "Oslo"}, now=base
        ),
        "mid_refund": task_create(
            stage=world["review"],
            type="refund",
            payload={"customer_id": 777, "customer": {"tier": "gold"}},
            now=base + timedelta(days=2),
        ),
        "new_order_ship": task_create(
            stage=world["ship"],
            type="order",
            payload={"customer_id": "12345", "note": "Express"},
            now=base + timedelta(days=4),
        ),
        "new_ping_notify": task_create(
            stage=world["notify"], type="ping", payload={"customer_id": 12345}, now=base + timedelta(days=6)
        ),
    }
    [claim] = task_claim(stage=world["notify"], worker_id="w1")
    task_complete(task_id=claim.pk, lock_token=claim.lock_token)
    [claim] = task_claim(stage=world["review"], worker_id="w1")  # old_order, now locked
    children = task_complete(task_id=claim.pk, lock_token=claim.lock_token, send=[("approved", {"child": True})])
    made["child_ship"], made["child_audit"] = children
    return {name: Task.objects.get(pk=t.pk) for name, t in made.items()}


def ids_of(tasks: dict[str, Task], *names: str) -> set[int]:
    return {tasks[n].pk for n in names}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"stage": "ship"}, ["new_order_ship", "child_ship"]),
        ({"stage": ["ship", "notify"]}, ["new_order_ship", "child_ship", "new_ping_notify"]),
        ({"status": "completed"}, ["old_order", "new_ping_notify"]),
        ({"status": ["completed", "pending"]}, None),  # every task
        ({"status": "locked"}, []),
        ({"type": "order"}, ["old_order", "new_order_ship"]),
        ({"type": "ord"}, []),  # the exact type, not a substring
        # A bare number also finds the same digits stored as a string (payload_query); quoted, the string alone.
        ({"payload": "customer_id=12345"}, ["old_order", "new_ping_notify", "new_order_ship"]),
        ({"payload": ' customer_id = "12345" '}, ["new_order_ship"]),
        ({"payload": '{"customer_id": 12345}'}, ["old_order", "new_ping_notify"]),
        ({"payload": '{"customer_id": 12345, "city": "Oslo"}'}, ["old_order"]),
        ({"payload": '{"customer": {"tier": "gold"}}'}, ["mid_refund"]),
        ({"payload": '{"child": true}'}, ["child_ship", "child_audit"]),
        ({"payload": "{}"}, None),
        ({"stage": "review", "type": "order", "payload": "customer_id=12345"}, ["old_order"]),
        ({"q": "refund"}, ["mid_refund"]),
        ({"q": "ORDER"}, ["old_order", "new_order_ship"]),
        ({"q": "express"}, ["new_order_ship"]),  # in a payload value, any case
        ({"q": "tier"}, ["mid_refund"]),  # in a payload key
        ({"q": "12345"}, []),  # a bare number is a task id (none has it), never free text
        ({"q": " Oslo "}, ["old_order"]),
        ({"q": "ping", "stage": "review"}, []),
        ({"q": "nothing-has-this"}, []),
        ({"q": "   "}, None),  # blank after trimming: no text filter
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_task_list_filter_shows_exactly_the_matching_tasks(
    admin_client: Client, varied: dict[str, Task], query: dict[str, Any], expected: list[str] | None
) -> None:
    want = ids_of(varied, *expected) if expected is not None else ids_of(varied, *varied)

    assert set(listed(admin_client, query)) == want


def test_task_list_filters_by_parent(admin_client: Client, varied: dict[str, Task]) -> None:
    query = {"parent": varied["old_order"].pk}

    assert set(listed(admin_client, query)) == ids_of(varied, "child_ship", "child_audit")


@pytest.mark.parametrize(
    ("after", "before", "expected"),
    [
        (2, None, ["mid_refund", "new_order_ship", "new_ping_notify", "child_ship", "child_audit"]),
        (None, 2, ["old_order"]),  # created_before is exclusive
        (2, 4, ["mid_refund"]),
        (1, 5, ["mid_refund", "new_order_ship"]),
    ],
)
def test_task_list_filters_by_creation_time(
    admin_client: Client, varied: dict[str, Task], after: int | None, before: int | None, expected: list[str]
) -> None:
    base = varied["old_order"].created_at
    query: dict[str, str] = {}
    if after is not None:
        query["created_after"] = (base + timedelta(days=after)).isoformat()
    if before is not None:
        query["created_before"] = (base + timedelta(days=before)).isoformat()

    assert set(listed(admin_client, query)) == ids_of(varied, *expected)


def test_task_list_accepts_the_date_format_of_its_placeholder(admin_client: Client, varied: dict[str, Task]) -> None:
    day = timezone.localtime(varied["new_order_ship"].created_at)
    query = {
        "created_after": day.strftime("%Y-%m-%dT%H:%M"),
        "created_before": (day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
    }

    assert set(listed(admin_client, query)) == ids_of(varied, "new_order_ship")


def test_task_list_form_shows_the_chosen_filters_again(admin_client: Client, varied: dict[str, Task]) -> None:
    query = "?stage=ship&stage=notify&status=pending&type=order&payload=customer_id%3D12345&q=exp&sort=id"

    html = admin_client.get(LIST_URL + query).content.decode()

    p = Page(html)
    chosen = p.submitted("filters")  # the stage and status chips are checkboxes, ticked as the URL says
    assert (chosen["stage"], chosen["status"]) == (["notify", "ship"], ["pending"])
    values = {i.get("name"): i.get("value") for i in p.inputs if i["tag"] == "input"}
    assert (values["type"], values["payload"], values["q"]) == ("order", "customer_id=12345", "exp")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stage", "no-such-stage"),
        ("status", "sleeping"),
        ("created_after", "yesterday"),
        ("created_before", "2026-13-45"),
        ("parent", "abc"),
        ("payload", "{not json"),
        ("payload", "[1, 2]"),
        ("payload", "customer_id"),
        ("id", "1,x"),
    ],
)
def test_task_list_with_an_invalid_filter_shows_the_error_and_no_rows(
    admin_client: Client, varied: dict[str, Task], field: str, value: str
) -> None:
    response = admin_client.get(LIST_URL, {field: value})

    assert response.status_code == 400  # the page, its form and the error; no rows
    html = response.content.decode()
    assert Page(html).order == []
    errors = re.search(r'<ul class="error">(.*?)</ul>', html, re.DOTALL)
    assert errors and f"{field}:" in errors.group(1)
    assert "No tasks match." in html
    assert 'rel="next"' not in html


def test_free_text_finds_a_payload_value_with_non_ascii_letters(admin_client: Client, review: Stage) -> None:
    # On SQLite, JSONField stores text with \u escapes ("caf\u00e9"), so a plain
    # LIKE over the cast payload never matches "café"; PostgreSQL's jsonb::text
    # keeps the letters: the free text also searches the JSON-escaped form of q.
    task = task_create(stage=review, type="order", payload={"name": "Café Müller"})
    task_create(stage=review, type="order", payload={"name": "Cafe Muller"})

    assert listed(admin_client, {"q": "Café"}) == [task.pk]
    assert listed(admin_client, {"q": "Müller"}) == [task.pk]


def test_free_text_finds_a_payload_value_containing_double_quotes(admin_client: Client, review: Stage) -> None:
    # Payload text is JSON, where " inside a string is written \" (on both
    # databases), so searching for the value as the user sees it finds nothing.
    task = task_create(stage=review, type="order", payload={"msg": 'say "hi" now'})

    assert listed(admin_client, {"q": 'say "hi"'}) == [task.pk]


# -- task list: sorting -----------------------------------------------------------------


@pytest.fixture
def dated(review: Stage) -> list[Task]:
    """Four tasks whose id, created_at and updated_at orders all differ."""
    base = timezone.now() - timedelta(hours=1)
    tasks = [task_create(stage=review, type="order", payload={"n": n}) for n in range(4)]
    for task, created, updated in zip(tasks, [30, 10, 20, 0], [5, 40, 1, 3], strict=True):
        Task.objects.filter(pk=task.pk).update(
            created_at=base + timedelta(seconds=created), updated_at=base + timedelta(seconds=updated)
        )
    return tasks


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("id", [0, 1, 2, 3]),
        ("-id", [3, 2, 1, 0]),
        ("created_at", [3, 1, 2, 0]),
        ("-created_at", [0, 2, 1, 3]),
        ("updated_at", [2, 3, 0, 1]),
        ("-updated_at", [1, 0, 3, 2]),
    ],
)
def test_task_list_sorts_by_the_chosen_column(
    admin_client: Client, dated: list[Task], sort: str, order: list[int]
) -> None:
    response = admin_client.get(LIST_URL, {"sort": sort})

    assert Page(response.content.decode()).order == [dated[i].pk for i in order]
    assert re.search(rf'<option value="{sort}"\s+selected>', response.content.decode())


@pytest.mark.parametrize("sort", ["", "status", "-payload", "id; DROP TABLE x"])
def test_task_list_with_an_unknown_sort_shows_newest_first(admin_client: Client, dated: list[Task], sort: str) -> None:
    assert listed(admin_client, {"sort": sort}) == [t.pk for t in reversed(dated)]


# -- task list: keyset pages ---------------------------------------------------------------


@pytest.fixture
def many(world: dict[str, Stage]) -> list[Task]:
    """130 tasks: 60 created in one go (equal timestamps), 70 one by one at shuffled times."""
    base = timezone.now() - timedelta(days=1)
    bulk = tasks_create_bulk(items=[(world["review"], "bulk", {"i": i}) for i in range(60)])
    singles = [
        task_create(
            stage=world["review" if i % 2 else "ship"],
            type="single",
            payload={"i": i},
            now=base + timedelta(seconds=(i * 37) % 70, microseconds=i % 3),
        )
        for i in range(70)
    ]
    # Updated times with ties too: every third task shares one.
    for i, task in enumerate(singles):
        if i % 3 == 0:
            Task.objects.filter(pk=task.pk).update(updated_at=base)
    return bulk + singles


def follow_pages(client: Client, first_url: str) -> list[list[int]]:
    pages: list[list[int]] = []
    url: str | None = first_url
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        pages.append(Page(html).order)
        assert len(pages) < 20, "the Next page links go round in circles"
        p = Page(html)
        nexts = [href for href, rel in p.links if rel == "next"]
        assert len(nexts) <= 1
        if pages[-1] and len(pages) > 1:
            assert any(href.startswith("?") and "cursor" not in href for href in p.hrefs()), "no First page link"
        url = LIST_URL + nexts[0] if nexts else None
    return pages


def expected_order(sort: str, query: dict[str, Any] | None = None) -> list[int]:
    field = sort.lstrip("-")
    rows = list(Task.objects.filter(**(query or {})).values_list(field, "id"))
    rows.sort(reverse=sort.startswith("-"))
    return [pk for _, pk in rows]


@pytest.mark.parametrize("sort", ["-id", "id", "created_at", "-created_at", "updated_at", "-updated_at"])
def test_next_page_links_visit_every_task_once_in_sort_order(admin_client: Client, many: list[Task], sort: str) -> None:
    pages = follow_pages(admin_client, f"{LIST_URL}?sort={sort}")

    assert [len(p) for p in pages] == [50, 50, 30]
    seen = [pk for p in pages for pk in p]
    assert len(seen) == len(set(seen)) == len(many)
    assert seen == expected_order(sort)


def test_next_page_links_keep_the_filters(admin_client: Client, many: list[Task]) -> None:
    # Repeated parameters (status twice) must survive in the Next page link too.
    pages = follow_pages(admin_client, f"{LIST_URL}?stage=review&status=failed&status=pending&q=i&sort=-created_at")

    seen = [pk for p in pages for pk in p]
    assert len(pages) == 2
    assert seen == expected_order("-created_at", {"stage__slug": "review"})
    assert len(seen) == len(set(seen)) == 60 + 35


@pytest.mark.parametrize(("count", "pages"), [(50, [50]), (51, [50, 1]), (100, [50, 50])])
def test_page_boundaries_show_a_next_link_only_when_more_tasks_follow(
    admin_client: Client, review: Stage, count: int, pages: list[int]
) -> None:
    tasks_create_bulk(items=[(review, "t", {})] * count)

    assert [len(p) for p in follow_pages(admin_client, LIST_URL)] == pages


@pytest.mark.parametrize(
    "query", [{"cursor": "garbage"}, {"cursor": "|"}, {"cursor": "not-a-date|5", "sort": "created_at"}]
)
def test_a_malformed_cursor_is_a_400_page_naming_the_cursor(
    admin_client: Client, dated: list[Task], query: dict[str, str]
) -> None:
    # Not a silent first page: one decoder refuses any cursor the Next link can't have made
    # (more cases, and their bounds, in test_input_errors).
    response = admin_client.get(LIST_URL, query)
    assert response.status_code == 400
    assert "cursor:" in response.content.decode()
    assert Page(response.content.decode()).order == []


def test_stage_and_status_filters_list_without_select_distinct(
    admin_client: Client, every_state: dict[str, Task]
) -> None:
    # Each task has one stage and one status, so no row can repeat; a SELECT
    # DISTINCT over whole rows (payloads included) was the slowest part of the
    # list on a big table.
    query = {"stage": ["review", "ship"], "status": ["pending", "failed"], "type": "order"}
    with CaptureQueriesContext(connection) as ctx:
        rows = listed(admin_client, query)
    wanted = [
        t.pk for t in every_state.values() if t.stage.slug in ("review", "ship") and t.status in ("pending", "failed")
    ]
    assert rows == sorted(wanted, reverse=True)
    listing = [q["sql"] for q in ctx.captured_queries if 'FROM "tasks_app_task"' in q["sql"]]
    assert listing and not any("DISTINCT" in sql for sql in listing)
