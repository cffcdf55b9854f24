"""GET /metrics: who may read it, and what it says (counters, gauges, histograms); JSON logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tasks_app.logcontext import ContextFilter, log_context
from tasks_app.models import CounterCursor, Stage, StageCounter, Task, TaskEvent, WorkerProcess
from tasks_app.selectors.overview import live_counts
from tasks_app.services import counters as stage_counters
from tasks_app.services import (
    histograms,
    task_claim,
    task_complete,
    task_create,
    task_fail,
    task_force_release,
    task_mark_completed,
    task_release,
    task_unclaim,
    tasks_create_bulk,
    tasks_expire_locks,
)
from tasks_app.worker import Worker
from tests.support.processes import ROOT, subprocess_env
from tests.support.threads import run_at_once
from tests.support.users import make_user
from tests.support.world import make_tasks_in_every_state

TOKEN = "s3cret-metrics-token-0123456789"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def _fresh_scrapes(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every scrape computes (no cached body) and folds events at once (no settling time)."""
    settings.TASKS_METRICS_CACHE = 0
    settings.TASKS_METRICS_TOKEN = ""
    settings.TASKS_METRICS_ALLOW = []
    monkeypatch.setattr(stage_counters, "SETTLE_SECONDS", 0.0)
    cache.clear()
    yield
    cache.clear()


def scrape(client: Client | None = None, **extra: Any) -> Samples:
    """GET /metrics with the token and parse it: (sample name, labels) -> value."""
    response = (client or Client()).get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


# -- access --------------------------------------------------------------------


def test_metrics_are_off_until_a_token_or_allow_list_is_set(client: Client, db: None) -> None:
    response = client.get("/metrics")
    assert response.status_code == 404
    assert b"TASKS_METRICS_TOKEN" in response.content


def test_logged_in_user_with_view_task_may_read_them_and_one_without_may_not(db: None) -> None:
    viewer, other = Client(), Client()
    viewer.force_login(make_user("viewer", "view_task"))
    other.force_login(make_user("other"))
    assert viewer.get("/metrics").status_code == 200
    assert other.get("/metrics").status_code == 403


def test_right_token_reads_wrong_or_missing_token_gets_401(client: Client, db: None, settings: Any) -> None:
    settings.TASKS_METRICS_TOKEN = TOKEN
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200  # scheme is case-blind
    for header in [{}, {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}x"}, {"HTTP_AUTHORIZATION": f"Token {TOKEN}"}]:
        response = client.get("/metrics", **header)
        assert response.status_code == 401, header
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_token_is_not_accepted_when_none_is_configured(client: Client, db: None, settings: Any) -> None:
    settings.TASKS_METRICS_ALLOW = ["10.0.0.0/8"]
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", REMOTE_ADDR="192.0.2.1")
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("allow", "address", "status"),
    [
        (["127.0.0.1"], "127.0.0.1", 200),
        (["127.0.0.1"], "127.0.0.2", 403),
        (["10.0.0.0/8", "192.0.2.7"], "10.20.30.40", 200),
        (["10.0.0.0/8", "192.0.2.7"], "192.0.2.7", 200),
        (["10.0.0.0/8", "192.0.2.7"], "11.0.0.1", 403),
        (["10.0.0.0/8"], "::ffff:10.1.1.1", 200),  # IPv4 peer on a dual-stack socket
        (["2001:db8::/32"], "2001:db8::42", 200),
        (["2001:db8::/32"], "2001:db9::1", 403),
        (["10.0.0.0/8"], "not-an-address", 403),
    ],
)
def test_allow_list_matches_addresses_and_networks(
    client: Client, db: None, settings: Any, allow: list[str], address: str, status: int
) -> None:
    settings.TASKS_METRICS_ALLOW = allow
    assert client.get("/metrics", REMOTE_ADDR=address).status_code == status


