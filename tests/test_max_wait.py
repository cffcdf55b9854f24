"""The waiting-time limit (Stage.max_wait, Stage.on_timeout): overdue tasks, the sweep, and every way in.

intake --*--> review --approved--> ship, audit; --declined--> notify (tests.support.world).
"""

from __future__ import annotations

import io
import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import close_old_connections, connection, transaction
from django.test import Client
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from tasks_app.limits import MAX_WAIT
from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import counters as stage_counters
from tasks_app.services import task_claim, task_create, task_release, task_unclaim
from tasks_app.services.locks import LockKey, advisory_xact_lock
from tasks_app.services.waiting import (
    WAIT_ACTOR,
    WaitSweep,
    overdue_by,
    overdue_q,
    stage_overdue,
    tasks_wait_sweep,
    wait_candidates,
)
from tasks_app.services.workflow import workflow_dump, workflow_problems
from tasks_app.templatetags.task_extras import status_text
from tasks_app.worker import Worker
from tests.support.pages import LIST_URL, STAGE_URL, form_fields
from tests.support.threads import run_at_once
from tests.support.users import logged_in, make_user
from tests.support.world import make_world

WAIT = TaskEvent.Kind.WAIT_EXCEEDED


def limit(stage: Stage, max_wait: int | None, on_timeout: str = "") -> Stage:
    Stage.objects.filter(pk=stage.pk).update(max_wait=max_wait, on_timeout=on_timeout)
    stage.refresh_from_db()
    return stage


def arrived(stage: Stage, seconds_ago: float, **payload: Any) -> Task:
    return task_create(stage=stage, type="order", payload=payload, now=timezone.now() - timedelta(seconds=seconds_ago))


def kinds(task: Task) -> list[str]:
    return list(task.events.order_by("id").values_list("kind", flat=True))


# -- the sweep --------------------------------------------------------------------------------


def test_an_overdue_task_gets_one_event_and_stays_pending_without_on_timeout(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60)
    task = arrived(review, 120, amount=5)

    first = tasks_wait_sweep()
    second = tasks_wait_sweep()  # the next upkeep: nothing new to say

    assert first is not None and (first.flagged, first.timed_out) == (1, 0)
    assert second is not None and second.flagged == 0
    task.refresh_from_db()
    assert task.status == Task.Status.PENDING
    assert kinds(task) == ["created", WAIT]
    event = task.events.get(kind=WAIT)
    assert event.actor == WAIT_ACTOR
    assert event.details["max_wait"] == 60 and event.details["waited"] >= 120 and event.details["on_timeout"] is None
    task = Task.objects.select_related("stage").get(pk=task.pk)
    assert status_text(task, timezone.now()) == "Overdue · waiting 2 min, limit 60 s"


def test_on_timeout_completes_the_task_and_sends_it_on_through_routing(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60, on_timeout="approved")  # fans out to ship and audit
    task = arrived(review, 90, amount=7)

    swept = tasks_wait_sweep()
    tasks_wait_sweep()

    assert swept is not None and (swept.flagged, swept.timed_out) == (1, 1)
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED and task.completed_at is not None
    assert kinds(task) == ["created", WAIT, "completed"]
    completed = task.events.get(kind="completed")
    assert completed.actor == WAIT_ACTOR
    assert "over its max_wait of 60 s" in completed.details["reason"]
    successors = list(Task.objects.filter(parent=task).select_related("stage").order_by("stage__slug"))
    assert [(s.stage.slug, s.type, s.status, s.payload) for s in successors] == [
        ("audit", "approved", "pending", {"amount": 7}),
        ("ship", "approved", "pending", {"amount": 7}),
    ]
    assert sorted(completed.details["sent"]) == sorted(s.pk for s in successors)
    assert all(s.source_stage_id == review.pk and kinds(s) == ["created"] for s in successors)


def test_the_escalated_task_inherits_the_priority_as_any_send(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60, on_timeout="declined")
    task = arrived(review, 120)
    Task.objects.filter(pk=task.pk).update(priority=7)

    tasks_wait_sweep()

    assert Task.objects.get(parent=task).priority == 7


