"""Join stages (issue 15, fan-in): fan-outs recorded at send, arrivals waiting, one merged task per group.

The handlers the stages here name are defined in this module (tests.* is an allowed handler module).
"""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, TaskEvent, Transition
from tasks_app.services import counters as stage_counters
from tasks_app.services import task_claim, task_complete, task_create, task_duplicate, task_send, tasks_send_many
from tasks_app.services.cancel import task_cancel
from tasks_app.services.jobs import job_run_now
from tasks_app.services.join import TIMEOUT_TYPE, stage_groups, tasks_join_pass, tasks_join_sweep
from tasks_app.services.workflow import workflow_dump, workflow_problems
from tasks_app.worker import PermanentFailure, Worker
from tests.support.pages import STAGE_URL, form_fields
from tests.support.users import logged_in, make_user

# -- handlers (run by the workers) -----------------------------------------------------------------------


def fan_out(task: Any) -> None:
    """Send `n` parts, one send each: a fan-out of n."""
    for i in range(task.payload["n"]):
        task.send("part", {"root": task.payload.get("root"), "i": i})


def step(task: Any) -> None:
    """An intermediate stage: one task in, one out (the fan-out passes on)."""
    task.send("part", {**task.payload, "stepped": True})


def fan_out_or_drop(task: Any) -> None:
    """Fan out n, except that part `drop` is never sent on by `step_or_end` (a branch that ends)."""
    for i in range(task.payload["n"]):
        task.send("part", {"i": i, "drop": task.payload.get("drop")})


def step_or_end(task: Any) -> None:
    if task.payload["i"] != task.payload.get("drop"):
        task.send("part", task.payload)


def two_sends(job: Any) -> None:
    """A job that calls send() twice: one run, so one fan-out of 2."""
    job.send("a", {"x": 1})
    job.send("b", {"x": 2})


# -- the workflow --------------------------------------------------------------------------------------


def stage(slug: str, kind: str = Stage.Kind.SCRIPT, **fields: Any) -> Stage:
    return Stage.objects.create(slug=slug, name=slug.title(), kind=kind, **fields)


def route(source: Stage, target: Stage, task_type: str = "") -> None:
    Transition.objects.create(source=source, target=target, task_type=task_type)


def fan_in_workflow(*, join_timeout: int | None = None, start: str = "fan_out", mid: str = "step") -> dict[str, Stage]:
    """start (script) --part--> mid (script) --part--> gather (join, siblings) --*--> sink (form)."""
    stages = {
        "start": stage("start", handler=f"tests.test_join.{start}"),
        "mid": stage("mid", handler=f"tests.test_join.{mid}"),
        "gather": stage("gather", Stage.Kind.JOIN, join_rule="siblings", join_timeout=join_timeout),
        "sink": stage("sink", Stage.Kind.FORM),
    }
    route(stages["start"], stages["mid"], "part")
    route(stages["mid"], stages["gather"], "part")
    route(stages["gather"], stages["sink"])
    return stages


def drain() -> None:
    """Run a worker (in this process) until nothing is claimable: handlers, then the join pass."""
    for _ in range(5):
        Worker(listen=False, progress_interval=0, batch_size=3).run(once=True)
        tasks_join_sweep()


def arrivals_in_order(join: Stage) -> list[Task]:
    return list(Task.objects.filter(stage=join).order_by("available_at", "id"))


# -- the rule: all siblings of a fan-out ----------------------------------------------------------------