def test_with_token_and_allow_list_either_lets_in_but_a_wrong_token_never(
    client: Client, db: None, settings: Any
) -> None:
    settings.TASKS_METRICS_TOKEN = TOKEN
    settings.TASKS_METRICS_ALLOW = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.5").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.1", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200
    # Outside the list without a token: a token would let it in, so 401 rather than 403.
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.1").status_code == 401
    # A stale token from an allowed address is refused: the scraper's setup is wrong.
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.5", HTTP_AUTHORIZATION="Bearer stale").status_code == 401


def test_metrics_answer_get_only(client: Client, db: None, settings: Any) -> None:
    settings.TASKS_METRICS_TOKEN = TOKEN
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TASKS_METRICS_ALLOW", "10.0.0.0/8,nonsense", "not an IP address or network"),
        ("TASKS_METRICS_TOKEN", "short", "at least 16 characters"),
        ("TASKS_LOG_FORMAT", "xml", "text or json"),
    ],
)
def test_bad_metrics_and_log_settings_refuse_to_start(variable: str, value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**subprocess_env(), variable: value},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.fixture
def token(settings: Any) -> None:
    settings.TASKS_METRICS_TOKEN = TOKEN


def test_the_body_is_cached_for_the_configured_seconds(world: dict[str, Stage], token: None, settings: Any) -> None:
    settings.TASKS_METRICS_CACHE = 60
    before = value(scrape(), "tasks_pending", stage="ship")
    task_create(stage=world["ship"], type="t", payload={})
    assert value(scrape(), "tasks_pending", stage="ship") == before  # the cached body
    cache.clear()
    assert value(scrape(), "tasks_pending", stage="ship") == before + 1


# -- counters ------------------------------------------------------------------


def claim_one(stage: Stage, **kwargs: Any) -> Task:
    [task] = task_claim(stage=stage, worker_id="w1", **kwargs)
    return task


def run_the_lifecycle(world: dict[str, Stage]) -> None:
    """Tasks created, completed, failed, released and expired at named stages (no successors)."""
    ship, notify, audit, review = world["ship"], world["notify"], world["audit"], world["review"]
    hour_ago = timezone.now() - timedelta(hours=1)
    for _ in range(3):
        task_create(stage=ship, type="t", payload={})
    for _ in range(2):
        t = claim_one(ship)
        task_complete(task_id=t.pk, lock_token=t.lock_token)
    t = claim_one(ship)
    task_fail(task_id=t.pk, lock_token=t.lock_token, error="broken")

    for _ in range(3):
        task_create(stage=notify, type="t", payload={})
    t = claim_one(notify)
    task_release(task_id=t.pk, lock_token=t.lock_token, error="try again", retry_in=3600)
    t = claim_one(notify)
    task_force_release(task_id=t.pk, actor="user:op")  # counts as released
    pending = Task.objects.filter(stage=notify, status="pending").order_by("id").first()
    assert pending is not None
    task_mark_completed(task_id=pending.pk, actor="user:op")  # counts as completed

    # An expired lock back to pending at review; at audit (max 1 attempt) the sweep fails it.
    audit.max_attempts = 1
    audit.save()
    for stage in (review, audit):
        task_create(stage=stage, type="t", payload={"amount": 1}, now=hour_ago)
        claim_one(stage, lock_timeout=1, now=hour_ago)
    assert tasks_expire_locks() == 2


EXPECTED = {
    # stage: created, completed, failed, released, lock_expired, claimed
    "intake": (0, 0, 0, 0, 0, 0),
    "review": (1, 0, 0, 0, 1, 1),
    "ship": (3, 2, 1, 0, 0, 3),
    "notify": (3, 1, 0, 2, 0, 2),
    "audit": (1, 0, 1, 0, 1, 1),
}
NAMES = ("created", "completed", "failed", "released", "lock_expired", "claimed")


