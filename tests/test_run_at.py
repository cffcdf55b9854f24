"""Run at / delay and priority through every entry path (issue 15): a handler's send, the API's create,
bulk, stage send and completion sends, a hook's ?delay=, the New task page; the list's "Scheduled for"
status and the scheduled filter (list page and API).

Runs on SQLite and, under scripts/with_postgres.py, on PostgreSQL.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.cache import cache
from django.http import QueryDict
from django.test import Client
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from examples.http_worker import Task as RemoteTask
from tasks_app.limits import MAX_DELAY
from tasks_app.models import Stage, Task, Transition
from tasks_app.services import task_claim, task_complete, task_create, task_release
from tasks_app.services.handlers import HandlerTask
from tasks_app.services.jobs import job_run_now
from tasks_app.services.routing import Send
from tasks_app.templatetags.task_extras import status_text
from tasks_app.worker import Worker
from tests.support.api import at, list_ids, post
from tests.support.pages import LIST_URL, Page, page
from tests.support.world import nothing_written

SLACK = timedelta(seconds=30)  # between a request's "now" and the test's


def near(value: datetime, expected: datetime) -> bool:
    return abs(value - expected) < SLACK


def handler_task(stage: Stage) -> HandlerTask:
    return HandlerTask(
        id=1, type="t", payload={}, stage=stage.slug, attempts=1, created_at=timezone.now(), parent_id=None,
        _stage=stage,
    )  # fmt: skip


# -- a handler's send ----------------------------------------------------------------------------


def test_a_handlers_delay_counts_from_the_completion_and_at_is_kept(world: dict[str, Stage]) -> None:
    task_create(stage=world["review"], type="order", payload={})
    [claimed] = task_claim(stage=world["review"], worker_id="w")
    done = timezone.now() + timedelta(minutes=1)
    when = done + timedelta(days=2)
    kids = task_complete(
        task_id=claimed.pk,
        lock_token=claimed.lock_token,
        send=[Send("approved", {}, delay=90), Send("declined", {}, at=when), ("declined", {})],
        now=done,
    )
    got = sorted((k.stage.slug, Task.objects.get(pk=k.pk).available_at) for k in kids)
    assert got == [
        ("audit", done + timedelta(seconds=90)),
        ("notify", done),
        ("notify", when),
        ("ship", done + timedelta(seconds=90)),
    ]
    # Not claimable before then; then it is.
    assert task_claim(stage=world["ship"], worker_id="w", now=done + timedelta(seconds=89)) == []
    assert len(task_claim(stage=world["ship"], worker_id="w", now=done + timedelta(seconds=91))) == 1


def test_a_time_already_past_means_now(world: dict[str, Stage]) -> None:
    task_create(stage=world["review"], type="order", payload={})
    [claimed] = task_claim(stage=world["review"], worker_id="w")
    now = timezone.now()
    [kid] = task_complete(
        task_id=claimed.pk,
        lock_token=claimed.lock_token,
        send=[Send("declined", {}, at=now - timedelta(days=3))],
        now=now,
    )
    assert Task.objects.get(pk=kid.pk).available_at == now


def test_a_handler_schedules_through_the_worker(world: dict[str, Stage]) -> None:
    Stage.objects.filter(slug="review").update(handler="tests.handlers.send_with_options")
    when = (timezone.now() + timedelta(hours=5)).replace(microsecond=0)
    delayed = task_create(stage=world["review"], type="order", payload={"delay": 3600})
    fixed = task_create(stage=world["review"], type="order", payload={"at": when.isoformat()})
    before = timezone.now()
    Worker(stage_slugs=["review"], worker_id="w-at").run(once=True)
    for kid in Task.objects.filter(parent=delayed):
        assert before + timedelta(hours=1) <= kid.available_at < before + timedelta(hours=1) + SLACK
    assert set(Task.objects.filter(parent=fixed).values_list("available_at", flat=True)) == {when}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": 5, "at": datetime(2030, 1, 1, tzinfo=UTC)}, "not both"),
        ({"delay": -1}, "delay must be from 0"),
        ({"delay": MAX_DELAY + 1}, "delay must be from 0"),
        ({"delay": float("nan")}, "delay must be a number"),
        ({"delay": "60"}, "delay must be a number"),
        ({"delay": True}, "delay must be a number"),
        ({"at": datetime(2030, 1, 1)}, "timezone-aware"),  # noqa: DTZ001
        ({"at": "2030-01-01T00:00:00Z"}, "at must be a datetime"),
        ({"at": datetime.now(UTC) + timedelta(days=400)}, "at most a year ahead"),
    ],
)
def test_a_handlers_send_refuses_a_bad_schedule_at_once(review: Stage, options: dict[str, Any], message: str) -> None:
    task = handler_task(review)
    with pytest.raises(ValueError, match=message):
        task.send("approved", {}, **options)
    assert task.sent == []


# -- the REST API ---------------------------------------------------------------------------------


def test_api_create_with_priority_and_available_at_or_delay(world: dict[str, Stage], operator: APIClient) -> None:
    when = timezone.now() + timedelta(hours=3)
    response = post(
        operator,
        "/api/tasks/",
        {"stage": "ship", "type": "order", "payload": {}, "priority": 12, "available_at": when.isoformat()},
    )
    assert response.status_code == 201, response.data
    assert response.data["priority"] == 12 and at(response.data["available_at"]) == when
    response = post(operator, "/api/tasks/", {"stage": "ship", "type": "order", "delay": 600})
    assert response.status_code == 201, response.data
    assert near(at(response.data["available_at"]), timezone.now() + timedelta(seconds=600))
    assert response.data["priority"] == 0  # the stage's
    # With an idempotency key too.
    response = post(
        operator,
        "/api/tasks/",
        {"stage": "ship", "type": "order", "idempotency_key": "k1", "priority": -5, "delay": 60},
    )
    assert response.status_code == 201 and response.data["priority"] == -5


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"priority": 1001}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"delay": -1}, "delay"),
        ({"delay": MAX_DELAY + 1}, "delay"),
        ({"delay": "NaN"}, "delay"),
        ({"available_at": "tomorrow"}, "available_at"),
        ({"available_at": "2026-02-30T10:00:00Z"}, "available_at"),
        ({"available_at": "9999-01-01T00:00:00Z"}, "available_at"),
        ({"available_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(), "delay": 5}, "delay"),
    ],
)
def test_api_refuses_a_bad_schedule_with_field_messages(
    world: dict[str, Stage], operator: APIClient, extra: dict[str, Any], field: str
) -> None:
    item = {"stage": "ship", "type": "order", "payload": {}, **extra}
    with nothing_written():
        response = post(operator, "/api/tasks/", item)
        assert response.status_code == 400 and field in response.data, response.data
        response = post(operator, "/api/tasks/bulk/", {"tasks": [{"stage": "ship", "type": "order"}, item]})
        assert response.status_code == 400 and field in response.data["tasks"][1], response.data
        response = post(operator, "/api/stages/review/send/", {"type": "approved", **extra})
        assert response.status_code == 400 and field in response.data, response.data


def test_api_bulk_create_schedules_each_task(world: dict[str, Stage], operator: APIClient) -> None:
    response = post(
        operator,
        "/api/tasks/bulk/",
        {"tasks": [{"stage": "ship", "type": "a"}, {"stage": "ship", "type": "b", "delay": 3600, "priority": 3}]},
    )
    assert response.status_code == 201, response.data
    a, b = response.data
    assert a["priority"] == 0 and near(at(a["available_at"]), timezone.now())
    assert b["priority"] == 3 and near(at(b["available_at"]), timezone.now() + timedelta(hours=1))


def test_api_stage_send_and_completion_sends_take_priority_and_delay(
    world: dict[str, Stage], operator: APIClient
) -> None:
    response = post(operator, "/api/stages/review/send/", {"type": "approved", "priority": 4, "delay": 120})
    assert response.status_code == 201, response.data
    assert {row["priority"] for row in response.data} == {4}
    assert all(near(at(row["available_at"]), timezone.now() + timedelta(minutes=2)) for row in response.data)

    parent = task_create(stage=world["review"], type="order", payload={}, priority=9)
    [claimed] = task_claim(stage=world["review"], worker_id="api")
    when = timezone.now() + timedelta(days=1)
    response = post(
        operator,
        f"/api/tasks/{parent.pk}/complete/",
        {
            "lock_token": claimed.lock_token,
            "send": [{"type": "approved"}, {"type": "declined", "priority": -2, "available_at": when.isoformat()}],
        },
    )
    assert response.status_code == 200, response.data
    got = sorted((row["stage"], row["priority"], at(row["available_at"]) == when) for row in response.data)
    assert got == [("audit", 9, False), ("notify", -2, True), ("ship", 9, False)]  # inherited unless given


def test_api_bulk_complete_sends_take_priority_delay_and_available_at(
    world: dict[str, Stage], operator: APIClient
) -> None:
    first = task_create(stage=world["review"], type="order", payload={"n": 1}, priority=3)
    second = task_create(stage=world["review"], type="order", payload={"n": 2}, priority=6)
    claims = {t.pk: t for t in task_claim(stage=world["review"], worker_id="api", limit=2)}
    when = timezone.now() + timedelta(days=2)
    response = post(
        operator,
        "/api/tasks/bulk-complete/",
        {
            "tasks": [
                {
                    "id": first.pk,
                    "lock_token": claims[first.pk].lock_token,
                    "send": [{"type": "declined", "priority": 8, "delay": 600}],
                },
                {
                    "id": second.pk,
                    "lock_token": claims[second.pk].lock_token,
                    "send": [{"type": "declined", "available_at": when.isoformat()}, {"type": "declined"}],
                },
            ]
        },
    )
    assert response.status_code == 200, response.data
    results = {r["id"]: r for r in response.data["results"]}
    assert results[first.pk]["status"] == results[second.pk]["status"] == "completed"
    [delayed] = Task.objects.filter(pk__in=results[first.pk]["sent"])
    assert delayed.priority == 8 and near(delayed.available_at, timezone.now() + timedelta(minutes=10))
    later, now_ = Task.objects.filter(pk__in=results[second.pk]["sent"]).order_by("id")
    assert (later.priority, later.available_at) == (6, when)  # the sender's priority, the time kept
    assert now_.priority == 6 and near(now_.available_at, timezone.now())


# -- a hook's ?delay= -----------------------------------------------------------------------------


def hook_post(secret: str, query: str) -> Any:
    raw = json.dumps({"order_id": 7}).encode()
    return APIClient().generic(
        "POST", f"/hooks/intake/{query}", raw, content_type="application/json", headers={"X-Hook-Token": secret}
    )


def test_a_hooks_delay_holds_its_task_back(world: dict[str, Stage]) -> None:
    cache.clear()  # throttle counters
    secret = world["intake"].hook_secret
    response = hook_post(secret, "?type=order&delay=300&src=shop")
    assert response.status_code == 202, response.content
    [task] = Task.objects.filter(pk__in=response.data["tasks"])
    assert near(task.available_at, timezone.now() + timedelta(minutes=5))
    assert task.payload == {"order_id": 7, "query": {"src": "shop"}}  # delay is not part of the payload
    for bad in ("-1", "abc", "nan", "inf", str(MAX_DELAY + 1)):
        with nothing_written():
            response = hook_post(secret, f"?delay={bad}")
            assert response.status_code == 400 and "delay" in response.json(), (bad, response.content)


# -- the New task page ------------------------------------------------------------------------------


def test_the_new_task_page_takes_a_priority_and_a_run_at_time(world: dict[str, Stage], admin_client: Client) -> None:
    form = admin_client.get("/tasks/new/").content.decode()
    assert 'name="priority"' in form and 'name="run_at"' in form
    when = (timezone.localtime() + timedelta(days=1)).replace(second=0, microsecond=0)
    response = admin_client.post(
        "/tasks/new/",
        {"stage": "ship", "type": "order", "payload": "{}", "priority": "7", "run_at": when.strftime("%Y-%m-%dT%H:%M")},
    )
    assert response.status_code == 302
    task = Task.objects.get()
    assert (task.priority, task.available_at) == (7, when)


def test_the_new_task_pages_run_at_and_the_lists_scheduled_time_are_in_the_viewers_zone(
    world: dict[str, Stage], admin_client: Client
) -> None:
    # tz.js's cookie: a viewer in Tokyo (UTC+9, no summer time) types 10:00 and means 10:00 in Tokyo.
    tokyo = ZoneInfo("Asia/Tokyo")
    admin_client.cookies["tz"] = "Asia/Tokyo"
    assert "Run at (optional; blank: now; in Asia/Tokyo)" in admin_client.get("/tasks/new/").content.decode()
    when = (timezone.now().astimezone(tokyo) + timedelta(days=3)).replace(hour=10, minute=0, second=0, microsecond=0)
    response = admin_client.post(
        "/tasks/new/",
        {"stage": "ship", "type": "order", "payload": "{}", "run_at": when.strftime("%Y-%m-%dT%H:%M")},
    )
    assert response.status_code == 302
    task = Task.objects.get()
    assert task.available_at == when and task.available_at.astimezone(UTC).hour == 1  # 10:00 JST is 01:00 UTC

    row = page(admin_client.get(LIST_URL)).rows[task.pk]
    assert row["Status"].startswith(f"Scheduled for {when.day} {when:%b} 10:00 (in ")
    admin_client.cookies["tz"] = "UTC"
    utc = when.astimezone(UTC)
    assert (
        page(admin_client.get(LIST_URL))
        .rows[task.pk]["Status"]
        .startswith(f"Scheduled for {utc.day} {utc:%b} 01:00 (in ")
    )


@pytest.mark.parametrize(
    ("priority", "run_at", "error"),
    [
        ("1001", "", "priority must be from"),
        ("x", "", "Priority must be a whole number"),
        ("", "tomorrow", "Run at must be a date and time"),
        ("", "2099-01-01T10:00", "Run at: must be at most a year ahead"),
    ],
)
def test_the_new_task_page_refuses_a_bad_priority_or_time(
    world: dict[str, Stage], admin_client: Client, priority: str, run_at: str, error: str
) -> None:
    with nothing_written():
        response = admin_client.post(
            "/tasks/new/", {"stage": "ship", "type": "order", "payload": "{}", "priority": priority, "run_at": run_at}
        )
    assert response.status_code == 400
    assert error.lower() in response.content.decode().lower()


# -- the list: "Scheduled for", and the filter ----------------------------------------------------------


def test_status_text_says_scheduled_for_a_time_and_keeps_the_retry_badge(world: dict[str, Stage]) -> None:
    now = timezone.now()
    scheduled = task_create(stage=world["ship"], type="order", payload={}, available_at=now + timedelta(hours=2))
    text = status_text(scheduled, now)
    assert text == f"Scheduled for {timezone.localtime(scheduled.available_at):%H:%M} (in 2 h)" or text.startswith(
        "Scheduled for "  # two hours on is tomorrow near midnight: the date comes first
    )
    assert text.endswith("(in 2 h)")
    far = task_create(stage=world["ship"], type="order", payload={}, available_at=now + timedelta(days=3))
    local = timezone.localtime(far.available_at)
    assert status_text(far, now) == f"Scheduled for {local.day} {local:%b %H:%M} (in 3 d)"
    retried = task_create(stage=world["notify"], type="order", payload={})
    [claim] = task_claim(stage=world["notify"], worker_id="w1")
    task_release(task_id=claim.pk, lock_token=claim.lock_token, error="boom", retry_in=600)
    assert status_text(Task.objects.get(pk=retried.pk), timezone.now()).startswith("Retrying · attempt 2 · next in ")


def test_the_list_and_the_api_filter_scheduled_tasks(
    world: dict[str, Stage], admin_client: Client, viewer: APIClient
) -> None:
    now = timezone.now()
    scheduled = task_create(stage=world["ship"], type="order", payload={}, available_at=now + timedelta(hours=2))
    due = task_create(stage=world["ship"], type="order", payload={})
    retry = task_create(stage=world["notify"], type="order", payload={})
    [claim] = task_claim(stage=world["notify"], worker_id="w1")
    task_release(task_id=claim.pk, lock_token=claim.lock_token, error="boom", retry_in=600)  # waits, but a retry

    listed = page(admin_client.get(LIST_URL, {"scheduled": "true"}))
    assert list(listed.rows) == [scheduled.pk]
    assert listed.rows[scheduled.pk]["Status"].startswith("Scheduled for ")
    assert sorted(page(admin_client.get(LIST_URL, {"scheduled": "false"})).rows) == sorted([due.pk, retry.pk])
    assert list_ids(viewer, {"scheduled": "true"}) == [scheduled.pk]
    assert sorted(list_ids(viewer, {"scheduled": "false"})) == sorted([due.pk, retry.pk])
    assert viewer.get("/api/tasks/", {"scheduled": "maybe"}).status_code == 400


def test_the_lists_filter_form_has_the_scheduled_choice_its_chip_and_the_bulk_sentence(
    world: dict[str, Stage], admin_client: Client
) -> None:
    later = task_create(stage=world["ship"], type="order", payload={}, available_at=timezone.now() + timedelta(hours=2))
    task_create(stage=world["ship"], type="order", payload={})

    blank = admin_client.get(LIST_URL).content.decode()
    assert Page(blank).submitted("filters")["scheduled"] == [""]  # Any: no filter, no chip
    assert '<option value="">Any</option>' in blank and "Scheduled for later: " not in blank

    html = admin_client.get(LIST_URL, {"scheduled": "true", "stage": "ship"}).content.decode()
    form = Page(html).submitted("filters")
    assert form["scheduled"] == ["true"] and form["stage"] == ["ship"]  # the form keeps the choice
    assert '<option value="true" selected>Yes</option>' in html
    chips = chip_links(html)
    assert QueryDict(chips["Remove filter Scheduled for later: Yes ×"]).dict() == {"stage": "ship"}
    assert list(page(admin_client.get(LIST_URL, form)).rows) == [later.pk]  # a submit of the form filters the same
    assert "Remove filter Scheduled for later: No ×" in chip_links(
        admin_client.get(LIST_URL, {"scheduled": "false"}).content.decode()
    )

    asked = page(admin_client.post("/tasks/bulk/", {"action": "cancel", "scope": "all", "query": "scheduled=true"}))
    assert "1 task (scheduled for later: Yes)" in asked.text  # the bulk confirmation names the filter


def test_the_overview_and_the_stage_page_count_no_wait_for_a_task_scheduled_for_later(
    world: dict[str, Stage], admin_client: Client
) -> None:
    # Created a day ago, due in five: nobody keeps it waiting (the oldest pending age was a day).
    now = timezone.now()
    task_create(
        stage=world["ship"], type="order", payload={}, now=now - timedelta(days=1), available_at=now + timedelta(5)
    )
    due = now - timedelta(minutes=70)  # created 3 days ago, due 70 min ago: waiting since then
    task_create(stage=world["review"], type="order", payload={}, now=now - timedelta(days=3), available_at=due)

    stages = json.loads(admin_client.get("/overview/counts.json").content)["stages"]
    assert stages["ship"]["pending"] == 1 and stages["ship"]["text"]["waiting"].startswith("nothing waiting")
    assert stages["review"]["text"]["waiting"].startswith("oldest pending 70 min")
    assert oldest_on_stage_page(admin_client, "ship") == "—"
    assert oldest_on_stage_page(admin_client, "review") == "70 min"  # not 3 days


def oldest_on_stage_page(client: Client, slug: str) -> str:
    return page(client.get(f"/stages/{slug}/")).text.split("Oldest pending", 1)[1].split(" Attempts", 1)[0]


def chip_links(html: str) -> dict[str, str]:
    """The active-filter chips: their text -> the query string of their link (none: {})."""
    box = re.search(r'<ul class="active-filters".*?</ul>', html, re.DOTALL)
    links = re.findall(r'<a class="chip" href="\?([^"]*)">(.*?)</a>', box.group(0), re.DOTALL) if box else []
    return {" ".join(unescape(re.sub(r"<[^>]+>", "", text)).split()): unescape(href) for href, text in links}


def test_the_http_workers_send_carries_the_options_the_api_takes(world: dict[str, Stage], operator: APIClient) -> None:
    # examples/http_worker.py: a remote handler's send(..., delay=, at=, priority=) becomes the complete's items.
    parent = task_create(stage=world["review"], type="order", payload={}, priority=2)
    [claimed] = task_claim(stage=world["review"], worker_id="remote")
    remote = RemoteTask(parent.pk, "order", {}, "review", 1, claimed.lock_token)
    when = timezone.now() + timedelta(days=2)
    remote.send("approved", {"n": 1}, delay=60, priority=5)
    remote.send("declined", {"n": 2}, at=when)
    response = post(
        operator, f"/api/tasks/{parent.pk}/complete/", {"lock_token": remote.lock_token, "send": remote.sent}
    )
    assert response.status_code == 200, response.data
    got = {row["stage"]: (row["priority"], at(row["available_at"])) for row in response.data}
    assert got["ship"][0] == got["audit"][0] == 5 and near(got["ship"][1], timezone.now() + timedelta(minutes=1))
    assert got["notify"] == (2, when)  # inherited; at kept


def test_a_jobs_sends_take_the_target_stages_priority_or_their_own_and_a_delay(world: dict[str, Stage]) -> None:
    job = Stage.objects.create(
        slug="nightly", name="Nightly", kind=Stage.Kind.JOB, schedule="0 3 * * *", handler="tests.handlers.digest"
    )
    Transition.objects.create(source=job, target=world["ship"], task_type="")
    Stage.objects.filter(slug="ship").update(default_priority=6)
    job_run_now(stage=job, worker_id="s")
    [plain] = Task.objects.filter(stage=world["ship"])
    assert plain.priority == 6  # no sending task: the target stage's
    Stage.objects.filter(pk=job.pk).update(handler="tests.handlers.job_send_later")
    job.refresh_from_db()
    before = timezone.now()
    assert job_run_now(stage=job, worker_id="s", now=before + timedelta(seconds=2)) is not None  # one run a second
    later = Task.objects.filter(stage=world["ship"]).exclude(pk=plain.pk).get()
    assert later.priority == 3
    assert before + timedelta(minutes=10) <= later.available_at < before + timedelta(minutes=10) + SLACK


# -- the OpenAPI schema ----------------------------------------------------------------------------


def test_the_openapi_schema_documents_run_at_and_delay_on_every_entry_path() -> None:
    document = SchemaGenerator().get_schema(request=None, public=True)
    schemas = document["components"]["schemas"]
    for name in ("TaskCreate", "SendItem"):  # create and bulk create; stage send, complete's sends, bulk complete's
        props = schemas[name]["properties"]
        assert (props["available_at"]["type"], props["available_at"]["format"]) == ("string", "date-time"), name
        assert (props["delay"]["type"], props["delay"]["minimum"], props["delay"]["maximum"]) == (
            "number",
            0,
            MAX_DELAY,
        ), name
        assert {"available_at", "delay"}.isdisjoint(schemas[name].get("required", [])), name
    assert schemas["BulkCompleteItem"]["properties"]["send"]["items"] == {"$ref": "#/components/schemas/SendItem"}
    assert schemas["BulkCreate"]["properties"]["tasks"]["items"] == {"$ref": "#/components/schemas/TaskCreate"}
    assert schemas["Task"]["properties"]["available_at"]["readOnly"] is True

    [hook] = [p for p in document["paths"]["/hooks/{slug}/"]["post"]["parameters"] if p["name"] == "delay"]
    assert (hook["in"], hook["schema"]["type"]) == ("query", "number")
    assert f"0 to {MAX_DELAY}" in hook["description"]
    [scheduled] = [p for p in document["paths"]["/api/tasks/"]["get"]["parameters"] if p["name"] == "scheduled"]
    assert (scheduled["in"], sorted(scheduled["schema"]["enum"])) == ("query", ["false", "true"])