def test_a_fan_out_through_an_intermediate_stage_joins_into_one_merged_task(db: None) -> None:
    w = fan_in_workflow()
    task_create(stage=w["start"], type="go", payload={"n": 5, "root": "a"})
    task_create(stage=w["start"], type="go", payload={"n": 3, "root": "b"})

    drain()

    merged = list(Task.objects.filter(stage=w["sink"]).order_by("id"))
    assert len(merged) == 2
    for task, root, n in zip(merged, ["a", "b"], [5, 3], strict=True):
        arrivals = [a for a in arrivals_in_order(w["gather"]) if a.payload["root"] == root]
        assert len(arrivals) == n and all(a.status == Task.Status.COMPLETED for a in arrivals)
        assert task.type == "part"  # no join_type: the first arrival's
        assert task.payload["parts"] == [a.payload for a in arrivals]  # in arrival order
        assert sorted(p["i"] for p in task.payload["parts"]) == list(range(n))
        assert all(p["stepped"] for p in task.payload["parts"])
        root_task = Task.objects.get(stage=w["start"], payload__root=root)
        assert task.payload["key"] == root_task.pk  # the fan-out's id: the task that fanned out
        assert task.parent_id == arrivals[0].pk and task.source_stage_id == w["gather"].pk
        assert task.fanout_id is None  # the merged task left the fan-out it joined
        # History: a completed event on each arrival, one joined event for the group.
        for a in arrivals:
            ends = TaskEvent.objects.filter(task=a, kind=TaskEvent.Kind.COMPLETED)
            assert [e.details["sent"] for e in ends] == [[task.pk]]
        [joined] = TaskEvent.objects.filter(kind=TaskEvent.Kind.JOINED, task__in=arrivals)
        assert joined.task_id == arrivals[0].pk and joined.details["arrived"] == n
    assert not Task.objects.filter(stage=w["gather"], status=Task.Status.PENDING).exists()


def test_the_fan_out_is_recorded_on_the_siblings_and_passed_on_one_to_one(db: None) -> None:
    w = fan_in_workflow()
    root = task_create(stage=w["start"], type="go", payload={"n": 3})

    Worker(stage_slugs=["start"], listen=False, progress_interval=0).run(once=True)
    siblings = list(Task.objects.filter(stage=w["mid"]))
    assert {(t.fanout_id, t.fanout_size) for t in siblings} == {(root.pk, 3)}

    Worker(stage_slugs=["mid"], listen=False, progress_interval=0).run(once=True)
    arrived = list(Task.objects.filter(stage=w["gather"]))
    assert {(t.fanout_id, t.fanout_size) for t in arrived} == {(root.pk, 3)}
    assert {t.parent_id for t in arrived} == {t.pk for t in siblings}


def test_a_group_waits_until_its_last_sibling_arrives(db: None) -> None:
    w = fan_in_workflow()
    task_create(stage=w["start"], type="go", payload={"n": 3})
    Worker(stage_slugs=["start"], listen=False, progress_interval=0).run(once=True)
    assert Task.objects.filter(stage=w["mid"]).count() == 3
    for _ in range(2):
        [claimed] = task_claim(stage=w["mid"], worker_id="w", limit=1)
        task_complete(task_id=claimed.pk, lock_token=claimed.lock_token, send=[("part", claimed.payload)])

    assert tasks_join_pass(w["gather"]).joined == 0
    [group] = stage_groups(w["gather"])
    assert group.label() == "2/3 arrived" and not group.complete

    [claimed] = task_claim(stage=w["mid"], worker_id="w", limit=1)
    task_complete(task_id=claimed.pk, lock_token=claimed.lock_token, send=[("part", claimed.payload)])
    assert tasks_join_pass(w["gather"]).joined == 1
    assert Task.objects.filter(stage=w["sink"]).count() == 1


def test_a_task_outside_any_fan_out_passes_as_a_group_of_one(db: None) -> None:
    w = fan_in_workflow()
    alone = task_create(stage=w["gather"], type="solo", payload={"x": 1})  # an API create lands the same way

    assert tasks_join_pass(w["gather"]).joined == 1

    [merged] = Task.objects.filter(stage=w["sink"])
    assert merged.payload == {"parts": [{"x": 1}], "key": None} and merged.type == "solo"
    assert Task.objects.get(pk=alone.pk).status == Task.Status.COMPLETED


