"""examples/http_worker.py against a real gunicorn, side by side with a real run_worker.

Every party is its own process, as in production: gunicorn (two worker
processes, threads) serves the API on this run's database, the example
client talks to it over HTTP only, and `manage.py run_worker` claims from
the same table directly. On SQLite the processes are serialised by
BEGIN IMMEDIATE (WAL lets readers through); on PostgreSQL by SKIP LOCKED.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count
from django.utils import timezone
from rest_framework.authtoken.models import Token

from tasks_app.models import Stage, Task, TaskEvent, Transition
from tests.support.processes import ROOT, start_gunicorn, start_worker, subprocess_env, wait_for

Procs = list[subprocess.Popen[str]]
EXAMPLE = ROOT / "examples" / "http_worker.py"
API_USER = "http-worker"
API_ACTOR = f"api:{API_USER}"  # what the API writes as the locker of the tasks it claims


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gunicorn serving this run's test database; yields its base URL.

    Only tests that use the database may use it: in a session without one,
    pytest-django leaves the connection on the development database.
    """
    db = connection.settings_dict
    assert db["NAME"] == db["TEST"]["NAME"] or db["NAME"].startswith("test_"), f"not a test database: {db['NAME']}"
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    env = {**subprocess_env(), "GUNICORN_THREADS": "4"}
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall gunicorn
        proc, base = start_gunicorn(env, workers=2, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: _up(base) or proc.poll() is not None, timeout=60), "gunicorn did not start"
        assert proc.poll() is None, log.read_text()
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/api/health/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def token(db: None) -> str:
    user = User.objects.create_superuser(API_USER, "w@example.com", "unused-password")
    return Token.objects.create(user=user).key


def start_client(base: str, token: str, *args: str) -> subprocess.Popen[str]:
    """The example worker as a user runs it: its own process, configured by the environment and flags."""
    env = {**subprocess_env(), "HTTP_WORKER_URL": base, "HTTP_WORKER_TOKEN": token}
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def summary(output: str) -> dict[str, int]:
    """The client's closing line: `http_worker host:pid: 3 completed, 1 released, 0 lost, 0 unsettled, 0 cancelled`."""
    found = re.search(r"(\d+) completed, (\d+) released, (\d+) lost, (\d+) unsettled, (\d+) cancelled", output)
    assert found, output
    keys = ["completed", "released", "lost", "unsettled", "cancelled"]
    return dict(zip(keys, map(int, found.groups()), strict=True))


def api_post(base: str, token: str, path: str, body: dict[str, object]) -> object:
    """POST JSON to the server as the token's user, as an operator's script would; the decoded answer (200 only)."""
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def pipeline(source: str, handler: str) -> tuple[Stage, Stage]:
    """`source` (script stage, `handler` for run_worker) --next--> sink (nobody works on it here)."""
    stage = Stage.objects.create(slug=source, name=source, kind=Stage.Kind.SCRIPT, handler=handler)
    sink = Stage.objects.create(slug=f"{source}-sink", name="sink", handler="tests.handlers.noop")
    Transition.objects.create(source=stage, target=sink, task_type="next")
    return stage, sink


def make_tasks(stage: Stage, payloads: list[dict[str, object]]) -> set[int]:
    now = timezone.now()
    Task.objects.bulk_create(
        [Task(stage=stage, type="item", payload=p, created_at=now, updated_at=now, available_at=now) for p in payloads]
    )
    return set(Task.objects.filter(stage=stage).values_list("id", flat=True))


def events_per_task(kind: str, ids: set[int]) -> dict[int, int]:
    rows = TaskEvent.objects.filter(kind=kind, task_id__in=ids).values("task_id").annotate(n=Count("id"))
    return {row["task_id"]: row["n"] for row in rows}