def counters(samples: Samples) -> dict[str, tuple[float, ...]]:
    return {stage: tuple(value(samples, f"tasks_{name}_total", stage=stage) for name in NAMES) for stage in EXPECTED}


def test_counters_per_stage_after_each_kind_of_change(world: dict[str, Stage], token: None) -> None:
    run_the_lifecycle(world)
    samples = scrape()
    assert counters(samples) == EXPECTED
    # The raw history per kind is there too.
    assert value(samples, "tasks_events_total", stage="notify", kind="force_released") == 1
    assert value(samples, "tasks_events_total", stage="notify", kind="marked_completed") == 1
    assert value(samples, "tasks_events_total", stage="ship", kind="lock_extended") == 0


def test_a_second_scrape_does_not_count_again_and_new_events_are_added(world: dict[str, Stage], token: None) -> None:
    run_the_lifecycle(world)
    first = counters(scrape())
    assert counters(scrape()) == first == EXPECTED
    task_create(stage=world["ship"], type="t", payload={})
    assert value(scrape(), "tasks_created_total", stage="ship") == EXPECTED["ship"][0] + 1


def test_counters_keep_their_values_when_tasks_and_history_are_pruned(world: dict[str, Stage], token: None) -> None:
    run_the_lifecycle(world)
    assert counters(scrape()) == EXPECTED
    TaskEvent.objects.all().delete()
    Task.objects.all().delete()
    samples = scrape()
    assert counters(samples) == EXPECTED
    assert value(samples, "tasks_pending", stage="notify") == 0


def test_the_fold_steps_over_a_gap_of_pruned_ids(world: dict[str, Stage]) -> None:
    old = [task_create(stage=world["ship"], type="t", payload={}) for _ in range(5)]
    TaskEvent.objects.filter(task__in=old).delete()
    Task.objects.filter(pk__in=[t.pk for t in old]).delete()
    task_create(stage=world["ship"], type="t", payload={})
    # The first 5 ids past the cursor are gone; the window starts at the first id left.
    assert stage_counters.counters_fold(max_rows=2) == 1


def test_events_of_a_task_deleted_before_they_were_counted_are_skipped(world: dict[str, Stage], token: None) -> None:
    gone = task_create(stage=world["ship"], type="t", payload={})
    task_create(stage=world["ship"], type="t", payload={})
    TaskEvent.objects.filter(task=gone).delete()
    Task.objects.filter(pk=gone.pk).delete()
    assert value(scrape(), "tasks_created_total", stage="ship") == 1


def test_a_bounded_fold_goes_on_where_it_stopped(world: dict[str, Stage]) -> None:
    run_the_lifecycle(world)
    events = TaskEvent.objects.count()
    last_id = TaskEvent.objects.order_by("-id").values_list("id", flat=True)[0]
    folded = [stage_counters.counters_fold(max_rows=3)]
    while CounterCursor.objects.get().last_event_id < last_id:
        folded.append(stage_counters.counters_fold(max_rows=3))
    assert max(folded) <= 3 and sum(folded) == events
    expected = {(s.pk, "created"): n for s in world.values() if (n := EXPECTED[s.slug][0])}
    values = stage_counters.counter_values()
    assert {k: v for k, v in values.items() if k[1] == "created"} == expected


@pytest.mark.postgres
def test_on_postgresql_only_settled_events_are_folded(world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch) -> None:
    # Ids are taken before commit: folding the newest events could skip a lower id
    # that commits a moment later, so only events SETTLE_SECONDS old are counted.
    monkeypatch.setattr(stage_counters, "SETTLE_SECONDS", 30.0)
    task_create(stage=world["ship"], type="t", payload={})
    assert stage_counters.counters_fold() == 0
    assert stage_counters.counters_fold(now=timezone.now() + timedelta(seconds=31)) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_folds_count_each_event_once() -> None:
    stage = Stage.objects.create(slug="bulk", name="Bulk", handler="tests.handlers.noop")
    total = 3000
    tasks_create_bulk(items=[(stage, "t", {"n": i}) for i in range(total)])
    folded: list[int] = []

    def fold() -> None:
        while n := stage_counters.counters_fold(max_rows=500):
            folded.append(n)

    errors = run_at_once(fold, threads=4)
    assert not errors, errors
    # Four folders raced over the same events: the cursor lock makes each count them once.
    assert sum(folded) == total
    assert StageCounter.objects.get(stage=stage, kind="created").value == total