def test_tasks_under_the_limit_locked_or_not_yet_due_are_untouched(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60, on_timeout="declined")
    held = arrived(review, 600)
    task_claim(stage=review, worker_id="w1", limit=1, lock_timeout=300)  # a worker holds it
    young = arrived(review, 30)
    later = task_create(
        stage=review,
        type="order",
        payload={},
        now=timezone.now() - timedelta(seconds=600),
        available_at=timezone.now() + timedelta(hours=1),
    )

    swept = tasks_wait_sweep()

    assert swept is not None and swept.flagged == 0
    for task in (young, held, later):
        assert kinds(task) == ["created"]
    assert Task.objects.get(pk=held.pk).status == Task.Status.LOCKED
    assert not Task.objects.filter(stage=world["notify"]).exists()


def test_a_retry_keeps_its_arrival_time_and_its_backoff_counts(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60)
    task = arrived(review, 120)
    [claim] = task_claim(stage=review, worker_id="w1", limit=1)
    task_release(task_id=claim.pk, lock_token=claim.lock_token, error="boom", retry_in=0)

    tasks_wait_sweep()

    assert kinds(task) == ["created", "released", WAIT]


def test_a_scheduled_tasks_wait_begins_at_its_run_at_time_not_its_arrival(world: dict[str, Stage]) -> None:
    # Issue 15: a run-at time is a decision, not a wait. Scheduled 2 h ahead at a stage with a 1 h limit, a task
    # that has just become due is not overdue (the sweep used to send it on as on_timeout at once).
    review = limit(world["review"], 3600, on_timeout="declined")
    now = timezone.now()
    task = task_create(
        stage=review, type="order", payload={}, now=now - timedelta(hours=2), available_at=now - timedelta(seconds=1)
    )

    assert tasks_wait_sweep(now=now) == WaitSweep(flagged=0, timed_out=0)
    assert overdue_by(Task.objects.select_related("stage").get(pk=task.pk), now) is None
    swept = tasks_wait_sweep(now=now + timedelta(hours=1, seconds=1))  # an hour after it became due

    assert swept is not None and (swept.flagged, swept.timed_out) == (1, 1)
    event = task.events.get(kind=WAIT)
    assert 3600 < event.details["waited"] < 3610  # since its run-at time, not the 3 h since its arrival


def test_handing_a_scheduled_task_back_does_not_restart_its_wait(world: dict[str, Stage]) -> None:
    # task_unclaim (a person closing the form, a worker stopping before the handler ran) gives the attempt back
    # and leaves available_at as it was, so the wait still began at the run-at time.
    review = limit(world["review"], 3600)
    now = timezone.now()
    task = task_create(
        stage=review, type="order", payload={}, now=now - timedelta(hours=3), available_at=now - timedelta(hours=2)
    )
    [claim] = task_claim(stage=review, worker_id="w1", limit=1)
    task_unclaim(task_id=claim.pk, lock_token=claim.lock_token)
    task.refresh_from_db()
    assert (task.attempts, task.available_at) == (0, now - timedelta(hours=2))

    assert tasks_wait_sweep() == WaitSweep(flagged=1, timed_out=0)
    assert 7190 < task.events.get(kind=WAIT).details["waited"] < 7300


def test_a_retried_scheduled_task_waits_from_its_arrival_as_any_retry(world: dict[str, Stage]) -> None:
    # The rule's other half: once tried, a task's wait is counted from its arrival (its backoff counts).
    review = limit(world["review"], 3600)
    now = timezone.now()
    task_create(
        stage=review, type="order", payload={}, now=now - timedelta(hours=2), available_at=now - timedelta(seconds=5)
    )
    [claim] = task_claim(stage=review, worker_id="w1", limit=1)
    task_release(task_id=claim.pk, lock_token=claim.lock_token, error="boom", retry_in=0)

    assert tasks_wait_sweep() == WaitSweep(flagged=1, timed_out=0)


def test_a_refused_send_is_said_in_the_event_and_the_task_stays_pending_once(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60, on_timeout="escalate")  # no transition passes it (set past the checks)
    task = arrived(review, 120)

    tasks_wait_sweep()
    tasks_wait_sweep()

    task.refresh_from_db()
    assert task.status == Task.Status.PENDING
    assert kinds(task) == ["created", WAIT]
    assert "escalate" in task.events.get(kind=WAIT).details["error"]


