"""One-click decisions from the mail (issue 16): checking a link, and deciding with it, once.

The link itself (token, which buttons get one) is services.decision_tokens; the
mail puts links in for a recipient who is a user (services.notifications).
Here a link is used by a logged-in person: `decision_link_check` says whether it
still can be (the confirmation page, a GET, which changes nothing), and
`decision_link_use` decides (the page's POST).

Each refusal is a LinkRefused with the page's HTTP status (views.decision_links):

| why                                                  | status |
|------------------------------------------------------|--------|
| not a link of ours, or changed                       | 400    |
| the link is for another user                         | 403    |
| the user may no longer work on the stage             | 403    |
| the task is gone (deleted)                           | 404    |
| the task is decided, cancelled, failed, or someone   | 409    |
|   else has it open; the button is no longer offered, |        |
|   or now needs input; the stage is paused            |        |
| the link is older than TASKS_DECISION_LINK_MAX_AGE   | 410    |
| the link was used                                    | 410    |

Using a link is one transaction: the nonce goes into DecisionLinkUse (unique),
then the decision is made by the services My work uses, form_task_open (the
task must be pending, or open by this same person; its rules, an assignee's
included, apply) and form_task_submit (completion and routing of the
successors, the payload sent unchanged). A second use of the link hits the
unique nonce and is refused, even one racing the first (the insert waits for
the first transaction); a decision that fails rolls the use back with it, so
the link still works once the reason is gone. The completed event says the
decision came from a mail link (`decided_via`), with the link's type.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from tasks_app.models import DecisionLinkUse, Stage, Task, TaskEvent
from tasks_app.services.decision_tokens import Button, Link, LinkExpired, LinkInvalid, link_read, needs_no_input
from tasks_app.services.errors import TaskError
from tasks_app.services.events import actor_for, person_named
from tasks_app.services.form_stages import form_stage_refusal, form_task_open, form_task_submit, outgoing_types

DECIDED_VIA = "mail link"  # the completed event's details["decided_via"]


class LinkRefused(Exception):
    """A link that can't be used (now): the message is for the person, `status` the page's HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Checked:
    """A usable link: the task (stage and sender loaded) and the button it presses."""

    link: Link
    task: Task
    button: Button


@dataclass
class Decided:
    """What a link's decision did: the task, the button, the tasks it sent (or cancelled, if a cancel won)."""

    task: Task
    button: Button
    successors: list[Task]
    cancelled: bool


def _link(token: str, user: Any) -> Link:
    try:
        link = link_read(token)
    except LinkExpired:
        raise LinkRefused("This link has expired. Open the task in My work to decide it.", 410) from None
    except LinkInvalid:
        raise LinkRefused("This is not a valid decision link (it may have been cut or changed).", 400) from None
    if link.user_id != user.pk:
        raise LinkRefused("This link was sent to someone else: only they can use it.", 403)
    return link


def decision_link_check(*, token: str, user: Any, now: datetime | None = None) -> Checked:
    """The link's task and button if `user` can decide with it now; LinkRefused (with the status) if not."""
    now = now or timezone.now()
    link = _link(token, user)
    if DecisionLinkUse.objects.filter(nonce=link.nonce).exists():
        raise LinkRefused("This link has already been used: each link works once.", 410)
    task = Task.objects.select_related("stage", "source_stage").filter(pk=link.task_id).first()
    if task is None:
        raise LinkRefused(f"Task {link.task_id} no longer exists.", 404)
    held_by_other = task.status == Task.Status.LOCKED and task.locked_by != actor_for(user)
    if task.status not in (Task.Status.PENDING, Task.Status.LOCKED):
        raise LinkRefused(f"Task {task.pk} is {task.get_status_display().lower()}: there is nothing to decide.", 409)
    if held_by_other and task.locked_until is not None and task.locked_until >= now:
        raise LinkRefused(f"Task {task.pk} is open by {person_named(task.locked_by)}: they decide it now.", 409)
    if task.stage.kind != Stage.Kind.FORM:
        raise LinkRefused(f"Task {task.pk} no longer waits at a form stage.", 409)
    refusal = form_stage_refusal(user, task.stage)
    if refusal:
        raise LinkRefused(f"You may no longer work on the tasks of stage '{task.stage.name}'.", 403)
    outgoing = outgoing_types(task.stage, task.type)
    button = needs_no_input(task, link.type) if link.type in outgoing else None
    if button is None:
        raise LinkRefused(
            f"Task {task.pk} no longer offers '{link.type}' as a one-click decision: open it in My work.", 409
        )
    return Checked(link=link, task=task, button=button)


def decision_link_use(*, token: str, user: Any, now: datetime | None = None) -> Decided:
    """Decide the link's task as its button does, once: the use and the decision are one transaction."""
    now = now or timezone.now()
    checked = decision_link_check(token=token, user=user, now=now)
    link, task = checked.link, checked.task
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: PostgreSQL's transaction stays usable after the conflict
                DecisionLinkUse.objects.create(nonce=link.nonce, task_id=task.pk, user=user, used_at=now)
        except IntegrityError:
            # Used meanwhile (a double click, two tabs): the first use's transaction decided it.
            raise LinkRefused("This link has already been used: each link works once.", 410) from None
        try:
            form_task_open(task=task, user=user, now=now)
            successors = form_task_submit(task_id=task.pk, user=user, type=link.type, fields={})
        except ValidationError as exc:
            # Raising leaves the atomic block: the use goes with the decision that failed.
            problem = "; ".join(exc.messages)
            raise LinkRefused(f"Task {task.pk} can't be sent as '{link.type}': {problem}", 409) from None
        except TaskError as exc:
            raise LinkRefused(str(exc), 409) from None
        task.refresh_from_db()
        _mark_decided_via_link(task, link)
    return Decided(task=task, button=checked.button, successors=successors, cancelled=task.status == "cancelled")


def _mark_decided_via_link(task: Task, link: Link) -> None:
    """Say on the event that ended the task (completed, or cancelled if a cancel request won) that a link did it."""
    kinds = (TaskEvent.Kind.COMPLETED, TaskEvent.Kind.CANCELLED)
    event = TaskEvent.objects.filter(task_id=task.pk, kind__in=kinds).order_by("-id").first()
    if event is not None:  # written by this transaction's completion
        event.details = {**event.details, "decided_via": DECIDED_VIA, "decision": link.type}
        event.save(update_fields=["details"])
