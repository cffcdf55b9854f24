"""Sending tasks along transitions: wildcard and typed filters, fan-out, the no-match error."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import NoRouteError, task_claim, task_complete, task_create, task_send


def test_wildcard_transition_passes_any_type(world: dict[str, Stage]) -> None:
    created = task_send(stage=world["intake"], type="anything-at-all", payload={"n": 1})
    assert [(t.stage.slug, t.type, t.payload) for t in created] == [("review", "anything-at-all", {"n": 1})]
    task = Task.objects.get(pk=created[0].pk)
    assert task.status == Task.Status.PENDING
    assert task.source_stage == world["intake"]
    assert task.parent is None


def test_typed_transition_fans_out_to_every_match(world: dict[str, Stage]) -> None:
    created = task_send(stage=world["review"], type="approved", payload={"n": 2})
    assert sorted(t.stage.slug for t in created) == ["audit", "ship"]
    # Each copy is its own row with its own history.
    assert TaskEvent.objects.filter(task__in=created, kind="created").count() == 2


def test_type_match_is_exact_and_case_sensitive(world: dict[str, Stage]) -> None:
    with pytest.raises(NoRouteError):
        task_send(stage=world["review"], type="Approved", payload={})
    with pytest.raises(NoRouteError):
        task_send(stage=world["review"], type="approved ", payload={})


def test_no_match_names_stage_type_and_accepted_types_and_creates_nothing(world: dict[str, Stage]) -> None:
    before = Task.objects.count()
    with pytest.raises(NoRouteError) as info:
        task_send(stage=world["review"], type="refund", payload={})
    message = str(info.value)
    assert "review" in message and "refund" in message
    assert "approved" in message and "declined" in message
    assert info.value.accepted == ["approved", "declined"]
    assert Task.objects.count() == before


def test_stage_without_transitions_says_so(world: dict[str, Stage]) -> None:
    with pytest.raises(NoRouteError, match="no outgoing transitions"):
        task_send(stage=world["ship"], type="x", payload={})


def test_blank_and_typed_transitions_to_the_same_target_both_fire(world: dict[str, Stage]) -> None:
    Transition.objects.create(source=world["review"], target=world["ship"], task_type="")
    created = task_send(stage=world["review"], type="approved", payload={})
    assert sorted(t.stage.slug for t in created) == ["audit", "ship", "ship"]


def test_completion_sends_with_parent_and_source_stage(review: Stage, pending_task: Task) -> None:
    [claimed] = task_claim(stage=review, worker_id="w1")
    successors = task_complete(task_id=claimed.pk, lock_token=claimed.lock_token, send=[("declined", {"why": "x"})])
    [child] = successors
    child.refresh_from_db()
    assert child.stage.slug == "notify"
    assert child.parent_id == pending_task.pk
    assert child.source_stage == review
    assert child.payload == {"why": "x"}
    assert child.status == Task.Status.PENDING


def test_payload_copies_are_independent(world: dict[str, Stage]) -> None:
    created = task_send(stage=world["review"], type="approved", payload={"n": 1})
    Task.objects.filter(pk=created[0].pk).update(payload={"n": 99})
    assert Task.objects.get(pk=created[1].pk).payload == {"n": 1}


@pytest.mark.parametrize(
    ("task_type", "payload", "field"),
    [
        ("order", [1, 2], "payload"),
        ("order", "text", "payload"),
        ("order", None, "payload"),
        ("order", 5, "payload"),
        ("order", {"x": float("nan")}, "payload"),
        ("order", {"x": object()}, "payload"),
        ("", {}, "type"),
        ("   ", {}, "type"),
        ("x" * 101, {}, "type"),
        (None, {}, "type"),
    ],
)
def test_bad_input_is_rejected_with_a_field_message_and_writes_nothing(
    world: dict[str, Stage], task_type: object, payload: object, field: str
) -> None:
    before = (Task.objects.count(), TaskEvent.objects.count())
    with pytest.raises(ValidationError) as info:
        task_create(stage=world["review"], type=task_type, payload=payload)  # type: ignore[arg-type]
    assert field in info.value.message_dict
    with pytest.raises(ValidationError):
        task_send(stage=world["intake"], type=task_type, payload=payload)  # type: ignore[arg-type]
    assert (Task.objects.count(), TaskEvent.objects.count()) == before


def test_type_of_exactly_100_characters_is_accepted(review: Stage) -> None:
    task = task_create(stage=review, type="t" * 100, payload={})
    assert Task.objects.get(pk=task.pk).type == "t" * 100


def test_database_refuses_a_non_object_payload_even_without_the_service(review: Stage) -> None:
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.create(stage=review, type="raw", payload=[1, 2, 3])
    assert not Task.objects.filter(type="raw").exists()