def test_a_form_stage_times_out_like_any_other(world: dict[str, Stage]) -> None:
    decide = Stage.objects.create(slug="decide", name="Decide", kind=Stage.Kind.FORM, max_wait=3600)
    decide.outgoing.create(target=world["notify"], task_type="")
    limit(decide, 3600, on_timeout="no_decision")
    task = arrived(decide, 2 * 3600)

    tasks_wait_sweep()

    assert Task.objects.get(pk=task.pk).status == Task.Status.COMPLETED
    assert Task.objects.get(parent=task).type == "no_decision"


def test_paused_stages_are_not_swept_but_show_overdue(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60, on_timeout="declined")
    Stage.objects.filter(pk=review.pk).update(is_paused=True)
    task = arrived(review, 120)

    tasks_wait_sweep()

    assert kinds(task) == ["created"]
    assert stage_overdue(Stage.objects.get(pk=review.pk)).count() == 1


def test_batches_are_bounded_and_a_full_one_asks_for_more(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60)
    for _ in range(5):
        arrived(review, 120)

    first = tasks_wait_sweep(batch_size=3)
    second = tasks_wait_sweep(batch_size=3)

    assert first is not None and (first.flagged, first.backlog) == (3, True)
    assert second is not None and (second.flagged, second.backlog) == (2, False)
    assert TaskEvent.objects.filter(kind=WAIT).count() == 5


def test_the_query_rule_and_the_one_task_rule_agree(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60)
    now = timezone.now()
    arrived(review, 3600)
    task_claim(stage=review, worker_id="w1", limit=1)  # the hour-old one: held
    for seconds in (0, 30, 59, 61, 120):
        arrived(review, seconds)
    task_create(stage=review, type="order", payload={}, now=now - timedelta(hours=2), available_at=now + timedelta(1))
    for due_ago in (30, 61):  # scheduled, arrived 2 h ago, due since: only the one due 61 s ago waited too long
        task_create(
            stage=review,
            type="order",
            payload={},
            now=now - timedelta(hours=2),
            available_at=now - timedelta(seconds=due_ago),
        )

    by_query = set(
        Task.objects.filter(stage=review).filter(overdue_q(max_wait=60, now=now)).values_list("id", flat=True)
    )
    by_task = {t.pk for t in Task.objects.select_related("stage").filter(stage=review) if overdue_by(t, now)}

    assert by_query == by_task and len(by_query) == 3  # 120 s and 61 s since arrival, 61 s since its run-at time


def test_the_worker_upkeep_runs_the_sweep(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60, on_timeout="declined")
    task = arrived(review, 120)

    Worker(stage_slugs=["ship"], listen=False, progress_interval=0).run(once=True)

    assert Task.objects.get(pk=task.pk).status == Task.Status.COMPLETED
    assert Task.objects.filter(parent=task, stage=world["notify"]).count() == 1


# -- entry paths --------------------------------------------------------------------------------


def test_the_workflow_file_round_trips_the_limit(world: dict[str, Stage], tmp_path: Path) -> None:
    limit(world["review"], 3600, on_timeout="declined")
    dumped = workflow_dump()
    entry = next(s for s in dumped["stages"] if s["slug"] == "review")
    assert (entry["max_wait"], entry["on_timeout"]) == (3600, "declined")

    entry["max_wait"], entry["on_timeout"] = 600, "approved"
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(dumped))
    call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=io.StringIO())

    review = Stage.objects.get(slug="review")
    assert (review.max_wait, review.on_timeout) == (600, "approved")
    assert workflow_dump() == dumped


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_wait": 0}, "max_wait: Ensure this value is greater than or equal to 1."),
        ({"max_wait": 366 * 86400}, "max_wait: Ensure this value is less than or equal to 31536000."),
        ({"max_wait": "1h"}, "max_wait must be a whole number of seconds or null, not a string"),
        ({"on_timeout": "declined"}, "on_timeout: An on_timeout type needs a max_wait to time out after."),
        ({"max_wait": 60, "on_timeout": 5}, "on_timeout must be a task type (a string), not a number"),
        ({"max_wait": 60, "on_timeout": "lost"}, "on_timeout 'lost' has no route: no transition out of 'review'"),
    ],
)
def test_bad_limits_in_a_workflow_file_are_one_line_each(db: None, fields: dict[str, Any], message: str) -> None:
    data = {
        "version": 1,
        "stages": [{"slug": "review", "name": "Review", "handler": "tests.handlers.noop", **fields}],
        "transitions": [{"source": "review", "target": "review", "type": "declined"}],
    }

    problems = workflow_problems(data)

    assert len(problems) == 1 and problems[0].startswith("stages[0] (slug 'review'): ") and message in problems[0]


