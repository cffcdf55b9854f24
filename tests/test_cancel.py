"""Cancel (issue 15): at once for pending and failed tasks, by request for locked ones, refused otherwise.

A completion after a cancel request ends the task cancelled and sends nothing, whichever
path completes it (one task, a batch, the pipelined completion + claim, the API).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, TaskEvent
from tasks_app.services import (
    Completion,
    TaskLockLost,
    TaskStateError,
    task_claim,
    task_complete,
    task_fail,
    task_release,
    tasks_complete_each,
    tasks_expire_locks,
)
from tasks_app.services import counters as stage_counters
from tasks_app.services.cancel import task_cancel
from tasks_app.services.complete import task_extend_lock_reporting, tasks_extend_locks_reporting
from tasks_app.services.pipeline import tasks_complete_and_claim
from tasks_app.services.retention import tasks_prune
from tests.support.api import get, post
from tests.support.pages import shown_messages
from tests.support.users import all_view_codenames, logged_in, make_user
from tests.support.world import claim_one, create, kinds, nothing_written

S = Task.Status
E = TaskEvent.Kind


def cancel_event(task_id: int) -> TaskEvent:
    return TaskEvent.objects.filter(task_id=task_id, kind=E.CANCELLED).get()


# -- at once: pending and failed ------------------------------------------------------------


def test_a_pending_task_is_cancelled_at_once_with_reason_and_actor(world: dict[str, Stage]) -> None:
    task = create(world["review"], amount=5)
    result = task_cancel(task_id=task.pk, actor="user:ann", reason="  customer withdrew  ")
    assert (result.outcome, result.cascaded) == ("cancelled", [])
    task.refresh_from_db()
    assert task.status == S.CANCELLED and task.completed_at is None and task.lock_token == ""
    assert kinds(task.pk) == ["created", "cancelled"]
    event = cancel_event(task.pk)
    assert event.actor == "user:ann"
    assert event.details == {"reason": "customer withdrew", "previous_status": "pending"}
    # Nobody claims it any more.
    assert task_claim(stage=world["review"], worker_id="w", limit=10) == []


def test_a_failed_task_is_cancelled_at_once(world: dict[str, Stage]) -> None:
    create(world["notify"])
    held = claim_one(world["notify"])
    task_fail(task_id=held.pk, lock_token=held.lock_token, error="ValueError: no")
    assert task_cancel(task_id=held.pk, actor="user:ann", reason="obsolete").outcome == "cancelled"
    held.refresh_from_db()
    assert held.status == S.CANCELLED
    assert cancel_event(held.pk).details["previous_status"] == "failed"


@pytest.mark.parametrize("state", ["completed", "cancelled"])
def test_finished_tasks_are_refused_and_nothing_changes(world: dict[str, Stage], state: str) -> None:
    task = create(world["ship"])
    if state == "completed":
        held = claim_one(world["ship"])
        task_complete(task_id=held.pk, lock_token=held.lock_token)
    else:
        task_cancel(task_id=task.pk, actor="user:ann")
    with nothing_written(), pytest.raises(TaskStateError, match=f"it is {state}"):
        task_cancel(task_id=task.pk, actor="user:bob", reason="again")


def test_an_unknown_task_is_refused(world: dict[str, Stage]) -> None:
    with nothing_written(), pytest.raises(TaskStateError, match="does not exist"):
        task_cancel(task_id=987654, actor="user:ann")


# -- by request: locked ----------------------------------------------------------------------


def test_a_locked_task_gets_a_request_and_a_second_request_is_refused(world: dict[str, Stage]) -> None:
    create(world["review"], amount=5)
    held = claim_one(world["review"], worker="w7")
    result = task_cancel(task_id=held.pk, actor="user:ann", reason="stop it")
    assert result.outcome == "requested"
    task = Task.objects.get(pk=held.pk)
    assert task.status == S.LOCKED and task.cancel_requested and task.lock_token == held.lock_token
    requested = TaskEvent.objects.get(task_id=held.pk, kind=E.CANCEL_REQUESTED)
    assert (requested.actor, requested.details) == ("user:ann", {"reason": "stop it", "worker": "w7"})
    with nothing_written(), pytest.raises(TaskStateError, match="already requested"):
        task_cancel(task_id=held.pk, actor="user:bob")


def test_the_heartbeat_reports_the_request(world: dict[str, Stage]) -> None:
    create(world["review"], amount=5)
    create(world["review"], amount=6)
    first, second = task_claim(stage=world["review"], worker_id="w", limit=2)
    items = [(first.pk, first.lock_token), (second.pk, second.lock_token)]
    assert tasks_extend_locks_reporting(items=items, lock_timeout=30).cancel_requested == []
    task_cancel(task_id=second.pk, actor="user:ann")
    renewal = tasks_extend_locks_reporting(items=items, lock_timeout=30)
    assert (sorted(renewal.held), renewal.cancel_requested) == (sorted([first.pk, second.pk]), [second.pk])
    _, requested = task_extend_lock_reporting(task_id=second.pk, lock_token=second.lock_token, lock_timeout=30)
    assert requested is True
    assert task_extend_lock_reporting(task_id=first.pk, lock_token=first.lock_token, lock_timeout=30)[1] is False


def test_completing_after_a_request_cancels_and_sends_nothing(world: dict[str, Stage]) -> None:
    create(world["review"], amount=5)
    held = claim_one(world["review"], worker="w7")
    task_cancel(task_id=held.pk, actor="user:ann", reason="stop")
    sent = task_complete(task_id=held.pk, lock_token=held.lock_token, send=[("approved", {"amount": 5})])
    assert sent == []
    task = Task.objects.get(pk=held.pk)
    assert task.status == S.CANCELLED and task.completed_at is None and task.lock_token == ""
    assert Task.objects.filter(parent_id=held.pk).count() == 0
    assert Task.objects.count() == 1
    assert kinds(held.pk) == ["created", "cancel_requested", "cancelled"]
    event = cancel_event(held.pk)
    assert event.actor == "w7"
    assert (event.details["worker"], event.details["attempt"], event.details["sent"]) == ("w7", 1, [])
    assert event.details["dropped"] == ["approved"]
    # The token is spent: a second completion is a lost lock, not a second end.
    with pytest.raises(TaskLockLost, match="cancelled, not locked"):
        task_complete(task_id=held.pk, lock_token=held.lock_token)


def test_completing_with_nothing_to_send_after_a_request_cancels(world: dict[str, Stage]) -> None:
    """On PostgreSQL this is the one-statement completion (PG_COMPLETE_SQL)."""
    create(world["ship"])
    held = claim_one(world["ship"])
    task_cancel(task_id=held.pk, actor="user:ann")
    assert task_complete(task_id=held.pk, lock_token=held.lock_token) == []
    assert Task.objects.get(pk=held.pk).status == S.CANCELLED
    assert kinds(held.pk) == ["created", "cancel_requested", "cancelled"]
    assert "dropped" not in cancel_event(held.pk).details


@pytest.mark.parametrize("sending", [True, False])
def test_a_batch_completes_the_others_and_cancels_the_requested_one(world: dict[str, Stage], sending: bool) -> None:
    for amount in (1, 2):
        create(world["review"], amount=amount)
    first, second = task_claim(stage=world["review"], worker_id="w", limit=2)
    task_cancel(task_id=first.pk, actor="user:ann")
    send = [("approved", {"amount": 1})] if sending else []
    items = [Completion(first.pk, first.lock_token, send), Completion(second.pk, second.lock_token, send)]
    outcomes = {o.task_id: o for o in tasks_complete_each(items=items)}
    assert outcomes[first.pk].status == "cancelled" and outcomes[first.pk].successors == []
    assert outcomes[second.pk].status == "completed"
    assert Task.objects.get(pk=first.pk).status == S.CANCELLED
    assert Task.objects.get(pk=second.pk).status == S.COMPLETED
    assert Task.objects.filter(parent_id=first.pk).count() == 0
    # approved fans out to ship and audit
    assert Task.objects.filter(parent_id=second.pk).count() == (2 if sending else 0)


def test_the_pipelined_completion_and_claim_cancels_the_requested_one(world: dict[str, Stage]) -> None:
    """On PostgreSQL the completion and the next claim go out in one pipeline; on SQLite apart."""
    for amount in (1, 2, 3):
        create(world["ship"], n=amount)
    first, second = task_claim(stage=world["ship"], worker_id="w", limit=2)
    task_cancel(task_id=second.pk, actor="user:ann")
    items = [Completion(first.pk, first.lock_token), Completion(second.pk, second.lock_token)]
    outcomes, claimed = tasks_complete_and_claim(items=items, stage=world["ship"], worker_id="w", limit=5)
    assert [(o.task_id, o.status) for o in outcomes] == [(first.pk, "completed"), (second.pk, "cancelled")]
    assert len(claimed) == 1
    assert Task.objects.get(pk=second.pk).status == S.CANCELLED
    assert kinds(second.pk)[-1] == "cancelled" and kinds(first.pk)[-1] == "completed"


def test_a_request_that_lands_before_the_completion_statement_is_obeyed(world: dict[str, Stage]) -> None:
    """The decision is the completing UPDATE's, from the row it locks: not a read made before it."""
    create(world["review"], amount=5)
    held = claim_one(world["review"])
    # The worker decided to complete (handler returned, sends checked); the request commits just before.
    Task.objects.filter(pk=held.pk).update(cancel_requested=True)
    task_complete(task_id=held.pk, lock_token=held.lock_token, send=[("approved", {"amount": 5})])
    assert Task.objects.get(pk=held.pk).status == S.CANCELLED
    assert Task.objects.filter(parent_id=held.pk).count() == 0