def test_a_parentless_send_to_several_stages_is_a_fan_out(db: None) -> None:
    hub = stage("hub", Stage.Kind.HOOK)
    left, right = stage("left", handler="tests.test_join.step"), stage("right", handler="tests.test_join.step")
    gather = stage("gather", Stage.Kind.JOIN, join_rule="siblings", join_type="both")
    sink = stage("sink", Stage.Kind.FORM)
    for target in (left, right):
        route(hub, target)
        route(target, gather)
    route(gather, sink)

    sent = task_send(stage=hub, type="part", payload={"v": 1})

    assert len({t.fanout_id for t in sent}) == 1 and sent[0].fanout_id < 0 and sent[0].fanout_size == 2
    drain()
    [merged] = Task.objects.filter(stage=sink)
    assert merged.type == "both" and len(merged.payload["parts"]) == 2 and merged.payload["key"] == sent[0].fanout_id


def test_a_job_run_that_sends_several_tasks_is_one_fan_out(db: None) -> None:
    # One tasks_send_many call with no sending task, two sends: one fan-out id for both (not one per send).
    hub = stage("hub", Stage.Kind.HOOK)
    job = stage("nightly", Stage.Kind.JOB, handler="tests.test_join.two_sends", schedule="0 2 * * *")
    gather = stage("gather", Stage.Kind.JOIN, join_rule="siblings", join_type="both")
    sink = stage("sink", Stage.Kind.FORM)
    route(hub, gather)
    route(job, gather)
    route(gather, sink)

    made = tasks_send_many(stage=hub, sends=[("a", {"x": 1}), ("b", {"x": 2})])

    assert len({t.fanout_id for t in made}) == 1 and made[0].fanout_id < 0
    assert [t.fanout_size for t in made] == [2, 2]
    [group] = stage_groups(gather)
    assert group.label() == "2/2 arrived"
    assert tasks_join_pass(gather).joined == 1

    # A real job run whose handler calls send() twice: the same, through the scheduler's entry point.
    run = job_run_now(stage=job, worker_id="s")
    assert run is not None and run.tasks_sent == 2
    arrived = list(Task.objects.filter(stage=gather, status=Task.Status.PENDING))
    assert len(arrived) == 2 and len({t.fanout_id for t in arrived}) == 1
    assert {t.fanout_id for t in arrived} != {made[0].fanout_id}  # each call its own fan-out
    assert tasks_join_pass(gather).joined == 1
    merged = list(Task.objects.filter(stage=sink).order_by("id"))
    assert [m.payload["parts"] for m in merged] == [[{"x": 1}, {"x": 2}]] * 2
    assert merged[1].payload["key"] == arrived[0].fanout_id


def test_nested_fan_outs_join_inner_first_then_outer(db: None) -> None:
    # outer (fans out 2) -> inner (each fans out 3) -> join1 -> join2 -> sink
    outer = stage("outer", handler="tests.test_join.fan_out")
    inner = stage("inner", handler="tests.test_join.fan_out")
    join1 = stage("join1", Stage.Kind.JOIN, join_rule="siblings")
    join2 = stage("join2", Stage.Kind.JOIN, join_rule="siblings", join_type="all")
    sink = stage("sink", Stage.Kind.FORM)
    route(outer, inner)
    route(inner, join1)
    route(join1, join2)
    route(join2, sink)
    # fan_out sends {"root", "i"} parts; the inner stage reads "n" from each: give it through "root".
    task_create(stage=outer, type="go", payload={"n": 2, "root": None})
    Worker(stage_slugs=["outer"], listen=False, progress_interval=0).run(once=True)
    for t in Task.objects.filter(stage=inner):
        t.payload = {"n": 3, "root": t.payload["i"]}
        t.save(update_fields=["payload"])

    drain()

    assert Task.objects.filter(stage=join1, status=Task.Status.COMPLETED).count() == 6
    assert Task.objects.filter(stage=join2, status=Task.Status.COMPLETED).count() == 2
    [merged] = Task.objects.filter(stage=sink)
    assert merged.type == "all" and [len(p["parts"]) for p in merged.payload["parts"]] == [3, 3]