def test_load_workflow_refuses_a_bad_limit_and_changes_nothing(world: dict[str, Stage], tmp_path: Path) -> None:
    dumped = workflow_dump()
    next(s for s in dumped["stages"] if s["slug"] == "review")["max_wait"] = -5
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(dumped))

    with pytest.raises(CommandError):
        call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=io.StringIO())

    assert Stage.objects.get(slug="review").max_wait is None


def test_the_admin_sets_the_limit_and_refuses_bad_values(world: dict[str, Stage]) -> None:
    client = logged_in(make_user("boss", superuser=True))
    url = f"{STAGE_URL}{world['review'].pk}/change/"
    data = form_fields(client, url, form_id="stage_form")

    refused = client.post(url, {**data, "max_wait": "", "on_timeout": "declined", "_save": "Save"})
    assert refused.status_code == 200 and "needs a max_wait" in refused.content.decode()
    zero = client.post(url, {**data, "max_wait": "0", "_save": "Save"})
    assert zero.status_code == 200
    assert Stage.objects.get(slug="review").max_wait is None

    saved = client.post(url, {**data, "max_wait": "900", "on_timeout": "declined", "_save": "Save"})
    assert saved.status_code == 302
    review = Stage.objects.get(slug="review")
    assert (review.max_wait, review.on_timeout) == (900, "declined")


def test_the_api_shows_and_sets_the_limit(world: dict[str, Stage], admin: APIClient) -> None:
    assert admin.patch("/api/stages/review/", {"max_wait": 0}, format="json").status_code == 400
    refused = admin.patch("/api/stages/review/", {"on_timeout": "declined"}, format="json")
    assert refused.status_code == 400 and "on_timeout" in refused.json()
    assert Stage.objects.get(slug="review").max_wait is None

    response = admin.patch("/api/stages/review/", {"max_wait": 120, "on_timeout": "declined"}, format="json")

    assert response.status_code == 200
    assert (response.json()["max_wait"], response.json()["on_timeout"]) == (120, "declined")
    assert admin.get("/api/stages/review/").json()["max_wait"] == 120


def test_the_api_refuses_an_on_timeout_no_transition_passes(world: dict[str, Stage], admin: APIClient) -> None:
    # As a workflow file does (services.workflow): an on_timeout with no route could never send anything on.
    refused = admin.patch("/api/stages/review/", {"max_wait": 120, "on_timeout": "lost"}, format="json")
    assert refused.status_code == 400
    assert refused.json()["on_timeout"] == [
        "on_timeout 'lost' has no route: no transition out of 'review' passes that type. "
        "Add a transition out of 'review' with task type 'lost' (or blank) first."
    ]
    assert Stage.objects.get(slug="review").on_timeout == ""
    assert (
        admin.patch("/api/stages/review/", {"max_wait": 120, "on_timeout": "approved"}, format="json").status_code
        == 200
    )
    # A new stage has no transitions yet: its on_timeout comes after them.
    new = {"slug": "fresh", "name": "Fresh", "max_wait": 60, "on_timeout": "approved"}
    created = admin.post("/api/stages/", new, format="json")
    assert created.status_code == 400 and "has no route" in created.json()["on_timeout"][0]
    # A blank transition passes every type; an unchanged on_timeout is not checked again.
    Transition.objects.create(source=world["ship"], target=world["notify"], task_type="")
    assert (
        admin.patch("/api/stages/ship/", {"max_wait": 60, "on_timeout": "anything"}, format="json").status_code == 200
    )
    Transition.objects.filter(source=world["ship"]).delete()
    assert admin.patch("/api/stages/ship/", {"name": "Shipping"}, format="json").status_code == 200


