"""A new user's first steps: `make run` on a busy port, and seed_tasks with `make run`'s worker running."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from jsonschema import Draft202012Validator

from tasks_app.demo import load_demo
from tasks_app.models import JobRun, Stage, Task, TaskEvent
from tests.support.processes import ROOT, subprocess_env

committed = pytest.mark.django_db(transaction=True)


def run(*args: str, **options: Any) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


# -- seed_tasks writes what the demo's handlers read ------------------------------------------


def worker_outcomes(since_event: int) -> Counter[str]:
    """Kinds of the events written after `since_event` (by the worker and the scheduler, not the seeding)."""
    return Counter(TaskEvent.objects.filter(id__gt=since_event).values_list("kind", flat=True))


@committed
def test_the_demo_worker_works_seeded_tasks_without_errors(db: None) -> None:
    """Today's bug: seeded items were bare strings, check-stock raised TypeError and retried forever."""
    load_demo(with_orders=False)
    run("seed_tasks", "--count", "600", "--batch-size", "200")
    last_seeded = TaskEvent.objects.order_by("-id").values_list("id", flat=True)[0]
    last_task = Task.objects.order_by("-id").values_list("id", flat=True)[0]
    script_stages = list(Stage.objects.filter(kind=Stage.Kind.SCRIPT).values_list("slug", flat=True))
    claimable = Task.objects.filter(stage__slug__in=script_stages, status=Task.Status.PENDING).count()
    assert claimable > 10  # the seed leaves work for the worker at every script stage

    run("run_worker", once=True, no_scheduler=True)  # the demo's handlers, as `make run`'s worker runs them
    assert not Task.objects.filter(stage__slug__in=script_stages, status=Task.Status.PENDING, attempts=0).exists()
    run("run_scheduler", run_now="daily-digest")  # and its nightly job over the seeded tasks waiting there

    outcomes = worker_outcomes(last_seeded)
    errors = list(
        TaskEvent.objects.filter(id__gt=last_seeded, kind__in=["released", "failed"]).values_list("details", flat=True)
    )
    assert errors == []
    assert outcomes["completed"] >= claimable
    [job] = JobRun.objects.filter(stage__slug="daily-digest")
    assert job.status == JobRun.Status.SUCCEEDED and job.tasks_processed > 0, job.error
    # What they sent follows the demo's shapes: prices from the items, an invoice per order.
    invoiced = Task.objects.filter(type="invoiced", id__gt=last_task)
    assert invoiced.exists()
    for task in invoiced[:20]:
        assert task.payload["invoice"] == f"INV-{task.payload['order_id']}" and task.payload["total"] > 0


def test_seeded_orders_have_the_demo_shape(db: None) -> None:
    load_demo(with_orders=False)
    run("seed_tasks", "--count", "300")
    orders = Stage.objects.get(slug="orders")
    schema = orders.schemas["order"]
    validator = Draft202012Validator(schema)
    for task in Task.objects.filter(parent__isnull=True)[:300]:
        assert list(validator.iter_errors(task.payload)) == [], task.payload


# -- make run on a busy port ----------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def run_dev(addr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/run_dev.py"],
        cwd=ROOT,
        env={**subprocess_env(), "RUN_ADDR": addr},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_run_on_a_busy_port_exits_non_zero_with_a_hint(busy_port: int) -> None:
    done = run_dev(f"127.0.0.1:{busy_port}")
    assert done.returncode != 0
    assert "Open http://" not in done.stdout
    [line] = done.stderr.strip().splitlines()
    assert f"127.0.0.1:{busy_port} is already in use" in line and "RUN_ADDR=" in line


def test_a_bad_run_addr_is_one_line_too() -> None:
    done = run_dev("127.0.0.1:notaport")
    assert done.returncode != 0 and "Open http://" not in done.stdout
    [line] = done.stderr.strip().splitlines()
    assert "RUN_ADDR" in line and "notaport" in line