# -- cascade -----------------------------------------------------------------------------------


def test_cascade_cancels_pending_descendants_only(world: dict[str, Stage]) -> None:
    create(world["review"], amount=5)
    parent = claim_one(world["review"])
    [ship, audit] = task_complete(task_id=parent.pk, lock_token=parent.lock_token, send=[("approved", {"a": 1})])
    # ship's task is held by a worker (left alone); audit's is pending (cancelled).
    ship_held = claim_one(world["ship"])
    assert ship_held.pk == ship.pk
    # A grandchild under audit, pending: cancelled too.
    grandchild = Task.objects.create(stage=world["notify"], type="x", payload={}, parent_id=audit.pk)
    Task.objects.filter(pk=parent.pk).update(status=S.FAILED)  # a failed root, to cancel at once
    result = task_cancel(task_id=parent.pk, actor="user:ann", reason="all of it", cascade=True)
    assert result.outcome == "cancelled"
    assert sorted(result.cascaded) == sorted([audit.pk, grandchild.pk])
    assert Task.objects.get(pk=ship.pk).status == S.LOCKED
    assert not Task.objects.get(pk=ship.pk).cancel_requested
    for task_id in (audit.pk, grandchild.pk):
        assert Task.objects.get(pk=task_id).status == S.CANCELLED
        assert cancel_event(task_id).details == {
            "reason": "all of it",
            "previous_status": "pending",
            "cascade_from": parent.pk,
        }