def test_a_branch_that_ends_keeps_the_group_waiting_until_its_timeout(db: None) -> None:
    w = fan_in_workflow(join_timeout=60, start="fan_out_or_drop", mid="step_or_end")
    task_create(stage=w["start"], type="go", payload={"n": 4, "drop": 2})
    drain()
    assert not Task.objects.filter(stage=w["sink"]).exists()
    [group] = stage_groups(w["gather"])
    assert group.label() == "3/4 arrived"

    later = timezone.now() + timedelta(seconds=61)
    result = tasks_join_pass(w["gather"], now=later)

    assert (result.joined, result.timed_out) == (0, 1)
    [timed_out] = Task.objects.filter(stage=w["sink"])
    assert timed_out.type == TIMEOUT_TYPE
    assert [p["i"] for p in timed_out.payload["parts"]] == sorted(p["i"] for p in timed_out.payload["parts"])
    assert len(timed_out.payload["parts"]) == 3 and timed_out.payload["expected"] == 4
    assert not Task.objects.filter(stage=w["gather"], status=Task.Status.PENDING).exists()
    [event] = TaskEvent.objects.filter(kind=TaskEvent.Kind.JOIN_TIMED_OUT)
    assert "3/4 arrived" in event.details["reason"]


def test_a_timeout_goes_over_its_own_typed_transition_and_a_merge_over_the_other(db: None) -> None:
    gather = stage("gather", Stage.Kind.JOIN, join_rule="siblings", join_timeout=60, join_type="merged")
    escalate, sink = stage("escalate", Stage.Kind.FORM), stage("sink", Stage.Kind.FORM)
    hub = stage("hub", Stage.Kind.HOOK)
    route(hub, gather)
    route(gather, escalate, TIMEOUT_TYPE)
    route(gather, sink, "merged")
    # Each call sends two tasks with no sending task: a fan-out of 2.
    whole = tasks_send_many(stage=hub, sends=[("part", {"n": 1}), ("part", {"n": 1})])
    short = tasks_send_many(stage=hub, sends=[("part", {"n": 2}), ("part", {"n": 2})])
    task_cancel(task_id=short[1].pk, reason="branch gone", actor="user:x")  # its group stays 1/2

    assert (tasks_join_pass(gather).joined, Task.objects.filter(stage=escalate).count()) == (1, 0)
    result = tasks_join_pass(gather, now=timezone.now() + timedelta(seconds=61))

    assert (result.joined, result.timed_out) == (0, 1)
    [merged] = Task.objects.filter(stage=sink)
    [timed_out] = Task.objects.filter(stage=escalate)
    assert merged.type == "merged" and merged.payload["key"] == whole[0].fanout_id
    assert timed_out.type == TIMEOUT_TYPE and timed_out.payload == {
        "parts": [{"n": 2}],
        "key": short[0].fanout_id,
        "expected": 2,
    }
    assert Task.objects.get(pk=short[0].pk).status == Task.Status.COMPLETED


def test_a_count_group_still_short_at_its_timeout_is_sent_on_with_what_arrived(db: None) -> None:
    gather = stage("gather", Stage.Kind.JOIN, join_rule="count", join_key="/order", join_count=3, join_timeout=30)
    route(gather, stage("sink", Stage.Kind.FORM))
    first = task_create(stage=gather, type="line", payload={"order": 5, "n": 0})
    task_create(stage=gather, type="line", payload={"order": 6, "n": 1})
    task_create(stage=gather, type="line", payload={"order": 5, "n": 2})

    assert tasks_join_pass(gather, now=timezone.now() + timedelta(seconds=29)).timed_out == 0
    result = tasks_join_pass(gather, now=timezone.now() + timedelta(seconds=31))

    assert (result.joined, result.timed_out) == (0, 2)  # both keys' groups, each short of 3
    sent = {t.payload["key"]: t for t in Task.objects.filter(stage__slug="sink")}
    assert sorted(sent) == [5, 6] and {t.type for t in sent.values()} == {TIMEOUT_TYPE}
    assert sent[5].payload == {"parts": [{"order": 5, "n": 0}, {"order": 5, "n": 2}], "key": 5, "expected": 3}
    assert sent[5].parent_id == first.pk
    assert not Task.objects.filter(stage=gather, status=Task.Status.PENDING).exists()
    [event] = TaskEvent.objects.filter(task_id=first.pk, kind=TaskEvent.Kind.JOIN_TIMED_OUT)
    assert "2/3 arrived" in event.details["reason"]


