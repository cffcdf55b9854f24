"""Dedupe on every arrival (issue 15): a stage's dedupe_on makes a duplicate arrival return the live task.

Every way a task arrives (create, bulk, send, a completion's successors, a hook, a form button, a job,
the API, the New task page, the admin) computes the key; a duplicate gets the pending or locked task
holding it, with a `deduplicated` event on that task and no `created` one. Retries, releases and
expiries are UPDATEs and never re-insert; a person's retry, duplicate or payload edit that would make
a second live task with the key is refused.
"""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.dedupe_keys import HASH_PREFIX, dedupe_key, dedupe_on_problems
from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import (
    Completion,
    TaskStateError,
    dedupe,
    task_claim,
    task_complete,
    task_create,
    task_create_idempotent,
    task_duplicate,
    task_fail,
    task_release,
    task_retry,
    tasks_complete_batch,
    tasks_complete_each,
    tasks_create_bulk,
    tasks_expire_locks,
    tasks_send_many,
)
from tasks_app.services import counters as stage_counters
from tasks_app.services.cancel import task_cancel
from tasks_app.services.form_stages import form_task_open, form_task_submit
from tasks_app.services.jobs import job_run_now
from tasks_app.services.lifecycle import task_unclaim
from tasks_app.services.operator import task_edit_payload
from tasks_app.services.routing import NewTask
from tasks_app.services.workflow import WorkflowInvalid, workflow_dump, workflow_load, workflow_problems
from tests.support.api import post
from tests.support.pages import form_fields, shown_messages
from tests.support.users import make_user
from tests.support.world import claim_one, kinds, nothing_written

S = Task.Status
E = TaskEvent.Kind


@pytest.fixture
def keyed(world: dict[str, Stage]) -> dict[str, Stage]:
    """The world with review and ship deduplicating on /order_id."""
    for slug in ("review", "ship"):
        Stage.objects.filter(slug=slug).update(dedupe_on=["/order_id"])
        world[slug].refresh_from_db()
    return world


def arrive(stage: Stage, order_id: Any = 1, type: str = "order", **extra: Any) -> Task:
    return task_create(stage=stage, type=type, payload={"order_id": order_id, **extra}, actor="test")


def live(stage: Stage) -> list[Task]:
    return list(Task.objects.filter(stage=stage, status__in=[S.PENDING, S.LOCKED]).order_by("id"))


def dedupe_events(task_id: int) -> list[dict[str, Any]]:
    return list(TaskEvent.objects.filter(task_id=task_id, kind=E.DEDUPLICATED).order_by("id").values_list(
        "details", flat=True))  # fmt: skip


# -- the key --------------------------------------------------------------------------------------


def test_the_key_is_the_canonical_json_of_the_pointed_values() -> None:
    assert dedupe_key([], {"a": 1}) == ""
    assert dedupe_key(["/a", "/b/c"], {"b": {"c": [1, {"y": 2, "x": 1}]}, "a": "é"}) == '["é",[1,{"x":1,"y":2}]]'
    assert dedupe_key(["/a"], {"a": 7}) == dedupe_key(["/a"], {"a": 7.0}) == "[7]"
    assert dedupe_key(["/a"], {"a": None}) == "[null]"  # an explicit null is a value
    assert dedupe_key(["/a"], {"b": 1}) == ""  # a missing pointer: no key, never deduplicated
    assert dedupe_key(["/a/1"], {"a": [5, 6]}) == "[6]" and dedupe_key(["/a/2"], {"a": [5, 6]}) == ""
    assert dedupe_key(["/a~1b", "/c~0d"], {"a/b": 1, "c~d": 2}) == "[1,2]"  # RFC 6901 escapes
    assert dedupe_key([""], {"z": 1, "a": 2}) == '[{"a":2,"z":1}]'  # "" is the whole payload
    long = dedupe_key(["/text"], {"text": "x" * 500})
    assert long.startswith(HASH_PREFIX) and len(long) == len(HASH_PREFIX) + 64
    assert long != dedupe_key(["/text"], {"text": "x" * 501})


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("/order_id", "must be a list"),
        (["order_id"], "must start with '/'"),
        (["/a~2"], "'~' must be followed by 0 or 1"),
        (["/" + "a" * 300], "the limit is 200"),
        ([1], "a JSON pointer is a string"),
        (["/a", "/a"], "names a pointer twice"),
        (["/a", "/b", "/c", "/d", "/e", "/f"], "the limit is 5"),
    ],
)
def test_bad_dedupe_on_values_are_refused_with_a_message(value: Any, fragment: str) -> None:
    problems = dedupe_on_problems(value)
    assert problems and fragment in "; ".join(problems)


