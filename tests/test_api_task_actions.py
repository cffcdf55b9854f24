"""REST API: the verbs a remote worker uses on claimed tasks (complete, release,
heartbeat, bulk-complete), the operator's retry, and a worker's whole round trip.

Every refused request is checked to write nothing (tests.support.world.nothing_written).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import task_claim, task_complete
from tests.support.api import assert_refused, at, get, ids, payload_of_size, post
from tests.support.world import claim_one, create, kinds, nothing_written

# -- complete ---------------------------------------------------------------------------


def test_complete_with_send_creates_successors_with_parent_and_source_stage(
    world: dict[str, Stage], operator: APIClient
) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    body = {"lock_token": task.lock_token, "send": [{"type": "approved", "payload": {"ok": 1}}, {"type": "declined"}]}
    response = post(operator, f"/api/tasks/{task.pk}/complete/", body)
    assert response.status_code == 200, response.content
    assert sorted((r["stage"], r["type"]) for r in response.data) == [
        ("audit", "approved"),
        ("notify", "declined"),
        ("ship", "approved"),
    ]
    assert {(r["parent"], r["source_stage"], r["status"]) for r in response.data} == {(task.pk, "review", "pending")}
    assert Task.objects.get(pk=task.pk).status == "completed"


def test_complete_without_send_answers_an_empty_list(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    response = post(operator, f"/api/tasks/{task.pk}/complete/", {"lock_token": task.lock_token})
    assert response.status_code == 200 and response.data == []
    assert kinds(task.pk) == ["created", "completed"]  # the claim is in the completed event's details
    [done] = get(operator, f"/api/tasks/{task.pk}/events/").data[-1:]
    assert (done["details"]["worker"], done["details"]["attempt"]) == (task.locked_by, 1)
    assert done["details"]["claimed_at"] == task.locked_at.isoformat()


def test_complete_with_a_wrong_token_answers_409_and_changes_nothing(
    world: dict[str, Stage], operator: APIClient
) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    with nothing_written():
        response = post(
            operator, f"/api/tasks/{task.pk}/complete/", {"lock_token": "0" * 32, "send": [{"type": "approved"}]}
        )
    assert response.status_code == 409
    assert "another token" in response.data["detail"]


def test_complete_with_a_stale_token_after_the_lock_expired_and_was_reclaimed_answers_409(
    world: dict[str, Stage], operator: APIClient
) -> None:
    create(world["review"])
    stale = claim_one(world["review"], worker="slow")
    Task.objects.filter(pk=stale.pk).update(locked_until=timezone.now() - timedelta(seconds=1))
    fresh = post(operator, "/api/stages/review/claim/", {}).data
    assert ids(fresh) == [stale.pk] and fresh[0]["lock_token"] != stale.lock_token
    for action in ("complete", "heartbeat", "release"):
        with nothing_written():
            response = post(operator, f"/api/tasks/{stale.pk}/{action}/", {"lock_token": stale.lock_token})
        assert response.status_code == 409, action


def test_completing_twice_answers_409_the_second_time(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    assert post(operator, f"/api/tasks/{task.pk}/complete/", {"lock_token": task.lock_token}).status_code == 200
    with nothing_written():
        again = post(operator, f"/api/tasks/{task.pk}/complete/", {"lock_token": task.lock_token})
    assert again.status_code == 409
    assert "completed" in again.data["detail"]


def test_complete_sending_an_unrouted_type_answers_400_with_accepted_types_and_keeps_the_lock(
    world: dict[str, Stage], operator: APIClient
) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    body = {"lock_token": task.lock_token, "send": [{"type": "approved"}, {"type": "maybe"}]}
    with nothing_written():
        response = post(operator, f"/api/tasks/{task.pk}/complete/", body)
    assert response.status_code == 400
    assert response.data["accepted_types"] == ["approved", "declined"]
    assert "maybe" in str(response.data["type"])
    # The lock is intact: the worker can complete properly.
    assert post(operator, f"/api/tasks/{task.pk}/complete/", {"lock_token": task.lock_token}).status_code == 200


def test_complete_with_bad_input_answers_400_and_changes_nothing(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    token = task.lock_token
    cases: list[tuple[Any, str | None]] = [
        ({}, "lock_token"),
        ({"lock_token": ""}, "lock_token"),
        ({"lock_token": token, "send": [{"type": ""}]}, "send"),
        ({"lock_token": token, "send": [{"type": "approved", "payload": [1]}]}, "send"),
        ({"lock_token": token, "send": {"type": "approved"}}, "send"),
        ({"lock_token": token, "send": [{"type": "approved"}] * 1001}, "send"),
    ]
    assert_refused(operator, f"/api/tasks/{task.pk}/complete/", cases)


def test_complete_sending_an_oversized_payload_answers_413(
    world: dict[str, Stage], operator: APIClient, settings: Any
) -> None:
    settings.TASKS_MAX_PAYLOAD_BYTES = 100
    create(world["review"])
    task = claim_one(world["review"])
    body = {"lock_token": task.lock_token, "send": [{"type": "approved", "payload": payload_of_size(101)}]}
    with nothing_written():
        assert post(operator, f"/api/tasks/{task.pk}/complete/", body).status_code == 413


# -- release and heartbeat --------------------------------------------------------------------


def test_release_with_retry_in_zero_makes_the_task_claimable_again(
    world: dict[str, Stage], operator: APIClient
) -> None:
    create(world["review"])
    [first] = post(operator, "/api/stages/review/claim/", {}).data
    response = post(
        operator,
        f"/api/tasks/{first['id']}/release/",
        {"lock_token": first["lock_token"], "error": "boom", "retry_in": 0},
    )
    assert response.status_code == 200, response.content
    assert response.data["status"] == "pending" and response.data["last_error"] == "boom"
    assert response.data["locked_by"] == "" and response.data["locked_until"] is None
    [second] = post(operator, "/api/stages/review/claim/", {}).data
    assert second["id"] == first["id"] and second["attempts"] == 2
    assert second["lock_token"] != first["lock_token"]
    assert kinds(first["id"]) == ["created", "released"]  # the second claim is on the row until it ends
    released = TaskEvent.objects.get(task_id=first["id"], kind="released")
    assert (released.details["attempt"], released.details["error"]) == (1, "boom")


def test_release_without_retry_in_backs_off(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    before = timezone.now()
    response = post(operator, f"/api/tasks/{task.pk}/release/", {"lock_token": task.lock_token})
    assert response.status_code == 200
    assert at(response.data["available_at"]) > before
    assert post(operator, "/api/stages/review/claim/", {}).data == []


def test_release_at_max_attempts_fails_the_task(world: dict[str, Stage], operator: APIClient) -> None:
    world["review"].max_attempts = 1
    world["review"].save()
    create(world["review"])
    task = claim_one(world["review"])
    response = post(operator, f"/api/tasks/{task.pk}/release/", {"lock_token": task.lock_token, "error": "bad"})
    assert response.status_code == 200
    assert response.data["status"] == "failed" and response.data["last_error"] == "bad"


def test_release_with_bad_input_answers_400_and_changes_nothing(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    token = task.lock_token
    cases: list[tuple[Any, str | None]] = [
        ({}, "lock_token"),
        ({"lock_token": token, "retry_in": -1}, "retry_in"),
        ({"lock_token": token, "retry_in": "soon"}, "retry_in"),
        ({"lock_token": token, "error": None}, "error"),
    ]
    assert_refused(operator, f"/api/tasks/{task.pk}/release/", cases)


def test_release_and_heartbeat_with_a_wrong_token_answer_409_and_change_nothing(
    world: dict[str, Stage], operator: APIClient
) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    for action in ("release", "heartbeat"):
        assert_refused(
            operator, f"/api/tasks/{task.pk}/{action}/", [({"lock_token": "nope", "retry_in": 0}, None)], status=409
        )


def test_lock_verbs_on_a_pending_task_answer_409(world: dict[str, Stage], operator: APIClient) -> None:
    task = create(world["review"])
    for action in ("complete", "release", "heartbeat"):
        with nothing_written():
            response = post(operator, f"/api/tasks/{task.pk}/{action}/", {"lock_token": "whatever"})
        assert response.status_code == 409, action
        assert "pending" in response.data["detail"]


def test_heartbeat_extends_the_lock(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    before = timezone.now()
    response = post(operator, f"/api/tasks/{task.pk}/heartbeat/", {"lock_token": task.lock_token, "lock_timeout": 900})
    assert response.status_code == 200
    until = at(response.data["locked_until"])
    assert response.data["id"] == task.pk
    assert before + timedelta(seconds=899) < until <= timezone.now() + timedelta(seconds=900)
    assert Task.objects.get(pk=task.pk).locked_until == until
    # Without lock_timeout: the stage's.
    default = post(operator, f"/api/tasks/{task.pk}/heartbeat/", {"lock_token": task.lock_token})
    assert default.status_code == 200
    assert at(default.data["locked_until"]) <= timezone.now() + timedelta(seconds=world["review"].lock_timeout)
    assert kinds(task.pk)[-2:] == ["lock_extended", "lock_extended"]


def test_heartbeat_with_a_bad_lock_timeout_answers_400(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    cases: list[tuple[Any, str | None]] = [
        ({"lock_token": task.lock_token, "lock_timeout": bad}, "lock_timeout")
        for bad in (0, -5, "long", 7 * 24 * 3600 + 1)
    ]
    assert_refused(operator, f"/api/tasks/{task.pk}/heartbeat/", [*cases, ({}, "lock_token")])


# -- bulk complete ---------------------------------------------------------------------------


def test_bulk_complete_answers_one_result_per_item(world: dict[str, Stage], operator: APIClient) -> None:
    for _ in range(3):
        create(world["review"])
    a, b, c = task_claim(stage=world["review"], worker_id="w", limit=3)
    body = {
        "tasks": [
            {"id": a.pk, "lock_token": a.lock_token, "send": [{"type": "approved"}]},
            {"id": b.pk, "lock_token": "wrong"},
            {"id": c.pk, "lock_token": c.lock_token},
            {"id": 999_999, "lock_token": "x"},
        ]
    }
    response = post(operator, "/api/tasks/bulk-complete/", body)
    assert response.status_code == 200, response.content
    results = response.data["results"]
    assert [(r["id"], r["status"]) for r in results] == [
        (a.pk, "completed"),
        (b.pk, "lock_lost"),
        (c.pk, "completed"),
        (999_999, "lock_lost"),
    ]
    kids = Task.objects.filter(parent_id=a.pk)
    assert sorted(results[0]["sent"]) == sorted(k.pk for k in kids)
    assert {k.stage.slug for k in kids} == {"ship", "audit"}
    assert dict(Task.objects.filter(pk__in=[a.pk, b.pk, c.pk]).values_list("id", "status")) == {
        a.pk: "completed",
        b.pk: "locked",
        c.pk: "completed",
    }


def test_bulk_complete_reports_an_unrouted_send_on_its_item_and_completes_the_others(
    world: dict[str, Stage], operator: APIClient
) -> None:
    for _ in range(2):
        create(world["review"])
    a, b = task_claim(stage=world["review"], worker_id="w", limit=2)
    body = {
        "tasks": [
            {"id": a.pk, "lock_token": a.lock_token, "send": [{"type": "approved"}]},
            {"id": b.pk, "lock_token": b.lock_token, "send": [{"type": "maybe"}]},
        ]
    }
    response = post(operator, "/api/tasks/bulk-complete/", body)
    assert response.status_code == 200
    first, second = response.data["results"]
    assert first["status"] == "completed" and len(first["sent"]) == 2
    assert second["status"] == "error" and "maybe" in second["error"]
    assert Task.objects.get(pk=b.pk).status == "locked"
    assert not Task.objects.filter(parent_id=b.pk).exists()


def test_bulk_complete_with_bad_input_answers_400_and_changes_nothing(
    world: dict[str, Stage], operator: APIClient
) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    held = {"id": task.pk, "lock_token": task.lock_token}
    bodies = [
        {"tasks": []},
        {},
        {"tasks": [held, {"lock_token": "t"}]},
        {"tasks": [held, {"id": task.pk}]},
        {"tasks": [held, {"id": 0, "lock_token": "t"}]},
        {"tasks": [{**held, "send": [{"type": "approved", "payload": "no"}]}]},
        {"tasks": [held] * 1001},
    ]
    assert_refused(operator, "/api/tasks/bulk-complete/", [(body, "tasks") for body in bodies])


def test_bulk_complete_with_an_oversized_send_payload_answers_413(
    world: dict[str, Stage], operator: APIClient, settings: Any
) -> None:
    settings.TASKS_MAX_PAYLOAD_BYTES = 100
    create(world["review"])
    task = claim_one(world["review"])
    item = {
        "id": task.pk,
        "lock_token": task.lock_token,
        "send": [{"type": "approved", "payload": payload_of_size(101)}],
    }
    with nothing_written():
        assert post(operator, "/api/tasks/bulk-complete/", {"tasks": [item]}).status_code == 413


# -- retry -------------------------------------------------------------------------------------


def test_retry_sends_a_completed_task_back_to_pending(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["review"])
    task = claim_one(world["review"])
    task_complete(task_id=task.pk, lock_token=task.lock_token)
    response = post(operator, f"/api/tasks/{task.pk}/retry/")
    assert response.status_code == 200
    assert response.data["status"] == "pending" and response.data["completed_at"] is None
    event = TaskEvent.objects.filter(task_id=task.pk).latest("id")
    assert (event.kind, event.actor, event.details["previous_status"]) == ("retried", "user:operator", "completed")


def test_retry_sends_a_failed_task_back_to_pending(world: dict[str, Stage], operator: APIClient) -> None:
    world["review"].max_attempts = 1
    world["review"].save()
    create(world["review"])
    task = claim_one(world["review"])
    post(operator, f"/api/tasks/{task.pk}/release/", {"lock_token": task.lock_token})
    assert Task.objects.get(pk=task.pk).status == "failed"
    response = post(operator, f"/api/tasks/{task.pk}/retry/")
    assert response.status_code == 200 and response.data["status"] == "pending"
    assert response.data["attempts"] == 1 and response.data["last_error"] == ""


def test_retry_of_a_pending_or_locked_task_answers_409(world: dict[str, Stage], operator: APIClient) -> None:
    task = create(world["review"])
    for status in ("pending", "locked"):
        if status == "locked":
            claim_one(world["review"])
        with nothing_written():
            response = post(operator, f"/api/tasks/{task.pk}/retry/")
        assert response.status_code == 409, status
        assert status in response.data["detail"]


# -- a remote worker's round trip ----------------------------------------------------------------


def test_remote_worker_round_trip_create_claim_heartbeat_complete_with_send(
    world: dict[str, Stage], operator: APIClient
) -> None:
    created = post(operator, "/api/tasks/", {"stage": "review", "type": "order", "payload": {"customer_id": 7}})
    assert created.status_code == 201
    task_id = created.data["id"]

    claimed = post(operator, "/api/stages/review/claim/", {"limit": 10, "lock_timeout": 60})
    assert claimed.status_code == 200
    [job] = claimed.data
    assert job["id"] == task_id and job["status"] == "locked" and len(job["lock_token"]) == 32
    assert job["locked_by"] == "api:operator"

    beat = post(operator, f"/api/tasks/{task_id}/heartbeat/", {"lock_token": job["lock_token"], "lock_timeout": 120})
    assert beat.status_code == 200
    assert at(beat.data["locked_until"]) > at(job["locked_until"])

    done = post(
        operator,
        f"/api/tasks/{task_id}/complete/",
        {"lock_token": job["lock_token"], "send": [{"type": "approved", "payload": {"customer_id": 7, "ok": True}}]},
    )
    assert done.status_code == 200
    assert sorted(t["stage"] for t in done.data) == ["audit", "ship"]

    successors = get(operator, "/api/tasks/", {"parent": task_id, "ordering": "id"}).data["results"]
    assert ids(successors) == ids(done.data)
    assert all(t["status"] == "pending" and t["source_stage"] == "review" for t in successors)
    assert all(t["payload"] == {"customer_id": 7, "ok": True} for t in successors)
    assert get(operator, f"/api/tasks/{task_id}/").data["status"] == "completed"
    events = get(operator, f"/api/tasks/{task_id}/events/").data
    assert [e["kind"] for e in events] == ["created", "lock_extended", "completed"]
    assert events[-1]["details"]["attempt"] == 1 and events[-1]["details"]["claimed_at"] is not None
    assert sorted(events[-1]["details"]["sent"]) == sorted(ids(done.data))

    # The successors are claimable where they landed.
    [shipped] = post(operator, "/api/stages/ship/claim/", {}).data
    assert shipped["parent"] == task_id