def test_without_a_timeout_a_short_group_waits_for_ever(db: None) -> None:
    w = fan_in_workflow(start="fan_out_or_drop", mid="step_or_end")
    task_create(stage=w["start"], type="go", payload={"n": 3, "drop": 0})
    drain()

    result = tasks_join_pass(w["gather"], now=timezone.now() + timedelta(days=300))

    assert (result.joined, result.timed_out) == (0, 0)
    assert Task.objects.filter(stage=w["gather"], status=Task.Status.PENDING).count() == 2


def test_a_cancelled_arrival_leaves_its_group_short(db: None) -> None:
    w = fan_in_workflow(join_timeout=30)
    task_create(stage=w["start"], type="go", payload={"n": 2})
    Worker(stage_slugs=["start"], listen=False, progress_interval=0).run(once=True)
    for claimed in task_claim(stage=w["mid"], worker_id="w", limit=2):
        task_complete(task_id=claimed.pk, lock_token=claimed.lock_token, send=[("part", claimed.payload)])
    a, b = arrivals_in_order(w["gather"])
    task_cancel(task_id=b.pk, reason="not needed", actor="user:x")

    assert tasks_join_pass(w["gather"]).joined == 0
    assert tasks_join_pass(w["gather"], now=timezone.now() + timedelta(seconds=31)).timed_out == 1
    [sent] = Task.objects.filter(stage=w["sink"])
    assert sent.payload["parts"] == [a.payload]


# -- the rule: N arrivals with the same key ---------------------------------------------------------------


def test_n_arrivals_with_the_same_key_make_a_group(db: None) -> None:
    gather = stage("gather", Stage.Kind.JOIN, join_rule="count", join_key="/order/id", join_count=3)
    sink = stage("sink", Stage.Kind.FORM)
    route(gather, sink)
    made = [
        task_create(stage=gather, type="line", payload={"order": {"id": oid}, "n": n})
        for n, oid in enumerate([1, 2, 1, 2.0, 1, 3, 1])
    ]

    result = tasks_join_pass(gather)

    assert result.joined == 1  # order 1 has 4 arrivals: one group of 3, and 1 waits for the next
    [merged] = Task.objects.filter(stage=sink)
    assert merged.payload["key"] == 1 and [p["n"] for p in merged.payload["parts"]] == [0, 2, 4]
    labels = {json.dumps(g.key): g.label() for g in stage_groups(gather)}
    assert labels == {"1": "1/3 arrived", "2": "2/3 arrived", "3": "1/3 arrived"}  # 2 and 2.0 are one key
    task_create(stage=gather, type="line", payload={"order": {"id": 2}, "n": 9})
    assert tasks_join_pass(gather).joined == 1
    assert Task.objects.filter(stage=sink).count() == 2
    assert Task.objects.get(pk=made[1].pk).status == Task.Status.COMPLETED


def test_a_missing_key_counts_as_null(db: None) -> None:
    gather = stage("gather", Stage.Kind.JOIN, join_rule="count", join_key="/k", join_count=2)
    route(gather, stage("sink", Stage.Kind.FORM))
    task_create(stage=gather, type="t", payload={})
    task_create(stage=gather, type="t", payload={"k": None})

    assert tasks_join_pass(gather).joined == 1
    assert Task.objects.get(stage__slug="sink").payload["key"] is None


# -- refusals ------------------------------------------------------------------------------------------


def test_a_refused_merged_send_leaves_the_group_pending(db: None) -> None:
    gather = stage("gather", Stage.Kind.JOIN, join_rule="count", join_count=2, join_type="merged")
    route(gather, stage("sink", Stage.Kind.FORM), "other")  # nothing passes "merged"
    for _ in range(2):
        task_create(stage=gather, type="t", payload={})

    result = tasks_join_pass(gather)

    assert (result.joined, result.refused) == (0, 1)
    assert Task.objects.filter(stage=gather, status=Task.Status.PENDING).count() == 2
    assert not TaskEvent.objects.filter(kind=TaskEvent.Kind.JOINED).exists()


