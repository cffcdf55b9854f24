"""My work (issue 14, section 4): search, keyset pages with Next and Previous, payloads as titled key/values.

Pages are read through the Django test client and tests.support.pages.Page; the
page size is patched down to 3 so a few rows show paging (the order and the
cursors are what is tested, not the size).
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app.models import Task, TaskEvent
from tasks_app.selectors import work as work_selectors
from tasks_app.services.form_stages import form_task_open
from tests.support.pages import page
from tests.support.users import logged_in
from tests.support.work import form_world, sent_order, waiting_orders

pytestmark = pytest.mark.django_db

WORK_URL = "/work/"


def waiting_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="waiting-(\d+)">', html)]


def link(html: str, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}" href="([^"]*)"', html)
    return found.group(1).replace("&amp;", "&") if found else None


# -- search ------------------------------------------------------------------------------------


def test_search_matches_the_payload_and_the_type_of_the_waiting_tasks() -> None:
    world = form_world()
    ann = sent_order(world, {"order_id": 42, "customer": {"email": "ann@example.com"}})
    sent_order(world, {"order_id": 43, "customer": {"email": "bo@example.com"}})
    other_type = Task.objects.create(stage=world.review, type="refund", payload={"order_id": 44})
    client = logged_in(world.alice)

    by_email = client.get(WORK_URL, {"q": "ANN@example"})
    by_type = client.get(WORK_URL, {"q": "refund"})
    nothing = client.get(WORK_URL, {"q": "zebra"})

    assert waiting_ids(by_email.content.decode()) == [ann.pk]
    assert waiting_ids(by_type.content.decode()) == [other_type.pk]
    assert waiting_ids(nothing.content.decode()) == []
    assert "No waiting task matches “zebra”." in page(nothing).text
    # The box keeps what was searched.
    assert any(i.get("name") == "q" and i.get("value") == "ANN@example" for i in page(by_email).inputs)


def test_search_also_narrows_the_tasks_open_by_you() -> None:
    world = form_world()
    first, second = sent_order(world, {"order_id": 1}), sent_order(world, {"order_id": 2, "tag": "urgent"})
    for task in (first, second):
        form_task_open(task=task, user=world.alice)

    html = logged_in(world.alice).get(WORK_URL, {"q": "urgent"}).content.decode()

    assert re.findall(r'<tr id="mine-(\d+)">', html) == [str(second.pk)]


@pytest.mark.parametrize(
    ("q", "message"),
    [("x" * 201, "Search text is at most 200 characters (it has 201)."), ("a\x00b", "can't contain NUL")],
)
def test_search_text_too_long_or_with_nul_is_a_400_that_lists_nothing(q: str, message: str) -> None:
    world = form_world()
    waiting_orders(world, 2)

    response = logged_in(world.alice).get(WORK_URL, {"q": q})

    assert response.status_code == 400
    assert message in page(response).text
    assert waiting_ids(response.content.decode()) == []


# -- keyset pages ----------------------------------------------------------------------------------


def test_next_and_previous_walk_the_queue_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(work_selectors, "PAGE_SIZE", 3)
    world = form_world()
    ids = [t.pk for t in waiting_orders(world, 7)]
    client = logged_in(world.alice)

    first = client.get(WORK_URL).content.decode()
    assert waiting_ids(first) == ids[0:3]
    assert link(first, "prev") is None
    second = client.get(WORK_URL + link(first, "next")).content.decode()  # type: ignore[operator]
    assert waiting_ids(second) == ids[3:6]
    third = client.get(WORK_URL + link(second, "next")).content.decode()  # type: ignore[operator]
    assert waiting_ids(third) == ids[6:7]
    assert link(third, "next") is None

    back = client.get(WORK_URL + link(third, "prev")).content.decode()  # type: ignore[operator]
    assert waiting_ids(back) == ids[3:6]
    assert link(back, "next") is not None
    start = client.get(WORK_URL + link(back, "prev")).content.decode()  # type: ignore[operator]
    assert waiting_ids(start) == ids[0:3]
    assert link(start, "prev") is None  # the first page again: nothing before it


def test_pages_keep_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(work_selectors, "PAGE_SIZE", 2)
    world = form_world()
    orders = waiting_orders(world, 6)
    Task.objects.filter(pk__in=[orders[i].pk for i in (1, 2, 4)]).update(payload={"tag": "rush"})
    client = logged_in(world.alice)

    first = client.get(WORK_URL, {"q": "rush"}).content.decode()
    following = link(first, "next")
    assert following is not None and "q=rush" in following
    second = client.get(WORK_URL + following).content.decode()

    assert waiting_ids(first) + waiting_ids(second) == [orders[i].pk for i in (1, 2, 4)]


@pytest.mark.parametrize("query", ["after=abc", "before=1|2|3", "after=0|99999999999999999999", "after="])
def test_a_cursor_the_page_did_not_make_is_a_400_or_the_first_page(query: str) -> None:
    world = form_world()
    [task] = waiting_orders(world, 1)

    response = logged_in(world.alice).get(f"{WORK_URL}?{query}")

    if query == "after=":  # an empty cursor is no cursor
        assert waiting_ids(response.content.decode()) == [task.pk]
    else:
        assert response.status_code == 400
        assert "cursor" in page(response).text
        assert waiting_ids(response.content.decode()) == []


def test_the_list_is_no_longer_capped_at_the_oldest_200() -> None:
    world = form_world()
    waiting_orders(world, 3)

    text = page(logged_in(world.alice).get(WORK_URL)).text

    assert "Showing the oldest" not in text
    assert "highest priority first, then oldest" in text


def test_the_queries_of_a_page_do_not_grow_with_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    world = form_world()
    client = logged_in(world.alice)
    waiting_orders(world, 2)
    with CaptureQueriesContext(connection) as few:
        client.get(WORK_URL)
    waiting_orders(world, 20)
    with CaptureQueriesContext(connection) as many:
        client.get(WORK_URL)

    assert len(many.captured_queries) == len(few.captured_queries)


@pytest.mark.postgres
def test_the_queue_reads_the_claim_index_in_its_order_on_postgresql() -> None:
    world = form_world()
    waiting_orders(world, 30)
    # The rest of a real table: finished tasks and tasks of other stages, which the index leaves out.
    done = timezone.now()
    Task.objects.bulk_create(
        Task(stage=world.intake, type="order", payload={}, status=Task.Status.COMPLETED, completed_at=done)
        for _ in range(600)
    )
    queue = work_selectors.waiting(work_selectors.work_queue([world.review]), "user:alice")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_task")
        # At 30 rows any plan is cheap, so the planner's own choice proves nothing: forbid reading the table
        # whole and sorting, and see that an index gives the page in its order (what it picks at volume).
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_sort = off")
    plan = queue.order_by(*work_selectors.WORK_ORDER)[:51].explain()

    assert "task_claim_idx" in plan, plan
    assert "Sort" not in plan  # the index gives the order: a page is a range, never a sort of the queue


# -- payloads as key/value lists ------------------------------------------------------------------


def kv_of(html: str, row_id: str) -> str:
    found = re.search(rf'<tr id="{row_id}">(.*?)</tr>', html, re.DOTALL)
    assert found, f"no row {row_id}"
    return " ".join(re.sub(r"<[^>]+>", " ", found.group(1)).split())


def test_payloads_read_as_key_values_titled_by_the_senders_schema() -> None:
    world = form_world()
    order = sent_order(
        world, {"order_id": 42, "customer": {"email": "ann@example.com"}, "items": [{"sku": "lamp"}], "x": True}
    )

    html = logged_in(world.alice).get(WORK_URL).content.decode()

    row = kv_of(html, f"waiting-{order.pk}")
    assert "Order number order_id 42" in row
    assert "Customer customer E-mail email ann@example.com" in row
    assert "Items items Article sku lamp" in row
    assert "x true" in row  # no schema title: the key itself
    assert '{"order_id"' not in html and "&quot;order_id&quot;" not in html  # not raw JSON
    assert '<dl class="kv">' in html


def test_keys_and_values_of_a_payload_are_escaped() -> None:
    world = form_world()
    order = sent_order(world, {"x": "<script>alert(1)</script>", "<b>key</b>": ["<i>"]})

    html = logged_in(world.alice).get(WORK_URL).content.decode()

    assert "<script>alert(1)" not in html and "<b>key</b>" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;key&lt;/b&gt;" in html
    assert f'<tr id="waiting-{order.pk}">' in html


def test_a_large_payload_is_cut_in_the_row() -> None:
    world = form_world()
    order = sent_order(world, {f"k{i:02d}": "y" * 500 for i in range(30)})

    row = kv_of(logged_in(world.alice).get(WORK_URL).content.decode(), f"waiting-{order.pk}")

    assert "and 24 more fields" in row  # six fields in a row
    assert "y" * 81 not in row  # each string cut at 80 characters


# -- open by you ---------------------------------------------------------------------------------


def test_open_by_you_shows_the_full_lock_date_and_a_release_button_that_works() -> None:
    world = form_world()
    order = sent_order(world, {"order_id": 7})
    opened = form_task_open(task=order, user=world.alice)
    client = logged_in(world.alice, enforce_csrf_checks=True)

    client.cookies["tz"] = "Europe/Paris"  # what tz.js sets
    response = client.get(WORK_URL)
    html = response.content.decode()

    row = kv_of(html, f"mine-{order.pk}")
    until = opened.locked_until.astimezone(ZoneInfo("Europe/Paris"))
    assert (
        f"until {until.day} {until:%b %Y, %H:%M} {until.tzname()}" in row
    )  # with its date, and its zone (CET or CEST)
    release = f"/work/{order.pk}/cancel/"
    assert release in page(response).post_actions()

    released = client.post(release, {"csrfmiddlewaretoken": page(response).csrf_token()})

    assert released.status_code == 302
    current = Task.objects.get(pk=order.pk)
    assert (current.status, current.locked_by, current.attempts) == (Task.Status.PENDING, "", 0)
    event = TaskEvent.objects.filter(task_id=order.pk).latest("id")
    assert (event.kind, event.actor) == (TaskEvent.Kind.RELEASED, "user:alice")
