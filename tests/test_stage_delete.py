"""Deleting a stage: one policy (services.stages.stage_delete) for the REST API and the admin.

Refused while the stage has pending or locked tasks; otherwise its finished
(completed, failed, cancelled) tasks and their history go with it. The admin used to refuse any stage that
ever had a task (Task.stage is PROTECT) while the API deleted it.
"""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import TaskStateError, task_claim, task_complete, task_create, task_fail
from tasks_app.services import stages as stage_services
from tasks_app.services.cancel import task_cancel
from tasks_app.services.stages import stage_delete, stage_delete_refusal

REFUSAL = "still has pending or locked tasks"


def finished_tasks(stage: Stage) -> list[int]:
    """One completed and one failed task at the stage (their ids)."""
    ids = []
    for _ in range(2):
        ids.append(task_create(stage=stage, type="t", payload={}).pk)
    done, broken = task_claim(stage=stage, worker_id="w", limit=2)
    task_complete(task_id=done.pk, lock_token=done.lock_token)
    task_fail(task_id=broken.pk, lock_token=broken.lock_token, error="x")
    return ids


def counts() -> tuple[int, int, int, int]:
    return Stage.objects.count(), Task.objects.count(), TaskEvent.objects.count(), Transition.objects.count()


def admin_delete_url(stage: Stage) -> str:
    return f"/admin/tasks_app/stage/{stage.pk}/delete/"


# -- the service --------------------------------------------------------------------------


def test_service_deletes_the_stage_its_finished_tasks_their_history_and_its_transitions(
    world: dict[str, Stage],
) -> None:
    ids = finished_tasks(world["review"])
    elsewhere = task_create(stage=world["ship"], type="t", payload={})
    assert stage_delete(stage=world["review"]) == 2
    assert not Stage.objects.filter(slug="review").exists()
    assert list(Task.objects.values_list("id", flat=True)) == [elsewhere.pk]
    assert not TaskEvent.objects.filter(task_id__in=ids).exists()
    assert not Transition.objects.filter(source__slug="review").exists()
    assert not Transition.objects.filter(target__slug="review").exists()


@pytest.mark.parametrize("status", ["pending", "locked"])
def test_service_refuses_while_a_task_is_pending_or_locked_and_deletes_nothing(
    world: dict[str, Stage], status: str
) -> None:
    finished_tasks(world["ship"])
    task_create(stage=world["ship"], type="t", payload={})
    if status == "locked":
        task_claim(stage=world["ship"], worker_id="w")
    before = counts()
    with pytest.raises(TaskStateError, match=REFUSAL):
        stage_delete(stage=world["ship"])
    assert counts() == before