# -- retention ---------------------------------------------------------------------------------


def test_retention_deletes_old_cancelled_tasks_like_failed_ones(world: dict[str, Stage]) -> None:
    old = create(world["review"], amount=1)
    new = create(world["review"], amount=2)
    live = create(world["review"], amount=3)
    now = timezone.now()
    task_cancel(task_id=old.pk, actor="user:ann", now=now - timedelta(days=40))
    task_cancel(task_id=new.pk, actor="user:ann", now=now - timedelta(days=10))
    result = tasks_prune(older_than=timedelta(days=30), now=now)
    assert result.tasks == 1
    assert not Task.objects.filter(pk=old.pk).exists()
    assert not TaskEvent.objects.filter(task_id=old.pk).exists()
    assert Task.objects.filter(pk__in=[new.pk, live.pk]).count() == 2
    assert tasks_prune(older_than=timedelta(days=5), statuses=["cancelled"], now=now).tasks == 1
    assert Task.objects.filter(pk=live.pk, status=S.PENDING).exists()


@pytest.mark.postgres
def test_the_cancel_index_serves_retention_on_postgres(world: dict[str, Stage]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            "EXPLAIN SELECT id FROM tasks_app_task WHERE status = 'cancelled' AND updated_at < now()"
            " ORDER BY id DESC LIMIT 100"
        )
        plan: Any = "\n".join(row[0] for row in cursor.fetchall())
    assert "task_cancelled_idx" in plan


