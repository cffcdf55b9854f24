"""One box finds anything (issue 14, section 2): the top bar's lookup, payload lookups, the searched range, pages.

Through the URLs and the rendered HTML (tests.support.pages), on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task
from tasks_app.selectors import tasks as task_selectors
from tasks_app.services import task_create, tasks_create_bulk
from tests.support.api import list_ids
from tests.support.pages import LIST_URL, Page, login_redirect, page, shown_messages

LOOKUP_URL = "/tasks/lookup/"


def lookup(client: Client, text: str) -> str:
    """Where the box sends `text` (the redirect's URL)."""
    response = client.get(LOOKUP_URL, {"q": text})
    assert response.status_code == 302, (text, response.status_code)
    return response["Location"]


def params_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def found(client: Client, text: str) -> set[int]:
    """The tasks the list shows after the box's redirect."""
    response = client.get(lookup(client, text))
    assert response.status_code == 200, (text, response.content.decode()[:500])
    return set(page(response).order)


@pytest.fixture
def orders(review: Stage) -> dict[str, Task]:
    def make(payload: dict[str, Any]) -> Task:
        return task_create(stage=review, type="order", payload=payload)

    return {
        "number": make({"order_id": 42, "customer": {"email": "ann@example.com"}, "items": ["lamp", "desk"]}),
        "string": make({"order_id": "42", "customer": {"email": "bob@example.com"}, "items": ["desk"]}),
        "other": make({"order_id": 420, "note": "order 42 was late", "items": [{"sku": "lamp", "qty": 1}]}),
        "single": make({"order_id": 7, "items": "lamp", "customer": "ann@example.com"}),
    }


def ids(orders: dict[str, Task], *names: str) -> set[int]:
    return {orders[n].pk for n in names}


# -- the box -----------------------------------------------------------------------------------


def test_every_page_has_the_lookup_box_with_a_label_and_a_get_form(admin_client: Client, pending_task: Task) -> None:
    for url in ["/overview/", LIST_URL, f"/tasks/{pending_task.pk}/", "/workers/", "/work/"]:
        p = page(admin_client.get(url))
        assert {"method": "get", "action": LOOKUP_URL} in [
            {k: f.get(k) for k in ("method", "action")} for f in p.forms
        ], url
        box = next(i for i in p.inputs if i.get("id") == "lookup-q")
        assert box["name"] == "q"
        html = admin_client.get(url).content.decode()
        assert '<label for="lookup-q"' in html, url


def test_the_lookup_needs_a_login_and_the_view_permission(client: Client, pending_task: Task) -> None:
    response = client.get(LOOKUP_URL, {"q": str(pending_task.pk)})
    assert response.status_code == 302 and response["Location"] == login_redirect(LOOKUP_URL + f"?q={pending_task.pk}")

    nobody = get_user_model().objects.create_user("nobody", password="pw-nobody-1")
    client.force_login(nobody)
    assert client.get(LOOKUP_URL, {"q": str(pending_task.pk)}).status_code == 403


# -- ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["{id}", "#{id}", "  # {id} "])
def test_a_number_or_hash_number_opens_that_task(admin_client: Client, pending_task: Task, form: str) -> None:
    assert lookup(admin_client, form.format(id=pending_task.pk)) == f"/tasks/{pending_task.pk}/"


@pytest.mark.parametrize("text", ["987654", "#987654", "99999999999999999999999999"])
def test_a_missing_id_goes_back_to_the_list_with_a_message_and_searches_nothing_else(
    admin_client: Client, orders: dict[str, Task], text: str
) -> None:
    response = admin_client.get(LOOKUP_URL, {"q": text}, follow=True)
    assert response.redirect_chain == [(LIST_URL, 302)]  # no free text, no filter: the whole list
    [(level, message)] = shown_messages(response)
    assert level == "warning" and message.startswith(f"No task #{text.lstrip('#')}.")
    assert "order_id:" in message  # how to look for the number in payloads instead


def test_a_bare_number_typed_as_the_lists_text_is_the_task_never_free_text(
    admin_client: Client, orders: dict[str, Task]
) -> None:
    # "42" is in three payloads; as free text it would list them all.
    response = admin_client.get(LIST_URL, {"q": str(orders["string"].pk)})
    assert page(response).order == [orders["string"].pk]
    assert "is a task id" in page(response).text
    assert page(admin_client.get(LIST_URL, {"q": "#987654"})).order == []  # no such task: nothing, not noise


# -- payload lookups ------------------------------------------------------------------------------


def test_key_colon_value_and_key_equals_value_redirect_to_the_lists_payload_filter(
    admin_client: Client, db: None
) -> None:
    for text in ["order_id:42", "order_id=42", "customer.email:ann@example.com", 'order_id:"42"', '{"order_id": 42}']:
        url = lookup(admin_client, text)
        assert urlsplit(url).path == LIST_URL
        assert params_of(url) == {"payload": [text]}, text


def test_a_bare_number_value_finds_the_number_and_the_same_digits_as_a_string(
    admin_client: Client, orders: dict[str, Task]
) -> None:
    assert found(admin_client, "order_id:42") == ids(orders, "number", "string")
    assert found(admin_client, "order_id=42") == ids(orders, "number", "string")
    assert found(admin_client, 'order_id:"42"') == ids(orders, "string")  # quoted: the string alone
    assert found(admin_client, '{"order_id": 42}') == ids(orders, "number")  # the JSON form is exact
    assert found(admin_client, "order_id:420") == ids(orders, "other")


def test_a_dotted_key_reaches_into_nested_objects(admin_client: Client, orders: dict[str, Task]) -> None:
    assert found(admin_client, "customer.email:ann@example.com") == ids(orders, "number")
    assert found(admin_client, "customer:ann@example.com") == ids(orders, "single")  # a string, not the object
    assert found(admin_client, "customer.email:nobody@example.com") == set()


def test_arrays_match_by_containment(admin_client: Client, orders: dict[str, Task]) -> None:
    assert found(admin_client, "items=lamp") == ids(orders, "number", "single")
    assert found(admin_client, "items:desk") == ids(orders, "number", "string")
    assert found(admin_client, "items.sku:lamp") == ids(orders, "other")  # objects inside an array
    assert found(admin_client, '{"items": ["lamp", "desk"]}') == ids(orders, "number")
    assert found(admin_client, '{"items": [{"sku": "lamp"}]}') == ids(orders, "other")
    assert found(admin_client, "items=lam") == set()  # whole values, not substrings


def test_the_rest_apis_payload_filter_matches_arrays_the_same_way(viewer: APIClient, orders: dict[str, Task]) -> None:
    by_id = {t.pk: name for name, t in orders.items()}
    assert {by_id[i] for i in list_ids(viewer, {"payload": "items=lamp"})} == {"number", "single"}
    assert {by_id[i] for i in list_ids(viewer, {"payload": '{"items": ["desk"]}'})} == {"number", "string"}
    assert {by_id[i] for i in list_ids(viewer, {"payload": "items.sku:lamp"})} == {"other"}
    assert {by_id[i] for i in list_ids(viewer, {"payload": "order_id:42"})} == {"number", "string"}


# -- free text --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["late", "ConnectionError: refused", "https://example.com/x", "two words"])
def test_anything_else_is_free_text(admin_client: Client, db: None, text: str) -> None:
    assert params_of(lookup(admin_client, text)) == {"q": [text]}


def test_free_text_finds_the_words_in_payloads(admin_client: Client, orders: dict[str, Task]) -> None:
    assert found(admin_client, "was late") == ids(orders, "other")


def test_an_empty_lookup_goes_to_the_list(admin_client: Client, db: None) -> None:
    assert lookup(admin_client, "   ") == LIST_URL


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("a..b:x", "payload", "Not a key path"),
        ("{not json", "payload", "Not valid JSON"),
        ('{"a": 1e999}', "payload", "Not a value a query can match"),
        ("key:\x00", "payload", "NUL"),
        ("text with \x00 in it", "q", "NUL"),
    ],
)
def test_bad_input_is_a_clear_message_on_the_list_not_a_500(
    admin_client: Client, orders: dict[str, Task], text: str, field: str, words: str
) -> None:
    response = admin_client.get(LOOKUP_URL, {"q": text}, follow=True)
    assert response.status_code == 400
    p = page(response)
    assert p.order == []  # a query that can't run matches nothing, never everything
    assert f"{field}:" in p.text and words in p.text


