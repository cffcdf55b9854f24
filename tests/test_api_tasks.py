"""REST API for tasks: list and filter, create (single, idempotent, bulk), detail
and history. The lock verbs are in test_api_task_actions.py.

Every refused request is checked to write nothing (tests.support.world.nothing_written).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import task_complete, task_create, task_send, tasks_create_bulk
from tests.support.api import assert_refused, get, ids, list_ids, payload_of_size, post, raw_post
from tests.support.world import claim_one, create, nothing_written

KiB = 1024


# -- list: pagination and ordering ---------------------------------------------------


def test_list_is_cursor_paginated_newest_first_and_next_links_reach_every_task(
    world: dict[str, Stage], viewer: APIClient
) -> None:
    made = [create(world["intake"], n=i).pk for i in range(7)]
    first = get(viewer, "/api/tasks/", {"page_size": 3})
    assert first.status_code == 200
    assert set(first.data) == {"next", "previous", "results"}
    assert ids(first.data["results"]) == made[::-1][:3]
    assert first.data["previous"] is None
    second = viewer.get(first.data["next"])
    assert ids(second.data["results"]) == made[::-1][3:6]
    assert second.data["previous"] is not None
    back = viewer.get(second.data["previous"])
    assert ids(back.data["results"]) == made[::-1][:3]
    assert list_ids(viewer, {"page_size": 3}) == made[::-1]


def test_ordering_parameter_orders_every_page(world: dict[str, Stage], viewer: APIClient) -> None:
    start = timezone.now() - timedelta(hours=1)
    made = [
        task_create(stage=world["intake"], type="t", payload={}, now=start + timedelta(minutes=i)).pk for i in range(5)
    ]
    for ordering in ("id", "created_at", "updated_at"):
        assert list_ids(viewer, {"ordering": ordering, "page_size": 2}) == made, ordering
        assert list_ids(viewer, {"ordering": f"-{ordering}", "page_size": 2}) == made[::-1], ordering


def test_ordering_by_created_at_pages_through_tasks_created_in_the_same_instant(
    world: dict[str, Stage], viewer: APIClient
) -> None:
    # A bulk create gives every task the same created_at: the cursor must still
    # list each task exactly once.
    made = [t.pk for t in tasks_create_bulk(items=[(world["intake"], "t", {"n": i}) for i in range(7)])]
    for ordering in ("created_at", "-created_at"):
        listed = list_ids(viewer, {"ordering": ordering, "page_size": 2})
        assert sorted(listed) == sorted(made), ordering
        # Ties are broken by id in the same direction, so every page query sees one order.
        assert listed == sorted(made, reverse=ordering.startswith("-")), ordering


def test_task_representation_has_stage_slugs_and_no_lock_token(world: dict[str, Stage], viewer: APIClient) -> None:
    task = create(world["review"], "order", amount=3)
    claim_one(world["review"])
    [row] = get(viewer, "/api/tasks/").data["results"]
    assert row["id"] == task.pk
    assert row["stage"] == "review" and row["type"] == "order" and row["payload"] == {"amount": 3}
    assert row["status"] == "locked" and row["attempts"] == 1 and row["locked_by"] == "w"
    assert "lock_token" not in row  # only the claimer gets it


# -- list: filters ------------------------------------------------------------------------


def test_stage_filter_is_repeatable(world: dict[str, Stage], viewer: APIClient) -> None:
    a = create(world["intake"]).pk
    b = create(world["review"]).pk
    create(world["ship"])
    assert list_ids(viewer, {"stage": "intake"}) == [a]
    assert list_ids(viewer, {"stage": ["intake", "review"]}) == [b, a]


def test_status_filter_is_repeatable(world: dict[str, Stage], viewer: APIClient) -> None:
    locked = create(world["review"]).pk
    pending = create(world["review"]).pk
    assert claim_one(world["review"]).pk == locked  # oldest first
    create(world["intake"])
    done = claim_one(world["intake"])
    task_complete(task_id=done.pk, lock_token=done.lock_token)
    assert list_ids(viewer, {"status": "pending"}) == [pending]
    assert list_ids(viewer, {"status": ["locked", "completed"]}) == [done.pk, locked]
    assert list_ids(viewer, {"status": "failed"}) == []


def test_type_filter_matches_exactly(world: dict[str, Stage], viewer: APIClient) -> None:
    order = create(world["intake"], "order").pk
    create(world["intake"], "orders")
    create(world["intake"], "Order")
    assert list_ids(viewer, {"type": "order"}) == [order]


def test_created_after_is_inclusive_and_created_before_exclusive(world: dict[str, Stage], viewer: APIClient) -> None:
    base = timezone.now().replace(microsecond=0) - timedelta(days=1)
    made = [
        task_create(stage=world["intake"], type="t", payload={}, now=base + timedelta(hours=h)).pk for h in range(4)
    ]
    after = (base + timedelta(hours=1)).isoformat()
    before = (base + timedelta(hours=3)).isoformat()
    assert list_ids(viewer, {"created_after": after}) == made[:0:-1]
    assert list_ids(viewer, {"created_before": before}) == made[2::-1]
    assert list_ids(viewer, {"created_after": after, "created_before": before}) == [made[2], made[1]]


def test_parent_and_source_stage_filters_find_successors(world: dict[str, Stage], viewer: APIClient) -> None:
    create(world["review"])
    parent = claim_one(world["review"])
    kids = task_complete(task_id=parent.pk, lock_token=parent.lock_token, send=[("approved", {})])
    sent = task_send(stage=world["intake"], type="t", payload={})
    assert list_ids(viewer, {"parent": parent.pk}) == sorted((k.pk for k in kids), reverse=True)
    assert list_ids(viewer, {"source_stage": "review"}) == sorted((k.pk for k in kids), reverse=True)
    assert list_ids(viewer, {"source_stage": "intake"}) == [t.pk for t in sent]
    assert list_ids(viewer, {"parent": 999_999}) == []


def test_payload_filter_takes_a_json_object_the_payload_must_contain(
    world: dict[str, Stage], viewer: APIClient
) -> None:
    a = create(world["intake"], customer_id=12345, region="eu", vip=True).pk
    b = create(world["intake"], customer_id=12345, region="us").pk
    create(world["intake"], customer_id=999, region="eu")
    create(world["intake"], customer_id="12345")  # a string is not the number
    nested = create(world["intake"], customer={"id": 7, "tier": "gold"}, tags=["a"]).pk
    assert list_ids(viewer, {"payload": '{"customer_id": 12345}'}) == [b, a]
    assert list_ids(viewer, {"payload": '{"customer_id": 12345, "region": "eu"}'}) == [a]
    assert list_ids(viewer, {"payload": '{"vip": true}'}) == [a]
    assert list_ids(viewer, {"payload": '{"customer": {"tier": "gold"}}'}) == [nested]
    assert list_ids(viewer, {"payload": '{"customer_id": 1}'}) == []
    assert len(list_ids(viewer, {"payload": "{}"})) == 5


def test_payload_filter_accepts_the_key_equals_value_shorthand(world: dict[str, Stage], viewer: APIClient) -> None:
    number = create(world["intake"], customer_id=12345).pk
    text = create(world["intake"], customer_id="abc").pk
    create(world["intake"], customer_id=1)
    assert list_ids(viewer, {"payload": "customer_id=12345"}) == [number]
    assert list_ids(viewer, {"payload": "customer_id=abc"}) == [text]
    assert list_ids(viewer, {"payload": 'customer_id="12345"'}) == []


def test_payload_filter_matches_keys_named_like_query_lookups(world: dict[str, Stage], viewer: APIClient) -> None:
    # A key named like a lookup must still mean the key (SQLite matches by key path).
    viewer.raise_request_exception = False
    for key in ("in", "exact", "gt", "isnull", "contains"):
        match = create(world["intake"], **{key: "x"}).pk
        nested = create(world["intake"], outer={key: "x"}).pk
        create(world["intake"], **{key: "y"})
        for params, want in [({"payload": f'{{"{key}": "x"}}'}, [match]), ({"payload": f"{key}=x"}, [match])]:
            response = get(viewer, "/api/tasks/", params)
            assert response.status_code == 200, (key, params, response.status_code)
            assert ids(response.data["results"]) == want, (key, params)
        response = get(viewer, "/api/tasks/", {"payload": f'{{"outer": {{"{key}": "x"}}}}'})
        assert response.status_code == 200 and ids(response.data["results"]) == [nested], key


def test_id_filter_takes_a_comma_separated_list(world: dict[str, Stage], viewer: APIClient) -> None:
    a, b, c = (create(world["intake"]).pk for _ in range(3))
    assert list_ids(viewer, {"id": f"{a},{c}"}) == [c, a]
    assert list_ids(viewer, {"id": f"{b}"}) == [b]


def test_filters_combine(world: dict[str, Stage], viewer: APIClient) -> None:
    hit = create(world["review"], "order", customer_id=1).pk
    create(world["review"], "refund", customer_id=1)
    create(world["review"], "order", customer_id=2)
    claim_one(world["review"])  # the first: `hit`
    also = create(world["review"], "order", customer_id=1).pk
    params = {"type": "order", "status": ["locked", "failed"], "payload": "customer_id=1", "ordering": "id"}
    assert list_ids(viewer, params) == [hit]
    assert list_ids(viewer, {**params, "status": ["pending", "locked"], "id": f"{hit},{also}"}) == [hit, also]


BAD_FILTERS: list[dict[str, str]] = [
    {"stage": "nowhere"},
    {"status": "sleeping"},
    {"source_stage": "nowhere"},
    {"created_after": "yesterday"},
    {"created_before": "2024-13-45"},
    {"parent": "abc"},
    {"id": "1,abc"},
    {"payload": "{not json"},
    {"payload": "[1, 2]"},
    {"payload": "12345"},
]


def test_invalid_filter_values_answer_400_naming_the_parameter(world: dict[str, Stage], viewer: APIClient) -> None:
    create(world["intake"])
    for params in BAD_FILTERS:
        response = get(viewer, "/api/tasks/", params)
        assert response.status_code == 400, (params, response.content)
        assert set(response.data) == set(params)


# -- create ----------------------------------------------------------------------------


def test_create_makes_a_pending_task_at_the_stage(world: dict[str, Stage], operator: APIClient) -> None:
    response = post(operator, "/api/tasks/", {"stage": "review", "type": "order", "payload": {"amount": 5}})
    assert response.status_code == 201, response.content
    task = Task.objects.get(pk=response.data["id"])
    assert (task.stage.slug, task.type, task.payload, task.status) == ("review", "order", {"amount": 5}, "pending")
    assert response.data["stage"] == "review" and response.data["status"] == "pending"
    assert list(TaskEvent.objects.filter(task=task).values_list("kind", "actor")) == [("created", "user:operator")]


def test_create_without_payload_makes_an_empty_object(world: dict[str, Stage], operator: APIClient) -> None:
    response = post(operator, "/api/tasks/", {"stage": "review", "type": "order"})
    assert response.status_code == 201
    assert Task.objects.get(pk=response.data["id"]).payload == {}


def test_create_with_a_repeated_idempotency_key_returns_the_first_task(
    world: dict[str, Stage], operator: APIClient
) -> None:
    body = {"stage": "review", "type": "order", "payload": {"a": 1}, "idempotency_key": "req-1"}
    first = post(operator, "/api/tasks/", body)
    assert first.status_code == 201
    with nothing_written():
        again = post(operator, "/api/tasks/", body)
    assert again.status_code == 200
    assert again.data["id"] == first.data["id"]
    assert again.data["idempotency_key"] == "req-1"
    # The key is unique per stage: elsewhere it makes a new task.
    other = post(operator, "/api/tasks/", {**body, "stage": "intake"})
    assert other.status_code == 201 and other.data["id"] != first.data["id"]
    assert Task.objects.count() == 2


def test_reusing_an_idempotency_key_for_a_different_task_answers_409(
    world: dict[str, Stage], operator: APIClient
) -> None:
    body = {"stage": "review", "type": "order", "payload": {"a": 1}, "idempotency_key": "req-1"}
    assert post(operator, "/api/tasks/", body).status_code == 201
    for change in ({"payload": {"a": 2}}, {"type": "refund"}):
        with nothing_written():
            response = post(operator, "/api/tasks/", {**body, **change})
        assert response.status_code == 409, change
        assert "req-1" in response.data["detail"]


BAD_CREATES: list[tuple[Any, str | None]] = [
    ({"stage": "review", "type": "t", "payload": [1, 2]}, "payload"),
    ({"stage": "review", "type": "t", "payload": "text"}, "payload"),
    ({"stage": "review", "type": "t", "payload": 3}, "payload"),
    ({"stage": "review", "type": "t", "payload": None}, "payload"),
    ({"stage": "review", "type": ""}, "type"),
    ({"stage": "review", "type": "   "}, "type"),
    ({"stage": "review", "type": "x" * 101}, "type"),
    ({"stage": "review"}, "type"),
    ({"stage": "nowhere", "type": "t"}, "stage"),
    ({"type": "t"}, "stage"),
    ({"stage": "review", "type": "t", "idempotency_key": ""}, "idempotency_key"),
    ({"stage": "review", "type": "t", "idempotency_key": "k" * 201}, "idempotency_key"),
    ([{"stage": "review", "type": "t"}], "non_field_errors"),
]


def test_create_with_bad_input_answers_400_with_field_messages_and_writes_nothing(
    world: dict[str, Stage], operator: APIClient
) -> None:
    assert_refused(operator, "/api/tasks/", BAD_CREATES)


def test_type_of_exactly_100_characters_is_accepted(world: dict[str, Stage], operator: APIClient) -> None:
    assert post(operator, "/api/tasks/", {"stage": "review", "type": "x" * 100}).status_code == 201


def test_a_body_that_does_not_parse_answers_400(world: dict[str, Stage], operator: APIClient) -> None:
    for text in ["{not json", '{"stage": "review", "type": "t", "payload": {"a": NaN}}', '{"stage": "review",}']:
        with nothing_written():
            response = raw_post(operator, "/api/tasks/", text)
        assert response.status_code == 400, text
        assert "JSON parse error" in str(response.data["detail"])


def test_a_body_nested_too_deeply_to_parse_answers_400_not_500(world: dict[str, Stage], operator: APIClient) -> None:
    # json.loads raises RecursionError (not ValueError) past ~1000 levels; DRF's
    # JSONParser only turns ValueError into a 400.
    operator.raise_request_exception = False
    depth = 5000
    text = '{"stage": "review", "type": "t", "payload": ' + '{"a": ' * depth + "1" + "}" * depth + "}"
    with nothing_written():
        response = raw_post(operator, "/api/tasks/", text)
    assert response.status_code == 400


def test_nul_characters_in_a_payload_answer_400_on_every_database(world: dict[str, Stage], operator: APIClient) -> None:
    # PostgreSQL's jsonb cannot store \u0000: the insert fails with a DataError
    # (500) unless validation refuses it first; SQLite would store it, making the
    # same request succeed on one supported database and crash on the other.
    operator.raise_request_exception = False
    create(world["review"])
    task = claim_one(world["review"])
    for payload in ({"note": "a\x00b"}, {"k\x00": 1}, {"deep": [{"x": "\x00"}]}):
        requests = [
            ("/api/tasks/", {"stage": "review", "type": "t", "payload": payload}),
            ("/api/tasks/bulk/", {"tasks": [{"stage": "review", "type": "t", "payload": payload}]}),
            ("/api/stages/intake/send/", {"type": "t", "payload": payload}),
            (
                f"/api/tasks/{task.pk}/complete/",
                {"lock_token": task.lock_token, "send": [{"type": "approved", "payload": payload}]},
            ),
        ]
        for url, body in requests:
            with nothing_written():
                response = post(operator, url, body)
            assert response.status_code == 400, (url, payload, response.status_code)


def test_payload_at_the_default_limit_is_accepted_and_one_byte_more_answers_413(
    world: dict[str, Stage], operator: APIClient
) -> None:
    ok = post(operator, "/api/tasks/", {"stage": "review", "type": "t", "payload": payload_of_size(256 * KiB)})
    assert ok.status_code == 201
    with nothing_written():
        big = post(operator, "/api/tasks/", {"stage": "review", "type": "t", "payload": payload_of_size(256 * KiB + 1)})
    assert big.status_code == 413
    assert "payload" in big.data or "limit" in str(big.data)


def test_payload_limit_follows_the_setting(world: dict[str, Stage], operator: APIClient, settings: Any) -> None:
    settings.TASKS_MAX_PAYLOAD_BYTES = 100
    assert (
        post(operator, "/api/tasks/", {"stage": "review", "type": "t", "payload": payload_of_size(100)}).status_code
        == 201
    )
    with nothing_written():
        response = post(operator, "/api/tasks/", {"stage": "review", "type": "t", "payload": payload_of_size(101)})
    assert response.status_code == 413
    assert "101" in str(response.data) and "100" in str(response.data)


# -- bulk create ------------------------------------------------------------------------


def test_bulk_create_makes_every_task_in_order(world: dict[str, Stage], operator: APIClient) -> None:
    items = [{"stage": "intake", "type": "t", "payload": {"n": i}} for i in range(3)] + [
        {"stage": "review", "type": "order"}
    ]
    response = post(operator, "/api/tasks/bulk/", {"tasks": items})
    assert response.status_code == 201, response.content
    assert [(r["stage"], r["payload"]) for r in response.data] == [
        ("intake", {"n": 0}),
        ("intake", {"n": 1}),
        ("intake", {"n": 2}),
        ("review", {}),
    ]
    assert Task.objects.filter(status="pending").count() == 4
    assert TaskEvent.objects.filter(kind="created", actor="user:operator").count() == 4


def test_bulk_create_accepts_1000_tasks_and_refuses_1001(world: dict[str, Stage], operator: APIClient) -> None:
    item = {"stage": "intake", "type": "t"}
    with nothing_written():
        response = post(operator, "/api/tasks/bulk/", {"tasks": [item] * 1001})
    assert response.status_code == 400
    assert "tasks" in response.data
    response = post(operator, "/api/tasks/bulk/", {"tasks": [item] * 1000})
    assert response.status_code == 201
    assert len(response.data) == 1000 and Task.objects.count() == 1000


def test_bulk_create_with_one_bad_item_answers_400_and_creates_nothing(
    world: dict[str, Stage], operator: APIClient
) -> None:
    good = {"stage": "intake", "type": "t"}
    bad_items = [
        {"stage": "nowhere", "type": "t"},
        {"stage": "intake", "type": ""},
        {"stage": "intake", "type": "t", "payload": [1]},
        {"stage": "intake", "type": "t", "idempotency_key": "k"},
    ]
    assert_refused(operator, "/api/tasks/bulk/", [({"tasks": [good, bad, good]}, "tasks") for bad in bad_items])


def test_bulk_create_without_a_list_of_tasks_answers_400(world: dict[str, Stage], operator: APIClient) -> None:
    cases: list[tuple[Any, str | None]] = [
        ({"tasks": []}, "tasks"),
        ({}, "tasks"),
        ({"tasks": "x"}, "tasks"),
        ([{"stage": "intake", "type": "t"}], None),
    ]
    assert_refused(operator, "/api/tasks/bulk/", cases)


def test_bulk_create_with_one_oversized_payload_answers_413_and_creates_nothing(
    world: dict[str, Stage], operator: APIClient, settings: Any
) -> None:
    settings.TASKS_MAX_PAYLOAD_BYTES = 100
    items = [{"stage": "intake", "type": "t"}, {"stage": "intake", "type": "t", "payload": payload_of_size(101)}]
    with nothing_written():
        assert post(operator, "/api/tasks/bulk/", {"tasks": items}).status_code == 413


# -- detail and history -------------------------------------------------------------------


def test_detail_and_history_of_a_task(world: dict[str, Stage], viewer: APIClient) -> None:
    task = create(world["review"], "order", a=1)
    claimed = claim_one(world["review"], worker="w-1")
    task_complete(task_id=task.pk, lock_token=claimed.lock_token)
    detail = get(viewer, f"/api/tasks/{task.pk}/")
    assert detail.status_code == 200
    assert detail.data["status"] == "completed" and detail.data["completed_at"] is not None
    events = get(viewer, f"/api/tasks/{task.pk}/events/")
    assert events.status_code == 200
    assert [(e["kind"], e["actor"]) for e in events.data] == [
        ("created", "test"),
        ("completed", "w-1"),
    ]
    # The completion carries the claim it ended.
    claim = {k: events.data[1]["details"][k] for k in ("attempt", "worker", "claimed_at", "reclaimed_from")}
    assert claim == {"attempt": 1, "worker": "w-1", "claimed_at": claimed.locked_at.isoformat(), "reclaimed_from": None}


def test_unknown_task_answers_404(world: dict[str, Stage], viewer: APIClient) -> None:
    assert viewer.get("/api/tasks/999999/").status_code == 404
    assert viewer.get("/api/tasks/999999/events/").status_code == 404
    assert viewer.get("/api/tasks/abc/").status_code == 404


def test_actions_on_an_unknown_task_answer_404_and_write_nothing(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["review"])
    token = claim_one(world["review"]).lock_token
    for action in ("complete", "release", "heartbeat", "retry"):
        assert_refused(operator, f"/api/tasks/999999/{action}/", [({"lock_token": token}, None)], status=404)
