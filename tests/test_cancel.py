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

from tasks_app.models import JobRun, Stage, Task, TaskEvent, Transition
from tasks_app.services import (
    Completion,
    TaskLockLost,
    TaskStateError,
    task_claim,
    task_complete,
    task_fail,
    task_force_release,
    task_mark_completed,
    task_release,
    task_retry,
    task_unclaim,
    tasks_complete_each,
    tasks_expire_locks,
    tasks_unclaim_orphans,
)
from tasks_app.services import counters as stage_counters
from tasks_app.services.cancel import task_cancel
from tasks_app.services.claim import CLAIMABLE_WHERE, claim_params, task_claim_rows
from tasks_app.services.complete import task_extend_lock_reporting, tasks_extend_locks_reporting
from tasks_app.services.form_stages import form_task_cancel, form_task_open
from tasks_app.services.handlers import HandlerTask
from tasks_app.services.jobs import job_run_now
from tasks_app.services.pipeline import tasks_complete_and_claim
from tasks_app.services.retention import tasks_prune
from tasks_app.worker import Worker
from tasks_app.worker.handlers import run_handler
from tests.support.api import get, post
from tests.support.pages import shown_messages
from tests.support.users import all_view_codenames, logged_in, make_user
from tests.support.work import form_world
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


# -- a requested task is never run again (issue 15's audit) ------------------------------------------


def expire(task: Task) -> None:
    """Let the task's lock run out (as when its worker goes silent)."""
    Task.objects.filter(pk=task.pk).update(locked_until=timezone.now() - timedelta(seconds=1))


@pytest.mark.parametrize("capped", [False, True])  # a cap: the gate's claim and its takeover of expired locks
def test_a_requested_task_whose_lock_expires_is_not_claimed_again_and_the_sweep_cancels_it(
    world: dict[str, Stage], capped: bool
) -> None:
    if capped:
        Stage.objects.filter(pk=world["review"].pk).update(max_concurrency=1)
        world["review"].refresh_from_db()
    create(world["review"], amount=5)
    held = claim_one(world["review"], worker="gone")
    task_cancel(task_id=held.pk, actor="user:ann", reason="stop")
    expire(held)
    assert not Task.objects.claimable(timezone.now()).filter(pk=held.pk).exists()
    with nothing_written():
        assert task_claim(stage=world["review"], worker_id="w2", limit=5) == []
        assert task_claim_rows(stage=world["review"], worker_id="w2", limit=5) == []
    assert tasks_expire_locks() == 1
    task = Task.objects.get(pk=held.pk)
    assert task.status == S.CANCELLED and task.attempts == 1
    assert kinds(held.pk) == ["created", "cancel_requested", "lock_expired", "cancelled"]


def test_an_expired_lock_without_a_request_is_still_taken_over(world: dict[str, Stage]) -> None:
    """The other half of the rule: only the requested one is left to the sweep."""
    create(world["review"], amount=5)
    create(world["review"], amount=6)
    requested, plain = task_claim(stage=world["review"], worker_id="gone", limit=2)
    task_cancel(task_id=requested.pk, actor="user:ann")
    expire(requested)
    expire(plain)
    assert [t.pk for t in task_claim(stage=world["review"], worker_id="w2", limit=5)] == [plain.pk]


def test_the_claim_sql_and_the_queryset_agree_on_requested_expired_locks(world: dict[str, Stage]) -> None:
    now = timezone.now()
    stage = world["review"]
    ids = {}
    for requested in (False, True):
        for until in (now - timedelta(minutes=1), now + timedelta(minutes=1)):
            task = Task.objects.create(
                stage=stage, type="t", status=S.LOCKED, lock_token="t" * 32, locked_by="w", attempts=1,
                locked_until=until, cancel_requested=requested,
            )  # fmt: skip
            ids[(requested, until > now)] = task.pk
    params = claim_params(stage=stage, worker_id="probe", limit=1, now=now, until=now)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {Task._meta.db_table} WHERE {CLAIMABLE_WHERE}", params)
        sql = {row[0] for row in cursor.fetchall()}
    orm = set(Task.objects.claimable(now).filter(stage=stage).values_list("id", flat=True))
    assert sql == orm == {ids[(False, False)]}