# -- the searched range ---------------------------------------------------------------------------


def test_free_text_and_payload_lookups_search_newest_first_in_bounded_ranges(
    admin_client: Client, review: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_selectors, "SEARCH_RANGE", 5)
    made = tasks_create_bulk(items=[(review, "t", {"tag": "needle", "n": n}) for n in range(12)])
    ids_made = sorted(t.pk for t in made)

    def older_links(p: Page) -> list[str]:
        return [h for h, _ in p.links if "below=" in h and ("q=" in h or "payload=" in h)]

    for query in ({"q": "needle"}, {"payload": "tag:needle"}):
        response = admin_client.get(LIST_URL, query)
        p = page(response)
        assert p.order == ids_made[-5:][::-1]
        assert f"Searched tasks #{ids_made[-5]:,}–#{ids_made[-1]:,} (the newest 5)" in p.text
        older = older_links(p)
        assert len(older) == 1

        p = page(admin_client.get(LIST_URL + older[0]))
        assert p.order == ids_made[2:7][::-1]
        assert f"Searched tasks #{ids_made[2]:,}–#{ids_made[6]:,}, newest first." in p.text
        older = older_links(p)
        assert len(older) == 1 and "Search the newest tasks" in p.text

        p = page(admin_client.get(LIST_URL + older[0]))
        assert p.order == ids_made[:2][::-1]
        assert "no older task is left" in p.text
        assert not older_links(p)