# -- REST API ----------------------------------------------------------------------------------


def test_api_cancels_a_pending_task(world: dict[str, Stage], operator: APIClient) -> None:
    task = create(world["review"], amount=5)
    response = post(operator, f"/api/tasks/{task.pk}/cancel/", {"reason": "duplicate order"})
    assert response.status_code == 200, response.data
    assert response.data == {"id": task.pk, "outcome": "cancelled", "cascaded": []}
    assert Task.objects.get(pk=task.pk).status == S.CANCELLED
    event = cancel_event(task.pk)
    assert (event.actor, event.details["reason"]) == ("user:operator", "duplicate order")
    got = get(operator, f"/api/tasks/{task.pk}/")
    assert (got.data["status"], got.data["cancel_requested"]) == ("cancelled", False)
    # The list's status filter knows it.
    assert [t["id"] for t in get(operator, "/api/tasks/?status=cancelled").data["results"]] == [task.pk]


def test_api_requests_the_cancel_of_a_locked_task_and_a_client_completion_sends_nothing(
    world: dict[str, Stage], operator: APIClient, admin: APIClient
) -> None:
    create(world["review"], amount=5)
    [claimed] = post(admin, f"/api/stages/{world['review'].slug}/claim/", {"limit": 1}).data
    response = post(operator, f"/api/tasks/{claimed['id']}/cancel/", {"reason": "stop"})
    assert response.data["outcome"] == "requested"
    beat = post(admin, f"/api/tasks/{claimed['id']}/heartbeat/", {"lock_token": claimed["lock_token"]})
    assert beat.status_code == 200 and beat.data["cancel_requested"] is True
    done = post(
        admin,
        f"/api/tasks/{claimed['id']}/complete/",
        {"lock_token": claimed["lock_token"], "send": [{"type": "approved", "payload": {"amount": 5}}]},
    )
    assert done.status_code == 200 and done.data == []
    assert Task.objects.get(pk=claimed["id"]).status == S.CANCELLED
    assert Task.objects.count() == 1


def test_api_bulk_complete_reports_a_cancelled_item(world: dict[str, Stage], admin: APIClient) -> None:
    create(world["review"], amount=1)
    create(world["review"], amount=2)
    first, second = task_claim(stage=world["review"], worker_id="api", limit=2)
    task_cancel(task_id=first.pk, actor="user:ann")
    send = [{"type": "approved", "payload": {"amount": 1}}]
    response = post(
        admin,
        "/api/tasks/bulk-complete/",
        {"tasks": [{"id": t.pk, "lock_token": t.lock_token, "send": send} for t in (first, second)]},
    )
    assert response.status_code == 200
    assert [(r["id"], r["status"]) for r in response.data["results"]] == [
        (first.pk, "cancelled"),
        (second.pk, "completed"),
    ]
    assert Task.objects.filter(parent_id=first.pk).count() == 0