def test_good_dedupe_on_values_pass() -> None:
    assert dedupe_on_problems([]) == [] and dedupe_on_problems(["/order_id", "/customer/email", ""]) == []


# -- the engine: create, idempotent create, bulk, send ------------------------------------------------


def test_a_duplicate_create_returns_the_live_task_with_a_deduplicated_event(keyed: dict[str, Stage]) -> None:
    first = arrive(keyed["review"], 42, note="first")
    again = task_create(stage=keyed["review"], type="order2", payload={"order_id": 42, "note": "x"}, actor="user:ann")
    assert again.pk == first.pk and again.deduplicated and not first.deduplicated
    assert again.payload == {"order_id": 42, "note": "first"}  # the live task, unchanged
    assert first.dedupe_key == "[42]" and Task.objects.get(pk=first.pk).dedupe_key == "[42]"
    assert len(live(keyed["review"])) == 1
    assert kinds(first.pk) == ["created", "deduplicated"]
    [event] = TaskEvent.objects.filter(task_id=first.pk, kind=E.DEDUPLICATED)
    assert event.actor == "user:ann"
    assert event.details == {"via": "create", "type": "order2", "same_payload": False}
    other = arrive(keyed["review"], 43)
    assert other.pk != first.pk and not other.deduplicated
    unkeyed = [arrive(keyed["review"], None).pk, task_create(stage=keyed["review"], type="o", payload={}).pk]
    assert arrive(keyed["review"], None).pk == unkeyed[0]  # null is a value
    assert task_create(stage=keyed["review"], type="o", payload={}).pk != unkeyed[1]  # no pointer: no key


def test_a_stage_without_dedupe_on_creates_every_arrival(world: dict[str, Stage]) -> None:
    a, b = arrive(world["review"], 1), arrive(world["review"], 1)
    assert a.pk != b.pk and a.dedupe_key == b.dedupe_key == ""


def test_the_key_is_per_stage(keyed: dict[str, Stage]) -> None:
    assert arrive(keyed["review"], 5).pk != arrive(keyed["ship"], 5).pk


@pytest.mark.parametrize("end", ["complete", "fail", "cancel"])
def test_the_key_frees_up_when_the_live_task_ends(keyed: dict[str, Stage], end: str) -> None:
    first = arrive(keyed["ship"], 9)
    held = claim_one(keyed["ship"])
    assert arrive(keyed["ship"], 9).pk == first.pk  # locked still holds the key
    if end == "complete":
        task_complete(task_id=held.pk, lock_token=held.lock_token)
    elif end == "fail":
        task_fail(task_id=held.pk, lock_token=held.lock_token, error="no")
    else:
        task_cancel(task_id=held.pk, actor="user:ann")
        task_complete(task_id=held.pk, lock_token=held.lock_token)  # a cancel request ends it cancelled
    assert Task.objects.get(pk=first.pk).status in (S.COMPLETED, S.FAILED, S.CANCELLED)
    second = arrive(keyed["ship"], 9)
    assert second.pk != first.pk and not second.deduplicated
    assert kinds(second.pk) == ["created"]


