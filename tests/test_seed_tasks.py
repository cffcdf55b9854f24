"""seed_tasks: many realistic tasks and their history, fast (COPY on PostgreSQL, bulk_create on SQLite).

Small counts here; the million-task timing is measured by hand (see
tasks_app.seeding's docstring). Most tests call the command in-process; a few run
`python manage.py seed_tasks` for real for the exit status and stderr.
"""

from __future__ import annotations

import gc
import re
import threading
from collections import Counter
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tasks_app.demo import STAGES as DEMO_STAGES
from tasks_app.demo import TRANSITIONS as DEMO_TRANSITIONS
from tasks_app.management.commands import seed_tasks
from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.seeding import generator, writers
from tasks_app.services import task_create
from tests.support.history import claim, claim_of
from tests.support.processes import manage

committed = pytest.mark.django_db(transaction=True)
DEMO_SLUGS = sorted(stage["slug"] for stage in DEMO_STAGES)

# What a long-lived installation holds; cancelled tasks (a person's choice) are not seeded.
SEEDED_STATUSES = set(Task.Status.values) - {Task.Status.CANCELLED}


def seed(*args: str) -> str:
    """call_command("seed_tasks", ...), returning what it wrote to stdout."""
    out = StringIO()
    call_command("seed_tasks", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def db_counts() -> tuple[int, int, int, int]:
    return Stage.objects.count(), Transition.objects.count(), Task.objects.count(), TaskEvent.objects.count()


# -- what it writes ------------------------------------------------------------


@pytest.fixture
def seeded(world: dict[str, Stage]) -> tuple[list[Task], str]:
    """4,000 tasks over the test world, in chunks of 700 (the last one short)."""
    out = seed("--count", "4000", "--batch-size", "700")
    return list(Task.objects.order_by("id")), out


def test_seeds_the_count_with_a_realistic_status_mix(seeded: tuple[list[Task], str]) -> None:
    tasks, _ = seeded
    assert len(tasks) == 4000
    share = {status: n / len(tasks) for status, n in Counter(t.status for t in tasks).items()}
    assert set(share) == SEEDED_STATUSES
    assert 0.86 <= share["completed"] <= 0.94
    assert 0.04 <= share["pending"] <= 0.08
    assert 0.01 <= share["failed"] <= 0.035
    assert 0.01 <= share["locked"] <= 0.035


def test_seeded_tasks_keep_the_state_rules(seeded: tuple[list[Task], str]) -> None:
    tasks, _ = seeded
    timeouts = dict(Stage.objects.values_list("id", "lock_timeout"))
    for t in tasks:
        if t.status == Task.Status.LOCKED:
            assert re.fullmatch(r"[0-9a-f]{32}", t.lock_token) and t.locked_by, t.pk
            assert t.locked_at is not None and t.locked_until == t.locked_at + timedelta(seconds=timeouts[t.stage_id])
        else:
            assert (t.lock_token, t.locked_by, t.locked_at, t.locked_until) == ("", "", None, None), t.pk
        assert (t.completed_at is not None) == (t.status == Task.Status.COMPLETED), t.pk
        if t.status != Task.Status.PENDING:
            assert t.attempts >= 1, t.pk
        if t.status == Task.Status.FAILED:
            assert t.last_error, t.pk
        assert t.available_at >= t.created_at and t.updated_at >= t.created_at
        assert t.completed_at is None or t.completed_at >= t.created_at
    # The lock tokens are distinct, as the claim's random ones would be.
    tokens = [t.lock_token for t in tasks if t.lock_token]
    assert len(set(tokens)) == len(tokens)


def test_seeded_tasks_span_the_last_30_days_in_id_order(seeded: tuple[list[Task], str]) -> None:
    tasks, _ = seeded
    now = timezone.now()
    created = [t.created_at for t in tasks]
    assert created == sorted(created)
    assert now - timedelta(days=30, minutes=5) <= created[0] <= now - timedelta(days=29)
    assert now - timedelta(days=1) <= created[-1] <= now
    assert all(t.completed_at is None or t.completed_at <= now for t in tasks)


def test_seeded_tasks_spread_over_all_stages_with_their_outgoing_types(
    world: dict[str, Stage], seeded: tuple[list[Task], str]
) -> None:
    tasks, _ = seeded
    by_stage = Counter(t.stage_id for t in tasks)
    assert set(by_stage) == {s.pk for s in world.values()}
    assert min(by_stage.values()) > 4000 / len(world) * 0.8
    types = {(world_slug(world, t.stage_id), t.type) for t in tasks}
    # review's outgoing transitions carry types; the other stages' don't (or have none).
    assert types == {
        ("intake", "order"),
        ("review", "approved"),
        ("review", "declined"),
        ("ship", "order"),
        ("notify", "order"),
        ("audit", "order"),
    }
    assert Stage.objects.count() == len(world)  # no demo workflow: there were stages


def world_slug(world: dict[str, Stage], stage_id: int) -> str:
    return next(slug for slug, s in world.items() if s.pk == stage_id)


def test_seeded_payloads_are_orders(seeded: tuple[list[Task], str]) -> None:
    tasks, _ = seeded
    for t in tasks:
        assert {"order_id", "customer_id", "amount", "items"} <= set(t.payload), t.pk
        assert isinstance(t.payload["amount"], int) and isinstance(t.payload["items"], list)
        assert t.payload["customer_id"] == t.payload["order_id"] % 5000
    roots = [t for t in tasks if t.parent_id is None]
    assert all(t.payload["order_id"] == t.pk and "checked" not in t.payload for t in roots)
    assert len({len(t.payload["items"]) for t in tasks}) > 2


def test_parents_are_earlier_completed_tasks_at_a_source_stage(seeded: tuple[list[Task], str]) -> None:
    tasks, _ = seeded
    by_id = {t.pk: t for t in tasks}
    routes = set(Transition.objects.values_list("source_id", "target_id"))
    with_parent = [t for t in tasks if t.parent_id is not None]
    with_sources = [t for t in tasks if any(target == t.stage_id for _, target in routes)]
    assert len(with_parent) > len(with_sources) / 2
    for t in tasks:
        assert (t.parent_id is None) == (t.source_stage_id is None), t.pk
    for t in with_parent:
        parent = by_id[t.parent_id]  # exists (and was made by this run)
        assert parent.pk < t.pk and parent.stage_id == t.source_stage_id
        assert (t.source_stage_id, t.stage_id) in routes
        assert parent.status == Task.Status.COMPLETED and parent.completed_at <= t.created_at
        # The successor carries its parent's order, as the demo's check_stock sends it on.
        assert t.payload["order_id"] == parent.payload["order_id"] and t.payload["checked"] is True


def test_every_task_has_a_history_that_fits_its_state(seeded: tuple[list[Task], str]) -> None:
    tasks, _ = seeded
    events: dict[int, list[TaskEvent]] = {}
    for e in TaskEvent.objects.order_by("task_id", "id"):
        events.setdefault(e.task_id, []).append(e)
    assert set(events) == {t.pk for t in tasks}
    for t in tasks:
        history = events[t.pk]
        created, *rest = history
        assert (created.kind, created.at, created.actor) == ("created", t.created_at, "seed"), t.pk
        assert created.details == ({"parent": t.parent_id} if t.parent_id else {})
        kinds = [e.kind for e in rest]
        if t.status == Task.Status.COMPLETED:
            assert kinds == ["completed"] and rest[0].at == t.completed_at
            assert rest[0].details["attempt"] == t.attempts and rest[0].details["sent"] == []
        elif t.status == Task.Status.FAILED:
            assert kinds == ["failed"] and rest[0].details["error"] == t.last_error
        elif t.status == Task.Status.LOCKED:
            # A claim writes no event: the row holds it.
            assert kinds == [] and t.locked_at is not None and t.locked_by and t.reclaimed_from == ""
        elif t.attempts:
            assert kinds == ["released"] and rest[0].details["retry_at"] == t.available_at.isoformat()
        if rest:
            # The event that ends a claim carries it, as services.events writes it.
            assert claim_of(rest[0]) == claim(
                t.attempts, rest[0].actor, datetime.fromisoformat(rest[0].details["claimed_at"])
            )
            assert created.at <= datetime.fromisoformat(rest[0].details["claimed_at"]) <= rest[0].at
        else:
            assert kinds == [], t.pk
        assert all(e.at >= created.at for e in rest)


def test_progress_bar_and_summary_are_printed(seeded: tuple[list[Task], str]) -> None:
    tasks, out = seeded
    lines = out.splitlines()
    assert re.fullmatch(r"seeding 4,000/4,000 \[#{30}\] 100% [\d,]+ tasks/s", lines[-2]), out
    status = Counter(t.status for t in tasks)
    summary = lines[-1]
    for s in sorted(SEEDED_STATUSES):
        assert f"{status[s]:,} {s}" in summary
    assert summary.startswith("seeded 4,000 tasks (")
    assert f"and {TaskEvent.objects.count():,} events at 5 stages" in summary
    assert re.search(r" in \d+\.\ds", summary), summary


def test_progress_line_draws_a_bar() -> None:
    assert seed_tasks.progress_line(420_000, 1_000_000, 12.0) == (
        "seeding   420,000/1,000,000 [############------------------]  42% 35,000 tasks/s"
    )
    assert seed_tasks.progress_line(1, 1, 0.0).endswith("[" + "#" * 30 + "] 100% 0 tasks/s")


def test_one_chunk_per_batch_and_a_single_task_works(world: dict[str, Stage]) -> None:
    out = seed("--count", "1")
    assert Task.objects.count() == 1 and TaskEvent.objects.filter(kind="created").count() == 1
    assert "seeding 1/1 [" in out


# -- stages --------------------------------------------------------------------


def test_without_stages_it_loads_the_demo_workflow_without_orders(db: None) -> None:
    seed("--count", "500")

    assert sorted(Stage.objects.values_list("slug", flat=True)) == DEMO_SLUGS
    assert Transition.objects.count() == len(DEMO_TRANSITIONS)
    assert Task.objects.count() == 500
    assert set(Task.objects.values_list("stage__slug", flat=True)) == set(DEMO_SLUGS)
    assert set(Task.objects.values_list("type", flat=True)) == {t for _, _, t in DEMO_TRANSITIONS}
    # load_demo's sample orders (order_id 1001..1003 with actor "demo") were not sent.
    assert not TaskEvent.objects.filter(actor="demo").exists()


def test_stages_restricts_where_tasks_go(world: dict[str, Stage]) -> None:
    out = seed("--count", "500", "--stages", "ship", "review", "ship")

    assert set(Task.objects.values_list("stage__slug", flat=True)) == {"review", "ship"}
    # review has a source (intake) that is not seeded: no parents there; ship's parents are review tasks.
    assert not Task.objects.filter(stage__slug="review", parent__isnull=False).exists()
    assert set(Task.objects.filter(parent__isnull=False).values_list("source_stage__slug", flat=True)) == {"review"}
    assert "at 2 stages (review, ship)" in out
    assert Stage.objects.count() == len(world)


def test_a_missing_demo_stage_loads_the_demo_workflow(world: dict[str, Stage]) -> None:
    seed("--count", "200", "--stages", "check-stock")

    assert set(Stage.objects.values_list("slug", flat=True)) == set(world) | set(DEMO_SLUGS)
    assert set(Task.objects.values_list("stage__slug", flat=True)) == {"check-stock"}
    assert set(Task.objects.values_list("type", flat=True)) == {"in_stock", "out_of_stock"}


def test_seeding_adds_to_existing_tasks_and_later_creates_get_fresh_ids(pending_task: Task) -> None:
    seed("--count", "300", "--batch-size", "128")
    seeded_ids = list(Task.objects.exclude(pk=pending_task.pk).values_list("id", flat=True))

    assert Task.objects.count() == 301 and min(seeded_ids) > pending_task.pk
    later = task_create(stage=pending_task.stage, type="order", payload={})
    assert later.pk > max(seeded_ids)
    pending_task.refresh_from_db()
    assert pending_task.status == Task.Status.PENDING and pending_task.events.count() == 1


def test_the_same_seed_gives_the_same_tasks(world: dict[str, Stage]) -> None:
    def shape() -> list[tuple[Any, ...]]:
        rows = Task.objects.order_by("id").values_list("stage_id", "type", "status", "attempts", "payload")
        return [(stage, type_, status, attempts, payload["amount"]) for stage, type_, status, attempts, payload in rows]

    seed("--count", "300", "--seed", "7")
    first = shape()
    TaskEvent.objects.all().delete()
    Task.objects.all().delete()
    seed("--count", "300", "--seed", "7", "--batch-size", "50")
    assert shape() == first  # chunking does not change the data either
    TaskEvent.objects.all().delete()
    Task.objects.all().delete()
    seed("--count", "300", "--seed", "8")
    assert shape() != first


def test_a_type_with_copy_special_characters_is_stored_as_is(world: dict[str, Stage]) -> None:
    # COPY's text format needs \\, tab and newline escaped; the payload strings have none, but a type may.
    odd = "we\\ird\ttype\nx"
    Transition.objects.create(source=world["ship"], target=world["notify"], task_type=odd)
    seed("--count", "200", "--stages", "ship")
    assert set(Task.objects.values_list("type", flat=True)) == {odd}


def test_copy_text_escapes_what_copy_reads_specially() -> None:
    assert writers.copy_text("plain 'text' {\"a\": 1}") == "plain 'text' {\"a\": 1}"
    assert writers.copy_text("a\\b\tc\nd\re") == "a\\\\b\\tc\\nd\\re"


def test_seeded_tasks_show_on_the_monitoring_pages(seeded: tuple[list[Task], str]) -> None:
    tasks, _ = seeded
    user = get_user_model().objects.create_user("viewer", "viewer@example.com", "pw")
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="tasks_app", codename__in=["view_task", "view_taskevent", "view_stage"]
        )
    )
    client = Client()
    client.force_login(user)
    assert client.get(reverse("tasks_app:task-list")).status_code == 200
    child = next(t for t in reversed(tasks) if t.parent_id and t.status == Task.Status.LOCKED)
    response = client.get(reverse("tasks_app:task-detail", args=[child.pk]))
    assert response.status_code == 200
    assert child.lock_token[:8] in response.content.decode() or child.locked_by in response.content.decode()


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "Error: the following arguments are required: --count"),
        (["--count", "0"], "Error: argument --count: must be at least 1, got 0"),
        (["--count", "-5"], "Error: argument --count: must be at least 1, got -5"),
        (["--count", "many"], "Error: argument --count: expected a whole number, got 'many'"),
        (["--count", "1e6"], "Error: argument --count: expected a whole number, got '1e6'"),
        (["--count", "10", "--batch-size", "0"], "Error: argument --batch-size: must be at least 1, got 0"),
        (["--count", "10", "--seed", "x"], "Error: argument --seed: expected a whole number, got 'x'"),
        (["--count", "10", "--stages"], "Error: argument --stages: expected at least one argument"),
        (["--count", "10", "--stages", "nope"], "unknown stage 'nope' (known: "),
        (["--count", "10", "--stages", "ship", "nope", "x"], "unknown stages 'nope', 'x' (known: "),
        (["--count", "10", "--stages", "check-stock", "nope"], "unknown stage 'nope' (known: "),
    ],
    ids=[
        "no-count",
        "zero",
        "negative",
        "not-a-number",
        "float",
        "zero-batch",
        "bad-seed",
        "no-slugs",
        "unknown-stage",
        "unknown-stages",
        "demo-and-unknown",
    ],
)
def test_bad_input_is_one_readable_line_and_writes_nothing(
    world: dict[str, Stage], argv: list[str], message: str
) -> None:
    before = db_counts()
    with pytest.raises(CommandError, match="^" + re.escape(message)) as info:
        seed(*argv)
    assert "\n" not in str(info.value)
    assert db_counts() == before