# -- gauges ----------------------------------------------------------------------


def test_pending_locked_and_oldest_pending_age_per_stage(world: dict[str, Stage], token: None) -> None:
    make_tasks_in_every_state(world)
    two_hours_ago = timezone.now() - timedelta(hours=2)
    task_create(stage=world["ship"], type="t", payload={}, now=two_hours_ago)
    samples = scrape()
    pending = {s: value(samples, "tasks_pending", stage=s) for s in EXPECTED}
    locked = {s: value(samples, "tasks_locked", stage=s) for s in EXPECTED}
    assert pending == {"intake": 0, "review": 1, "ship": 1, "notify": 0, "audit": 0}
    assert locked == {"intake": 1, "review": 0, "ship": 0, "notify": 0, "audit": 1}  # intake's lock expired
    assert 7190 < value(samples, "tasks_oldest_pending_age_seconds", stage="ship") < 7300
    assert 0 <= value(samples, "tasks_oldest_pending_age_seconds", stage="review") < 60
    assert value(samples, "tasks_oldest_pending_age_seconds", stage="notify") == 0


def test_scheduled_tasks_are_a_gauge_of_their_own_and_no_ones_oldest_wait(world: dict[str, Stage], token: None) -> None:
    # Issue 15's run-at in /metrics: a task held back for later waits for nobody, so it is counted in
    # tasks_scheduled (and tasks_pending), never in the oldest pending age; once due, it has waited since then.
    now = timezone.now()
    day = timedelta(days=1)
    task_create(stage=world["ship"], type="t", payload={}, now=now - day, available_at=now + 5 * day)
    task_create(stage=world["review"], type="t", payload={}, now=now - 2 * day, available_at=now - timedelta(hours=1))
    retry = task_create(stage=world["notify"], type="t", payload={}, now=now - day)
    [claim] = task_claim(stage=world["notify"], worker_id="w1")
    task_release(task_id=retry.pk, lock_token=claim.lock_token, error="boom", retry_in=600)  # a retry, not scheduled

    samples = scrape()
    assert {s: value(samples, "tasks_scheduled", stage=s) for s in EXPECTED} == {
        "intake": 0,
        "review": 0,
        "ship": 1,
        "notify": 0,
        "audit": 0,
    }
    assert value(samples, "tasks_pending", stage="ship") == 1  # tasks_scheduled is a part of it
    assert value(samples, "tasks_oldest_pending_age_seconds", stage="ship") == 0  # not due: no wait (was 86,400)
    assert 3590 < value(samples, "tasks_oldest_pending_age_seconds", stage="review") < 3700  # since its run-at time
    assert value(samples, "tasks_oldest_pending_age_seconds", stage="notify") == 0  # waiting out its backoff
    # The overview reads the same counts: capped (PostgreSQL's per-stage statement) and exact agree.
    capped = {k: {n: v for n, v in c.items() if n != "capped"} for k, c in live_counts(cap=1000, now=now).items()}
    assert capped == live_counts(now=now)
    assert live_counts(now=now)[world["ship"].pk]["oldest_pending"] is None


def test_live_workers_counts_running_workers_heard_from_lately(db: None, token: None) -> None:
    now = timezone.now()
    long_ago = now - timedelta(hours=2)
    for worker_id, heartbeat, stopped in [("alive", now, None), ("stopped", now, now), ("silent", long_ago, None)]:
        WorkerProcess.objects.create(worker_id=worker_id, host="h", pid=1, last_heartbeat=heartbeat, stopped_at=stopped)
    assert value(scrape(), "tasks_workers_live") == 1