def test_idempotent_create_says_not_created_for_a_duplicate(keyed: dict[str, Stage]) -> None:
    first = arrive(keyed["review"], 3)
    task, created = task_create_idempotent(
        stage=keyed["review"], type="order", payload={"order_id": 3}, idempotency_key="k1"
    )
    assert (task.pk, created) == (first.pk, False)


def test_bulk_collapses_duplicates_within_the_batch_and_against_live_tasks(keyed: dict[str, Stage]) -> None:
    existing = arrive(keyed["review"], 1)
    review, ship = keyed["review"], keyed["ship"]
    out = tasks_create_bulk(
        items=[
            NewTask(review, "order", {"order_id": 1}),
            NewTask(review, "order", {"order_id": 2}),
            NewTask(review, "order", {"order_id": 2, "again": True}),
            NewTask(ship, "order", {"order_id": 2}),
            NewTask(review, "order", {"other": 1}),
        ],
        actor="api",
    )
    assert [t.deduplicated for t in out] == [True, False, True, False, False]
    assert out[0].pk == existing.pk and out[2].pk == out[1].pk
    assert len({t.pk for t in out}) == 4
    assert Task.objects.count() == 4
    assert [d["via"] for d in dedupe_events(existing.pk)] == ["bulk"]
    assert kinds(out[1].pk) == ["created", "deduplicated"]


def test_sends_collapse_within_one_call_and_name_their_sender(keyed: dict[str, Stage]) -> None:
    out = tasks_send_many(
        stage=keyed["intake"],
        sends=[("order", {"order_id": 8}), ("order", {"order_id": 8, "b": 1}), ("order", {"order_id": 9})],
        actor="hook:intake",
    )
    assert [t.deduplicated for t in out] == [False, True, False] and out[0].pk == out[1].pk
    assert Task.objects.filter(stage=keyed["review"]).count() == 2
    [details] = dedupe_events(out[0].pk)
    assert details == {"via": "send", "type": "order", "same_payload": False, "from_stage": "intake"}


# -- a completion's successors (handlers, the worker, the API complete, form buttons) -------------------


def test_a_completions_successor_with_a_live_key_is_that_task(keyed: dict[str, Stage]) -> None:
    waiting = arrive(keyed["ship"], 77)
    arrive(keyed["review"], 77)  # the sender (review's key is its own)
    held = claim_one(keyed["review"])
    sent = task_complete(
        task_id=held.pk,
        lock_token=held.lock_token,
        send=[("approved", {"order_id": 77}), ("approved", {"order_id": 78})],
    )
    # approved goes to ship (dedupes on /order_id) and audit (doesn't): 77 twice -> one at ship, two at audit
    at_ship = [t for t in sent if t.stage_id == keyed["ship"].pk]
    assert [(t.pk == waiting.pk, t.deduplicated) for t in at_ship] == [(True, True), (False, False)]
    assert Task.objects.filter(stage=keyed["ship"]).count() == 2
    assert Task.objects.filter(stage=keyed["audit"]).count() == 2
    completed = TaskEvent.objects.get(task_id=held.pk, kind=E.COMPLETED)
    assert completed.details["sent"] == [t.pk for t in sent]
    assert completed.details["deduplicated"] == [waiting.pk]
    assert kinds(waiting.pk) == ["created", "deduplicated"]
    [details] = dedupe_events(waiting.pk)
    assert details["via"] == "complete" and details["parent"] == held.pk
    assert TaskEvent.objects.get(task_id=waiting.pk, kind=E.DEDUPLICATED).actor == "w"