def record_cancel_flag(task: Any) -> None:
    """A handler that writes what it sees of task.cancel_requested into its successor."""
    task.send("approved", {"saw_cancel_requested": task.cancel_requested})


def test_the_handler_sees_the_flag_the_claim_read(world: dict[str, Stage]) -> None:
    """The worker builds the handler's task with the row's cancel_requested, not False until a heartbeat."""
    Stage.objects.filter(pk=world["review"].pk).update(handler="tests.test_cancel.record_cancel_flag")
    flagged = create(world["review"], amount=1)
    Task.objects.filter(pk=flagged.pk).update(cancel_requested=True)  # as a row written before this rule
    [row] = task_claim_rows(stage=world["review"], worker_id="probe", limit=1)
    assert row.cancel_requested is True
    task_unclaim(task_id=row.pk, lock_token=row.lock_token)  # handed back: ends cancelled (the request)
    assert Task.objects.get(pk=flagged.pk).status == S.CANCELLED
    plain = create(world["review"], amount=2)
    Worker(stage_slugs=["review"], worker_id="w-flag").run(once=True)
    [sent] = Task.objects.filter(parent_id=plain.pk, stage=world["ship"])
    assert sent.payload == {"saw_cancel_requested": False}
    flagged_again = create(world["review"], amount=3)
    Task.objects.filter(pk=flagged_again.pk).update(cancel_requested=True)
    seen: list[bool] = []
    original = HandlerTask.__init__

    def spy(self: HandlerTask, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        seen.append(self.cancel_requested)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HandlerTask, "__init__", spy)
        Worker(stage_slugs=["review"], worker_id="w-flag").run(once=True)
    assert seen == [True]
    # Requested before it started: its handler is not run (worker.handlers.run_handler), and the completion
    # ends it cancelled with nothing sent.
    assert Task.objects.get(pk=flagged_again.pk).status == S.CANCELLED
    assert not Task.objects.filter(parent_id=flagged_again.pk).exists()


# -- handing a requested task back ends it cancelled ---------------------------------------------------


def test_unclaiming_a_requested_task_ends_it_cancelled(world: dict[str, Stage]) -> None:
    create(world["review"], amount=5)
    held = claim_one(world["review"], worker="w4")
    task_cancel(task_id=held.pk, actor="user:ann")
    assert task_unclaim(task_id=held.pk, lock_token=held.lock_token) == S.CANCELLED
    task = Task.objects.get(pk=held.pk)
    assert (task.status, task.attempts, task.lock_token, task.locked_until) == (S.CANCELLED, 0, "", None)
    assert kinds(held.pk) == ["created", "cancel_requested", "cancelled"]
    event = cancel_event(held.pk)
    assert event.actor == "w4" and event.details["worker"] == "w4"
    assert "a cancel was requested" in event.details["reason"]
    assert task_claim(stage=world["review"], worker_id="w", limit=5) == []
    # Without a request it goes back to the queue, as before.
    create(world["ship"])
    other = claim_one(world["ship"])
    assert task_unclaim(task_id=other.pk, lock_token=other.lock_token) == S.PENDING
    assert Task.objects.get(pk=other.pk).status == S.PENDING


