"""The overview's figures: names, slugs, separators, the paused badge, counts.json, how old each figure is,
the capped live counts on PostgreSQL, and the counters fold: the workers' upkeep does it, a page view doesn't."""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection, connections
from django.test import Client
from django.utils import timezone

from tasks_app.models import CounterCursor, Stage, StageCounter
from tasks_app.selectors import overview as selectors
from tasks_app.services import task_claim, task_create, task_release
from tasks_app.services.counters import CURSOR_PK, counters_fold_in_turn
from tasks_app.views import overview as views
from tasks_app.worker import Worker
from tests.support.pages import LOGIN_URL, Page
from tests.support.users import logged_in, make_user

COUNTS_URL = "/overview/counts.json"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    cache.clear()
    yield
    cache.clear()


def svg(html: str, name: str = "wide") -> str:
    found = re.search(rf'<svg class="graph-{name}"(.*?)</svg>', html, re.DOTALL)
    assert found is not None
    return found.group(1)


def box(html: str, slug: str, name: str = "wide") -> str:
    """The SVG of a stage's box (its link and group)."""
    found = re.search(rf'(<a [^>]*>\s*<g class="stage[^"]*"[^>]*data-stage="{slug}">.*?</g>\s*</a>)', svg(html, name),
                      re.DOTALL)  # fmt: skip
    assert found is not None, slug
    return found.group(1)