def test_the_api_refuses_an_on_overdue_no_transition_passes(world: dict[str, Stage], admin: APIClient) -> None:
    Stage.objects.filter(slug="review").update(kind=Stage.Kind.FORM, handler="")
    refused = admin.patch("/api/stages/review/", {"due_after": 3600, "on_overdue": "lost"}, format="json")
    assert refused.status_code == 400 and "on_overdue 'lost' has no route" in refused.json()["on_overdue"][0]
    saved = admin.patch("/api/stages/review/", {"due_after": 3600, "on_overdue": "declined"}, format="json")
    assert saved.status_code == 200


def test_the_admin_refuses_an_on_timeout_no_transition_passes(world: dict[str, Stage]) -> None:
    client = logged_in(make_user("boss", superuser=True))
    url = f"{STAGE_URL}{world['review'].pk}/change/"
    data = form_fields(client, url, form_id="stage_form")

    refused = client.post(url, {**data, "max_wait": "900", "on_timeout": "lost", "_save": "Save"})
    assert refused.status_code == 200
    assert "on_timeout &#x27;lost&#x27; has no route" in refused.content.decode()
    assert Stage.objects.get(slug="review").on_timeout == ""

    # The route added in the same submit (the inline's empty row) counts.
    extra = next(k for k in data if k.endswith("-task_type") and not data[k])
    prefix = extra.removesuffix("-task_type")
    with_route = {**data, f"{prefix}-target": str(world["notify"].pk), f"{prefix}-task_type": "lost"}
    saved = client.post(url, {**with_route, "max_wait": "900", "on_timeout": "lost", "_save": "Save"})
    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert Stage.objects.get(slug="review").on_timeout == "lost"
    assert Transition.objects.filter(source=world["review"], task_type="lost").exists()


def test_the_stage_page_counts_overdue_tasks(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60)
    arrived(review, 120)
    arrived(review, 10)
    client = logged_in(make_user("boss", superuser=True))

    response = client.get(f"/stages/{review.slug}/")

    assert response.status_code == 200
    assert "1 overdue" in response.content.decode() and "60 s" in response.content.decode()


def test_the_task_list_and_task_page_say_overdue(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 3600)
    late = arrived(review, 2 * 3600)
    arrived(review, 60)
    client = logged_in(make_user("boss", superuser=True))

    listed = client.get(LIST_URL, {"stage": review.slug}).content.decode()
    shown = client.get(f"/tasks/{late.pk}/").content.decode()

    assert listed.count("Overdue · waiting 2 h, limit 60 min") == 1  # the young one is not
    assert "Overdue · waiting 2 h, limit 60 min" in shown