# -- histograms --------------------------------------------------------------------


def histogram(samples: Samples, name: str, stage: str) -> tuple[list[float], float, float]:
    buckets = [value(samples, f"{name}_bucket", stage=stage, le=str(b)) for b in histograms.BUCKETS]
    buckets.append(value(samples, f"{name}_bucket", stage=stage, le="+Inf"))
    return buckets, value(samples, f"{name}_count", stage=stage), value(samples, f"{name}_sum", stage=stage)


def test_a_worker_run_fills_the_claim_and_handler_histograms(world: dict[str, Stage], token: None) -> None:
    for _ in range(3):
        task_create(stage=world["ship"], type="t", payload={})
    Worker(stage_slugs=["ship"], worker_id="w-hist", batch_size=2).run(once=True)
    row = WorkerProcess.objects.get(worker_id="w-hist")
    assert sum(row.metrics["handler"]["ship"]["counts"]) == 3
    assert sum(row.metrics["claim"]["ship"]["counts"]) >= 2  # two batches, then maybe an empty claim
    samples = scrape()
    buckets, count, total = histogram(samples, "tasks_handler_duration_seconds", "ship")
    assert count == buckets[-1] == 3 and total >= 0
    assert buckets == sorted(buckets)  # cumulative
    buckets, count, total = histogram(samples, "tasks_claim_duration_seconds", "ship")
    assert count == buckets[-1] == sum(row.metrics["claim"]["ship"]["counts"]) and total > 0


def test_histograms_add_up_every_worker_stopped_ones_and_reused_ids_included(
    world: dict[str, Stage], token: None
) -> None:
    for worker_id, n in [("w-a", 2), ("w-b", 3), ("w-a", 1)]:  # w-a restarts with the same id
        for _ in range(n):
            task_create(stage=world["ship"], type="t", payload={})
        Worker(stage_slugs=["ship"], worker_id=worker_id).run(once=True)
    assert WorkerProcess.objects.filter(stopped_at__isnull=False).count() == 2
    _, count, _ = histogram(scrape(), "tasks_handler_duration_seconds", "ship")
    # The sum never goes down: the stopped rows count, and w-a's restart went on from its old row.
    assert count == 6


def snapshot_of(handled: int) -> dict[str, Any]:
    counts = [0] * (len(histograms.BUCKETS) + 1)
    counts[3] = handled
    return {
        "version": 1,
        "buckets": list(histograms.BUCKETS),
        "claim": {},
        "handler": {"ship": {"counts": counts, "sum": 1.0}},
    }


def test_stopped_workers_are_summed_once_through_their_cache(db: None, token: None) -> None:
    now = timezone.now()
    for worker_id in ("old-1", "old-2"):
        WorkerProcess.objects.create(worker_id=worker_id, host="h", pid=1, stopped_at=now, metrics=snapshot_of(5))
    running = WorkerProcess.objects.create(worker_id="running", host="h", pid=1, metrics=snapshot_of(1))
    assert value(scrape(), "tasks_handler_duration_seconds_count", stage="ship") == 11
    # The running worker handles more, then stops: its final snapshot counts once.
    WorkerProcess.objects.filter(pk=running.pk).update(metrics=snapshot_of(4))
    assert value(scrape(), "tasks_handler_duration_seconds_count", stage="ship") == 14
    WorkerProcess.objects.filter(pk=running.pk).update(stopped_at=now, metrics=snapshot_of(6))
    assert value(scrape(), "tasks_handler_duration_seconds_count", stage="ship") == 16
    assert value(scrape(), "tasks_handler_duration_seconds_count", stage="ship") == 16