def test_two_completions_of_one_batch_sending_the_same_key_make_one_task(keyed: dict[str, Stage]) -> None:
    for n in (1, 2):
        arrive(keyed["review"], n)
    a, b = task_claim(stage=keyed["review"], worker_id="w", limit=2)
    items = [Completion(t.pk, t.lock_token, [("approved", {"order_id": 5})]) for t in (a, b)]
    outcomes = list(tasks_complete_each(items=items))
    [first] = [c for c in outcomes[0].successors if c.stage_id == keyed["ship"].pk]
    [second] = [c for c in outcomes[1].successors if c.stage_id == keyed["ship"].pk]
    assert first.pk == second.pk and (first.deduplicated, second.deduplicated) == (False, True)
    assert second.parent_id == a.pk  # the live task's own sender; the outcome is still b's
    assert Task.objects.filter(stage=keyed["ship"]).count() == 1


def test_a_batch_completion_result_lists_each_senders_successors(keyed: dict[str, Stage]) -> None:
    arrive(keyed["ship"], 1)
    arrive(keyed["review"], 10)
    [held] = task_claim(stage=keyed["review"], worker_id="w")
    result = tasks_complete_batch(items=[Completion(held.pk, held.lock_token, [("approved", {"order_id": 1})])])
    assert [t.deduplicated for t in result.sent[held.pk]] == [True, False]  # ship (live), audit (new)


def test_a_form_button_send_is_deduplicated(db: None) -> None:
    group = Group.objects.create(name="clerks")
    form = Stage.objects.create(slug="triage", name="Triage", kind=Stage.Kind.FORM)
    form.groups.add(group)
    out = Stage.objects.create(slug="out", name="Out", handler="tests.handlers.noop", dedupe_on=["/order_id"])
    Transition.objects.create(source=form, target=out, task_type="")
    user = make_user("ann", "view_task", "change_task")
    user.groups.add(group)
    first, second = (task_create(stage=form, type="t", payload={"order_id": 4, "n": n}) for n in (1, 2))
    sent_ids = []
    for task in (first, second):
        form_task_open(task=task, user=user)
        [sent] = form_task_submit(task_id=task.pk, user=user, type="done", fields={})
        sent_ids.append((sent.pk, sent.deduplicated))
    assert sent_ids[1] == (sent_ids[0][0], True)
    assert Task.objects.filter(stage=out).count() == 1
    assert dedupe_events(sent_ids[0][0])[0]["parent"] == second.pk


def test_a_jobs_send_is_deduplicated(world: dict[str, Stage]) -> None:
    job = Stage.objects.create(
        slug="nightly", name="Nightly", kind=Stage.Kind.JOB, schedule="0 3 * * *", handler="tests.handlers.digest"
    )
    Transition.objects.create(source=job, target=world["ship"], task_type="")
    Stage.objects.filter(slug="ship").update(dedupe_on=["/count"])
    first = job_run_now(stage=job, worker_id="s")
    second = job_run_now(stage=job, worker_id="s", now=timezone.now() + timedelta(seconds=2))
    assert first is not None and second is not None
    [digest] = Task.objects.filter(stage=world["ship"])
    assert (first.tasks_sent, second.tasks_sent) == (1, 0)
    assert [d["via"] for d in dedupe_events(digest.pk)] == ["send"]
    assert TaskEvent.objects.get(task_id=digest.pk, kind=E.DEDUPLICATED).actor == "job:nightly"


def test_a_hook_answers_which_tasks_were_already_live(keyed: dict[str, Stage]) -> None:
    hook = keyed["intake"]

    def send(order_id: int) -> Any:
        return APIClient().generic(
            "POST", "/hooks/intake/?type=order", json.dumps({"order_id": order_id}).encode(),
            content_type="application/json", headers={"X-Hook-Token": hook.hook_secret},
        )  # fmt: skip

    first = send(11).json()
    again = send(11)
    assert again.status_code == 202
    assert again.json() == {"tasks": first["tasks"], "deduplicated": first["tasks"]}
    assert first["deduplicated"] == []
    assert Task.objects.filter(stage=keyed["review"]).count() == 1
    assert TaskEvent.objects.get(task_id=first["tasks"][0], kind=E.DEDUPLICATED).actor == "hook:intake"


