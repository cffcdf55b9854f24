"""Form and job stages are guarded in the API too (issue 11, section 3).

A form stage's group rule (services.form_stages.may_work_on) held only on /work/: an
operator outside "reviewers" got 403 opening a task there, but approved it with
POST /api/stages/review/claim/ + /api/tasks/<id>/complete/ and created an
invoice with /api/stages/review/send/. An API claim on a job stage took its task
away from the job. Now every task verb on a form stage follows the group rule
(403, nothing changes), and API claims on job stages are refused (409).

The matrix: each action × (group member, operator outside the group,
superuser, user without permissions), the expected status, and on refusal
the database unchanged.

    review (form, reviewers) --approved--> invoice (script)
    triage (form, no groups) --*-->        invoice
    digest (job, 03:00)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Group
from rest_framework.response import Response
from rest_framework.test import APIClient

from tasks_app.models import Stage, Task, Transition
from tasks_app.services import task_claim, task_create
from tests.support.api import post
from tests.support.users import OPERATOR_PERMS, make_user, token_client
from tests.support.world import nothing_written

ROLES = ("member", "outsider", "superuser", "nobody")
FORM_REFUSAL = (
    "Stage '{slug}' is a form stage: only members of its groups may claim, complete, release, extend or send its tasks."
)
JOB_REFUSAL = "Stage 'digest' is a job stage: its tasks are taken by the scheduler's runs, not claimed over the API."


@pytest.fixture
def stages(db: None) -> dict[str, Stage]:
    reviewers = Group.objects.create(name="reviewers")
    found = {
        "review": Stage.objects.create(slug="review", name="Review", kind=Stage.Kind.FORM),
        "triage": Stage.objects.create(slug="triage", name="Triage", kind=Stage.Kind.FORM),
        "invoice": Stage.objects.create(slug="invoice", name="Invoice", handler="tests.handlers.noop"),
        "digest": Stage.objects.create(
            slug="digest", name="Digest", kind=Stage.Kind.JOB, handler="tasks_app.demo.daily_digest",
            schedule="0 3 * * *",
        ),
    }  # fmt: skip
    found["review"].groups.add(reviewers)
    Transition.objects.create(source=found["review"], target=found["invoice"], task_type="approved")
    Transition.objects.create(source=found["triage"], target=found["invoice"], task_type="")
    return found


def make_role(role: str) -> Any:
    if role == "superuser":
        return make_user("root", superuser=True)
    if role == "nobody":
        return make_user("nobody")
    user = make_user(role, *OPERATOR_PERMS)
    if role == "member":
        user.groups.add(Group.objects.get(name="reviewers"))
    return user


def client_for(role: str) -> APIClient:
    return token_client(make_role(role))


def claimed(stage: Stage) -> Task:
    """A task of `stage` claimed by a worker: its lock_token is what a client would send."""
    task_create(stage=stage, type="order", payload={"n": 1})
    [task] = task_claim(stage=stage, worker_id="w")
    return task


# -- each action: its setup, its request, and what success looks like ---------------------------


@dataclass
class Prepared:
    request: Callable[[APIClient], Response]
    succeeded: Callable[[Response], None]


def prepare_claim(stage: Stage) -> Prepared:
    task = task_create(stage=stage, type="order", payload={})

    def succeeded(response: Response) -> None:
        assert [t["id"] for t in response.data] == [task.pk]
        assert Task.objects.get(pk=task.pk).status == Task.Status.LOCKED

    return Prepared(lambda c: post(c, f"/api/stages/{stage.slug}/claim/", {"limit": 1}), succeeded)


def prepare_send(stage: Stage) -> Prepared:
    def succeeded(response: Response) -> None:
        assert Task.objects.filter(stage__slug="invoice", source_stage=stage).count() == 1

    body = {"type": "approved", "payload": {"n": 2}}
    return Prepared(lambda c: post(c, f"/api/stages/{stage.slug}/send/", body), succeeded)


def prepare_complete(stage: Stage) -> Prepared:
    task = claimed(stage)
    body = {"lock_token": task.lock_token, "send": [{"type": "approved", "payload": {"ok": True}}]}

    def succeeded(response: Response) -> None:
        assert Task.objects.get(pk=task.pk).status == Task.Status.COMPLETED
        assert Task.objects.filter(stage__slug="invoice", parent=task).count() == 1

    return Prepared(lambda c: post(c, f"/api/tasks/{task.pk}/complete/", body), succeeded)


def prepare_bulk_complete(stage: Stage) -> Prepared:
    task = claimed(stage)
    body = {"tasks": [{"id": task.pk, "lock_token": task.lock_token}]}

    def succeeded(response: Response) -> None:
        assert response.data["results"] == [{"id": task.pk, "status": "completed"}]
        assert Task.objects.get(pk=task.pk).status == Task.Status.COMPLETED

    return Prepared(lambda c: post(c, "/api/tasks/bulk-complete/", body), succeeded)


def prepare_release(stage: Stage) -> Prepared:
    task = claimed(stage)

    def succeeded(response: Response) -> None:
        assert Task.objects.get(pk=task.pk).status == Task.Status.PENDING

    body = {"lock_token": task.lock_token, "error": "no"}
    return Prepared(lambda c: post(c, f"/api/tasks/{task.pk}/release/", body), succeeded)


def prepare_heartbeat(stage: Stage) -> Prepared:
    task = claimed(stage)
    body = {"lock_token": task.lock_token, "lock_timeout": 900}

    def succeeded(response: Response) -> None:
        refreshed = Task.objects.get(pk=task.pk)
        assert refreshed.locked_until is not None and task.locked_until is not None
        assert refreshed.locked_until > task.locked_until

    return Prepared(lambda c: post(c, f"/api/tasks/{task.pk}/heartbeat/", body), succeeded)


ACTIONS: dict[str, tuple[Callable[[Stage], Prepared], int]] = {
    "claim": (prepare_claim, 200),
    "send": (prepare_send, 201),
    "complete": (prepare_complete, 200),
    "bulk-complete": (prepare_bulk_complete, 200),
    "release": (prepare_release, 200),
    "heartbeat": (prepare_heartbeat, 200),
}


# -- the matrix at a form stage with groups -------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", ACTIONS)
def test_form_stage_task_verbs_follow_the_group_rule(stages: dict[str, Stage], action: str, role: str) -> None:
    prepare, ok = ACTIONS[action]
    client = client_for(role)
    prepared = prepare(stages["review"])

    if role in ("member", "superuser"):
        response = prepared.request(client)
        assert response.status_code == ok, response.content
        prepared.succeeded(response)
        return

    with nothing_written():
        response = prepared.request(client)
    assert response.status_code == 403, response.content
    if role == "outsider":  # `nobody` lacks the task permissions: DRF's own message
        assert response.data["detail"] == FORM_REFUSAL.format(slug="review")


@pytest.mark.parametrize("action", ACTIONS)
def test_a_form_stage_without_groups_is_open_to_operators(stages: dict[str, Stage], action: str) -> None:
    prepare, ok = ACTIONS[action]
    prepared = prepare(stages["triage"])
    response = prepared.request(client_for("outsider"))
    assert response.status_code == ok, response.content
    prepared.succeeded(response)


# -- job stages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "status"), [("member", 409), ("outsider", 409), ("superuser", 409), ("nobody", 403)])
def test_api_claims_on_a_job_stage_are_refused(stages: dict[str, Stage], role: str, status: int) -> None:
    task = task_create(stage=stages["digest"], type="order", payload={})
    client = client_for(role)

    with nothing_written():
        response = post(client, "/api/stages/digest/claim/", {"limit": 5})

    assert response.status_code == status, response.content
    if status == 409:
        assert response.data["detail"] == JOB_REFUSAL
    assert Task.objects.get(pk=task.pk).status == Task.Status.PENDING  # still the job's


# -- the reproduction ---------------------------------------------------------------------


def test_an_operator_outside_reviewers_cannot_approve_or_invoice_through_the_api(stages: dict[str, Stage]) -> None:
    review = stages["review"]
    waiting = task_create(stage=review, type="order", payload={"amount": 10})
    operator = client_for("outsider")

    with nothing_written():
        claim = post(operator, "/api/stages/review/claim/", {"limit": 1})
        send = post(operator, "/api/stages/review/send/", {"type": "approved", "payload": {"amount": 10}})
    assert (claim.status_code, send.status_code) == (403, 403)
    assert Task.objects.get(pk=waiting.pk).status == Task.Status.PENDING

    # Even holding a lock token (a reviewer's client claimed it), the operator can't complete it.
    [held] = task_claim(stage=review, worker_id="api:alice")
    body = {"lock_token": held.lock_token, "send": [{"type": "approved", "payload": {"amount": 10}}]}
    with nothing_written():
        complete = post(operator, f"/api/tasks/{held.pk}/complete/", body)
    assert complete.status_code == 403
    assert complete.data["detail"] == FORM_REFUSAL.format(slug="review")
    assert not Task.objects.filter(stage=stages["invoice"]).exists()