def test_snapshots_with_other_buckets_are_left_out() -> None:
    good = {
        "version": 1,
        "buckets": list(histograms.BUCKETS),
        "claim": {},
        "handler": {"s": {"counts": [1] * 16, "sum": 2}},
    }
    other = {**good, "buckets": [1, 2, 3]}
    short = {**good, "handler": {"s": {"counts": [1] * 3, "sum": 2}}}
    merged = histograms.merge_snapshots([good, other, short, {}, None, good])
    assert merged["handler"]["s"] == ([2] * 16, 4.0)


def test_observations_of_workers_not_running_here_cost_nothing(world: dict[str, Stage]) -> None:
    task_create(stage=world["ship"], type="t", payload={})
    task_claim(stage=world["ship"], worker_id="api-client")  # e.g. a claim through the API
    assert histograms.snapshot("api-client") is None
    assert "api-client" not in histograms._workers


def test_observe_buckets_are_less_than_or_equal() -> None:
    histograms.worker_opened("w-buckets")
    try:
        for seconds in (0.0005, 0.001, 0.0011, 61.0):
            histograms.observe("claim", worker_id="w-buckets", stage="s", seconds=seconds)
        snap = histograms.snapshot("w-buckets")
    finally:
        histograms.worker_closed("w-buckets")
    assert snap is not None
    counts = snap["claim"]["s"]["counts"]
    assert counts[0] == 2 and counts[1] == 1 and counts[-1] == 1 and sum(counts) == 4


# -- logs ------------------------------------------------------------------------------


def test_log_context_adds_fields_to_records_in_its_block_and_thread_only() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(ContextFilter())
    log = logging.getLogger("tests.metrics.context")
    log.addHandler(handler)
    log.propagate = False
    try:
        with log_context(worker_id="w1"), log_context(task_id=7, stage="ship"):
            log.warning("inside")
            log.warning("explicit", extra={"task_id": 8})
            other = threading.Thread(target=lambda: log.warning("other thread"))
            other.start()
            other.join()
        log.warning("outside")
    finally:
        log.removeHandler(handler)
    by_message = {r.getMessage(): r for r in records}
    assert (by_message["inside"].task_id, by_message["inside"].stage, by_message["inside"].worker_id) == (
        7,
        "ship",
        "w1",
    )
    assert by_message["explicit"].task_id == 8  # extra= wins
    assert not hasattr(by_message["other thread"], "task_id")
    assert not hasattr(by_message["outside"], "worker_id")


def log_and_maybe_fail(task: Any) -> None:
    """Handler for the JSON log test: logs a line; a payload with fail=true raises."""
    logging.getLogger("tests.metrics.handler").warning("handling %s", task.id)
    if task.payload.get("fail"):
        raise RuntimeError("asked to fail")