def test_unknown_stage_on_an_empty_database_does_not_load_the_demo(db: None) -> None:
    with pytest.raises(CommandError, match=re.escape(f"unknown stage 'nope' (known: {', '.join(DEMO_SLUGS)})")):
        seed("--count", "10", "--stages", "nope")
    assert db_counts() == (0, 0, 0, 0)


@committed
def test_process_with_bad_input_exits_non_zero_with_one_readable_line(world: dict[str, Stage]) -> None:
    before = db_counts()

    result = manage("seed_tasks", "--count", "0")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "manage.py seed_tasks: error: argument --count: must be at least 1, got 0"

    result = manage("seed_tasks", "--count", "10", "--stages", "nope")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "CommandError: unknown stage 'nope' (known: audit, check-stock, daily-digest, intake, invoice, notify, "
        "notify-customer, orders, review, send-digest, ship)"
    ]
    assert result.stdout == ""
    assert db_counts() == before


@committed
def test_process_seeds_and_prints_progress(world: dict[str, Stage]) -> None:
    result = manage("seed_tasks", "--count", "500", "--batch-size", "100")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[-2].startswith("seeding 500/500 [##############################] 100% ")
    assert lines[-1].startswith("seeded 500 tasks (")
    assert Task.objects.count() == 500
    assert TaskEvent.objects.filter(kind="created").count() == 500


