"""services.tasks_complete_each: the one "batch refused, complete item by item" policy (worker and API)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError

from tasks_app.models import Stage, Task
from tasks_app.services import (
    Completion,
    NoRouteError,
    task_claim,
    task_create,
    tasks_complete_each,
)
from tasks_app.services import complete as complete_services

SCHEMA = {"type": "object", "properties": {"amount": {"type": "integer", "minimum": 1}}}


@pytest.fixture
def claimed(world: dict[str, Stage]) -> list[Task]:
    """Three tasks locked at review, whose "approved" sends are held to SCHEMA."""
    world["review"].schemas = {"approved": SCHEMA}
    world["review"].save()
    for _ in range(3):
        task_create(stage=world["review"], type="order", payload={})
    return task_claim(stage=world["review"], worker_id="w", limit=3)


def items(tasks: list[Task], sends: list[list[tuple[str, dict[str, Any]]]]) -> list[Completion]:
    return [Completion(t.pk, t.lock_token, s) for t, s in zip(tasks, sends, strict=True)]


def test_a_batch_that_goes_through_completes_every_item_with_its_own_successors(claimed: list[Task]) -> None:
    sends = [[("approved", {"amount": 1})], [("declined", {})], []]
    outcomes = list(tasks_complete_each(items=items(claimed, sends)))
    assert [(o.task_id, o.status) for o in outcomes] == [(t.pk, "completed") for t in claimed]
    assert [len(o.successors) for o in outcomes] == [2, 1, 0]  # approved goes to ship and audit
    assert all(child.parent_id == o.task_id for o in outcomes for child in o.successors)


def test_an_unrouted_and_a_schema_breaking_send_fail_alone_and_stay_locked(claimed: list[Task]) -> None:
    sends = [[("maybe", {})], [("approved", {"amount": 1})], [("approved", {"amount": 0})]]
    outcomes = list(tasks_complete_each(items=items(claimed, sends)))
    assert [o.status for o in outcomes] == ["refused", "completed", "refused"]
    assert isinstance(outcomes[0].error, NoRouteError) and isinstance(outcomes[2].error, ValidationError)
    statuses = dict(Task.objects.filter(pk__in=[t.pk for t in claimed]).values_list("id", "status"))
    assert [statuses[t.pk] for t in claimed] == ["locked", "completed", "locked"]
    assert not Task.objects.filter(parent_id__in=[claimed[0].pk, claimed[2].pk]).exists()


def test_a_wrong_token_is_reported_as_lock_lost(claimed: list[Task]) -> None:
    batch = items(claimed, [[], [], []])
    batch[1] = Completion(claimed[1].pk, "not-the-token", [])
    assert [o.status for o in tasks_complete_each(items=batch)] == ["completed", "lock_lost", "completed"]


def test_each_outcome_is_yielded_once_written_so_a_database_error_leaves_the_earlier_ones_known(
    claimed: list[Task], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker clears an outcome when it is yielded; after an error it writes the rest again.
    real = complete_services.tasks_complete_batch
    calls = []

    def flaky(*, items: list[Completion], now: Any = None) -> Any:
        calls.append([i.task_id for i in items])
        if len(calls) == 3:  # the batch, the first item, then the second item fails
            raise DatabaseError("connection lost")
        return real(items=items, now=now)

    monkeypatch.setattr(complete_services, "tasks_complete_batch", flaky)
    sends = [[("approved", {"amount": 1})], [], [("maybe", {})]]
    seen = []
    with pytest.raises(DatabaseError):
        for outcome in tasks_complete_each(items=items(claimed, sends)):
            seen.append((outcome.task_id, outcome.status))
    assert seen == [(claimed[0].pk, "completed")]
    assert Task.objects.get(pk=claimed[0].pk).status == Task.Status.COMPLETED