def test_a_paused_join_stage_joins_nothing(db: None) -> None:
    gather = stage("gather", Stage.Kind.JOIN, join_rule="count", join_count=1, is_paused=True)
    route(gather, stage("sink", Stage.Kind.FORM))
    task_create(stage=gather, type="t", payload={})

    assert tasks_join_pass(gather) is None and tasks_join_sweep().joined == 0


def test_nobody_claims_at_a_join_stage(db: None, admin: APIClient) -> None:
    gather = stage("gather", Stage.Kind.JOIN, join_rule="count", join_count=5)
    task_create(stage=gather, type="t", payload={})

    response = admin.post("/api/stages/gather/claim/", {"limit": 1}, format="json")

    assert response.status_code == 409 and "join stage" in response.json()["detail"]
    Worker(listen=False, progress_interval=0).run(once=True)  # serves script stages only
    assert Task.objects.get(stage=gather).status == Task.Status.PENDING


# -- entry paths -----------------------------------------------------------------------------------------


def test_an_api_create_and_a_hook_arrive_at_a_join_stage_like_a_send(db: None, admin: APIClient) -> None:
    gather = stage("gather", Stage.Kind.JOIN, join_rule="count", join_key="/order", join_count=2)
    sink = stage("sink", Stage.Kind.FORM)
    hook = stage("orders", Stage.Kind.HOOK)
    route(hook, gather)
    route(gather, sink)

    created = admin.post("/api/tasks/", {"stage": "gather", "type": "line", "payload": {"order": 7}}, format="json")
    hooked = Client().post(
        "/hooks/orders/?type=line", {"order": 7}, content_type="application/json", HTTP_X_HOOK_TOKEN=hook.hook_secret
    )

    assert created.status_code == 201 and hooked.status_code == 202
    [group] = stage_groups(gather)
    assert group.label() == "2/2 arrived" and group.key == 7
    assert tasks_join_pass(gather).joined == 1
    [merged] = Task.objects.filter(stage=sink)
    assert merged.payload["parts"] == [{"order": 7}, {"order": 7}]

    # The New task page: a person's create lands the same way.
    client = logged_in(make_user("boss", superuser=True))
    form = {"stage": "gather", "type": "line", "payload": '{"order": 8}', "priority": "", "run_at": ""}
    for _ in range(2):
        assert client.post("/tasks/new/", form).status_code == 302
    assert tasks_join_pass(gather).joined == 1
    assert Task.objects.filter(stage=sink, payload__key=8).count() == 1
    # The overview draws a join stage like any other.
    assert client.get("/overview/").status_code == 200


def test_the_workflow_file_round_trips_a_join_stage(db: None, tmp_path: Path) -> None:
    w = fan_in_workflow(join_timeout=600)
    Stage.objects.filter(pk=w["gather"].pk).update(join_type="joined")
    dumped = workflow_dump()
    entry = next(s for s in dumped["stages"] if s["slug"] == "gather")
    assert {k: entry[k] for k in ("kind", "join_rule", "join_key", "join_count", "join_timeout", "join_type")} == {
        "kind": "join",
        "join_rule": "siblings",
        "join_key": "",
        "join_count": None,
        "join_timeout": 600,
        "join_type": "joined",
    }
    entry |= {"join_rule": "count", "join_key": "/order/id", "join_count": 4, "join_timeout": None}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(dumped))
    call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=io.StringIO())

    gather = Stage.objects.get(slug="gather")
    assert (gather.join_rule, gather.join_key, gather.join_count, gather.join_timeout) == (
        "count",
        "/order/id",
        4,
        None,
    )
    assert workflow_dump() == dumped