# -- chunks and failures -------------------------------------------------------


@pytest.mark.parametrize("failing", [1, 3, 4], ids=["first", "middle", "last"])
def test_a_failing_chunk_keeps_the_chunks_before_it_and_stops_the_producer(
    world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    # When the last chunk fails, the producer is done and waiting to hand over DONE: it must not hang.
    writer = writers.PostgresWriter if connection.vendor == "postgresql" else writers.OrmWriter
    real_write = writer.write
    calls = []

    def write(self: Any, prepared: Any) -> None:
        calls.append(1)
        if len(calls) == failing:
            raise RuntimeError("disk full")
        real_write(self, prepared)

    monkeypatch.setattr(writer, "write", write)
    threads = threading.active_count()

    with pytest.raises(RuntimeError, match="disk full"):
        seed("--count", "400", "--batch-size", "100")

    kept = 100 * (failing - 1)  # the chunks before, each committed on its own
    assert Task.objects.count() == kept
    assert TaskEvent.objects.filter(kind="created").count() == kept
    assert threading.active_count() == threads
    assert gc.isenabled()


def test_a_generator_error_reaches_the_command(world: dict[str, Stage], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, ids: Any) -> Any:
        raise ValueError("bad plan")

    monkeypatch.setattr(generator.Generator, "chunk", broken)
    with pytest.raises(ValueError, match="bad plan"):
        seed("--count", "10")
    assert Task.objects.count() == 0


@pytest.mark.postgres
def test_postgresql_analyzes_the_tables_afterwards(world: dict[str, Stage]) -> None:
    # ANALYZE sets pg_class.reltuples in place (other tests' values outlive their rollback):
    # a count no other test seeds shows it ran on these rows.
    seed("--count", "1234")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reltuples FROM pg_class WHERE relname IN (%s, %s)",
            [Task._meta.db_table, TaskEvent._meta.db_table],
        )
        assert dict(cursor.fetchall()) == {
            Task._meta.db_table: 1234,
            TaskEvent._meta.db_table: TaskEvent.objects.count(),
        }


