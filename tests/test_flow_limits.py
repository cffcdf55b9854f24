"""A stage's concurrency cap and rate limit (Stage.max_concurrency, Stage.rate_limit): the claim, and every way in.

intake --*--> review --approved--> ship, audit; --declined--> notify (tests.support.world).
The race tests with real processes are tests/test_flow_limits_race_pg.py.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.models import DecisionLinkUse, JobRun, Stage, StageGate, Task, Transition
from tasks_app.services import claim as claim_module
from tasks_app.services import (
    task_claim,
    task_complete,
    task_create,
    task_fail,
    task_release,
    tasks_expire_locks,
)
from tasks_app.services.cancel import task_cancel
from tasks_app.services.claim import claim_params
from tasks_app.services.complete import Completion
from tasks_app.services.decision_links import LinkRefused, decision_link_use
from tasks_app.services.decision_tokens import link_url
from tasks_app.services.errors import TaskStateError
from tasks_app.services.flow_limits import CAP_PAUSE, RUNNING_SQL, throttle_pause, throttled_counts, window_start
from tasks_app.services.form_stages import form_task_cancel, form_task_open
from tasks_app.services.jobs import job_run_now
from tasks_app.services.pipeline import tasks_complete_and_claim
from tasks_app.services.workflow import workflow_dump, workflow_problems
from tasks_app.worker import Worker
from tests.support.pages import STAGE_URL, form_fields
from tests.support.plans import explain
from tests.support.users import logged_in, make_user
from tests.support.work import form_world, sent_order
from tests.support.world import kinds

# A fixed instant 10 s into a minute: windows of a second and a minute are easy to step through.
T0 = datetime(2026, 12, 1, 12, 0, 10, tzinfo=UTC)


def limited(stage: Stage, *, cap: int | None = None, rate: str = "") -> Stage:
    Stage.objects.filter(pk=stage.pk).update(max_concurrency=cap, rate_limit=rate)
    stage.refresh_from_db()
    return stage


def backlog(stage: Stage, n: int, now: datetime | None = None) -> list[Task]:
    return [task_create(stage=stage, type="order", payload={"n": i}, now=now) for i in range(n)]


def locked_at(stage: Stage) -> int:
    return Task.objects.filter(stage=stage, status=Task.Status.LOCKED).count()


def throttled(stage: Stage) -> int:
    return throttled_counts().get(stage.pk, 0)


# -- the cap ---------------------------------------------------------------------------------------


def test_the_cap_holds_for_a_claim_of_many_and_of_one(review: Stage) -> None:
    limited(review, cap=3)
    backlog(review, 10)

    many = task_claim(stage=review, worker_id="w1", limit=10)
    one = task_claim(stage=review, worker_id="w2", limit=1)

    assert len(many) == 3 and one == []
    assert locked_at(review) == 3
    assert [t.payload["n"] for t in many] == [0, 1, 2]  # still the claim order, only fewer
    assert throttled(review) == 2  # both were cut short while tasks were claimable
    assert throttle_pause(review.pk) is not None  # and the worker is told to back off


def test_a_claim_the_cap_cuts_to_what_the_backlog_had_is_not_throttled(review: Stage) -> None:
    limited(review, cap=3)
    backlog(review, 2)

    claimed = task_claim(stage=review, worker_id="w1", limit=10)

    assert len(claimed) == 2
    assert throttled(review) == 0
    assert throttle_pause(review.pk) is None


def test_a_stage_without_controls_has_no_gate(review: Stage) -> None:
    backlog(review, 5)

    assert len(task_claim(stage=review, worker_id="w1", limit=5)) == 5
    assert not StageGate.objects.filter(stage=review).exists()


@pytest.mark.parametrize("ending", ["complete", "release", "fail", "expire", "cancel"])
def test_a_task_that_ends_frees_its_slot(review: Stage, ending: str) -> None:
    limited(review, cap=1)
    backlog(review, 2)
    [held] = task_claim(stage=review, worker_id="w1", lock_timeout=30)
    assert task_claim(stage=review, worker_id="w2") == []

    if ending == "complete":
        task_complete(task_id=held.pk, lock_token=held.lock_token)
    elif ending == "release":
        task_release(task_id=held.pk, lock_token=held.lock_token, error="later", retry_in=0)
    elif ending == "fail":
        task_fail(task_id=held.pk, lock_token=held.lock_token, error="broken")
    elif ending == "expire":
        # An expired lock holds its slot (it is locked) until it is taken over or the expiry sweep hands it back.
        later = timezone.now() + timedelta(seconds=60)
        assert locked_at(review) == 1
        assert tasks_expire_locks(now=later) == 1
    else:
        # A cancel of a held task is a request: the slot stays taken until the handler's completion ends it.
        task_cancel(task_id=held.pk, actor="user:ann", reason="not needed")
        assert task_claim(stage=review, worker_id="w2") == []
        task_complete(task_id=held.pk, lock_token=held.lock_token)
        assert Task.objects.get(pk=held.pk).status == Task.Status.CANCELLED

    later = timezone.now() + timedelta(seconds=120)  # past any retry backoff and expired lock
    [next_one] = task_claim(stage=review, worker_id="w2", now=later, lock_timeout=600)
    assert locked_at(review) == 1
    assert next_one.locked_by == "w2"


def test_a_full_cap_of_expired_locks_is_taken_over_at_once(review: Stage) -> None:
    limited(review, cap=2)
    first, second, waiting = backlog(review, 3)
    task_claim(stage=review, worker_id="gone", limit=2, lock_timeout=5)
    later = timezone.now() + timedelta(seconds=10)

    # Full (two locked), but both locks expired: taking them over adds nothing to the count.
    claimed = task_claim(stage=review, worker_id="w2", limit=3, now=later, lock_timeout=600)

    assert sorted(t.pk for t in claimed) == [first.pk, second.pk]
    assert all(t.attempts == 2 and t.reclaimed_from == "gone" for t in claimed)
    assert Task.objects.get(pk=waiting.pk).status == Task.Status.PENDING
    assert locked_at(review) == 2
    assert len({t.lock_token for t in claimed}) == 2
    assert kinds(first.pk) == ["created", "lock_expired"]


def test_the_cap_counts_a_live_lock_and_takes_over_only_expired_ones(review: Stage) -> None:
    limited(review, cap=2)
    backlog(review, 4)
    [live] = task_claim(stage=review, worker_id="alive", lock_timeout=600)
    [dead] = task_claim(stage=review, worker_id="gone", lock_timeout=5)
    later = timezone.now() + timedelta(seconds=10)

    claimed = task_claim(stage=review, worker_id="w2", limit=4, now=later, lock_timeout=600)

    assert [t.pk for t in claimed] == [dead.pk]
    assert Task.objects.get(pk=live.pk).locked_by == "alive"
    assert locked_at(review) == 2


def test_completing_and_claiming_together_frees_the_slot_first(review: Stage) -> None:
    # On PostgreSQL a plain completion and a claim usually go out pipelined in one statement pair that
    # ignores the gate (services.pipeline); a capped stage must not take it: 2 held of a cap of 2 and 5
    # waiting, one completed, so exactly one slot is free however many the worker asks for.
    limited(review, cap=2)
    backlog(review, 7)
    done, still_held = task_claim(stage=review, worker_id="w1", limit=2)

    outcomes, claimed = tasks_complete_and_claim(
        items=[Completion(done.pk, done.lock_token, [])], stage=review, worker_id="w1", limit=5
    )

    assert [o.status for o in outcomes] == ["completed"]
    assert len(claimed) == 1 and locked_at(review) == 2
    assert Task.objects.get(pk=still_held.pk).status == Task.Status.LOCKED
    assert Task.objects.filter(stage=review, status=Task.Status.PENDING).count() == 4
    assert throttled(review) == 1  # cut from 5 to 1 while tasks waited


# -- the rate limit --------------------------------------------------------------------------------


def test_the_rate_limit_is_a_fixed_window(review: Stage) -> None:
    limited(review, rate="2/minute")
    backlog(review, 6, now=T0 - timedelta(hours=1))

    first = task_claim(stage=review, worker_id="w1", limit=5, now=T0, lock_timeout=600)
    same_window = task_claim(stage=review, worker_id="w2", limit=1, now=T0 + timedelta(seconds=40))
    next_window = task_claim(stage=review, worker_id="w2", limit=5, now=T0 + timedelta(seconds=50))

    assert len(first) == 2 and same_window == [] and len(next_window) == 2
    gate = StageGate.objects.get(stage=review)
    assert gate.window_start == window_start(T0 + timedelta(seconds=50), 60) == datetime(2026, 12, 1, 12, 1, tzinfo=UTC)
    assert gate.window_count == 2
    assert throttled(review) == 3


def test_a_rate_limited_claim_says_how_long_until_the_window_opens(review: Stage) -> None:
    limited(review, rate="1/minute")
    backlog(review, 2, now=T0 - timedelta(hours=1))

    task_claim(stage=review, worker_id="w1", limit=2, now=T0)

    pause = throttle_pause(review.pk)
    assert pause is not None and not pause.by_cap
    assert pause.seconds == pytest.approx(50.0)


def test_a_claimer_whose_clock_is_behind_counts_against_the_stored_window(review: Stage) -> None:
    limited(review, rate="2/second")
    backlog(review, 5, now=T0 - timedelta(hours=1))
    task_claim(stage=review, worker_id="ahead", limit=2, now=T0 + timedelta(seconds=1))

    assert task_claim(stage=review, worker_id="behind", limit=2, now=T0) == []


def test_cap_and_rate_together_take_the_smaller_room(review: Stage) -> None:
    limited(review, cap=5, rate="3/hour")
    backlog(review, 10, now=T0 - timedelta(hours=1))

    assert len(task_claim(stage=review, worker_id="w1", limit=10, now=T0)) == 3
    assert task_claim(stage=review, worker_id="w1", limit=10, now=T0 + timedelta(minutes=1)) == []
    assert locked_at(review) == 3


def test_a_paused_stage_claims_nothing_and_counts_no_throttle(review: Stage) -> None:
    limited(review, cap=1)
    Stage.objects.filter(pk=review.pk).update(is_paused=True)
    review.refresh_from_db()
    backlog(review, 2)

    assert task_claim(stage=review, worker_id="w1") == []
    assert throttled(review) == 0


# -- PostgreSQL: a stage without controls keeps its one prepared statement ---------------------------


@pytest.mark.postgres
def test_a_claim_at_a_stage_without_controls_is_one_prepared_statement(
    review: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    backlog(review, 3)
    prepared: list[str] = []
    others: list[str] = []
    real = claim_module.execute_prepared

    def counting(sql: str, params: Any) -> Any:
        prepared.append(sql)
        return real(sql, params)

    def other(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        others.append(sql)
        return execute(sql, params, many, context)

    monkeypatch.setattr(claim_module, "execute_prepared", counting)
    with connection.execute_wrapper(other):
        claimed = task_claim(stage=review, worker_id="w1", limit=2)

    assert len(claimed) == 2
    assert prepared == [claim_module.PG_CLAIM_SQL] and others == []


@pytest.mark.postgres
def test_a_capped_claim_locks_the_gate_then_counts_then_claims(review: Stage, monkeypatch: pytest.MonkeyPatch) -> None:
    limited(review, cap=2)
    backlog(review, 3)
    task_claim(stage=review, worker_id="w0")  # makes the gate row
    statements: list[str] = []
    real = psycopg.Cursor.execute

    def record(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(query))  # every statement on the wire: Django's, the prepared and pipelined ones
        return real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", record)
    claimed = task_claim(stage=review, worker_id="w1", limit=3)

    assert len(claimed) == 1
    statements = [s for s in statements if "SAVEPOINT" not in s]  # the test's own transaction
    # One round trip: the gate's lock, then the claim that counts the free slots in its own snapshot.
    assert "FOR UPDATE" in statements[0] and "stagegate" in statements[0]
    assert statements[1] == claim_module.PG_CAPPED_CLAIM_SQL
    assert "count(*)" in statements[1] and "status = 'locked'" in statements[1]
    # Cut short by the cap (1 of 3): the gated path decides the rest: lock, count, nothing more to claim.
    assert "FOR UPDATE" in statements[2] and "stagegate" in statements[2]
    assert "count(*)" in statements[3] and claim_module.PG_CLAIM_SQL not in statements[4:]


# -- job stages -------------------------------------------------------------------------------------


def test_a_job_run_at_a_capped_stage_takes_only_the_free_slots(world: dict[str, Stage]) -> None:
    job = Stage.objects.create(
        slug="nightly", name="Nightly", kind=Stage.Kind.JOB, schedule="0 3 * * *", handler="tests.handlers.digest",
        max_concurrency=3,
    )  # fmt: skip
    Transition.objects.create(source=job, target=world["ship"], task_type="")
    waiting = backlog(job, 10)

    run = job_run_now(stage=job, worker_id="sched")

    assert run is not None and run.status == JobRun.Status.SUCCEEDED and run.tasks_processed == 3
    [digest] = Task.objects.filter(stage=world["ship"])
    assert digest.payload["ids"] == [t.pk for t in waiting[:3]]  # the oldest three, in claim order
    assert Task.objects.filter(stage=job, status=Task.Status.COMPLETED).count() == 3
    assert Task.objects.filter(stage=job, status=Task.Status.PENDING).count() == 7
    assert throttled(job) == 1  # its claim of up to TASKS_JOB_MAX_TASKS was cut to 3 while 7 waited


# -- the worker ------------------------------------------------------------------------------------


def test_a_throttled_worker_leaves_the_stage_alone_for_a_moment(review: Stage) -> None:
    limited(review, cap=1)
    backlog(review, 3)
    task_claim(stage=review, worker_id="elsewhere", lock_timeout=600)  # the one slot is taken
    worker = Worker(stage_slugs=["review"], listen=False, progress_interval=0)
    worker._start_pool()
    try:
        assert worker.claim() == 0
        assert throttled(review) == 1
        until, by_cap = worker.throttled[review.pk]
        assert by_cap and 0 < until - time.monotonic() <= CAP_PAUSE

        assert worker.claim() == 0  # at once again: the stage is skipped, no gate lock, no throttled claim
        assert throttled(review) == 1
    finally:
        assert worker._pool is not None
        worker._pool.stop()


def test_a_worker_run_once_waits_out_a_rate_limit_instead_of_stopping(review: Stage) -> None:
    limited(review, rate="2/second")
    Stage.objects.filter(pk=review.pk).update(handler="tests.handlers.noop")
    review.refresh_from_db()
    backlog(review, 5)

    Worker(stage_slugs=["review"], listen=False, progress_interval=0, batch_size=5).run(once=True)

    assert not Task.objects.filter(stage=review).exclude(status=Task.Status.COMPLETED).exists()
    assert throttled(review) >= 2  # it was held back at least twice (five tasks, two a second)


# -- the workflow file -----------------------------------------------------------------------------


def test_the_workflow_file_round_trips_the_cap_and_the_rate(world: dict[str, Stage], tmp_path: Path) -> None:
    limited(world["review"], cap=3, rate="10/second")
    dumped = workflow_dump()
    entry = next(s for s in dumped["stages"] if s["slug"] == "review")
    assert (entry["max_concurrency"], entry["rate_limit"]) == (3, "10/second")
    assert next(s for s in dumped["stages"] if s["slug"] == "ship")["max_concurrency"] is None

    entry["max_concurrency"], entry["rate_limit"] = None, "5/hour"
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(dumped))
    call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=io.StringIO())

    review = Stage.objects.get(slug="review")
    assert (review.max_concurrency, review.rate_limit) == (None, "5/hour")
    assert workflow_dump() == dumped


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency: Ensure this value is greater than or equal to 1."),
        ({"max_concurrency": 10_001}, "max_concurrency: Ensure this value is less than or equal to 10000."),
        ({"max_concurrency": "3"}, "max_concurrency must be a whole number or null, not a string"),
        ({"rate_limit": "10 per second"}, "rate_limit: '10 per second' is not a rate limit: write N/second"),
        ({"rate_limit": "0/minute"}, "rate_limit: A rate limit's count must be 1 to 1000000 (got 0)."),
        ({"rate_limit": "10/day"}, "'10/day' is not a rate limit"),
        ({"rate_limit": 10}, 'rate_limit must be a rate limit (a string like "10/second"), not a number'),
    ],
)
def test_bad_limits_in_a_workflow_file_are_one_line_each(db: None, fields: dict[str, Any], message: str) -> None:
    stage = {"slug": "review", "name": "Review", "handler": "tests.handlers.noop", **fields}
    data = {"version": 1, "stages": [stage], "transitions": []}

    problems = workflow_problems(data)

    assert len(problems) == 1 and problems[0].startswith("stages[0] (slug 'review'): ") and message in problems[0]


def test_load_workflow_refuses_a_bad_rate_in_one_line_and_changes_nothing(
    world: dict[str, Stage], tmp_path: Path
) -> None:
    dumped = workflow_dump()
    next(s for s in dumped["stages"] if s["slug"] == "review")["rate_limit"] = "fast"
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(dumped))
    err = io.StringIO()

    with pytest.raises(CommandError) as refused:
        call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=err)

    said = (str(refused.value) + "\n" + err.getvalue()).splitlines()
    assert [line.strip() for line in said if "rate_limit" in line] == [
        "stages[3] (slug 'review'): rate_limit: 'fast' is not a rate limit: write N/second, N/minute or N/hour "
        "(e.g. 10/second)."
    ]
    assert Stage.objects.get(slug="review").rate_limit == ""


# -- the admin ---------------------------------------------------------------------------------------


def test_the_admin_sets_the_cap_and_rate_and_refuses_bad_values(world: dict[str, Stage]) -> None:
    client = logged_in(make_user("boss", superuser=True))
    url = f"{STAGE_URL}{world['review'].pk}/change/"
    page = client.get(url).content.decode()
    assert "Flow control" in page and 'name="max_concurrency"' in page and 'name="rate_limit"' in page
    data = form_fields(client, url, form_id="stage_form")

    bad_rate = client.post(url, {**data, "rate_limit": "lots/second", "_save": "Save"})
    assert bad_rate.status_code == 200 and "is not a rate limit" in bad_rate.content.decode()
    zero = client.post(url, {**data, "max_concurrency": "0", "_save": "Save"})
    assert zero.status_code == 200 and "greater than or equal to 1" in zero.content.decode()
    assert (Stage.objects.get(slug="review").max_concurrency, Stage.objects.get(slug="review").rate_limit) == (None, "")

    saved = client.post(url, {**data, "max_concurrency": "4", "rate_limit": "100/minute", "_save": "Save"})
    assert saved.status_code == 302
    review = Stage.objects.get(slug="review")
    assert (review.max_concurrency, review.rate_limit) == (4, "100/minute")


# -- the REST API ------------------------------------------------------------------------------------


def test_the_api_shows_and_sets_the_cap_and_rate(world: dict[str, Stage], admin: APIClient) -> None:
    for bad in ({"max_concurrency": 0}, {"max_concurrency": 10_001}, {"rate_limit": "3/fortnight"}):
        refused = admin.patch("/api/stages/review/", bad, format="json")
        assert refused.status_code == 400 and list(refused.json()) == list(bad), refused.json()
    said = admin.patch("/api/stages/review/", {"rate_limit": "x"}, format="json").json()
    assert said == {"rate_limit": ["'x' is not a rate limit: write N/second, N/minute or N/hour (e.g. 10/second)."]}
    assert (Stage.objects.get(slug="review").max_concurrency, Stage.objects.get(slug="review").rate_limit) == (None, "")

    response = admin.patch("/api/stages/review/", {"max_concurrency": 2, "rate_limit": "30/minute"}, format="json")

    assert response.status_code == 200
    assert (response.json()["max_concurrency"], response.json()["rate_limit"]) == (2, "30/minute")
    shown = admin.get("/api/stages/review/").json()
    assert (shown["max_concurrency"], shown["rate_limit"]) == (2, "30/minute")
    cleared = admin.patch("/api/stages/review/", {"max_concurrency": None, "rate_limit": ""}, format="json")
    assert (cleared.json()["max_concurrency"], cleared.json()["rate_limit"]) == (None, "")


def test_an_api_claim_the_cap_holds_back_says_when_to_retry(world: dict[str, Stage], admin: APIClient) -> None:
    review = limited(world["review"], cap=1)
    backlog(review, 3)

    first = admin.post("/api/stages/review/claim/", {"limit": 2}, format="json")
    second = admin.post("/api/stages/review/claim/", {"limit": 1}, format="json")

    assert first.status_code == 200 and len(first.json()) == 1 and first["Retry-After"] == "1"
    assert second.status_code == 200 and second.json() == [] and second["Retry-After"] == "1"
    assert throttled(review) == 2


def test_an_api_claim_the_rate_limit_holds_back_waits_for_the_window(world: dict[str, Stage], admin: APIClient) -> None:
    review = limited(world["review"], rate="1/hour")
    backlog(review, 2)

    first = admin.post("/api/stages/review/claim/", {"limit": 1}, format="json")
    second = admin.post("/api/stages/review/claim/", {"limit": 1}, format="json")

    assert len(first.json()) == 1 and "Retry-After" not in first  # it got what it asked for
    assert second.json() == [] and 1 <= int(second["Retry-After"]) <= 3600


# -- /metrics ----------------------------------------------------------------------------------------


def test_metrics_count_throttled_claims_per_stage(world: dict[str, Stage], settings: Any) -> None:
    settings.TASKS_METRICS_TOKEN = "t0ken-t0ken-t0ken-t0ken"
    settings.TASKS_METRICS_CACHE = 0
    review = limited(world["review"], cap=1)
    backlog(review, 3)
    for _ in range(3):
        task_claim(stage=review, worker_id="w1")  # one claims, two are throttled

    body = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken-t0ken-t0ken-t0ken").content.decode()

    assert "# TYPE tasks_throttled_total counter" in body
    assert 'tasks_throttled_total{stage="review"} 2.0' in body
    assert 'tasks_throttled_total{stage="ship"} 0.0' in body


# -- the monitoring pages ------------------------------------------------------------------------------


def test_the_overview_shows_a_full_cap_as_running_and_throttled(world: dict[str, Stage]) -> None:
    review = limited(world["review"], cap=3)
    limited(world["ship"], rate="10/second")
    backlog(review, 5)
    task_claim(stage=review, worker_id="w1", limit=5)  # three claimed, cut short: throttled
    client = logged_in(make_user("boss", superuser=True))

    page = client.get("/overview/").content.decode()
    counts = client.get("/overview/counts.json").json()

    assert "3/3 running · throttled" in page
    assert 'data-count="flow">3/3 running · throttled<' in page  # the box's line, refreshed live
    assert counts["stages"]["review"]["text"]["flow"] == "3/3 running · throttled"
    assert counts["stages"]["review"]["text"]["locked"] == "3/3"
    assert counts["stages"]["review"]["throttled"] is True
    assert counts["stages"]["ship"]["text"]["flow"] == "10/s" and counts["stages"]["ship"]["throttled"] is False
    assert "flow" not in counts["stages"]["audit"]["text"] and counts["stages"]["audit"]["text"]["locked"] == "0"


def test_the_overview_says_running_without_throttled_when_nothing_is_held_back(world: dict[str, Stage]) -> None:
    review = limited(world["review"], cap=3)
    backlog(review, 2)
    task_claim(stage=review, worker_id="w1", limit=5)  # two: the backlog, not the cap, ended the claim
    client = logged_in(make_user("boss", superuser=True))

    counts = client.get("/overview/counts.json").json()["stages"]["review"]

    assert counts["text"]["flow"] == "2/3 running" and counts["throttled"] is False


def test_a_full_cap_with_tasks_waiting_is_throttled_even_before_a_claim_is(world: dict[str, Stage]) -> None:
    review = limited(world["review"], cap=1)
    backlog(review, 2)
    task_claim(stage=review, worker_id="w1")  # full, one waits; no claim was throttled yet
    assert throttled(review) == 0
    client = logged_in(make_user("boss", superuser=True))

    counts = client.get("/overview/counts.json").json()["stages"]["review"]

    assert counts["text"]["flow"] == "1/1 running · throttled"


def test_the_stage_page_shows_the_cap_the_rate_and_the_throttled_claims(world: dict[str, Stage]) -> None:
    review = limited(world["review"], cap=2, rate="100/minute")
    backlog(review, 4)
    task_claim(stage=review, worker_id="w1", limit=4)
    client = logged_in(make_user("boss", superuser=True))

    page = client.get(f"/stages/{review.slug}/").content.decode()
    plain = client.get(f"/stages/{world['ship'].slug}/").content.decode()

    assert "2 locked at once" in page and "<code>100/minute</code>" in page
    assert "2/2 running · 100/min · throttled · 1 claim throttled so far" in page
    assert "no cap" in plain and 'class="flow-state"' not in plain


@pytest.mark.postgres
def test_the_running_count_reads_the_locked_tasks_not_the_stages_backlog(review: Stage) -> None:
    table = Task._meta.db_table
    with connection.cursor() as cur:
        # 50,000 pending tasks at the stage (its backlog: what task_claim_idx holds for it) and 40 locked.
        cur.execute(
            f"""INSERT INTO {table} (stage_id, type, payload, status, created_at, updated_at, available_at, attempts,
                                   lock_token, locked_by, locked_until, last_error)
            SELECT %(stage)s, 'order', '{{}}', CASE WHEN i <= 50000 THEN 'pending' ELSE 'locked' END, now(), now(),
                   now(), 0, CASE WHEN i <= 50000 THEN '' ELSE 't' || i END, '',
                   CASE WHEN i <= 50000 THEN NULL ELSE now() + interval '1 hour' END, ''
            FROM generate_series(1, 50040) AS i""",
            {"stage": review.pk},
        )
        cur.execute(f"REINDEX TABLE {table}")  # this data's plan, whatever earlier tests left behind
        cur.execute(f"ANALYZE {table}")
    now = timezone.now()
    params = {"stage_id": review.pk, "cap": 100, "now": now}
    claim = claim_params(stage=review, worker_id="w", limit=10, now=now, until=now + timedelta(minutes=5))

    # The count, and the claim that takes over expired locks at a full cap: both read the locked tasks.
    for sql, values in ((RUNNING_SQL, params), (claim_module.PG_RECLAIM_SQL, claim)):
        nodes = list(plan_nodes(explain(sql, values)))
        # (The claim's UPDATE finds the picked rows by primary key.)
        on_task = {n["Index Name"] for n in nodes if n.get("Relation Name") == table and "Index Name" in n}
        assert "task_locked_idx" in on_task and on_task <= {"task_locked_idx", f"{table}_pkey"}, nodes
        assert not [n for n in nodes if n.get("Relation Name") == table and n["Node Type"] == "Seq Scan"], nodes
    with connection.cursor() as cur:
        cur.execute(RUNNING_SQL, params)
        assert cur.fetchone() == (40, 0)


def plan_nodes(plan: dict[str, Any]) -> Any:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


# -- people opening form tasks ---------------------------------------------------------------------


def test_opening_a_form_task_takes_a_slot_of_the_cap(db: None) -> None:
    form = Stage.objects.create(slug="approve", name="Approve", kind=Stage.Kind.FORM, max_concurrency=1)
    first, second = backlog(form, 2)
    ann, bob = make_user("ann", superuser=True), make_user("bob", superuser=True)

    form_task_open(task=first, user=ann)
    with pytest.raises(TaskStateError, match=r"Stage 'approve' is at its limit \(1 open at once\)"):
        form_task_open(task=Task.objects.get(pk=second.pk), user=bob)
    assert form_task_open(task=Task.objects.get(pk=first.pk), user=ann).locked_by == "user:ann"  # reopening: hers
    assert task_claim(stage=form, worker_id="api:carl") == []  # nor through the API

    form_task_cancel(task_id=first.pk, user=ann)  # she hands it back: the slot is free
    assert form_task_open(task=Task.objects.get(pk=second.pk), user=bob).locked_by == "user:bob"
    assert locked_at(form) == 1


def test_opening_a_form_task_counts_against_the_rate_limit(db: None) -> None:
    form = Stage.objects.create(slug="approve", name="Approve", kind=Stage.Kind.FORM, rate_limit="1/minute")
    first, second = backlog(form, 2, now=T0 - timedelta(hours=1))
    ann, bob = make_user("ann", superuser=True), make_user("bob", superuser=True)

    form_task_open(task=first, user=ann, now=T0)
    with pytest.raises(TaskStateError, match=r"Stage 'approve' is at its limit \(1/minute opened\)"):
        form_task_open(task=Task.objects.get(pk=second.pk), user=bob, now=T0 + timedelta(seconds=30))
    assert Task.objects.get(pk=second.pk).status == Task.Status.PENDING
    assert StageGate.objects.get(stage=form).window_count == 1

    # The next minute's window: bob may open it, though ann still has hers open (no cap, only a rate).
    opened = form_task_open(task=Task.objects.get(pk=second.pk), user=bob, now=T0 + timedelta(seconds=50))
    assert opened.locked_by == "user:bob" and locked_at(form) == 2


def test_a_one_click_mail_decision_at_a_full_capped_stage_is_refused_and_the_link_still_works(db: None) -> None:
    world = form_world()
    Stage.objects.filter(pk=world.review.pk).update(max_concurrency=1)
    order = {"order_id": 42, "customer": {"email": "c@example.com"}}
    held, linked = sent_order(world, order), sent_order(world, {**order, "order_id": 43})
    form_task_open(task=held, user=world.bob)  # the one slot
    path = urlsplit(link_url(task_id=linked.pk, user_id=world.alice.pk, type="approved")).path
    token = path.rstrip("/").rpartition("/")[2]

    with pytest.raises(LinkRefused, match=r"Stage 'review' is at its limit \(1 open at once\)") as refused:
        decision_link_use(token=token, user=world.alice)

    assert refused.value.status == 409
    assert Task.objects.get(pk=linked.pk).status == Task.Status.PENDING and locked_at(world.review) == 1
    assert not DecisionLinkUse.objects.exists()  # the use went with the refused decision
    form_task_cancel(task_id=held.pk, user=world.bob)  # bob hands his back: the slot is free
    decided = decision_link_use(token=token, user=world.alice)
    assert [t.stage.slug for t in decided.successors] == ["invoice"]
    assert Task.objects.get(pk=linked.pk).status == Task.Status.COMPLETED


@pytest.mark.postgres
def test_a_capped_claim_without_its_gate_row_claims_nothing_unguarded(review: Stage) -> None:
    limited(review, cap=5)
    backlog(review, 3)
    task_claim(stage=review, worker_id="w0")  # makes the gate row, and this process remembers it
    StageGate.objects.filter(stage=review).delete()  # as if it were gone: the fast path's lock finds nothing

    claimed = task_claim(stage=review, worker_id="w1", limit=2)

    # The one-round-trip claim ran without a lock but took nothing; the gated path made the row again and
    # claimed under it: no task is locked that the caller does not hold.
    assert len(claimed) == 2
    held = {t.pk for t in claimed}
    locked = set(
        Task.objects.filter(stage=review, status=Task.Status.LOCKED, locked_by="w1").values_list("pk", flat=True)
    )
    assert locked == held
    assert StageGate.objects.filter(stage=review).exists()