@pytest.mark.django_db(transaction=True)
def test_http_clients_and_run_worker_drain_one_stage_together_each_task_once(
    server: str, token: str, workers: Procs
) -> None:
    # run_worker's handler takes 10 ms a task (300 tasks: 3 s alone), the clients' none: both get a share.
    stage, sink = pipeline("drain", "tests.handlers.slow_forward")
    ids = make_tasks(stage, [{"n": n, "seconds": 0.01} for n in range(300)])
    assert len(ids) == 300

    workers.append(start_worker("--stage", "drain", "--once", "--batch-size", "1", "--worker-id", "in-process"))
    assert wait_for(lambda: Task.objects.filter(stage=stage, locked_by="in-process").exists(), timeout=60)
    # Two example clients on the same stage, small batches so that their claims interleave with the worker's.
    for _ in range(2):
        workers.append(start_client(server, token, "--stage", "drain", "--once", "--limit", "5",
                                    "--handler", "tests.handlers:forward"))  # fmt: skip
    outputs = [p.communicate(timeout=180)[0] or "" for p in workers]
    for p, out in zip(workers, outputs, strict=True):
        assert p.returncode == 0, out

    # Nothing left behind: every task completed, none pending or locked.
    assert set(Task.objects.filter(stage=stage).values_list("status", flat=True)) == {Task.Status.COMPLETED}
    # Each task was claimed once and completed once (two owners at once would show as two of either:
    # a second attempt, or a claim ended some other way).
    assert set(Task.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert not TaskEvent.objects.filter(task_id__in=ids).exclude(kind__in=["created", "completed"]).exists()
    assert events_per_task("completed", ids) == dict.fromkeys(ids, 1)
    # ...and sent exactly one successor, carrying its own number.
    children = list(Task.objects.filter(stage=sink).values_list("parent_id", "payload"))
    assert sorted(parent for parent, _ in children) == sorted(ids)
    numbers = dict(Task.objects.filter(stage=stage).values_list("id", "payload__n"))
    assert all(payload == {"n": numbers[parent]} for parent, payload in children)

    # Both kinds of worker took part, and the clients' own counts agree with the history.
    by_actor = dict(
        TaskEvent.objects.filter(kind="completed", task_id__in=ids).values_list("actor").annotate(n=Count("id"))
    )
    assert set(by_actor) == {"in-process", API_ACTOR}, by_actor
    client_counts = [summary(out) for out in outputs[1:]]
    assert sum(c["completed"] for c in client_counts) == by_actor[API_ACTOR]
    assert all(c["released"] == c["lost"] == c["unsettled"] == c["cancelled"] == 0 for c in client_counts)


@pytest.mark.django_db(transaction=True)
def test_a_handler_error_releases_the_task_with_the_error_in_its_history(server: str, token: str) -> None:
    stage, sink = pipeline("flaky", "tests.handlers.forward_unless_fail")
    ids = make_tasks(stage, [{"n": n, "fail": n % 4 == 0} for n in range(12)])
    failing = set(Task.objects.filter(stage=stage, payload__fail=True).values_list("id", flat=True))
    assert len(failing) == 3

    client = start_client(server, token, "--stage", "flaky", "--once", "--limit", "12",
                          "--handler", "tests.handlers:forward_unless_fail")  # fmt: skip
    out = client.communicate(timeout=120)[0]
    assert client.returncode == 0, out
    assert summary(out) == {"completed": 9, "released": 3, "lost": 0, "unsettled": 0, "cancelled": 0}

    # The others of the same batch completed (one bulk call) and sent their successors.
    assert set(Task.objects.filter(stage=sink).values_list("parent_id", flat=True)) == ids - failing
    for task in Task.objects.filter(pk__in=failing):
        # Back to pending for a later attempt (after the backoff), the error on the task...
        assert task.status == Task.Status.PENDING and task.attempts == 1 and task.locked_by == ""
        assert task.last_error.startswith(f"ValueError: refusing task {task.pk}: it asked to fail")
        # ...and in its history, traceback included, recorded as the client's release.
        [released] = TaskEvent.objects.filter(task_id=task.pk, kind="released")
        assert released.actor == API_ACTOR
        assert released.details["retry_at"] > released.at.isoformat()  # a later attempt, after a backoff
        assert released.details["error"].startswith(f"ValueError: refusing task {task.pk}")
        assert "Traceback (most recent call last)" in released.details["error"]
        assert "forward_unless_fail" in released.details["error"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("payload", "refusal"),
    [
        # The bulk call answers per item: this one "error", the others completed.
        ({"n": 3, "misroute": True}, "nobody-routes-this"),
        # The stage's schema refuses the send: that item answers "error" too, with the schema's message.
        ({"n": "three"}, "Does not match the 'next' schema of stage 'picky'"),
    ],
)
def test_a_refused_send_releases_only_its_task(server: str, token: str, payload: dict, refusal: str) -> None:
    stage, sink = pipeline("picky", "tests.handlers.forward_or_misroute")
    # What "picky" sends as "next" must carry an integer n.
    Stage.objects.filter(pk=stage.pk).update(schemas={"next": {"properties": {"n": {"type": "integer"}}}})
    ids = make_tasks(stage, [{"n": 0}, {"n": 1}, {"n": 2}, payload])
    bad = max(ids)

    client = start_client(server, token, "--stage", "picky", "--once", "--limit", "4",
                          "--handler", "tests.handlers:forward_or_misroute")  # fmt: skip
    out = client.communicate(timeout=120)[0]
    assert client.returncode == 0, out
    assert summary(out) == {"completed": 3, "released": 1, "lost": 0, "unsettled": 0, "cancelled": 0}
    assert set(Task.objects.filter(stage=sink).values_list("parent_id", flat=True)) == ids - {bad}
    task = Task.objects.get(pk=bad)
    assert task.status == Task.Status.PENDING and refusal in task.last_error
    assert events_per_task("completed", ids) == dict.fromkeys(ids - {bad}, 1)


@pytest.mark.django_db(transaction=True)
def test_heartbeats_keep_a_slow_task_from_being_claimed_again(server: str, token: str, workers: Procs) -> None:
    # A 3-second lock, a 6-second handler, and a run_worker polling the stage all along: without the
    # client's heartbeats the lock would expire half-way and run_worker would claim the task again.
    stage, sink = pipeline("slow", "tests.handlers.forward")
    Stage.objects.filter(pk=stage.pk).update(lock_timeout=3)
    [task_id] = make_tasks(stage, [{"n": 1, "seconds": 6}])

    client = start_client(server, token, "--stage", "slow", "--once", "--handler", "tests.handlers:slow_forward")
    workers.append(client)
    assert wait_for(lambda: Task.objects.filter(pk=task_id, locked_by=API_ACTOR).exists(), timeout=60)
    poller = start_worker("--stage", "slow", "--poll-interval", "0.2", "--worker-id", "poller")
    workers.append(poller)

    out = client.communicate(timeout=120)[0]
    poller.send_signal(signal.SIGTERM)
    poller.communicate(timeout=60)
    assert client.returncode == 0, out
    assert summary(out) == {"completed": 1, "released": 0, "lost": 0, "unsettled": 0, "cancelled": 0}

    task = Task.objects.get(pk=task_id)
    assert task.status == Task.Status.COMPLETED and task.attempts == 1
    kinds = list(TaskEvent.objects.filter(task_id=task_id).order_by("id").values_list("kind", "actor"))
    assert "lock_expired" not in [k for k, _ in kinds]  # run_worker never took it over
    assert [k for k, _ in kinds].count("lock_extended") >= 1
    assert kinds[-1] == ("completed", API_ACTOR)
    assert Task.objects.filter(stage=sink, parent_id=task_id).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_cancel_request_stops_the_running_handler_skips_the_unstarted_one_and_drops_their_sends(
    server: str, token: str, workers: Procs, tmp_path: Path
) -> None:
    # A 3-second lock: the client beats every second, and each beat answers cancel_requested.
    stage, sink = pipeline("cancellable", "tests.handlers.noop")
    Stage.objects.filter(pk=stage.pk).update(lock_timeout=3)
    ids = make_tasks(stage, [{"n": n, "seconds": 60, "dir": str(tmp_path)} for n in range(2)])
    running, waiting = sorted(ids)  # one batch, run in claim order (equal priority: by id)
    client = start_client(server, token, "--stage", "cancellable", "--once", "--limit", "2",
                          "--handler", "tests.handlers:forward_until_cancelled")  # fmt: skip
    workers.append(client)
    assert wait_for(lambda: Task.objects.filter(pk__in=ids, locked_by=API_ACTOR).count() == 2, timeout=60)
    assert wait_for(lambda: Task.objects.filter(pk=running, events__kind="lock_extended").exists(), timeout=30)

    # Cancel the task not started yet, and wait for a heartbeat after the request: the client knows then.
    answer = api_post(server, token, f"/api/tasks/{waiting}/cancel/", {"reason": "not needed"})
    assert answer == {"id": waiting, "outcome": "requested", "cascaded": []}
    asked = TaskEvent.objects.get(task_id=waiting, kind="cancel_requested").pk
    assert wait_for(
        lambda: TaskEvent.objects.filter(task_id=waiting, kind="lock_extended", pk__gt=asked).exists(), timeout=30
    )
    # Then the running one: its handler sees task.cancel_requested at the next beat and returns early.
    answer = api_post(server, token, f"/api/tasks/{running}/cancel/", {"reason": "not needed"})
    assert answer == {"id": running, "outcome": "requested", "cascaded": []}

    out = client.communicate(timeout=60)[0]
    assert client.returncode == 0, out
    assert summary(out) == {"completed": 0, "released": 0, "lost": 0, "unsettled": 0, "cancelled": 2}
    assert (tmp_path / f"{running}.saw-cancel").exists() and not (tmp_path / f"{running}.ran-out").exists()
    assert not (tmp_path / f"{waiting}.saw-cancel").exists() and not (tmp_path / f"{waiting}.ran-out").exists()
    # Both ended cancelled by the client's completion, and the running one's send was dropped.
    assert set(Task.objects.filter(pk__in=ids).values_list("status", flat=True)) == {Task.Status.CANCELLED}
    assert not Task.objects.filter(stage=sink).exists()
    for task_id in ids:
        kinds = list(TaskEvent.objects.filter(task_id=task_id).order_by("id").values_list("kind", "actor"))
        # Requested by the token's user over the API, ended by the client's completion (its claim's actor).
        assert ("cancel_requested", f"user:{API_USER}") in kinds and kinds[-1] == ("cancelled", API_ACTOR), kinds
        assert "completed" not in [k for k, _ in kinds]
    dropped = TaskEvent.objects.get(task_id=running, kind="cancelled").details["dropped"]
    assert dropped == ["next"]


@pytest.mark.django_db(transaction=True)
def test_sigterm_finishes_the_task_in_hand_and_gives_the_rest_back(
    server: str, token: str, workers: Procs, tmp_path: Path
) -> None:
    stage, _ = pipeline("stoppable", "tests.handlers.noop")
    ids = make_tasks(stage, [{"dir": str(tmp_path), "seconds": 2} for _ in range(3)])
    client = start_client(server, token, "--stage", "stoppable", "--limit", "3",
                          "--handler", "tests.handlers:sleep_and_mark")  # fmt: skip
    workers.append(client)
    assert wait_for(lambda: any(tmp_path.glob("*.started")), timeout=60)
    client.send_signal(signal.SIGTERM)
    out = client.communicate(timeout=60)[0]
    assert client.returncode == 0, out
    assert summary(out) == {"completed": 1, "released": 2, "lost": 0, "unsettled": 0, "cancelled": 0}

    [started] = [int(p.stem) for p in tmp_path.glob("*.started")]  # the others never ran
    assert Task.objects.get(pk=started).status == Task.Status.COMPLETED
    for task in Task.objects.filter(pk__in=ids - {started}):
        # Given back for someone else to run now, not after a backoff.
        assert task.status == Task.Status.PENDING and task.available_at <= timezone.now()
        assert task.last_error.startswith("not run: the worker was stopped")


@pytest.mark.django_db(transaction=True)
def test_max_tasks_claims_no_more_than_it_will_handle(server: str, token: str) -> None:
    stage, _ = pipeline("capped", "tests.handlers.forward")
    ids = make_tasks(stage, [{"n": n} for n in range(5)])
    client = start_client(server, token, "--stage", "capped", "--limit", "10", "--max-tasks", "3",
                          "--handler", "tests.handlers:forward")  # fmt: skip
    out = client.communicate(timeout=60)[0]
    assert client.returncode == 0, out
    assert summary(out) == {"completed": 3, "released": 0, "lost": 0, "unsettled": 0, "cancelled": 0}
    # The other two were never claimed (the claim asked for 3, not 10), so nobody waits for their locks.
    assert Task.objects.filter(pk__in=ids).exclude(locked_at=None).count() == 3
    assert Task.objects.filter(stage=stage, status=Task.Status.PENDING, attempts=0).count() == 2


@pytest.mark.django_db
def test_the_client_stops_with_one_line_on_a_wrong_token(server: str) -> None:
    client = start_client(server, "not-a-token", "--stage", "drain", "--once")
    out = client.communicate(timeout=60)[0]
    assert client.returncode == 1
    assert "http_worker: HTTP 401 from /api/stages/drain/claim/: Invalid token." in out
    assert "Traceback" not in out