@pytest.mark.django_db(transaction=True)
def test_json_logs_are_one_object_per_line_with_task_stage_and_worker() -> None:
    stage = Stage.objects.create(slug="logged", name="Logged", handler="tests.test_metrics.log_and_maybe_fail")
    ok = task_create(stage=stage, type="t", payload={})
    bad = task_create(stage=stage, type="t", payload={"fail": True})
    result = subprocess.run(
        [sys.executable, "manage.py", "run_worker", "--once", "--stage", "logged", "--worker-id", "w-json"],
        cwd=ROOT,
        env={**subprocess_env(), "TASKS_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    handled = {line["task_id"]: line for line in lines if line["logger"] == "tests.metrics.handler"}
    assert handled.keys() == {ok.pk, bad.pk}
    assert handled[ok.pk]["stage"] == "logged" and handled[ok.pk]["worker_id"] == "w-json"
    assert handled[ok.pk]["message"] == f"handling {ok.pk}" and handled[ok.pk]["level"] == "WARNING"
    released = [line for line in lines if line["logger"] == "tasks_app.worker" and "released" in line["message"]]
    assert len(released) == 1 and str(bad.pk) in released[0]["message"]


# -- claims: no event of their own, counted by the event that ends them or while live -----------


def claims(samples: Samples, stage: str) -> float:
    return value(samples, "tasks_claimed_total", stage=stage)


def test_claims_are_counted_live_then_by_their_end_and_never_twice(world: dict[str, Stage], token: None) -> None:
    ship = world["ship"]
    for _ in range(4):
        task_create(stage=ship, type="t", payload={})
    seen = [claims(scrape(), "ship")]
    a, b, c = task_claim(stage=ship, worker_id="w1", limit=3)
    seen.append(claims(scrape(), "ship"))  # live: the locked tasks
    task_complete(task_id=a.pk, lock_token=a.lock_token)
    task_release(task_id=b.pk, lock_token=b.lock_token, error="again", retry_in=0)
    task_unclaim(task_id=c.pk, lock_token=c.lock_token)
    seen.append(claims(scrape(), "ship"))  # ended, each by one event
    again = task_claim(stage=ship, worker_id="w2", limit=3)  # b and c again, and the fourth
    seen.append(claims(scrape(), "ship"))
    task_force_release(task_id=again[0].pk, actor="user:op")
    task_mark_completed(task_id=again[1].pk, actor="user:op")  # locked: ends a claim
    pending = task_create(stage=ship, type="t", payload={})
    task_mark_completed(task_id=pending.pk, actor="user:op")  # pending: no claim
    seen.append(claims(scrape(), "ship"))
    assert seen == [0, 3, 3, 6, 6]
    assert value(scrape(), "tasks_locked", stage="ship") == 1  # again[2] is still live


def test_a_reclaim_counts_both_claims(world: dict[str, Stage], token: None) -> None:
    review = world["review"]
    task_create(stage=review, type="t", payload={}, now=timezone.now() - timedelta(hours=1))
    claim_one(review, lock_timeout=1, now=timezone.now() - timedelta(hours=1))
    [second] = task_claim(stage=review, worker_id="w2")  # takes the expired lock over
    assert claims(scrape(), "review") == 2
    task_complete(task_id=second.pk, lock_token=second.lock_token)
    assert claims(scrape(), "review") == 2


def test_the_claims_counter_does_not_drop_while_an_ended_claim_waits_to_be_folded(
    world: dict[str, Stage], token: None
) -> None:
    # The fold leaves events younger than SETTLE_SECONDS (PostgreSQL) for later: a completed claim
    # has left the locked count but is not in a counter yet. Played here by folding by hand and
    # reading claim_counts before the next fold; /metrics folds first, then reads.
    ship = world["ship"]
    task_create(stage=ship, type="t", payload={})
    [task] = task_claim(stage=ship, worker_id="w1")
    stage_counters.counters_fold()
    assert stage_counters.claim_counts() == {ship.pk: 1}
    task_complete(task_id=task.pk, lock_token=task.lock_token)  # not folded yet
    assert stage_counters.claim_counts() == {ship.pk: 1}
    assert stage_counters.counters_fold() == 1
    assert stage_counters.claim_counts() == {ship.pk: 1}
    assert StageCounter.objects.get(stage=ship, kind=stage_counters.CLAIM_ENDED).value == 1


@pytest.mark.postgres
def test_on_postgresql_the_claims_counter_is_monotonic_through_the_settling_time(
    world: dict[str, Stage], token: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stage_counters, "SETTLE_SECONDS", 30.0)
    ship = world["ship"]
    for _ in range(3):
        task_create(stage=ship, type="t", payload={})
    seen = []
    for task in task_claim(stage=ship, worker_id="w1", limit=3):
        seen.append(claims(scrape(), "ship"))
        task_complete(task_id=task.pk, lock_token=task.lock_token)  # its event won't settle for 30 s
        seen.append(claims(scrape(), "ship"))
    assert seen == [3] * 6
    assert not StageCounter.objects.filter(kind=stage_counters.CLAIM_ENDED).exists()  # nothing folded yet
