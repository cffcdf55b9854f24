"""The due time (Stage.due_after, Stage.on_overdue; issue 16): overdue form tasks, the sweep, and every way in.

intake --order--> review (form: alice, bob, vera) --approved--> invoice; --declined--> notify (tests.support.work).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from tasks_app.limits import MAX_WAIT
from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import tasks_expire_locks
from tasks_app.services.due import (
    COUNT_CAP,
    DUE_ACTOR,
    due_candidates,
    due_overdue_by,
    due_q,
    overdue_counts,
    stage_due_overdue,
    tasks_due_sweep,
)
from tasks_app.services.form_stages import form_task_cancel, form_task_open, form_task_submit
from tasks_app.services.reminders import reminder_candidates
from tasks_app.services.workflow import workflow_dump
from tasks_app.worker import Worker
from tests.support.due import (
    api_refuses,
    arrived,
    dumped_with,
    kinds,
    load_file,
    model_errors,
    one_problem,
    people,
    round_trip,
)
from tests.support.pages import STAGE_URL, form_fields
from tests.support.plans import explain
from tests.support.users import logged_in, make_user
from tests.support.work import FormWorld, form_world

OVERDUE = TaskEvent.Kind.OVERDUE
DAY = 86400


def with_manager(world: FormWorld) -> FormWorld:
    """review --escalated--> manager (a form stage): where on_overdue="escalated" sends an overdue task."""
    manager = Stage.objects.create(slug="manager", name="Manager", kind=Stage.Kind.FORM)
    Transition.objects.create(source=world.review, target=manager, task_type="escalated")
    return world


@pytest.fixture
def fw(db: None) -> FormWorld:
    return with_manager(form_world())


def successors(task: Task) -> list[tuple[str, str]]:
    return sorted(Task.objects.filter(parent=task).values_list("stage__slug", "type"))


# -- the sweep --------------------------------------------------------------------------------


def test_an_overdue_task_is_flagged_once_and_stays_pending_without_on_overdue(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600)
    task = arrived(review, 2 * 3600)
    now = timezone.now()

    first = tasks_due_sweep(now=now)
    second = tasks_due_sweep(now=now + timedelta(minutes=5))

    assert first is not None and (first.flagged, first.escalated) == (1, 0)
    assert second is not None and second.flagged == 0
    task.refresh_from_db()
    assert task.status == Task.Status.PENDING and kinds(task) == ["created", OVERDUE]
    event = task.events.get(kind=OVERDUE)
    assert event.actor == DUE_ACTOR
    assert event.details["due_after"] == 3600 and event.details["late"] >= 3600 and event.details["on_overdue"] is None


def test_on_overdue_completes_the_task_with_reason_overdue_and_sends_it_on_once(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600, on_overdue="escalated")
    task = arrived(review, 2 * 3600, order_id=7)

    swept = tasks_due_sweep()
    again = tasks_due_sweep()

    assert swept is not None and (swept.flagged, swept.escalated) == (1, 1)
    assert again is not None and (again.flagged, again.escalated) == (0, 0)
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED and kinds(task) == ["created", OVERDUE, "completed"]
    completed = task.events.get(kind="completed")
    assert completed.actor == DUE_ACTOR and completed.details["reason"] == "overdue"
    [sent] = Task.objects.filter(parent=task)
    assert (sent.stage.slug, sent.type, sent.payload, sent.source_stage_id) == (
        "manager",
        "escalated",
        {"order_id": 7},
        review.pk,
    )
    assert completed.details["sent"] == [sent.pk]


def test_a_task_open_in_someones_hands_is_overdue_but_sent_on_only_after_they_release_it(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600, on_overdue="escalated")
    task = arrived(review, 2 * 3600)
    form_task_open(task=task, user=fw.alice)
    task = Task.objects.select_related("stage").get(pk=task.pk)
    assert due_overdue_by(task, timezone.now()) is not None  # opening does not stop the clock

    held = tasks_due_sweep()
    still_held = tasks_due_sweep()

    assert held is not None and (held.flagged, held.escalated, held.deferred) == (1, 0, 1)
    assert still_held is not None and still_held.flagged == 0
    task.refresh_from_db()
    assert task.status == Task.Status.LOCKED and successors(task) == []
    assert task.events.get(kind=OVERDUE).details | {"late": 0} == {
        "late": 0,
        "due_after": 3600,
        "on_overdue": "escalated",
        "deferred": True,
        "held_by": task.locked_by,
    }

    form_task_cancel(task_id=task.pk, user=fw.alice)  # handed back: pending, still overdue
    released = tasks_due_sweep()
    after = tasks_due_sweep()

    assert released is not None and (released.flagged, released.escalated) == (1, 1)
    assert after is not None and after.flagged == 0
    task.refresh_from_db()
    assert task.status == Task.Status.COMPLETED
    assert kinds(task) == ["created", OVERDUE, "released", OVERDUE, "completed"]
    assert successors(task) == [("manager", "escalated")]


def test_a_person_who_decides_first_wins_and_nothing_is_escalated(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600, on_overdue="escalated")
    task = arrived(review, 2 * 3600)
    form_task_open(task=task, user=fw.bob)
    tasks_due_sweep()

    form_task_submit(task_id=task.pk, user=fw.bob, type="approved", fields={})
    tasks_due_sweep()

    assert successors(task) == [("invoice", "approved")]
    assert kinds(task) == ["created", OVERDUE, "completed"]


def test_an_expired_lock_hands_the_task_back_to_the_escalation(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600, on_overdue="escalated")
    task = arrived(review, 2 * 3600)
    form_task_open(task=task, user=fw.alice)
    tasks_due_sweep()
    later = timezone.now() + timedelta(days=8)  # past the form's week-long lock

    tasks_expire_locks(now=later)
    swept = tasks_due_sweep(now=later)

    assert swept is not None and swept.escalated == 1
    assert successors(task) == [("manager", "escalated")]
    assert kinds(task) == ["created", OVERDUE, "lock_expired", OVERDUE, "completed"]


def test_a_refused_send_is_said_in_the_event_and_the_task_stays_overdue_once(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600, on_overdue="lost")  # no transition passes "lost"
    task = arrived(review, 2 * 3600)

    first = tasks_due_sweep()
    second = tasks_due_sweep()

    assert first is not None and (first.flagged, first.escalated) == (1, 0)
    assert second is not None and second.flagged == 0
    task = Task.objects.select_related("stage").get(pk=task.pk)
    assert task.status == Task.Status.PENDING and due_overdue_by(task, timezone.now()) is not None
    assert "lost" in task.events.get(kind=OVERDUE).details["error"]
    assert Task.objects.filter(parent=task).count() == 0


def test_tasks_before_their_due_time_finished_or_at_paused_stages_are_untouched(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600, on_overdue="escalated")
    young = arrived(review, 600)
    done = arrived(review, 2 * 3600)
    form_task_open(task=done, user=fw.alice)
    form_task_submit(task_id=done.pk, user=fw.alice, type="approved", fields={})

    swept = tasks_due_sweep()
    assert swept is not None and swept.flagged == 0
    assert kinds(young) == ["created"]

    late = arrived(review, 2 * 3600)
    Stage.objects.filter(pk=review.pk).update(is_paused=True)
    paused = tasks_due_sweep()
    assert paused is not None and paused.flagged == 0 and kinds(late) == ["created"]
    assert stage_due_overdue(review).count() == 1  # a pause stops escalation, not the clock


def test_the_query_rule_and_the_one_task_rule_agree(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600)
    now = timezone.now()
    tasks = [arrived(review, s, now=now) for s in (10, 3599, 3601, 7200)]
    form_task_open(task=tasks[3], user=fw.alice)  # open: still overdue
    form_task_open(task=tasks[2], user=fw.bob)
    form_task_submit(task_id=tasks[2].pk, user=fw.bob, type="approved", fields={})  # completed: not

    by_query = set(
        Task.objects.filter(stage=review).filter(due_q(due_after=3600, now=now)).values_list("id", flat=True)
    )
    by_task = {t.pk for t in Task.objects.select_related("stage").filter(stage=review) if due_overdue_by(t, now)}

    assert by_query == by_task == {tasks[3].pk}


def test_batches_are_bounded_and_a_full_one_asks_for_more(fw: FormWorld) -> None:
    review = people(fw.review, due_after=60, on_overdue="escalated")
    for n in range(5):
        arrived(review, 120, order_id=n)

    first = tasks_due_sweep(batch_size=3)
    second = tasks_due_sweep(batch_size=3)

    assert first is not None and (first.escalated, first.backlog) == (3, True)
    assert second is not None and (second.escalated, second.backlog) == (2, False)
    assert Task.objects.filter(stage__slug="manager").count() == 5


def test_the_worker_upkeep_flags_and_escalates(fw: FormWorld) -> None:
    review = people(fw.review, due_after=60, on_overdue="escalated")
    task = arrived(review, 120)

    swept, _ = Worker(listen=False).remind_and_escalate()

    assert swept is not None and swept.escalated == 1
    assert Task.objects.get(pk=task.pk).status == Task.Status.COMPLETED


def test_counts_take_both_rules_once_per_task(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600, max_wait=1800)
    arrived(review, 7200)  # past both: counted once
    arrived(review, 2000)  # past max_wait only
    opened = arrived(review, 7200)
    form_task_open(task=opened, user=fw.alice)  # open: past due_after (max_wait counts pending only)
    arrived(review, 60)

    assert overdue_counts([review, fw.intake]) == {review.pk: 3}


# -- entry paths: model, API and its schema, workflow file, admin, pages ------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"due_after": 0}, "due_after", "greater than or equal to 1"),
        ({"due_after": MAX_WAIT + 1}, "due_after", f"less than or equal to {MAX_WAIT}"),
        ({"on_overdue": "declined"}, "on_overdue", "needs a due_after"),
        ({"due_after": 60, "on_overdue": "x" * 101}, "on_overdue", "at most 100 characters"),
    ],
)
def test_the_model_refuses_bad_due_fields(fw: FormWorld, fields: dict[str, Any], field: str, message: str) -> None:
    assert message in " ".join(model_errors(fw.review, **fields)[field])


@pytest.mark.parametrize(("field", "value"), [("due_after", 60), ("on_overdue", "escalated"), ("remind_after", 600)])
def test_only_form_stages_have_a_due_time_or_reminders(fw: FormWorld, field: str, value: Any) -> None:
    assert "Only form stages" in model_errors(fw.intake, **{field: value})[field][0]


def test_the_api_shows_sets_and_refuses_the_due_fields(fw: FormWorld, admin: APIClient) -> None:
    assert api_refuses(admin, "review", {"due_after": 0}, "due_after")
    assert api_refuses(admin, "review", {"due_after": MAX_WAIT + 1}, "due_after")
    assert api_refuses(admin, "review", {"on_overdue": "declined"}, "on_overdue")
    assert api_refuses(admin, "intake", {"due_after": 60}, "due_after")  # a script stage
    assert Stage.objects.get(slug="review").due_after is None

    saved = admin.patch("/api/stages/review/", {"due_after": 86400, "on_overdue": "declined"}, format="json")

    assert saved.status_code == 200
    assert (saved.json()["due_after"], saved.json()["on_overdue"]) == (86400, "declined")
    assert admin.get("/api/stages/review/").json()["due_after"] == 86400
    assert api_refuses(admin, "review", {"due_after": None}, "on_overdue")  # on_overdue needs it


def test_the_openapi_schema_documents_the_four_fields_with_their_bounds() -> None:
    document = SchemaGenerator().get_schema(request=None, public=True)
    props = document["components"]["schemas"]["Stage"]["properties"]

    assert (props["due_after"]["minimum"], props["due_after"]["maximum"], props["due_after"]["nullable"]) == (
        1,
        MAX_WAIT,
        True,
    )
    assert (props["remind_after"]["minimum"], props["remind_after"]["maximum"]) == (60, MAX_WAIT)
    assert (props["remind_max"]["minimum"], props["remind_max"]["maximum"]) == (1, 10)
    assert props["on_overdue"]["type"] == "string"


def test_the_workflow_file_round_trips_the_due_time(fw: FormWorld, tmp_path: Path) -> None:
    people(fw.review, due_after=DAY, on_overdue="escalated")
    entry = next(s for s in workflow_dump()["stages"] if s["slug"] == "review")
    assert (entry["due_after"], entry["on_overdue"]) == (DAY, "escalated")

    review = round_trip("review", tmp_path, due_after=600, on_overdue="approved")

    assert (review.due_after, review.on_overdue) == (600, "approved")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"due_after": 0}, "due_after: Ensure this value is greater than or equal to 1."),
        ({"due_after": MAX_WAIT + 1}, f"due_after: Ensure this value is less than or equal to {MAX_WAIT}."),
        ({"due_after": "1d"}, "due_after must be a whole number of seconds or null (form stages), not a string"),
        ({"on_overdue": "declined"}, "on_overdue: An on_overdue type needs a due_after to be overdue after."),
        ({"due_after": 60, "on_overdue": 5}, "on_overdue must be a task type (a string), not a number"),
        ({"due_after": 60, "on_overdue": "lost"}, "on_overdue 'lost' has no route: no transition out of 'review'"),
        ({"kind": "script", "handler": "tests.handlers.noop", "due_after": 60}, "due_after: Only form stages"),
    ],
)
def test_bad_due_fields_in_a_workflow_file_are_one_line_each(db: None, fields: dict[str, Any], message: str) -> None:
    stage = {"slug": "review", "name": "Review", "kind": "form", **fields}

    assert message in one_problem(stage, [{"source": "review", "target": "review", "type": "declined"}])


def test_load_workflow_refuses_a_bad_due_time_and_changes_nothing(fw: FormWorld, tmp_path: Path) -> None:
    with pytest.raises(CommandError):
        load_file(dumped_with("review", due_after=-5), tmp_path)

    assert Stage.objects.get(slug="review").due_after is None


def test_the_admin_sets_the_due_time_in_its_people_fieldset_and_refuses_bad_values(fw: FormWorld) -> None:
    client = logged_in(make_user("boss", superuser=True))
    url = f"{STAGE_URL}{fw.review.pk}/change/"
    page = client.get(url).content.decode()
    assert ">People</h2>" in page and 'name="due_after"' in page and 'name="on_overdue"' in page
    data = form_fields(client, url, form_id="stage_form")

    for bad in ({"due_after": "", "on_overdue": "declined"}, {"due_after": "0"}, {"due_after": str(MAX_WAIT + 1)}):
        refused = client.post(url, {**data, **bad, "_save": "Save"})
        assert refused.status_code == 200 and "errorlist" in refused.content.decode(), bad
    assert Stage.objects.get(slug="review").due_after is None

    saved = client.post(url, {**data, "due_after": "86400", "on_overdue": "declined", "_save": "Save"})
    assert saved.status_code == 302
    review = Stage.objects.get(slug="review")
    assert (review.due_after, review.on_overdue) == (86400, "declined")


def test_the_stage_page_shows_the_due_time_and_counts_overdue_tasks(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600, on_overdue="escalated")
    arrived(review, 7200)
    arrived(review, 60)

    page = logged_in(make_user("boss", superuser=True)).get(f"/stages/{review.slug}/").content.decode()

    assert "3600 s after arrival, then sent on as <code>escalated</code>" in page
    assert '<span class="due-overdue-count">1 overdue</span>' in page


def test_my_work_shows_an_overdue_badge_on_overdue_tasks_and_their_count(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600)
    late = arrived(review, 7200)
    opened = arrived(review, 7300)
    young = arrived(review, 60)
    client = logged_in(fw.alice)
    client.post(f"/work/{opened.pk}/open/")
    assert Task.objects.get(pk=opened.pk).status == Task.Status.LOCKED

    page = client.get("/work/").content.decode()
    task_page = client.get(f"/work/{late.pk}/").content.decode()
    fresh_page = client.get(f"/work/{young.pk}/").content.decode()

    assert 'id="overdue-count"><span class="badge badge-overdue">2 overdue</span>' in page
    assert page.count(">Overdue</span>") == 2  # the waiting one and the one open by alice, not the young one
    mine = page[page.index('id="mine"') : page.index('id="waiting"')]
    assert ">Overdue</span>" in mine
    assert ">Overdue</span>" in task_page and ">Overdue</span>" not in fresh_page


def test_my_works_assigned_to_me_section_marks_an_overdue_task(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600)
    late, young = arrived(review, 7200), arrived(review, 60)
    Task.objects.filter(pk__in=[late.pk, young.pk]).update(assignee=fw.alice)

    page = logged_in(fw.alice).get("/work/").content.decode()

    assigned = page[page.index('id="assigned"') : page.index('id="mine"')]
    assert f'id="assigned-{late.pk}"' in assigned and f'id="assigned-{young.pk}"' in assigned
    assert assigned.count(">Overdue</span>") == 1


def test_the_overview_and_its_live_counts_show_the_overdue_count(fw: FormWorld) -> None:
    review = people(fw.review, due_after=3600)
    arrived(review, 7200)
    arrived(review, 7200)
    arrived(review, 60)
    client = logged_in(make_user("boss", superuser=True))

    page = client.get("/overview/").content.decode()
    counts = client.get("/overview/counts.json").json()

    assert 'data-count="overdue" title="Past the stage\'s due time or waiting-time limit">2 overdue</span>' in page
    assert counts["stages"]["review"]["overdue"] == 2 and counts["stages"]["review"]["text"]["overdue"] == "2 overdue"
    assert counts["stages"]["intake"]["overdue"] is None and "overdue" not in counts["stages"]["intake"]["text"]


def test_metrics_have_an_overdue_gauge_per_stage(fw: FormWorld, settings: Any) -> None:
    settings.TASKS_METRICS_TOKEN = "t0ken-t0ken-t0ken-t0ken"
    settings.TASKS_METRICS_CACHE = 0
    review = people(fw.review, due_after=3600)
    arrived(review, 7200)
    opened = arrived(review, 7200)
    form_task_open(task=opened, user=fw.alice)
    arrived(review, 60)

    body = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken-t0ken-t0ken-t0ken").content.decode()

    assert "# TYPE tasks_overdue_now gauge" in body
    assert 'tasks_overdue_now{stage="review"} 2.0' in body
    assert 'tasks_overdue_now{stage="intake"} 0.0' in body


# -- PostgreSQL: the plan ------------------------------------------------------------------------


def nodes_of(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in nodes_of(child))]


@pytest.mark.postgres
def test_the_sweep_and_the_count_read_the_claim_index_not_the_table(fw: FormWorld) -> None:
    review = people(fw.review, due_after=60, on_overdue="escalated")
    table, events = Task._meta.db_table, TaskEvent._meta.db_table
    with connection.cursor() as cur:
        # 50,000 finished tasks at the stage and 500 live ones (a fifth open), half of them overdue.
        cur.execute(
            f"""INSERT INTO {table} (stage_id, type, payload, status, created_at, updated_at, available_at, attempts,
                                   lock_token, locked_by, locked_until, completed_at, last_error)
            SELECT %(stage)s, 'order', '{{}}', s.status, now() - interval '1 second' * (50500 - i) / 2, now(),
                   now() - interval '1 day', 1, CASE WHEN s.status = 'locked' THEN 't' || i ELSE '' END,
                   CASE WHEN s.status = 'locked' THEN 'user:alice' ELSE '' END,
                   CASE WHEN s.status = 'locked' THEN now() + interval '1 hour' END,
                   CASE WHEN s.status = 'completed' THEN now() END, ''
            FROM generate_series(1, 50500) AS i, LATERAL (SELECT CASE WHEN i <= 50000 THEN 'completed'
                 WHEN i %% 5 = 0 THEN 'locked' ELSE 'pending' END AS status) AS s""",
            {"stage": review.pk},
        )
        # Their history, as a long-lived installation has it: created and completed, some released.
        cur.execute(
            f"""INSERT INTO {events} (task_id, kind, at, actor, details)
            SELECT t.id, k.kind, now(), 'w1', '{{}}' FROM {table} t,
                   (VALUES ('created'), ('completed'), ('released')) AS k(kind)"""
        )
        cur.execute(f"REINDEX TABLE {table}")  # this data's plan, whatever earlier tests left in the indexes
        cur.execute(f"ANALYZE {table}")
        cur.execute(f"ANALYZE {events}")
    try:
        sweep = due_candidates(review, now=timezone.now(), limit=200)
        count = Task.objects.filter(stage=review).filter(due_q(due_after=60, now=timezone.now())).order_by()
        count = count.values("id")[:COUNT_CAP]  # as overdue_counts counts

        # The task table is read through a partial index of live tasks only (never the 50,000 finished ones):
        # the sweeps (due times, reminders) through task_claim_idx, in its order (no sort); the count through
        # either live index, as the planner likes (with one stage they hold the same rows). The history is
        # probed through (task, id).
        remind = reminder_candidates(people(review, remind_after=60), queued=0, now=timezone.now(), limit=500)
        live_parts = {"task_claim_idx", "task_live_updated_idx"}
        for qs, indexes in ((sweep, {"task_claim_idx"}), (remind, {"task_claim_idx"}), (count, live_parts)):
            nodes = nodes_of(explain(*qs.query.sql_with_params()))
            on_task = [n for n in nodes if n.get("Relation Name") == table]
            assert on_task and all(n.get("Index Name") in indexes for n in on_task), nodes
            on_events = [n for n in nodes if n.get("Relation Name") == events]
            assert all(n.get("Index Name") == "taskevent_task_idx" for n in on_events), nodes
            assert not [n for n in nodes if "Sort" in n["Node Type"]], nodes
        with transaction.atomic():
            assert len(list(sweep)) == 200
        now = timezone.now()
        live = Task.objects.select_related("stage").filter(stage=review, status__in=["pending", "locked"])
        assert overdue_counts([review], now=now) == {review.pk: sum(1 for t in live if due_overdue_by(t, now))}
    finally:
        forget(review)


def forget(stage: Stage) -> None:
    """Delete the plan test's rows and ANALYZE again: ANALYZE's statistics (pg_class.reltuples) are not rolled
    back with the test, and later tests' estimated counts (the admin's paginator) would see 50,000 tasks."""
    table, events = Task._meta.db_table, TaskEvent._meta.db_table
    with connection.cursor() as cur:
        cur.execute(f"DELETE FROM {events} WHERE task_id IN (SELECT id FROM {table} WHERE stage_id = %s)", [stage.pk])
        cur.execute(f"DELETE FROM {table} WHERE stage_id = %s", [stage.pk])
        cur.execute(f"ANALYZE {table}")
        cur.execute(f"ANALYZE {events}")
