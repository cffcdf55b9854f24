"""The task list's filter form (issue 14, section 2): stage and status as checkbox chips, dates with a picker read
in the viewer's time zone (named beside them), and the active filters as chips, each removable on its own.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import unescape

from django.http import QueryDict
from django.test import Client
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task
from tasks_app.services import task_create
from tests.support.api import ids
from tests.support.pages import ESCAPED_SCRIPT, LIST_URL, SCRIPT, Page, page

BERLIN = "Europe/Berlin"  # UTC+1 on 1 November 2026 (summer time ended on 25 October)


def chip_links(html: str) -> dict[str, str]:
    """The active-filter chips: their text ("Status: Failed ×") -> the query string of their link."""
    box = re.search(r'<ul class="active-filters".*?</ul>', html, re.DOTALL)
    assert box, "no active-filter chips"
    links = re.findall(r'<a class="(?:chip|clear-all)" href="\?([^"]*)">(.*?)</a>', box.group(0), re.DOTALL)
    return {" ".join(unescape(re.sub(r"<[^>]+>", "", text)).split()): unescape(href) for href, text in links}


def picker(html: str, name: str) -> str:
    found = re.search(rf'<input type="datetime-local" name="{name}" id="id_{name}" value="([^"]*)"', html)
    assert found, f"no date-time picker {name}"
    return found.group(1)


def test_stage_and_status_are_checkbox_chips_ticked_as_the_query_says(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    Stage.objects.filter(slug="ship").update(name="Ship the parcel")  # "Review": its slug is not repeated

    html = admin_client.get(LIST_URL, {"stage": ["ship", "review"], "status": ["failed", "pending"]}).content.decode()

    assert '<select name="stage"' not in html and "multiple" not in html  # no native multi-select
    chosen = Page(html).submitted("filters")
    assert chosen["stage"] == ["review", "ship"]  # stages by slug
    assert chosen["status"] == ["pending", "failed"]  # in the lifecycle's order
    # A stage chip shows its name, its slug as the title and as secondary text.
    ship = re.search(r'<label class="chip" title="ship">(.*?)</label>', html, re.DOTALL)
    assert ship and re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", ship.group(1))).strip() == "Ship the parcel ship"
    assert 'type="checkbox" name="stage" value="ship" checked' in ship.group(1)
    assert 'value="notify" checked' not in html
    review = re.search(r'<label class="chip" title="review">(.*?)</label>', html, re.DOTALL)
    assert review and re.sub(r"<[^>]+>", " ", review.group(1)).split() == ["Review"]
    assert "<summary>Filters (4)</summary>" in html


def test_each_chip_drops_exactly_its_own_value_and_clear_all_keeps_only_the_sort(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    query = "stage=review&stage=ship&status=failed&type=order&sort=id&cursor=10%7C10"

    html = admin_client.get(f"{LIST_URL}?{query}").content.decode()

    links = chip_links(html)
    given = QueryDict(query)
    expected = {}
    for text, name, value in [
        ("Stage: Review", "stage", "review"),
        ("Stage: Ship", "stage", "ship"),
        ("Status: Failed", "status", "failed"),
        ("Type: order", "type", "order"),
    ]:
        rest = {k: [v for v in given.getlist(k) if (k, v) != (name, value)] for k in given if k != "cursor"}
        expected[f"Remove filter {text} ×"] = {k: v for k, v in rest.items() if v}
    assert set(links) == set(expected) | {"Clear all"}
    for text, want in expected.items():
        assert dict(QueryDict(links[text]).lists()) == want, text  # one value gone, the page cursor too
    assert links["Clear all"] == "sort=id"
    # Following a chip's link lists what the remaining filters match.
    assert admin_client.get(f"{LIST_URL}?{links['Remove filter Stage: Review ×']}").status_code == 200


def test_no_chips_without_filters(admin_client: Client, world: dict[str, Stage]) -> None:
    html = admin_client.get(LIST_URL, {"sort": "id"}).content.decode()

    assert 'class="active-filters"' not in html
    assert "<summary>Filters</summary>" in html
    assert '<details class="filter-box" id="filter-box" open>' in html  # open on load (tasklist.js folds it on a phone)


def test_the_date_picker_is_read_in_the_viewers_time_zone_which_the_page_names(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    review = world["review"]
    early = task_create(stage=review, type="order", payload={}, now=datetime(2026, 11, 1, 8, 30, tzinfo=UTC))
    late = task_create(stage=review, type="order", payload={}, now=datetime(2026, 11, 1, 9, 30, tzinfo=UTC))

    def listed(**params: str) -> tuple[set[int], str]:
        response = admin_client.get(LIST_URL, params)
        assert response.status_code == 200
        return set(page(response).order), response.content.decode()

    # In UTC (no zone from the browser), 10:00 is after both.
    assert listed(created_after="2026-11-01T10:00")[0] == set()
    admin_client.cookies["tz"] = BERLIN  # what tz.js sets
    shown, html = listed(created_after="2026-11-01T10:00")  # the picker's naive value: 09:00 UTC
    assert shown == {late.pk}
    assert '<span class="tz-note" id="tz-note">Times in Europe/Berlin</span>' in html
    assert picker(html, "created_after") == "2026-11-01T10:00"
    assert "Remove filter Created after: 2026-11-01 10:00 ×" in chip_links(html)
    # A link with an offset means that instant; the picker shows it in the viewer's zone.
    shown, html = listed(created_before="2026-11-01T08:45:30Z")
    assert shown == {early.pk}
    assert picker(html, "created_before") == "2026-11-01T09:45:30.000000"
    assert 'name="created_before" id="id_created_before" value="2026-11-01T09:45:30.000000" step="any"' in html
    assert picker(html, "created_after") == ""


def test_a_picker_time_the_viewers_zone_skips_is_a_clear_error(admin_client: Client, world: dict[str, Stage]) -> None:
    admin_client.cookies["tz"] = BERLIN
    response = admin_client.get(LIST_URL, {"created_after": "2026-03-29T02:30"})  # clocks jump 02:00 -> 03:00

    assert response.status_code == 400
    assert "created_after:" in response.content.decode() and "Europe/Berlin" in response.content.decode()


def test_the_rest_api_keeps_reading_iso_8601_in_utc(admin: APIClient, world: dict[str, Stage]) -> None:
    review = world["review"]
    early = task_create(stage=review, type="order", payload={}, now=datetime(2026, 11, 1, 8, 30, tzinfo=UTC))
    late = task_create(stage=review, type="order", payload={}, now=datetime(2026, 11, 1, 9, 30, tzinfo=UTC))

    def api(value: str) -> list[int]:
        response = admin.get("/api/tasks/", {"created_after": value})
        assert response.status_code == 200
        return ids(response.data["results"])

    assert api("2026-11-01T09:00") == [late.pk]  # naive: UTC (no viewer's zone for a token client)
    assert api("2026-11-01T09:00:00+01:00") == [late.pk, early.pk]
    assert api("2026-11-01T10:00:00+01:00") == [late.pk]


def test_chips_and_stage_chips_escape_names_and_values(admin_client: Client, world: dict[str, Stage]) -> None:
    Stage.objects.create(slug="evil", name=SCRIPT, kind=Stage.Kind.SCRIPT, handler="tests.handlers.noop")
    task_create(stage=world["review"], type=SCRIPT, payload={})

    html = admin_client.get(LIST_URL, {"stage": "evil", "type": SCRIPT, "error": '"><b>x</b>'}).content.decode()

    assert SCRIPT not in html and "<b>x</b>" not in html
    links = chip_links(html)
    assert f"Remove filter Stage: {SCRIPT} ×" in links  # shown as text
    assert f"Remove filter Type: {SCRIPT} ×" in links
    assert ESCAPED_SCRIPT in html
    assert not Task.objects.filter(stage__slug="evil").exists()