def test_unclaiming_orphans_ends_the_requested_ones_cancelled(world: dict[str, Stage]) -> None:
    for amount in (1, 2, 3):
        create(world["review"], amount=amount)
    kept, requested, orphan = task_claim(stage=world["review"], worker_id="w5", limit=3)
    task_cancel(task_id=requested.pk, actor="user:ann")
    assert tasks_unclaim_orphans(worker_id="w5", keep=[kept.pk]) == 2
    assert Task.objects.get(pk=requested.pk).status == S.CANCELLED
    assert kinds(requested.pk) == ["created", "cancel_requested", "cancelled"]
    assert Task.objects.get(pk=orphan.pk).status == S.PENDING
    assert kinds(orphan.pk) == ["created", "released"]
    assert Task.objects.get(pk=kept.pk).status == S.LOCKED
    assert [t.pk for t in task_claim(stage=world["review"], worker_id="w", limit=5)] == [orphan.pk]


def test_a_force_release_of_a_requested_task_ends_it_cancelled(world: dict[str, Stage]) -> None:
    create(world["review"], amount=5)
    held = claim_one(world["review"], worker="w6")
    task_cancel(task_id=held.pk, actor="user:ann")
    assert task_force_release(task_id=held.pk, actor="user:bob") == S.CANCELLED
    task = Task.objects.get(pk=held.pk)
    assert (task.status, task.lock_token) == (S.CANCELLED, "")
    event = cancel_event(held.pk)
    assert event.actor == "user:bob"
    assert (event.details["previous_status"], event.details["worker"]) == ("locked", "w6")
    assert "released by hand" in event.details["reason"]
    with pytest.raises(TaskLockLost):  # the worker's token is spent
        task_complete(task_id=held.pk, lock_token=held.lock_token, send=[("approved", {"amount": 5})])
    assert not Task.objects.filter(parent_id=held.pk).exists()