JOIN = {"slug": "gather", "name": "Gather", "kind": "join"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "join_rule: A join stage needs a rule: 'siblings' or 'count'."),
        ({"join_rule": "all"}, "join_rule: Value 'all' is not a valid choice."),
        ({"join_rule": "count"}, "join_count: The 'count' rule needs a join_count."),
        ({"join_rule": "count", "join_count": 0}, "join_count: Ensure this value is greater than or equal to 1."),
        ({"join_rule": "count", "join_count": 10_001}, "join_count: Ensure this value is less than or equal to 10000."),
        ({"join_rule": "count", "join_count": "3"}, "join_count must be a whole number or null, not a string"),
        ({"join_rule": "count", "join_count": 2, "join_key": "order"}, "join_key: A JSON pointer starts with '/'"),
        ({"join_rule": "siblings", "join_count": 2}, "join_count: The 'siblings' rule counts a fan-out's tasks"),
        ({"join_rule": "siblings", "join_timeout": 0}, "join_timeout: Ensure this value is greater than or equal to 1"),
        ({"join_rule": "siblings", "handler": "tests.handlers.noop"}, "handler: A join stage runs no handler"),
        ({"join_rule": "siblings", "join_timeout": 60, "route": "x"}, "the join sends 'join_timeout' but no"),
        ({"join_rule": "siblings", "join_type": "y", "route": "x"}, "the join sends 'y' but no transition out"),
        ({"kind": "script", "handler": "tests.handlers.noop", "join_rule": "count"}, "join_rule: Only join stages"),
    ],
)
def test_bad_join_settings_in_a_workflow_file_are_one_line_each(db: None, fields: dict[str, Any], message: str) -> None:
    route = fields.pop("route", "")  # the type the join stage's one transition passes ("": every type)
    data = {
        "version": 1,
        "stages": [{**JOIN, **fields}],
        "transitions": [{"source": "gather", "target": "gather", "type": route}],
    }

    problems = workflow_problems(data)

    assert len(problems) == 1, problems
    assert problems[0].startswith("stages[0] (slug 'gather'): ") and message in problems[0]


def test_load_workflow_refuses_a_bad_join_and_changes_nothing(db: None, tmp_path: Path) -> None:
    fan_in_workflow()
    dumped = workflow_dump()
    next(s for s in dumped["stages"] if s["slug"] == "gather")["join_count"] = 3  # siblings takes no count
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(dumped))

    with pytest.raises(CommandError):
        call_command("load_workflow", str(path), stdout=io.StringIO(), stderr=io.StringIO())

    assert Stage.objects.get(slug="gather").join_count is None


def test_the_api_sets_and_checks_the_join_fields(db: None, admin: APIClient) -> None:
    bad = admin.post("/api/stages/", {**JOIN, "join_rule": "count"}, format="json")
    assert bad.status_code == 400 and "join_count" in bad.json()
    assert admin.post("/api/stages/", {**JOIN, "join_rule": "count", "join_count": 0}, format="json").status_code == 400
    assert not Stage.objects.filter(slug="gather").exists()

    made = admin.post("/api/stages/", {**JOIN, "join_rule": "count", "join_count": 3, "join_key": "/k"}, format="json")
    assert made.status_code == 201, made.json()
    changed = admin.patch("/api/stages/gather/", {"join_timeout": 90}, format="json")
    assert changed.status_code == 200 and changed.json()["join_timeout"] == 90
    assert admin.patch("/api/stages/gather/", {"join_rule": "siblings"}, format="json").status_code == 400
    assert admin.patch("/api/stages/gather/", {"handler": "tests.handlers.noop"}, format="json").status_code == 400
    gather = Stage.objects.get(slug="gather")
    assert (gather.join_rule, gather.join_count, gather.join_key, gather.join_timeout) == ("count", 3, "/k", 90)

    task = task_create(stage=gather, type="t", payload={"k": 1})
    shown = admin.get(f"/api/tasks/{task.pk}/").json()
    assert shown["fanout_id"] is None and shown["fanout_size"] is None


def test_the_admin_has_a_join_fieldset_and_refuses_bad_values(db: None) -> None:
    w = fan_in_workflow()
    client = logged_in(make_user("boss", superuser=True))
    url = f"{STAGE_URL}{w['gather'].pk}/change/"
    data = form_fields(client, url, form_id="stage_form")
    assert data["join_rule"] == "siblings"

    refused = client.post(url, {**data, "join_rule": "count", "join_count": "", "_save": "Save"})
    assert refused.status_code == 200 and "needs a join_count" in refused.content.decode()
    assert Stage.objects.get(slug="gather").join_rule == "siblings"

    saved = client.post(url, {**data, "join_rule": "count", "join_count": "4", "join_timeout": "30", "_save": "Save"})
    assert saved.status_code == 302
    gather = Stage.objects.get(slug="gather")
    assert (gather.join_rule, gather.join_count, gather.join_timeout) == ("count", 4, 30)