def texts(fragment: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", t) for t in re.findall(r"<text[^>]*>(.*?)</text>", fragment)]


def settled_release(stage: Stage) -> None:
    """A task whose attempt failed an hour ago: a `released` event old enough for PostgreSQL's fold to count."""
    hour_ago = timezone.now() - timedelta(hours=1)
    task_create(stage=stage, type="order", payload={}, now=hour_ago)
    [claim] = task_claim(stage=stage, worker_id="w1", now=hour_ago)
    task_release(task_id=claim.pk, lock_token=claim.lock_token, error="boom", retry_in=60, now=hour_ago)


# -- the page ---------------------------------------------------------------------------------------


def test_each_box_names_its_stage_with_the_slug_as_secondary_text_and_one_link(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    Stage.objects.filter(slug="review").update(name="Review the order")
    html = admin_client.get("/overview/").content.decode()
    for name in ("wide", "tall"):
        review = box(html, "review", name)
        assert texts(review)[:2] == ["Review the order", "review · script"]
        # One link per box (nothing focusable nested in it), named for assistive technology.
        assert review.count("<a ") == 1 and 'href="/stages/review/"' in review
        assert 'aria-label="Stage Review the order (review, script)"' in review
        # An img role would make the links inside the drawing nested-interactive.
        assert re.search(rf'<svg class="graph-{name}"[^>]*role="group"', html)


def test_numbers_have_thousands_separators_in_the_graph_the_table_and_counts_json(
    admin_client: Client, world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    review = world["review"]
    finished = {review.pk: {"completed": 1_234_567, "failed": 12_345}}
    monkeypatch.setattr(views, "finished_snapshot", lambda: (finished, False, timezone.now()))
    task_create(stage=review, type="order", payload={})

    html = admin_client.get("/overview/").content.decode()

    assert texts(box(html, "review"))[2:10] == ["1", "pending", "0", "locked", "1,234,567", "completed", "12,345",
                                                 "failed"]  # fmt: skip
    row = re.search(r'<tr data-stage="review">(.*?)</tr>', html, re.DOTALL)
    assert row is not None
    assert [c for c in re.findall(r'data-count="\w+">([^<]*)<', row.group(1))] == ["1", "0", "1,234,567", "12,345"]
    assert '/tasks/?stage=review&amp;status=completed" data-count="completed">1,234,567<' in row.group(1)
    body = admin_client.get(COUNTS_URL).json()
    assert body["stages"]["review"]["completed"] == 1_234_567
    assert body["stages"]["review"]["text"]["completed"] == "1,234,567"


def test_a_paused_stage_says_paused_in_a_badge_and_a_style_of_its_own(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    Stage.objects.filter(slug="ship").update(is_paused=True)
    html = admin_client.get("/overview/").content.decode()
    ship, review = box(html, "ship"), box(html, "review")
    assert '<g class="stage paused"' in ship and '<g class="stage"' in review
    assert "Paused" in texts(ship) and "Paused" not in texts(review)
    assert 'aria-label="Stage Ship (ship, script), paused"' in ship
    assert "Ship ship Paused" in Page(html).text  # the table too


def test_the_page_says_how_old_each_figure_is(
    admin_client: Client, world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, counted = selectors.finished_snapshot()  # counted now, cached
    settled_release(world["review"])
    counters_fold_in_turn(max_rows=1000, now=counted - timedelta(minutes=10))  # the last fold
    later = counted + timedelta(seconds=42)
    monkeypatch.setattr(views.timezone, "now", lambda: later)

    html = admin_client.get("/overview/").content.decode()

    ages = dict(re.findall(r'data-age-of="(\w+)" data-at="\d+">([^<]*)<', html))
    assert ages["finished"] == "as of 42 s ago"
    assert ages["live"] == "as of 0 s ago"  # counted by this view (the clock says `later` everywhere)
    assert ages["counters"] == "as of 11 min ago"  # 10 min 42 s
    assert 'data-counts-url="/overview/counts.json"' in html and "overview.js" in html
    assert '<div class="graph-tools" hidden>' in html  # the pan/zoom buttons appear with overview.js only


# -- counts.json ------------------------------------------------------------------------------------


def test_counts_json_gives_every_stage_its_counts_text_and_ages(admin_client: Client, world: dict[str, Stage]) -> None:
    settled_release(world["review"])
    task_create(stage=world["review"], type="order", payload={})

    response = admin_client.get(COUNTS_URL)

    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    body = json.loads(response.content)
    assert set(body) == {"now", "poll_seconds", "estimated", "as_of", "stages"}
    assert set(body["as_of"]) == {"live", "finished", "counters"}
    assert set(body["stages"]) == set(world)
    review = body["stages"]["review"]
    assert (review["pending"], review["locked"], review["completed"], review["failed"], review["retrying"]) == (
        2, 0, 0, 0, 1)  # fmt: skip
    assert review["text"]["retries"].startswith("1 retrying · ")
    assert review["text"]["waiting"].startswith("oldest pending ")
    assert abs(body["as_of"]["live"] - body["now"]) < 5_000


def test_counts_json_needs_a_login_and_the_view_permission(db: None, world: dict[str, Stage]) -> None:
    response = Client().get(COUNTS_URL)
    assert response.status_code == 302 and response["Location"].startswith(LOGIN_URL)
    assert logged_in(make_user("nobody")).get(COUNTS_URL).status_code == 403
    viewer = logged_in(make_user("viewer", "view_task"))
    assert viewer.get(COUNTS_URL).status_code == 200
    assert viewer.post(COUNTS_URL).status_code == 405


def test_live_counts_move_with_the_next_poll(admin_client: Client, world: dict[str, Stage]) -> None:
    assert admin_client.get(COUNTS_URL).json()["stages"]["ship"]["pending"] == 0
    task_create(stage=world["ship"], type="order", payload={})
    assert admin_client.get(COUNTS_URL).json()["stages"]["ship"]["text"]["pending"] == "1"


# -- the counters fold: the workers' upkeep, not page views -----------------------------------------


def test_a_page_view_does_not_fold_and_the_worker_upkeep_does(admin_client: Client, world: dict[str, Stage]) -> None:
    settled_release(world["review"])
    before = CounterCursor.objects.filter(pk=CURSOR_PK).values_list("last_event_id", flat=True).first()

    admin_client.get("/overview/")
    admin_client.get(COUNTS_URL)

    assert CounterCursor.objects.filter(pk=CURSOR_PK).values_list("last_event_id", flat=True).first() == before
    assert not StageCounter.objects.filter(kind="released").exists()

    worker = Worker(stage_slugs=["ship"], worker_id="w-upkeep")
    worker.upkeep()

    assert StageCounter.objects.get(stage=world["review"], kind="released").value == 1
    html = admin_client.get("/overview/").content.decode()
    row = re.search(r'<tr id="attempts-review">(.*?)</tr>', html, re.DOTALL)
    assert row is not None
    assert re.findall(r"<td>(.*?)</td>", row.group(1))[2] == "1"  # Released
    # Not again at the next turn: the fold has its own cadence.
    settled_release(world["review"])
    worker.upkeep()
    assert StageCounter.objects.get(stage=world["review"], kind="released").value == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_skips_its_fold_while_another_process_folds(world: dict[str, Stage]) -> None:
    settled_release(world["review"])
    CounterCursor.objects.get_or_create(pk=CURSOR_PK)
    holding, release = threading.Event(), threading.Event()

    def other_fold() -> None:  # another process, mid-fold: it holds the cursor row
        other = connections.create_connection("default")
        try:
            with other.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SELECT 1 FROM tasks_app_countercursor WHERE id = %s FOR UPDATE", [CURSOR_PK])
                holding.set()
                release.wait(10)
                cur.execute("ROLLBACK")
        finally:
            other.close()

    thread = threading.Thread(target=other_fold)
    thread.start()
    try:
        assert holding.wait(10)
        assert counters_fold_in_turn(max_rows=1000) is None  # skipped its turn, did not wait
    finally:
        release.set()
        thread.join()
    assert counters_fold_in_turn(max_rows=1000) is not None
    assert StageCounter.objects.get(stage=world["review"], kind="released").value == 1


# -- live counts at scale (PostgreSQL): capped, and an index-only scan ------------------------------


@pytest.mark.postgres
def test_capped_live_counts_agree_with_the_exact_ones_below_the_cap_and_say_so_above(
    admin_client: Client, world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        task_create(stage=world["review"], type="order", payload={})
    settled_release(world["review"])
    task_create(stage=world["ship"], type="order", payload={})
    task_claim(stage=world["ship"], worker_id="w1")

    exact = selectors.live_counts()
    capped = selectors.live_counts(cap=1000)
    assert {s: {k: v for k, v in c.items() if k != "capped"} for s, c in capped.items()} == exact
    assert all(c["capped"] == [] for c in capped.values())

    assert selectors.live_counts(cap=2)[world["review"].pk]["pending"] == 2
    assert selectors.live_counts(cap=2)[world["review"].pk]["capped"] == ["pending"]
    monkeypatch.setattr(selectors, "LIVE_CAP", 2)
    assert texts(box(admin_client.get("/overview/").content.decode(), "review"))[2] == "2+"


@pytest.mark.postgres
def test_the_capped_live_counts_read_the_claim_index_alone(world: dict[str, Stage]) -> None:
    task_create(stage=world["review"], type="order", payload={})
    sql = selectors.CAPPED_LIVE_SQL.format(stage="tasks_app_stage", task="tasks_app_task")
    with connection.cursor() as cur:
        # Earlier tests leave dead entries in the indexes and statistics of other data (a plan weighs
        # index sizes): rebuild and analyze for this test (rolled back with it), so the plan is this data's.
        cur.execute("REINDEX TABLE tasks_app_task")
        cur.execute("ANALYZE tasks_app_task")
        # Whatever this tiny table's statistics say: can the claim index answer it without the table?
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute("SET LOCAL enable_bitmapscan = off")
        cur.execute(f"EXPLAIN (FORMAT JSON) {sql}", {"cap": selectors.LIVE_CAP, "now": timezone.now()})
        raw = cur.fetchone()[0]
    plan = json.loads(raw) if isinstance(raw, str) else raw

    def scans(node: dict[str, Any]) -> list[tuple[str, str, str]]:
        own = [(node["Node Type"], node.get("Index Name", ""), node.get("Filter", ""))]
        mine = own if node.get("Relation Name") == "tasks_app_task" else []
        return mine + [s for child in node.get("Plans", []) for s in scans(child)]

    found = scans(plan[0]["Plan"])
    pending = [(kind, index) for kind, index, where in found if "'pending'" in where]
    # Not index-only since issue 15's run-at: available_at (scheduled, due, the wait's start) is read from the row.
    assert pending == [("Index Scan", "task_claim_idx")], found
    # The locked tasks (the few that workers hold): through an index too, either claim_idx or locked_idx.
    assert len(found) == 2 and all(kind in ("Index Only Scan", "Index Scan") for kind, _, _ in found), found