def test_the_task_page_release_of_a_requested_task_says_it_cancelled(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    create(world["audit"])
    held = claim_one(world["audit"], worker="w9")
    task_cancel(task_id=held.pk, actor="user:ann")
    html = admin_client.get(f"/tasks/{held.pk}/").content.decode()
    assert "Release lock (ends cancelled)" in html
    response = admin_client.post(f"/tasks/{held.pk}/release/", follow=True)
    assert shown_messages(response) == [
        ("success", f"Cancelled task {held.pk}: a cancel was requested, so releasing it ended it.")
    ]
    assert Task.objects.get(pk=held.pk).status == S.CANCELLED


def test_the_bulk_and_admin_release_of_a_requested_task_end_it_cancelled(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    create(world["audit"])
    create(world["ship"])
    by_bulk, by_admin = claim_one(world["audit"]), claim_one(world["ship"])
    for held in (by_bulk, by_admin):
        task_cancel(task_id=held.pk, actor="user:ann")
    chosen = {"action": "release", "scope": "selected", "ids": [by_bulk.pk], "query": "", "confirm": "1"}
    said = shown_messages(admin_client.post("/tasks/bulk/", chosen, follow=True))
    assert ("success", "Released 1 task(s). 1 of them ended cancelled: a cancel was requested.") in said
    data = {"action": "release", "_selected_action": [by_admin.pk], "index": 0}
    said = shown_messages(admin_client.post("/admin/tasks_app/task/", data, follow=True))
    assert ("success", "Released 1 task(s). 1 of them ended cancelled: a cancel was requested.") in said
    for held in (by_bulk, by_admin):
        assert Task.objects.get(pk=held.pk).status == S.CANCELLED
        assert kinds(held.pk) == ["created", "cancel_requested", "cancelled"]


def test_retrying_a_failed_task_clears_a_stale_request(world: dict[str, Stage]) -> None:
    """A failed row still flagged (written before the rule): a retry means run it, not cancel it."""
    create(world["notify"])
    held = claim_one(world["notify"])
    task_fail(task_id=held.pk, lock_token=held.lock_token, error="ValueError: no")
    Task.objects.filter(pk=held.pk).update(cancel_requested=True)
    task_retry(task_id=held.pk, actor="user:ann")
    task = Task.objects.get(pk=held.pk)
    assert (task.status, task.cancel_requested) == (S.PENDING, False)


# -- a form task (My work) ---------------------------------------------------------------------------


def test_closing_a_requested_form_task_ends_it_cancelled(db: None) -> None:
    fw = form_world()
    task = create(fw.review, amount=5)
    form_task_open(task=task, user=fw.alice)
    task_cancel(task_id=task.pk, actor="user:ann", reason="withdrawn")
    response = logged_in(fw.alice).post(f"/work/{task.pk}/cancel/", follow=True)
    assert shown_messages(response) == [
        ("info", f"Task {task.pk} was cancelled (a cancel was requested while you held it).")
    ]
    assert Task.objects.get(pk=task.pk).status == S.CANCELLED
    assert kinds(task.pk) == ["created", "cancel_requested", "cancelled"]
    assert "closed by alice" in cancel_event(task.pk).details["reason"]
    # The service says so too.
    other = create(fw.review, amount=6)
    form_task_open(task=other, user=fw.bob)
    task_cancel(task_id=other.pk, actor="user:ann")
    assert form_task_cancel(task_id=other.pk, user=fw.bob) == S.CANCELLED


def test_submitting_a_requested_form_task_cancels_it_sends_nothing_and_says_so(db: None) -> None:
    fw = form_world()
    task = create(fw.review, amount=5)
    form_task_open(task=task, user=fw.alice)
    task_cancel(task_id=task.pk, actor="user:ann", reason="withdrawn")
    response = logged_in(fw.alice).post(
        f"/work/{task.pk}/submit/", {"type": "approved", "f-approved-note": "ok"}, follow=True
    )
    assert shown_messages(response) == [
        ("warning", f"Task {task.pk} was cancelled (a cancel was requested); nothing was sent.")
    ]
    assert Task.objects.get(pk=task.pk).status == S.CANCELLED
    assert not Task.objects.filter(parent_id=task.pk).exists()
    assert cancel_event(task.pk).details["dropped"] == ["approved"]


def test_a_requested_form_task_whose_lock_expired_is_not_opened_again(db: None) -> None:
    fw = form_world()
    task = create(fw.review, amount=5)
    form_task_open(task=task, user=fw.alice)
    task_cancel(task_id=task.pk, actor="user:ann")
    expire(task)
    with nothing_written(), pytest.raises(TaskStateError, match="a cancel was requested and its lock expired"):
        form_task_open(task=Task.objects.get(pk=task.pk), user=fw.bob)


# -- a job run ---------------------------------------------------------------------------------------


def digest_cancelling(job: Any) -> None:
    """A job handler: an operator cancels the run's tasks whose payload says so while it runs; then one
    digest listing every task the run got."""
    for task in job.tasks:
        if task.payload.get("cancel"):
            task_cancel(task_id=task.id, actor="user:ann", reason="mid-run")
    job.send("digest", {"ids": [t.id for t in job.tasks]})


def job_stage(world: dict[str, Stage]) -> Stage:
    job = Stage.objects.create(
        slug="nightly", name="Nightly", kind=Stage.Kind.JOB, schedule="0 3 * * *",
        handler="tests.test_cancel.digest_cancelling",
    )  # fmt: skip
    Transition.objects.create(source=job, target=world["ship"], task_type="digest")
    return job


def test_a_job_run_whose_tasks_were_all_cancelled_sends_nothing(world: dict[str, Stage]) -> None:
    job = job_stage(world)
    tasks = [create(job, cancel=True), create(job, cancel=True)]
    run = job_run_now(stage=job, worker_id="s")
    assert run is not None and run.status == JobRun.Status.SUCCEEDED
    assert (run.tasks_processed, run.tasks_sent) == (0, 0)
    assert not Task.objects.filter(stage=world["ship"]).exists()
    for task in tasks:
        assert Task.objects.get(pk=task.pk).status == S.CANCELLED
        details = cancel_event(task.pk).details
        assert details["dropped"] == ["digest"] and "the run's sends were dropped" in details["reason"]


def test_a_job_run_with_a_completed_task_sends_as_before(world: dict[str, Stage]) -> None:
    job = job_stage(world)
    cancelled, done = create(job, cancel=True), create(job, cancel=False)
    run = job_run_now(stage=job, worker_id="s")
    assert run is not None and (run.tasks_processed, run.tasks_sent) == (1, 1)
    assert Task.objects.get(pk=cancelled.pk).status == S.CANCELLED
    assert Task.objects.get(pk=done.pk).status == S.COMPLETED
    [digest] = Task.objects.filter(stage=world["ship"])
    assert digest.payload == {"ids": [cancelled.pk, done.pk]}
    assert "dropped" not in cancel_event(cancelled.pk).details


# -- a permanent failure, marking completed ------------------------------------------------------------


def test_a_requested_task_that_fails_permanently_ends_cancelled(world: dict[str, Stage]) -> None:
    create(world["review"], amount=5)
    held = claim_one(world["review"], worker="w3")
    task_cancel(task_id=held.pk, actor="user:ann")
    task_fail(task_id=held.pk, lock_token=held.lock_token, error="SchemaError: bad")
    task = Task.objects.get(pk=held.pk)
    assert (task.status, task.last_error, task.lock_token) == (S.CANCELLED, "SchemaError: bad", "")
    assert kinds(held.pk) == ["created", "cancel_requested", "cancelled"]
    event = cancel_event(held.pk)
    assert (event.actor, event.details["error"]) == ("w3", "SchemaError: bad")
    assert "permanent error" in event.details["reason"]


MARK_REFUSAL = "a cancel was requested"


def test_marking_a_requested_task_completed_is_refused_on_every_path(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    create(world["review"], amount=5)
    held = claim_one(world["review"])
    task_cancel(task_id=held.pk, actor="user:ann")
    with nothing_written():
        with pytest.raises(TaskStateError, match=MARK_REFUSAL):
            task_mark_completed(task_id=held.pk, actor="user:bob")
        # The page offers no button; a post anyway is a message.
        html = admin_client.get(f"/tasks/{held.pk}/").content.decode()
        assert f"/tasks/{held.pk}/complete/" not in html
        page = admin_client.post(f"/tasks/{held.pk}/complete/", follow=True)
        [(level, text)] = shown_messages(page)
        assert level == "warning" and MARK_REFUSAL in text and "Release it to cancel it now" in text
        chosen = {"action": "complete", "scope": "selected", "ids": [held.pk], "query": "", "confirm": "1"}
        bulk = admin_client.post("/tasks/bulk/", chosen, follow=True)
        assert "Marked completed 0 task(s). 1 skipped" in shown_messages(bulk)[0][1]
        data = {"action": "mark_completed", "_selected_action": [held.pk], "index": 0}
        in_admin = admin_client.post("/admin/tasks_app/task/", data, follow=True)
        assert any(MARK_REFUSAL in str(m) for m in in_admin.context["messages"])
    assert Task.objects.get(pk=held.pk).status == S.LOCKED
    # Without a request, marking a held task completed works as before.
    create(world["ship"])
    other = claim_one(world["ship"])
    task_mark_completed(task_id=other.pk, actor="user:bob")
    assert Task.objects.get(pk=other.pk).status == S.COMPLETED


def test_a_cancelled_task_page_offers_no_mark_completed(admin_client: Client, world: dict[str, Stage]) -> None:
    task = create(world["review"], amount=5)
    task_cancel(task_id=task.pk, actor="user:ann")
    assert f"/tasks/{task.pk}/complete/" not in admin_client.get(f"/tasks/{task.pk}/").content.decode()


# -- cascade through the page and the API ----------------------------------------------------------


def family(world: dict[str, Stage]) -> tuple[Task, list[Task]]:
    """A failed root whose completion sent two pending children (ship, audit), one with a pending grandchild."""
    create(world["review"], amount=5)
    parent = claim_one(world["review"])
    kids = task_complete(task_id=parent.pk, lock_token=parent.lock_token, send=[("approved", {"a": 1})])
    grandchild = Task.objects.create(stage=world["notify"], type="x", payload={}, parent_id=kids[1].pk)
    Task.objects.filter(pk=parent.pk).update(status=S.FAILED)
    return parent, [*kids, grandchild]


def test_the_task_page_cascades(admin_client: Client, world: dict[str, Stage]) -> None:
    parent, descendants = family(world)
    response = admin_client.post(f"/tasks/{parent.pk}/cancel/", {"reason": "all", "cascade": "1"}, follow=True)
    assert shown_messages(response) == [
        ("success", f"Cancelled task {parent.pk}. Also cancelled 3 pending descendant(s).")
    ]
    assert set(Task.objects.filter(status=S.CANCELLED).values_list("id", flat=True)) == {
        parent.pk,
        *(t.pk for t in descendants),
    }
    assert cancel_event(descendants[2].pk).details["cascade_from"] == parent.pk


def test_the_task_page_without_cascade_leaves_descendants(admin_client: Client, world: dict[str, Stage]) -> None:
    parent, descendants = family(world)
    admin_client.post(f"/tasks/{parent.pk}/cancel/", {"reason": "just it"})
    assert Task.objects.filter(pk__in=[t.pk for t in descendants], status=S.PENDING).count() == 3


def test_api_cancel_cascades(world: dict[str, Stage], operator: APIClient) -> None:
    parent, descendants = family(world)
    response = post(operator, f"/api/tasks/{parent.pk}/cancel/", {"reason": "all", "cascade": True})
    assert response.status_code == 200, response.data
    assert response.data["outcome"] == "cancelled"
    assert sorted(response.data["cascaded"]) == sorted(t.pk for t in descendants)
    assert Task.objects.filter(status=S.CANCELLED).count() == 4


def test_api_bulk_cancel_cascades(world: dict[str, Stage], operator: APIClient) -> None:
    parent, descendants = family(world)
    lone = create(world["ship"])
    response = post(operator, "/api/tasks/bulk-cancel/", {"ids": [parent.pk, lone.pk], "reason": "x", "cascade": True})
    assert response.status_code == 200, response.data
    results = {r["id"]: r for r in response.data["results"]}
    assert sorted(results[parent.pk]["cascaded"]) == sorted(t.pk for t in descendants)
    assert results[lone.pk]["outcome"] == "cancelled" and results[lone.pk]["cascaded"] == []
    assert Task.objects.filter(status=S.CANCELLED).count() == 5


def test_a_handler_whose_task_was_requested_before_it_started_is_not_run(world: dict[str, Stage]) -> None:
    """A heartbeat reports a request while the task waits for a slot: the slot doesn't run its handler."""
    calls: list[int] = []

    def handler(task: HandlerTask) -> None:
        calls.append(task.id)
        task.send("approved", {"ran": True})

    waiting = create(world["review"], amount=4)
    [row] = task_claim_rows(stage=world["review"], worker_id="probe", limit=1)
    view = HandlerTask(
        id=row.pk,
        type=row.type,
        payload=row.payload,
        stage=world["review"].slug,
        attempts=row.attempts,
        created_at=row.created_at,
        parent_id=None,
        _stage=world["review"],
        cancel_requested=False,
    )
    task_cancel(task_id=waiting.pk, actor="test")  # a request: the task is locked
    renewal = tasks_extend_locks_reporting(items=[(row.pk, row.lock_token)], lock_timeout=60)
    view.cancel_requested = waiting.pk in renewal.cancel_requested  # what the worker's heartbeat does

    outcome = run_handler(handler, view)

    assert view.cancel_requested is True
    assert calls == []
    assert outcome.kind == "ok" and outcome.sent == []