# -- pages and metrics -------------------------------------------------------------------------------------


def waiting_three_of_five() -> dict[str, Stage]:
    w = fan_in_workflow(join_timeout=3600)
    task_create(stage=w["start"], type="go", payload={"n": 5})
    Worker(stage_slugs=["start"], listen=False, progress_interval=0).run(once=True)
    for claimed in task_claim(stage=w["mid"], worker_id="w", limit=3):
        task_complete(task_id=claimed.pk, lock_token=claimed.lock_token, send=[("part", claimed.payload)])
    return w


def test_the_stage_page_and_the_task_page_show_3_of_5_arrived(db: None) -> None:
    w = waiting_three_of_five()
    client = logged_in(make_user("boss", superuser=True))
    arrival = arrivals_in_order(w["gather"])[1]

    stage_page = client.get(f"/stages/{w['gather'].slug}/").content.decode()
    task_page = client.get(f"/tasks/{arrival.pk}/").content.decode()
    listed = client.get("/tasks/", {"stage": "gather"}).content.decode()

    assert "Waiting groups" in stage_page and "3/5 arrived" in stage_page
    assert "all siblings of a fan-out" in stage_page
    assert "3/5 arrived" in task_page
    assert listed.count("Waiting to join for") == 3
    other = client.get(f"/stages/{w['mid'].slug}/").content.decode()
    assert "Waiting groups" not in other


def test_metrics_count_joins_timeouts_and_waiting_groups(
    db: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.TASKS_METRICS_TOKEN = "t0ken-t0ken-t0ken-t0ken"
    settings.TASKS_METRICS_CACHE = 0
    monkeypatch.setattr(stage_counters, "SETTLE_SECONDS", 0.0)  # fold the events at once
    w = waiting_three_of_five()
    alone = task_create(stage=w["gather"], type="solo", payload={})  # a group of one: joined at once
    tasks_join_pass(w["gather"])
    assert Task.objects.get(pk=alone.pk).status == Task.Status.COMPLETED
    auth = {"HTTP_AUTHORIZATION": "Bearer t0ken-t0ken-t0ken-t0ken"}

    body = Client().get("/metrics", **auth).content.decode()
    assert 'tasks_joined_total{stage="gather"} 1.0' in body
    assert 'tasks_join_timeouts_total{stage="gather"} 0.0' in body
    assert 'tasks_join_groups_waiting{stage="gather"} 1.0' in body

    # The group's first arrival two hours ago (events dated now: the fold counts settled events only).
    two_hours_ago = timezone.now() - timedelta(hours=2)
    Task.objects.filter(stage=w["gather"], status=Task.Status.PENDING).update(available_at=two_hours_ago)
    assert tasks_join_pass(w["gather"]).timed_out == 1
    body = Client().get("/metrics", **auth).content.decode()
    assert 'tasks_join_timeouts_total{stage="gather"} 1.0' in body
    assert 'tasks_join_groups_waiting{stage="gather"} 0.0' in body


def fail_on_two(task: Any) -> None:
    if task.payload["i"] == 2 and not task.payload.get("again"):
        raise PermanentFailure("branch 2 broke")
    task.send("part", task.payload)


def test_a_failed_branch_duplicated_completes_its_group(db: None) -> None:
    w = fan_in_workflow(mid="fail_on_two")
    task_create(stage=w["start"], type="go", payload={"n": 3})
    drain()
    failed = Task.objects.get(stage=w["mid"], status=Task.Status.FAILED)
    [group] = stage_groups(w["gather"])
    assert group.label() == "2/3 arrived"

    copy = task_duplicate(task_id=failed.pk, actor="user:boss")
    Task.objects.filter(pk=copy.pk).update(payload={**failed.payload, "again": True})
    drain()

    [merged] = Task.objects.filter(stage=w["sink"])
    assert sorted(p["i"] for p in merged.payload["parts"]) == [0, 1, 2]