# -- retries, releases, expiries: UPDATEs, never a second row ---------------------------------------------


def test_releases_expiries_and_unclaims_keep_the_one_task(keyed: dict[str, Stage]) -> None:
    task = arrive(keyed["ship"], 1)
    held = claim_one(keyed["ship"])
    task_release(task_id=held.pk, lock_token=held.lock_token, error="again", retry_in=0)
    held = claim_one(keyed["ship"])
    task_unclaim(task_id=held.pk, lock_token=held.lock_token)
    [held] = task_claim(stage=keyed["ship"], worker_id="w", lock_timeout=1)
    assert tasks_expire_locks(now=timezone.now() + timedelta(seconds=5)) == 1
    assert [t.pk for t in Task.objects.filter(stage=keyed["ship"])] == [task.pk]
    assert Task.objects.get(pk=task.pk).status == S.PENDING and Task.objects.get(pk=task.pk).dedupe_key == "[1]"
    assert arrive(keyed["ship"], 1).pk == task.pk  # still the one holding the key


def test_the_index_refuses_a_second_live_task_with_a_key(keyed: dict[str, Stage]) -> None:
    task = arrive(keyed["ship"], 1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.create(stage=keyed["ship"], type="x", payload={}, dedupe_key=task.dedupe_key)


# -- people: retry, duplicate, payload edit ----------------------------------------------------------------


@pytest.fixture
def conflict(keyed: dict[str, Stage]) -> tuple[Task, Task]:
    """A failed task with key [1] at ship, and a live one that arrived since with the same key."""
    arrive(keyed["ship"], 1)
    held = claim_one(keyed["ship"])
    task_fail(task_id=held.pk, lock_token=held.lock_token, error="broke")
    newer = arrive(keyed["ship"], 1)
    assert newer.pk != held.pk
    return Task.objects.get(pk=held.pk), newer


def test_retrying_a_failed_task_while_its_key_is_live_is_refused(conflict: tuple[Task, Task]) -> None:
    failed, newer = conflict
    with nothing_written(), pytest.raises(TaskStateError, match=f"task {newer.pk} is live at stage 'ship'"):
        task_retry(task_id=failed.pk, actor="user:ann")
    task_cancel(task_id=newer.pk, actor="user:ann")
    task_retry(task_id=failed.pk, actor="user:ann")  # the key is free again
    assert Task.objects.get(pk=failed.pk).status == S.PENDING


def test_retry_refusals_on_the_task_page_the_bulk_action_the_api_and_the_admin(
    conflict: tuple[Task, Task], admin_client: Client, operator: APIClient
) -> None:
    failed, newer = conflict
    with nothing_written():
        page = admin_client.post(f"/tasks/{failed.pk}/retry/", follow=True)
        assert any(f"task {newer.pk} is live" in text for _, text in shown_messages(page))
        bulk = admin_client.post(
            "/tasks/bulk/",
            {"action": "retry", "scope": "selected", "ids": [failed.pk], "query": "", "confirm": "1"},
            follow=True,
        )
        [(_, text)] = shown_messages(bulk)
        assert "1 skipped" in text and "same dedupe key" in text
        api = post(operator, f"/api/tasks/{failed.pk}/retry/")
        assert api.status_code == 409 and f"task {newer.pk} is live" in api.json()["detail"]
        changelist = admin_client.post(
            "/admin/tasks_app/task/", {"action": "retry", "_selected_action": [failed.pk]}, follow=True
        )
        assert changelist.status_code == 200
        assert any(f"task {newer.pk} is live" in str(m) for m in changelist.context["messages"])


def test_duplicating_a_live_keyed_task_is_refused(keyed: dict[str, Stage]) -> None:
    task = arrive(keyed["ship"], 1)
    with nothing_written(), pytest.raises(TaskStateError, match="Cannot duplicate"):
        task_duplicate(task_id=task.pk, actor="user:ann")
    plain = arrive(keyed["audit"], 1)
    assert task_duplicate(task_id=plain.pk, actor="user:ann").pk != plain.pk


def test_a_payload_edit_recomputes_the_key_and_is_refused_on_a_live_clash(keyed: dict[str, Stage]) -> None:
    one, two = arrive(keyed["ship"], 1), arrive(keyed["ship"], 2)
    task_edit_payload(task_id=two.pk, payload={"order_id": 3}, actor="user:ann")
    assert Task.objects.get(pk=two.pk).dedupe_key == "[3]"
    assert arrive(keyed["ship"], 2).pk not in (one.pk, two.pk)  # 2 is free now
    with nothing_written(), pytest.raises(TaskStateError, match=f"task {one.pk} is live"):
        task_edit_payload(task_id=two.pk, payload={"order_id": 1}, actor="user:ann")


# -- the API -----------------------------------------------------------------------------------------------


def test_api_create_answers_200_with_the_live_task_and_says_so(keyed: dict[str, Stage], operator: APIClient) -> None:
    body = {"stage": "review", "type": "order", "payload": {"order_id": 5}}
    first = post(operator, "/api/tasks/", body)
    assert first.status_code == 201 and first.json()["deduplicated"] is False
    assert first.json()["dedupe_key"] == "[5]"
    again = post(operator, "/api/tasks/", {**body, "payload": {"order_id": 5, "x": 1}})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["deduplicated"] is True
    assert again.json()["payload"] == {"order_id": 5}
    shown = operator.get(f"/api/tasks/{first.json()['id']}/").json()
    assert shown["deduplicated"] is False  # the flag belongs to an arrival's answer


def test_api_bulk_answers_per_item(keyed: dict[str, Stage], operator: APIClient) -> None:
    live_one = arrive(keyed["review"], 1)
    items = [{"stage": "review", "type": "order", "payload": {"order_id": n}} for n in (1, 2, 2)]
    response = post(operator, "/api/tasks/bulk/", {"tasks": items})
    assert response.status_code == 201
    out = response.json()
    assert [t["deduplicated"] for t in out] == [True, False, True]
    assert out[0]["id"] == live_one.pk and out[1]["id"] == out[2]["id"]
    again = post(operator, "/api/tasks/bulk/", {"tasks": items[:2]})
    assert again.status_code == 200 and [t["deduplicated"] for t in again.json()] == [True, True]


def test_api_stage_send_and_complete_say_which_were_deduplicated(keyed: dict[str, Stage], admin: APIClient) -> None:
    first = post(admin, "/api/stages/intake/send/", {"type": "order", "payload": {"order_id": 6}})
    assert first.status_code == 201
    again = post(admin, "/api/stages/intake/send/", {"type": "order", "payload": {"order_id": 6}})
    assert again.status_code == 200 and again.json()[0]["id"] == first.json()[0]["id"]
    assert again.json()[0]["deduplicated"] is True
    waiting = arrive(keyed["ship"], 6)
    [claimed] = post(admin, "/api/stages/review/claim/", {"limit": 1}).json()
    done = post(
        admin,
        f"/api/tasks/{claimed['id']}/complete/",
        {"lock_token": claimed["lock_token"], "send": [{"type": "approved", "payload": {"order_id": 6}}]},
    )
    assert done.status_code == 200
    assert [(t["stage"], t["deduplicated"]) for t in done.json()] == [("ship", True), ("audit", False)]
    assert done.json()[0]["id"] == waiting.pk


def test_api_bulk_complete_says_which_sent_tasks_were_deduplicated(keyed: dict[str, Stage], admin: APIClient) -> None:
    waiting = arrive(keyed["ship"], 6)
    for n in (1, 2):
        arrive(keyed["review"], n)
    a, b = post(admin, "/api/stages/review/claim/", {"limit": 2}).json()
    body = {
        "tasks": [
            {"id": a["id"], "lock_token": a["lock_token"], "send": [{"type": "approved", "payload": {"order_id": 6}}]},
            {"id": b["id"], "lock_token": b["lock_token"], "send": [{"type": "approved", "payload": {"order_id": 7}}]},
        ]
    }

    response = post(admin, "/api/tasks/bulk-complete/", body)

    assert response.status_code == 200, response.content
    first, second = response.json()["results"]
    # approved goes to ship (dedupes on /order_id: 6 is live) and audit (no key): one live, one new each
    at_ship = Task.objects.get(stage=keyed["ship"], payload__order_id=7)
    at_audit = dict(Task.objects.filter(stage=keyed["audit"]).values_list("payload__order_id", "id"))
    assert first == {
        "id": a["id"],
        "status": "completed",
        "sent": [waiting.pk, at_audit[6]],
        "deduplicated": [waiting.pk],
    }
    assert second == {"id": b["id"], "status": "completed", "sent": [at_ship.pk, at_audit[7]], "deduplicated": []}
    assert Task.objects.filter(stage=keyed["ship"], payload__order_id=6).count() == 1


def test_api_stage_fields_take_dedupe_on_and_refuse_bad_values(world: dict[str, Stage], admin: APIClient) -> None:
    ok = admin.patch("/api/stages/ship/", {"dedupe_on": ["/order_id", "/sku"]}, format="json")
    assert ok.status_code == 200 and ok.json()["dedupe_on"] == ["/order_id", "/sku"]
    with nothing_written():
        for bad in (["order_id"], "/x", [["/a"]], ["/a"] * 2):
            response = admin.patch("/api/stages/ship/", {"dedupe_on": bad}, format="json")
            assert response.status_code == 400, bad
            assert "dedupe_on" in response.json()


# -- the monitoring pages and the admin ----------------------------------------------------------------------


def test_the_new_task_page_goes_to_the_live_task_and_says_nothing_was_created(
    keyed: dict[str, Stage], admin_client: Client
) -> None:
    live_one = arrive(keyed["review"], 12)
    form = {"stage": "review", "type": "order", "payload": '{"order_id": 12}', "priority": "", "run_at": ""}
    response = admin_client.post("/tasks/new/", form, follow=True)
    assert response.redirect_chain == [(f"/tasks/{live_one.pk}/", 302)]
    [(level, text)] = shown_messages(response)
    assert level == "info" and f"Nothing created: task {live_one.pk}" in text
    assert Task.objects.count() == 1
    page = response.content.decode()
    assert "Dedupe key" in page and "[12]" in page and "Deduplicated" in page


def test_the_admin_add_task_form_says_nothing_was_created(keyed: dict[str, Stage], admin_client: Client) -> None:
    live_one = arrive(keyed["review"], 13)
    add = "/admin/tasks_app/task/add/"
    data = form_fields(admin_client, add)
    data.update(stage=str(keyed["review"].pk), type="order", payload='{"order_id": 13}', _save="Save")
    response = admin_client.post(add, data, follow=True)
    assert response.status_code == 200
    assert any(f"Nothing created: task {live_one.pk}" in str(m) for m in response.context["messages"])
    assert Task.objects.count() == 1


def test_the_stage_page_shows_the_pointers(keyed: dict[str, Stage], admin_client: Client) -> None:
    page = admin_client.get("/stages/review/").content.decode()
    assert "Dedupe on" in page and "<code>/order_id</code>" in page


def test_the_admin_stage_form_refuses_a_bad_dedupe_on(world: dict[str, Stage], admin_client: Client) -> None:
    page = admin_client.get(f"/admin/tasks_app/stage/{world['ship'].pk}/change/")
    assert page.status_code == 200 and "dedupe_on" in page.content.decode()
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "groups"}
    data |= {"schemas": "{}", "dedupe_on": '["order_id"]', "outgoing-TOTAL_FORMS": "0", "outgoing-INITIAL_FORMS": "0"}
    with nothing_written():
        response = admin_client.post(f"/admin/tasks_app/stage/{world['ship'].pk}/change/", data)
    assert response.status_code == 200
    assert "must start with &#x27;/&#x27;" in response.content.decode()
    data["dedupe_on"] = '["/order_id"]'
    response = admin_client.post(f"/admin/tasks_app/stage/{world['ship'].pk}/change/", data)
    assert response.status_code == 302
    assert Stage.objects.get(slug="ship").dedupe_on == ["/order_id"]