def test_api_refusals_change_nothing(world: dict[str, Stage], operator: APIClient, viewer: APIClient) -> None:
    task = create(world["ship"])
    held = claim_one(world["ship"])
    task_complete(task_id=held.pk, lock_token=held.lock_token)
    pending = create(world["review"], amount=1)
    with nothing_written():
        finished = post(operator, f"/api/tasks/{task.pk}/cancel/", {"reason": "late"})
        assert finished.status_code == 409 and "it is completed" in finished.data["detail"]
        assert post(operator, "/api/tasks/987654/cancel/", {"reason": "x"}).status_code == 404
        assert post(viewer, f"/api/tasks/{pending.pk}/cancel/", {"reason": "x"}).status_code == 403
        assert post(APIClient(), f"/api/tasks/{pending.pk}/cancel/", {"reason": "x"}).status_code == 401
        no_reason = post(operator, f"/api/tasks/{pending.pk}/cancel/", {})
        assert no_reason.status_code == 400 and "reason" in no_reason.data
        bad = post(operator, f"/api/tasks/{pending.pk}/cancel/", {"reason": "x", "cascade": "maybe"})
        assert bad.status_code == 400 and "cascade" in bad.data
        empty = post(operator, "/api/tasks/bulk-cancel/", {"ids": [], "reason": "x"})
        assert empty.status_code == 400 and "ids" in empty.data
        assert post(viewer, "/api/tasks/bulk-cancel/", {"ids": [pending.pk], "reason": "x"}).status_code == 403


def test_api_bulk_cancel_answers_per_id(world: dict[str, Stage], operator: APIClient) -> None:
    pending = create(world["review"], amount=1)
    create(world["audit"])
    locked = claim_one(world["audit"])
    done = create(world["ship"])
    held = claim_one(world["ship"])
    task_complete(task_id=held.pk, lock_token=held.lock_token)
    response = post(
        operator, "/api/tasks/bulk-cancel/", {"ids": [pending.pk, locked.pk, done.pk, 987654], "reason": "cleanup"}
    )
    assert response.status_code == 200
    results = response.data["results"]
    assert [(r["id"], r["outcome"]) for r in results] == [
        (pending.pk, "cancelled"),
        (locked.pk, "requested"),
        (done.pk, "refused"),
        (987654, "refused"),
    ]
    assert "does not exist" in results[3]["error"]
    assert Task.objects.get(pk=pending.pk).status == S.CANCELLED
    assert Task.objects.get(pk=locked.pk).cancel_requested
    assert Task.objects.get(pk=done.pk).status == S.COMPLETED


def test_the_schema_documents_cancel(operator: APIClient) -> None:
    schema = get(operator, "/api/schema/?format=json").json()
    assert "post" in schema["paths"]["/api/tasks/{id}/cancel/"]
    assert "post" in schema["paths"]["/api/tasks/bulk-cancel/"]


# -- the task page, the list's bulk action, the admin ------------------------------------------


def test_the_task_page_cancels_with_a_reason(admin_client: Client, world: dict[str, Stage]) -> None:
    task = create(world["review"], amount=5)
    html = admin_client.get(f"/tasks/{task.pk}/").content.decode()
    assert f'action="/tasks/{task.pk}/cancel/"' in html and "Cancel task" in html
    response = admin_client.post(f"/tasks/{task.pk}/cancel/", {"reason": "wrong customer"}, follow=True)
    assert response.redirect_chain == [(f"/tasks/{task.pk}/", 302)]
    assert shown_messages(response) == [("success", f"Cancelled task {task.pk}.")]
    assert Task.objects.get(pk=task.pk).status == S.CANCELLED
    assert (cancel_event(task.pk).actor, cancel_event(task.pk).details["reason"]) == ("user:admin", "wrong customer")
    html = response.content.decode()
    assert 'class="badge badge-cancelled"' in html and "Cancel task" not in html


def test_the_task_page_requests_the_cancel_of_a_locked_task(admin_client: Client, world: dict[str, Stage]) -> None:
    create(world["audit"])
    held = claim_one(world["audit"], worker="w9")
    response = admin_client.post(f"/tasks/{held.pk}/cancel/", {"reason": "stop"}, follow=True)
    [(level, text)] = shown_messages(response)
    assert level == "success" and text.startswith(f"Requested the cancel of task {held.pk}")
    html = response.content.decode()
    assert 'id="cancel-requested"' in html and "cancel requested" in html and "Cancel task" not in html