def test_a_task_arriving_after_the_check_is_not_deleted_with_the_finished_ones(
    world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check sees no live task (as if the pending one were created right after it): only
    # finished tasks are deleted, so the new task keeps the stage (PROTECT) and all rolls back.
    finished_tasks(world["ship"])
    task_create(stage=world["ship"], type="t", payload={})
    monkeypatch.setattr(stage_services, "LIVE", [])
    before = counts()
    with pytest.raises(TaskStateError, match=REFUSAL):
        stage_delete(stage=world["ship"])
    assert counts() == before


# -- the API and the admin call it -----------------------------------------------------------


def test_api_and_admin_refuse_a_stage_with_live_tasks_with_the_same_reason(
    world: dict[str, Stage], admin: APIClient, admin_client: Client
) -> None:
    task_create(stage=world["ship"], type="t", payload={})
    before = counts()
    api = admin.delete("/api/stages/ship/")
    assert api.status_code == 409 and REFUSAL in api.data["detail"]
    page = admin_client.get(admin_delete_url(world["ship"]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Cannot delete" in html and api.data["detail"].replace("'", "&#x27;") in html
    posted = admin_client.post(admin_delete_url(world["ship"]), {"post": "yes"})
    assert posted.status_code == 200 and "Cannot delete" in posted.content.decode()
    assert counts() == before


def test_admin_deletes_a_stage_with_finished_tasks_as_the_api_does(
    world: dict[str, Stage], admin_client: Client
) -> None:
    ids = finished_tasks(world["review"])
    page = admin_client.get(admin_delete_url(world["review"]))
    html = page.content.decode()
    assert page.status_code == 200 and "Cannot delete" not in html
    assert "2 finished tasks (with their history)" in html and "4 transitions" in html
    response = admin_client.post(admin_delete_url(world["review"]), {"post": "yes"})
    assert response.status_code == 302
    assert not Stage.objects.filter(slug="review").exists()
    assert not Task.objects.filter(pk__in=ids).exists()
    assert not TaskEvent.objects.filter(task_id__in=ids).exists()


def test_admin_delete_losing_the_race_to_a_new_task_shows_a_message_and_deletes_nothing(
    world: dict[str, Stage], admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The confirmation check passed; by the time of the delete a task had arrived.
    finished_tasks(world["ship"])
    task_create(stage=world["ship"], type="t", payload={})
    monkeypatch.setattr("tasks_app.admin.stage_delete_refusal", lambda stage: "")
    before = counts()
    response = admin_client.post(admin_delete_url(world["ship"]), {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert any(REFUSAL in str(m) for m in response.context["messages"])
    assert counts() == before


def test_admin_bulk_delete_is_all_or_nothing(world: dict[str, Stage], admin_client: Client) -> None:
    finished_tasks(world["ship"])
    task_create(stage=world["notify"], type="t", payload={})
    chosen = [str(world["ship"].pk), str(world["notify"].pk)]
    form = {"action": "delete_selected", "_selected_action": chosen, "post": "yes"}
    before = counts()
    refused = admin_client.post("/admin/tasks_app/stage/", form)
    assert refused.status_code == 200 and REFUSAL in refused.content.decode()
    assert counts() == before
    Task.objects.filter(stage=world["notify"]).delete()
    response = admin_client.post("/admin/tasks_app/stage/", form)
    assert response.status_code == 302
    assert not Stage.objects.filter(slug__in=["ship", "notify"]).exists()
    assert not Task.objects.filter(stage__slug__in=["ship", "notify"]).exists()


# -- cancelled tasks are finished too ------------------------------------------------------------


def cancelled_tasks(stage: Stage) -> list[int]:
    """Two cancelled tasks at the stage (one at once, one by a request its completion obeyed): their ids."""
    at_once = task_create(stage=stage, type="t", payload={})
    task_cancel(task_id=at_once.pk, actor="user:ann")
    task_create(stage=stage, type="t", payload={})
    [held] = task_claim(stage=stage, worker_id="w")
    task_cancel(task_id=held.pk, actor="user:ann")
    task_complete(task_id=held.pk, lock_token=held.lock_token)
    assert set(Task.objects.filter(stage=stage).values_list("status", flat=True)) == {"cancelled"}
    return [at_once.pk, held.pk]


def test_service_deletes_a_stage_whose_tasks_are_all_cancelled(world: dict[str, Stage]) -> None:
    ids = cancelled_tasks(world["ship"])
    assert stage_delete_refusal(world["ship"]) == ""
    assert stage_delete(stage=world["ship"]) == 2
    assert not Stage.objects.filter(slug="ship").exists()
    assert not Task.objects.filter(pk__in=ids).exists()
    assert not TaskEvent.objects.filter(task_id__in=ids).exists()


def test_api_deletes_a_stage_whose_tasks_are_all_cancelled(world: dict[str, Stage], admin: APIClient) -> None:
    ids = cancelled_tasks(world["ship"])
    response = admin.delete("/api/stages/ship/")
    assert response.status_code == 204, getattr(response, "data", None)
    assert not Stage.objects.filter(slug="ship").exists()
    assert not Task.objects.filter(pk__in=ids).exists()


def test_admin_counts_and_deletes_a_stage_whose_tasks_are_all_cancelled(
    world: dict[str, Stage], admin_client: Client
) -> None:
    ids = cancelled_tasks(world["ship"])
    html = admin_client.get(admin_delete_url(world["ship"])).content.decode()
    assert "Cannot delete" not in html and "2 finished tasks (with their history)" in html
    response = admin_client.post(admin_delete_url(world["ship"]), {"post": "yes"})
    assert response.status_code == 302
    assert not Stage.objects.filter(slug="ship").exists()
    assert not Task.objects.filter(pk__in=ids).exists()