def test_a_search_range_below_nothing_lists_nothing_and_a_bad_below_is_a_400(
    admin_client: Client, review: Stage
) -> None:
    task = task_create(stage=review, type="t", payload={"tag": "needle"})
    assert page(admin_client.get(LIST_URL, {"q": "needle", "below": task.pk})).order == []
    response = admin_client.get(LIST_URL, {"q": "needle", "below": "x"})
    assert response.status_code == 400 and "below:" in page(response).text


# -- Previous, Next and First ----------------------------------------------------------------------


@pytest.mark.parametrize("sort", ["-id", "created_at", "-updated_at"])
def test_previous_next_and_first_page_links_walk_the_pages_both_ways(
    admin_client: Client, review: Stage, sort: str
) -> None:
    made = tasks_create_bulk(items=[(review, "t", {"n": n}) for n in range(120)])
    # Some finished, so the sort by updated merges finished and live tasks.
    Task.objects.filter(pk__in=[t.pk for t in made[::3]]).update(status="failed")

    def visit(url: str) -> Page:
        response = admin_client.get(url)
        assert response.status_code == 200
        return page(response)

    def link(p: Page, rel: str) -> str | None:
        hrefs = [href for href, r in p.links if r == rel]
        return LIST_URL + hrefs[0] if hrefs else None

    first = visit(f"{LIST_URL}?sort={sort}")
    assert link(first, "prev") is None and "First page" not in first.text
    pages = [first]
    while (url := link(pages[-1], "next")) is not None:
        pages.append(visit(url))
    assert [len(p.order) for p in pages] == [50, 50, 20]
    assert len({pk for p in pages for pk in p.order}) == 120

    back = visit(link(pages[2], "prev") or "")
    assert back.order == pages[1].order
    back = visit(link(back, "prev") or "")
    assert back.order == pages[0].order
    assert link(back, "prev") is None  # the first page again: nothing before it
    assert visit(link(back, "next") or "").order == pages[1].order
    firsts = [href for href, _ in pages[2].links if href.startswith("?") and "cursor" not in href]
    assert firsts and visit(LIST_URL + firsts[0]).order == pages[0].order