# -- the workflow file --------------------------------------------------------------------------------------


def test_the_workflow_file_round_trips_dedupe_on(keyed: dict[str, Stage]) -> None:
    data = workflow_dump()
    by_slug = {s["slug"]: s for s in data["stages"]}
    assert by_slug["review"]["dedupe_on"] == ["/order_id"] and by_slug["audit"]["dedupe_on"] == []
    by_slug["audit"]["dedupe_on"] = ["/sku", "/a~1b"]
    workflow_load(data)
    assert Stage.objects.get(slug="audit").dedupe_on == ["/sku", "/a~1b"]
    assert workflow_dump() == data


def test_a_workflow_file_with_a_bad_dedupe_on_is_refused_with_one_line(keyed: dict[str, Stage]) -> None:
    data = workflow_dump()
    data["stages"][0]["dedupe_on"] = ["sku"]
    data["stages"][1]["dedupe_on"] = "/sku"
    problems = workflow_problems(data)
    assert any("dedupe_on" in p and "must start with '/'" in p for p in problems)
    assert any("dedupe_on" in p and "an array of JSON pointers" in p for p in problems)
    with nothing_written(), pytest.raises(WorkflowInvalid):
        workflow_load(data)


# -- /metrics ---------------------------------------------------------------------------------------------