def test_ids_are_not_reused_after_deleted_tasks(world: dict[str, Stage]) -> None:
    # Like the sequence (SQLite: AUTOINCREMENT), seeding never reuses a deleted task's id.
    doomed = task_create(stage=world["review"], type="order", payload={})
    Task.objects.filter(pk=doomed.pk).delete()
    seed("--count", "10")
    assert min(Task.objects.values_list("id", flat=True)) > doomed.pk


@pytest.mark.postgres
def test_postgresql_ids_with_gaps_are_used_as_the_sequence_gives_them(world: dict[str, Stage]) -> None:
    # Another session taking ids while seed_tasks reserves its own leaves gaps; an
    # increment of 3 makes every reserved id a gap's neighbour.
    table = Task._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
        sequence = cursor.fetchone()[0]
        cursor.execute(f"ALTER SEQUENCE {sequence} INCREMENT BY 3")
        try:
            seed("--count", "300", "--batch-size", "64")
        finally:
            cursor.execute(f"ALTER SEQUENCE {sequence} INCREMENT BY 1")
    ids = list(Task.objects.order_by("id").values_list("id", flat=True))
    assert len(ids) == 300 and {b - a for a, b in zip(ids, ids[1:], strict=False)} == {3}
    assert set(TaskEvent.objects.values_list("task_id", flat=True)) == set(ids)
    parents = set(Task.objects.filter(parent__isnull=False).values_list("parent_id", flat=True))
    assert parents and parents <= set(ids)