def test_metrics_count_overdue_tasks(world: dict[str, Stage], settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.TASKS_METRICS_TOKEN = "t0ken-t0ken-t0ken-t0ken"
    settings.TASKS_METRICS_CACHE = 0
    review = limit(world["review"], 60)
    arrived(review, 120)
    arrived(review, 120)
    tasks_wait_sweep()
    tasks_wait_sweep()
    monkeypatch.setattr(stage_counters, "SETTLE_SECONDS", 0.0)  # fold the events at once

    body = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken-t0ken-t0ken-t0ken").content.decode()

    assert 'tasks_overdue_total{stage="review"} 2.0' in body
    assert 'tasks_overdue_total{stage="ship"} 0.0' in body


# -- PostgreSQL: races and the plan ------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_upkeeps_at_once_act_once_on_each_task(db: None) -> None:
    world = make_world()
    review = limit(world["review"], 60, on_timeout="declined")
    quiet = limit(world["ship"], 60)
    tasks = [arrived(review, 120, n=n) for n in range(40)] + [arrived(quiet, 120, n=n) for n in range(40)]

    def upkeep() -> None:
        # Batches of 5: both threads sweep over and over, at the same time, until one pass of this
        # thread finds nothing left (None: the other one held the sweep lock).
        for _ in range(500):
            swept = tasks_wait_sweep(batch_size=5)
            if swept is not None and not swept.flagged:
                break

    errors = run_at_once(upkeep)
    close_old_connections()

    assert not errors
    # Each task acted on exactly once: one event, and for the on_timeout stage one successor.
    for task in tasks:
        assert kinds(task).count(WAIT) == 1
    assert Task.objects.filter(stage=world["notify"]).count() == 40
    assert Task.objects.filter(stage=review, status=Task.Status.COMPLETED).count() == 40
    assert Task.objects.filter(stage=quiet, status=Task.Status.PENDING).count() == 40


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_sweep_reads_the_claim_index_not_the_table(world: dict[str, Stage]) -> None:
    review = limit(world["review"], 60)
    table = Task._meta.db_table
    with connection.cursor() as cur:
        # 50,000 finished tasks at the stage and 500 live ones, half of them overdue.
        cur.execute(
            f"""INSERT INTO {table} (stage_id, type, payload, status, created_at, updated_at, available_at, attempts,
                                   lock_token, locked_by, completed_at, last_error)
            SELECT %(stage)s, 'order', '{{}}', CASE WHEN i <= 50000 THEN 'completed' ELSE 'pending' END,
                   now() - interval '1 second' * (50500 - i), now(), now() - interval '1 day', 1, '', '',
                   CASE WHEN i <= 50000 THEN now() END, ''
            FROM generate_series(1, 50500) AS i""",
            {"stage": review.pk},
        )
        # Their history: two events per task, as a long-lived installation has (the anti-join's other side).
        events = TaskEvent._meta.db_table
        cur.execute(
            f"""INSERT INTO {events} (task_id, kind, at, actor, details)
            SELECT t.id, k.kind, now(), 'w1', '{{}}' FROM {table} t, (VALUES ('created'), ('completed')) AS k(kind)"""
        )
        # Earlier tests leave dead entries in the indexes (a plan weighs index sizes): rebuild them for
        # this test (rolled back with it) so the plan is this data's, whatever ran before.
        cur.execute(f"REINDEX TABLE {table}")
        cur.execute(f"ANALYZE {table}")
        cur.execute(f"ANALYZE {events}")
    qs = wait_candidates(review, now=timezone.now(), limit=200)
    sql, params = qs.query.sql_with_params()

    with connection.cursor() as cur:
        cur.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        [(doc,)] = cur.fetchall()
    nodes = list(plan_nodes((json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]))

    # The task table is read through task_claim_idx (the stage's live tasks) only: no scan of the table,
    # nor of Django's index on stage_id (every task the stage ever had).
    on_task = [n for n in nodes if n.get("Relation Name") == table]
    assert on_task and all(n.get("Index Name") == "task_claim_idx" for n in on_task), nodes
    # The history is probed per candidate through its (task, id) index, and nothing sorts the candidates.
    on_events = [n for n in nodes if n.get("Relation Name") == TaskEvent._meta.db_table]
    assert on_events and all(n.get("Index Name") == "taskevent_task_idx" for n in on_events), nodes
    assert not [n for n in nodes if "Sort" in n["Node Type"]], nodes
    with transaction.atomic():
        assert len(list(qs)) == 200


def plan_nodes(plan: dict[str, Any]) -> Any:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_sweep_while_another_worker_sweeps_leaves_everything_to_it(db: None) -> None:
    world = make_world()
    review = limit(world["review"], 60, on_timeout="declined")
    task = arrived(review, 120)
    holding, done = threading.Event(), threading.Event()

    def other_worker() -> None:  # the expiry sweep (or a wait sweep) of another worker, mid-transaction
        try:
            with transaction.atomic():
                assert advisory_xact_lock(LockKey.SWEEP)
                holding.set()
                done.wait(timeout=30)
        finally:
            connection.close()

    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        assert holding.wait(timeout=30)
        swept = tasks_wait_sweep()
    finally:
        done.set()
        thread.join(timeout=30)

    assert swept is None
    assert kinds(task) == ["created"]
    assert tasks_wait_sweep() is not None  # its turn once the other one is done
    assert kinds(task) == ["created", WAIT, "completed"]


def test_the_openapi_schema_documents_max_wait_and_on_timeout_with_their_bounds() -> None:
    document = SchemaGenerator().get_schema(request=None, public=True)
    for name in ("Stage", "PatchedStage"):  # PUT/POST and PATCH
        props = document["components"]["schemas"][name]["properties"]
        max_wait = props["max_wait"]
        assert (max_wait["type"], max_wait["minimum"], max_wait["maximum"], max_wait["nullable"]) == (
            "integer",
            1,
            MAX_WAIT,
            True,
        )
        assert (props["on_timeout"]["type"], props["on_timeout"]["maxLength"]) == ("string", 100)