def test_metrics_count_deduplicated_arrivals_per_stage(
    keyed: dict[str, Stage], admin_client: Client, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.TASKS_METRICS_CACHE = 0
    monkeypatch.setattr(stage_counters, "SETTLE_SECONDS", 0.0)
    for _ in range(3):
        arrive(keyed["review"], 1)
    arrive(keyed["ship"], 1)
    body = admin_client.get("/metrics").content.decode()
    assert 'tasks_deduplicated_total{stage="review"} 2.0' in body
    assert 'tasks_deduplicated_total{stage="ship"} 0.0' in body
    assert 'tasks_created_total{stage="review"} 1.0' in body


def test_a_live_task_that_ends_between_the_insert_and_the_look_up_lets_the_arrival_in(
    keyed: dict[str, Stage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race test_dedupe_race_pg.py runs with processes, made to happen every time: the holder of the key
    completes after the INSERT skipped the arrival and before the look-up, so the arrival is inserted again."""
    holder = arrive(keyed["ship"], 1)
    real_live = dedupe._live
    calls = []

    def holder_ends_first(keys: set[tuple[int, str]]) -> dict[tuple[int, str], Task]:
        if not calls:
            Task.objects.filter(pk=holder.pk).update(status=S.COMPLETED, completed_at=timezone.now())
        calls.append(keys)
        return real_live(keys)

    monkeypatch.setattr(dedupe, "_live", holder_ends_first)
    again = arrive(keyed["ship"], 1)
    assert len(calls) == 1 and again.pk != holder.pk and not again.deduplicated
    assert kinds(again.pk) == ["created"] and kinds(holder.pk) == ["created"]


def test_the_create_task_command_says_nothing_was_created(keyed: dict[str, Stage]) -> None:
    live_one = arrive(keyed["review"], 21)
    out = StringIO()
    call_command("create_task", "review", "order", "--payload", '{"order_id": 21}', stdout=out)
    assert (
        out.getvalue().strip()
        == f"task {live_one.pk} at review is live with this payload's dedupe key: nothing created"
    )
    assert Task.objects.count() == 1
