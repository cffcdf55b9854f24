"""REST API for stages and transitions, and the two stage-level task verbs: send and claim.

Every refused request is checked to write nothing (tests.support.world.nothing_written).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import task_claim, task_complete
from tests.support.api import assert_refused, ids, payload_of_size, post, raw_post
from tests.support.world import claim_one, create, nothing_written

# -- stages --------------------------------------------------------------------------------


def test_stage_list_and_detail(world: dict[str, Stage], viewer: APIClient) -> None:
    response = viewer.get("/api/stages/")
    assert response.status_code == 200
    assert response.data["count"] == 5
    assert [s["slug"] for s in response.data["results"]] == ["audit", "intake", "notify", "review", "ship"]
    detail = viewer.get("/api/stages/review/")
    assert detail.status_code == 200
    assert detail.data["slug"] == "review" and detail.data["kind"] == "script"
    assert detail.data["handler"] == "tests.handlers.approve_small"
    assert {"lock_timeout", "max_attempts", "max_run_time", "is_paused", "created_at"} <= set(detail.data)


def test_unknown_stage_answers_404(world: dict[str, Stage], admin: APIClient) -> None:
    assert admin.get("/api/stages/nowhere/").status_code == 404
    with nothing_written():
        assert admin.patch("/api/stages/nowhere/", {"name": "x"}, format="json").status_code == 404
        assert admin.delete("/api/stages/nowhere/").status_code == 404


def test_create_stage(world: dict[str, Stage], admin: APIClient) -> None:
    body = {
        "slug": "pack",
        "name": "Pack",
        "kind": "job",
        "lock_timeout": 30,
        "max_attempts": 3,
        "schedule": "0 2 * * *",
    }
    response = post(admin, "/api/stages/", body)
    assert response.status_code == 201, response.content
    stage = Stage.objects.get(slug="pack")
    assert (stage.name, stage.kind, stage.lock_timeout, stage.max_attempts) == ("Pack", "job", 30, 3)
    assert stage.schedule == "0 2 * * *"
    assert stage.is_paused is False
    assert response.data["slug"] == "pack"


def test_create_stage_with_bad_input_answers_400_and_writes_nothing(world: dict[str, Stage], admin: APIClient) -> None:
    cases: list[tuple[Any, str | None]] = [
        ({"slug": "review", "name": "Again"}, "slug"),
        ({"slug": "nightly", "name": "N", "kind": "job"}, "schedule"),
        ({"slug": "nightly", "name": "N", "kind": "job", "schedule": "61 * * * *"}, "schedule"),
        ({"slug": "nightly", "name": "N", "kind": "script", "schedule": "0 2 * * *"}, "schedule"),
        ({"slug": "nightly", "name": "N", "kind": "form", "groups": ["no-such-group"]}, "groups"),
        ({"slug": "has space", "name": "X"}, "slug"),
        ({"name": "X"}, "slug"),
        ({"slug": "x"}, "name"),
        ({"slug": "x", "name": "X", "kind": "robot"}, "kind"),
        ({"slug": "x", "name": "X", "lock_timeout": 0}, "lock_timeout"),
        ({"slug": "x", "name": "X", "max_attempts": 0}, "max_attempts"),
        ({"slug": "x", "name": "X", "created_at": "2020-01-01T00:00:00Z", "lock_timeout": "soon"}, "lock_timeout"),
    ]
    assert_refused(admin, "/api/stages/", cases)


def test_patch_stage_pauses_it_and_claims_then_give_nothing(world: dict[str, Stage], admin: APIClient) -> None:
    create(world["review"])
    response = admin.patch("/api/stages/review/", {"is_paused": True, "lock_timeout": 45}, format="json")
    assert response.status_code == 200
    assert response.data["is_paused"] is True
    stage = Stage.objects.get(slug="review")
    assert stage.is_paused and stage.lock_timeout == 45
    with nothing_written():
        claimed = post(admin, "/api/stages/review/claim/", {"limit": 10})
    assert claimed.status_code == 200 and claimed.data == []


def test_patch_stage_with_a_bad_value_answers_400_and_changes_nothing(
    world: dict[str, Stage], admin: APIClient
) -> None:
    with nothing_written():
        response = admin.patch("/api/stages/review/", {"lock_timeout": 0, "name": "Renamed"}, format="json")
    assert response.status_code == 400 and "lock_timeout" in response.data


def test_put_is_not_offered(world: dict[str, Stage], admin: APIClient) -> None:
    with nothing_written():
        assert admin.put("/api/stages/review/", {"slug": "review", "name": "R"}, format="json").status_code == 405


def test_delete_stage_without_tasks_removes_it_and_its_transitions(world: dict[str, Stage], admin: APIClient) -> None:
    assert admin.delete("/api/stages/notify/").status_code == 204
    assert not Stage.objects.filter(slug="notify").exists()
    assert not Transition.objects.filter(target__slug="notify").exists()


def test_delete_stage_removes_its_finished_tasks_and_their_history(world: dict[str, Stage], admin: APIClient) -> None:
    create(world["ship"])
    done = claim_one(world["ship"])
    task_complete(task_id=done.pk, lock_token=done.lock_token)
    elsewhere = create(world["intake"])
    assert admin.delete("/api/stages/ship/").status_code == 204
    assert list(Task.objects.values_list("id", flat=True)) == [elsewhere.pk]
    assert not TaskEvent.objects.filter(task_id=done.pk).exists()


def test_delete_stage_with_pending_or_locked_tasks_answers_409_and_deletes_nothing(
    world: dict[str, Stage], admin: APIClient
) -> None:
    create(world["ship"])
    for status in ("pending", "locked"):
        if status == "locked":
            claim_one(world["ship"])
        with nothing_written():
            response = admin.delete("/api/stages/ship/")
        assert response.status_code == 409, status
        assert "pending or locked" in response.data["detail"]


# -- transitions -----------------------------------------------------------------------------


def test_transition_list_and_detail_name_stages_by_slug(world: dict[str, Stage], viewer: APIClient) -> None:
    response = viewer.get("/api/transitions/")
    assert response.status_code == 200
    rows = [(t["source"], t["target"], t["task_type"]) for t in response.data["results"]]
    assert rows == [
        ("intake", "review", ""),
        ("review", "ship", "approved"),
        ("review", "notify", "declined"),
        ("review", "audit", "approved"),
    ]
    first = response.data["results"][0]
    assert viewer.get(f"/api/transitions/{first['id']}/").data == first
    assert viewer.get("/api/transitions/999999/").status_code == 404


def test_create_transition_by_stage_slugs_routes_sends(world: dict[str, Stage], admin: APIClient) -> None:
    response = post(admin, "/api/transitions/", {"source": "ship", "target": "notify", "task_type": "shipped"})
    assert response.status_code == 201, response.content
    transition = Transition.objects.get(pk=response.data["id"])
    assert (transition.source.slug, transition.target.slug, transition.task_type) == ("ship", "notify", "shipped")
    sent = post(admin, "/api/stages/ship/send/", {"type": "shipped"})
    assert sent.status_code == 201 and [t["stage"] for t in sent.data] == ["notify"]


def test_create_transition_without_task_type_makes_a_catch_all(world: dict[str, Stage], admin: APIClient) -> None:
    # The model documents a blank task_type as "passes every type"; leaving it
    # out of the request should mean the same, not "This field is required".
    response = post(admin, "/api/transitions/", {"source": "ship", "target": "notify"})
    assert response.status_code == 201, response.content
    assert Transition.objects.get(pk=response.data["id"]).task_type == ""


def test_create_transition_with_bad_input_answers_400_and_writes_nothing(
    world: dict[str, Stage], admin: APIClient
) -> None:
    cases: list[tuple[Any, str | None]] = [
        ({"source": "nowhere", "target": "ship", "task_type": ""}, "source"),
        ({"source": "ship", "target": "nowhere", "task_type": ""}, "target"),
        ({"target": "ship", "task_type": ""}, "source"),
        ({"source": "review", "target": "ship", "task_type": "approved"}, "non_field_errors"),
        ({"source": "ship", "target": "notify", "task_type": "x" * 101}, "task_type"),
    ]
    assert_refused(admin, "/api/transitions/", cases)


def test_patch_transition_retargets_it(world: dict[str, Stage], admin: APIClient) -> None:
    transition = Transition.objects.get(source__slug="review", target__slug="notify")
    response = admin.patch(f"/api/transitions/{transition.pk}/", {"target": "audit", "task_type": "x"}, format="json")
    assert response.status_code == 200
    transition.refresh_from_db()
    assert (transition.target.slug, transition.task_type) == ("audit", "x")
    with nothing_written():
        bad = admin.patch(f"/api/transitions/{transition.pk}/", {"target": "nowhere"}, format="json")
        assert bad.status_code == 400
        duplicate = admin.patch(f"/api/transitions/{transition.pk}/", {"task_type": "approved"}, format="json")
        assert duplicate.status_code == 400


def test_delete_transition(world: dict[str, Stage], admin: APIClient) -> None:
    transition = Transition.objects.get(source__slug="review", target__slug="notify")
    assert admin.delete(f"/api/transitions/{transition.pk}/").status_code == 204
    assert not Transition.objects.filter(pk=transition.pk).exists()
    assert admin.delete(f"/api/transitions/{transition.pk}/").status_code == 404


# -- send --------------------------------------------------------------------------------------


def test_send_creates_one_task_per_matching_transition(world: dict[str, Stage], operator: APIClient) -> None:
    response = post(operator, "/api/stages/review/send/", {"type": "approved", "payload": {"order": 1}})
    assert response.status_code == 201, response.content
    assert [(t["stage"], t["type"], t["payload"]) for t in response.data] == [
        ("ship", "approved", {"order": 1}),
        ("audit", "approved", {"order": 1}),
    ]
    assert {(t["status"], t["source_stage"], t["parent"]) for t in response.data} == {("pending", "review", None)}
    events = TaskEvent.objects.filter(task_id__in=ids(response.data))
    assert {(e.kind, e.actor, e.details["from_stage"]) for e in events} == {("created", "user:operator", "review")}


def test_send_through_a_catch_all_transition_takes_any_type(world: dict[str, Stage], operator: APIClient) -> None:
    response = post(operator, "/api/stages/intake/send/", {"type": "anything"})
    assert response.status_code == 201
    [task] = response.data
    assert (task["stage"], task["payload"]) == ("review", {})


def test_send_of_an_unrouted_type_answers_400_naming_the_accepted_types(
    world: dict[str, Stage], operator: APIClient
) -> None:
    with nothing_written():
        response = post(operator, "/api/stages/review/send/", {"type": "maybe"})
    assert response.status_code == 400
    assert response.data["accepted_types"] == ["approved", "declined"]
    assert "maybe" in str(response.data["type"])


def test_send_from_a_stage_without_transitions_answers_400_with_no_accepted_types(
    world: dict[str, Stage], operator: APIClient
) -> None:
    with nothing_written():
        response = post(operator, "/api/stages/ship/send/", {"type": "done"})
    assert response.status_code == 400
    assert response.data["accepted_types"] == []


def test_send_with_bad_input_answers_400_and_writes_nothing(world: dict[str, Stage], operator: APIClient) -> None:
    cases: list[tuple[Any, str | None]] = [
        ({}, "type"),
        ({"type": ""}, "type"),
        ({"type": "x" * 101}, "type"),
        ({"type": "approved", "payload": [1]}, "payload"),
        ({"type": "approved", "payload": "x"}, "payload"),
    ]
    assert_refused(operator, "/api/stages/review/send/", cases)


def test_send_with_an_oversized_payload_answers_413(
    world: dict[str, Stage], operator: APIClient, settings: Any
) -> None:
    settings.TASKS_MAX_PAYLOAD_BYTES = 100
    assert (
        post(operator, "/api/stages/review/send/", {"type": "approved", "payload": payload_of_size(100)}).status_code
        == 201
    )
    with nothing_written():
        response = post(operator, "/api/stages/review/send/", {"type": "approved", "payload": payload_of_size(101)})
    assert response.status_code == 413


def test_send_and_claim_on_an_unknown_stage_answer_404(world: dict[str, Stage], operator: APIClient) -> None:
    for verb in ("send", "claim"):
        assert_refused(operator, f"/api/stages/nowhere/{verb}/", [({"type": "t"}, None)], status=404)


def test_send_and_claim_with_a_body_that_does_not_parse_answer_400(
    world: dict[str, Stage], operator: APIClient
) -> None:
    create(world["review"])
    for verb in ("send", "claim"):
        with nothing_written():
            assert raw_post(operator, f"/api/stages/review/{verb}/", '{"type": ').status_code == 400, verb


# -- claim -------------------------------------------------------------------------------------


def test_claim_takes_one_task_by_default_oldest_first_with_its_lock_token(
    world: dict[str, Stage], operator: APIClient
) -> None:
    first, second = create(world["review"]), create(world["review"])
    response = post(operator, "/api/stages/review/claim/", {})
    assert response.status_code == 200
    [task] = response.data
    stored = Task.objects.get(pk=first.pk)
    assert task["id"] == first.pk and task["lock_token"] == stored.lock_token and len(task["lock_token"]) == 32
    assert task["status"] == "locked" and task["attempts"] == 1 and task["locked_by"] == "api:operator"
    assert task["stage"] == "review"
    assert Task.objects.get(pk=second.pk).status == "pending"


def test_claim_takes_up_to_limit_tasks_with_the_given_lock_timeout(
    world: dict[str, Stage], operator: APIClient
) -> None:
    made = [create(world["review"]).pk for _ in range(4)]
    before = timezone.now()
    response = post(operator, "/api/stages/review/claim/", {"limit": 3, "lock_timeout": 600})
    assert response.status_code == 200
    assert ids(response.data) == made[:3]
    assert len({t["lock_token"] for t in response.data}) == 3
    for task in response.data:
        until = parse_datetime(task["locked_until"])
        assert until is not None and before + timedelta(seconds=599) < until <= timezone.now() + timedelta(seconds=600)
    assert ids(post(operator, "/api/stages/review/claim/", {"limit": 1000}).data) == made[3:]


def test_claimed_successors_show_their_source_stage_and_parent(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["review"])
    [parent] = task_claim(stage=world["review"], worker_id="w")
    task_complete(task_id=parent.pk, lock_token=parent.lock_token, send=[("declined", {"why": "no"})])
    [task] = post(operator, "/api/stages/notify/claim/", {}).data
    assert (task["parent"], task["source_stage"], task["payload"]) == (parent.pk, "review", {"why": "no"})


def test_claim_with_nothing_claimable_answers_an_empty_list(world: dict[str, Stage], operator: APIClient) -> None:
    create(world["intake"])
    create(world["review"])
    claim_one(world["review"])
    with nothing_written():
        response = post(operator, "/api/stages/review/claim/", {"limit": 5})
    assert response.status_code == 200 and response.data == []


def test_claim_with_a_bad_limit_or_lock_timeout_answers_400_and_claims_nothing(
    world: dict[str, Stage], operator: APIClient
) -> None:
    create(world["review"])
    cases: list[tuple[Any, str | None]] = [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"limit": None}, "limit"),
        ({"lock_timeout": 0}, "lock_timeout"),
        ({"lock_timeout": "x"}, "lock_timeout"),
        ({"lock_timeout": 7 * 24 * 3600 + 1}, "lock_timeout"),
    ]
    assert_refused(operator, "/api/stages/review/claim/", cases)