def test_page_refusals_change_nothing(client: Client, admin_client: Client, world: dict[str, Stage]) -> None:
    task = create(world["review"], amount=5)
    with nothing_written():
        no_reason = admin_client.post(f"/tasks/{task.pk}/cancel/", {"reason": "  "}, follow=True)
        assert shown_messages(no_reason)[0][0] == "warning"
        assert admin_client.get(f"/tasks/{task.pk}/cancel/").status_code == 405
        viewer = logged_in(make_user("looker", *all_view_codenames()))
        assert viewer.post(f"/tasks/{task.pk}/cancel/", {"reason": "x"}).status_code == 403
        assert "Cancel task" not in viewer.get(f"/tasks/{task.pk}/").content.decode()
        assert client.post(f"/tasks/{task.pk}/cancel/", {"reason": "x"}).status_code == 302  # to the login page
    held = claim_one(world["ship"]) if create(world["ship"]) else None
    assert held is not None
    task_complete(task_id=held.pk, lock_token=held.lock_token)
    with nothing_written():
        finished = admin_client.post(f"/tasks/{held.pk}/cancel/", {"reason": "late"}, follow=True)
        [(level, text)] = shown_messages(finished)
        assert level == "warning" and "it is completed" in text


def test_the_bulk_action_asks_for_a_reason_then_cancels_the_selection(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    first = create(world["review"], amount=1)
    second = create(world["review"], amount=2)
    create(world["ship"])
    done = claim_one(world["ship"])
    task_complete(task_id=done.pk, lock_token=done.lock_token)
    assert '<option value="cancel">Cancel</option>' in admin_client.get("/tasks/").content.decode()
    chosen = {"action": "cancel", "scope": "selected", "ids": [first.pk, second.pk, done.pk], "query": ""}
    with nothing_written():
        asked = admin_client.post("/tasks/bulk/", chosen)
        html = asked.content.decode()
        assert "Cancel 3 tasks" in html or "Cancel 3 selected tasks" in html, html
        assert 'name="reason"' in html
        missing = admin_client.post("/tasks/bulk/", {**chosen, "confirm": "1"}, follow=True)
        assert shown_messages(missing)[0][0] == "warning"
    response = admin_client.post("/tasks/bulk/", {**chosen, "confirm": "1", "reason": "batch cleanup"}, follow=True)
    [(level, text)] = shown_messages(response)
    assert level == "success" and "2 task(s)" in text and "1 skipped" in text
    assert set(Task.objects.filter(status=S.CANCELLED).values_list("id", flat=True)) == {first.pk, second.pk}
    assert cancel_event(first.pk).details["reason"] == "batch cleanup"


def test_the_bulk_action_cancels_all_matching_a_filter(admin_client: Client, world: dict[str, Stage]) -> None:
    wanted = [create(world["review"], amount=n) for n in range(3)]
    other = create(world["ship"])
    query = f"stage={world['review'].slug}&status=pending"
    chosen = {"action": "cancel", "scope": "all", "query": query}
    asked = admin_client.post("/tasks/bulk/", chosen).content.decode()
    upto = re.search(r'name="upto" value="(\d+)"', asked)
    assert upto is not None
    admin_client.post("/tasks/bulk/", {**chosen, "confirm": "1", "upto": upto.group(1), "reason": "stage closed"})
    assert set(Task.objects.filter(status=S.CANCELLED).values_list("id", flat=True)) == {t.pk for t in wanted}
    assert Task.objects.get(pk=other.pk).status == S.PENDING
    filtered = admin_client.get("/tasks/?status=cancelled").content.decode()
    assert all(f"/tasks/{t.pk}/" in filtered for t in wanted) and f"/tasks/{other.pk}/" not in filtered
    assert 'value="cancelled"' in filtered  # the status chips offer it


def test_the_admin_action_cancels(admin_client: Client, world: dict[str, Stage]) -> None:
    pending = create(world["review"], amount=1)
    create(world["audit"])
    locked = claim_one(world["audit"])
    data = {"action": "cancel", "_selected_action": [pending.pk, locked.pk], "index": 0}
    response = admin_client.post("/admin/tasks_app/task/", data, follow=True)
    assert response.status_code == 200
    assert Task.objects.get(pk=pending.pk).status == S.CANCELLED
    assert Task.objects.get(pk=locked.pk).cancel_requested
    assert cancel_event(pending.pk).details["reason"] == "cancelled in the admin"


# -- /metrics ------------------------------------------------------------------------------


def test_metrics_count_cancelled_tasks_per_stage(
    admin_client: Client, world: dict[str, Stage], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.TASKS_METRICS_CACHE = 0
    monkeypatch.setattr(stage_counters, "SETTLE_SECONDS", 0.0)  # fold the events just written
    for amount in (1, 2):
        task_cancel(task_id=create(world["review"], amount=amount).pk, actor="user:ann")
    create(world["ship"])
    held = claim_one(world["ship"])
    task_cancel(task_id=held.pk, actor="user:ann")
    task_complete(task_id=held.pk, lock_token=held.lock_token)
    body = admin_client.get("/metrics").content.decode()
    assert 'tasks_cancelled_total{stage="review"} 2.0' in body
    assert 'tasks_cancelled_total{stage="ship"} 1.0' in body
    assert 'tasks_completed_total{stage="ship"} 0.0' in body


# -- a held task whose attempt ends otherwise -----------------------------------------------------


def test_a_requested_task_whose_handler_raises_is_cancelled_not_retried(world: dict[str, Stage]) -> None:
    create(world["review"], amount=5)
    held = claim_one(world["review"], worker="w3")
    task_cancel(task_id=held.pk, actor="user:ann")
    released = task_release(task_id=held.pk, lock_token=held.lock_token, error="RuntimeError: stopped")
    assert released.status == S.CANCELLED and released.last_error == "RuntimeError: stopped"
    assert kinds(held.pk) == ["created", "cancel_requested", "cancelled"]
    event = cancel_event(held.pk)
    assert (event.actor, event.details["worker"], event.details["error"]) == ("w3", "w3", "RuntimeError: stopped")
    assert task_claim(stage=world["review"], worker_id="w", limit=5) == []


def test_the_expiry_sweep_cancels_a_requested_task_whose_worker_went_silent(world: dict[str, Stage]) -> None:
    create(world["review"], amount=5)
    create(world["review"], amount=6)
    now = timezone.now()
    requested, other = task_claim(stage=world["review"], worker_id="gone", limit=2, lock_timeout=1, now=now)
    task_cancel(task_id=requested.pk, actor="user:ann", now=now)
    assert tasks_expire_locks(now=now + timedelta(seconds=5)) == 2
    assert Task.objects.get(pk=requested.pk).status == S.CANCELLED
    assert Task.objects.get(pk=other.pk).status == S.PENDING
    expired = TaskEvent.objects.get(task_id=requested.pk, kind=E.LOCK_EXPIRED)
    assert expired.details["now"] == "cancelled"
    assert kinds(requested.pk)[-2:] == ["lock_expired", "cancelled"]


def test_api_bulk_cancel_by_filter(world: dict[str, Stage], operator: APIClient) -> None:
    wanted = [create(world["review"], amount=n) for n in range(3)]
    other = create(world["ship"])
    body = {"filter": {"stage": ["review"], "status": "pending"}, "reason": "stage closed"}
    response = post(operator, "/api/tasks/bulk-cancel/", body)
    assert response.status_code == 200, response.data
    assert response.data["more"] is False
    assert [(r["id"], r["outcome"]) for r in response.data["results"]] == [(t.pk, "cancelled") for t in wanted]
    assert Task.objects.get(pk=other.pk).status == S.PENDING
    with nothing_written():
        for bad in (
            {"filter": {"colour": "red"}, "reason": "x"},
            {"filter": {}, "reason": "x"},
            {"filter": {"status": "bogus"}, "reason": "x"},
            {"filter": {"status": "pending"}, "ids": [other.pk], "reason": "x"},
            {"reason": "x"},
        ):
            answer = post(operator, "/api/tasks/bulk-cancel/", bad)
            assert answer.status_code == 400, (bad, answer.data)
