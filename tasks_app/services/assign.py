"""Assign (issue 16): an optional assignee per task, and who may open an assigned task.

A task's assignee (Task.assignee, a user) is set three ways, each writing an
`assigned` event in the same transaction (details: `assignee` and `previous`,
usernames or null; the event's actor is who did it):

- on arrival, from the payload field its form stage's `assignee_from` (an RFC
  6901 pointer, read with dedupe_keys.resolve) names: `arrival_assign`, called
  by services.dedupe.tasks_insert (the one insert of every arrival path) before
  the INSERT, so the row goes in assigned, and `arrival_events` after it. The
  value is untrusted: a string of at most MAX_VALUE characters that is a
  username or an email address (never a URL, never code), matched to exactly
  one ACTIVE user who may work on the stage. Anything else leaves the task
  unassigned, and its `assigned` event (assignee null) says why (`reason`).
  A pointer that points at nothing (or at null) assigns nobody and says
  nothing: the field is optional.
- by hand (the task page, the API): `task_assign`, a conditional UPDATE of a
  live (pending or locked) task whose assignee is still the one read; a
  finished task is refused (TaskStateError), an unknown, inactive or
  unsuitable user is a ValidationError on `assignee`. The new assignee (with
  an email address, not the person assigning) gets an arrival-style
  notification in the outbox (services.notifications delivers it).

Opening an assigned task (services.form_stages.form_task_open): at a stage
with `assignee_only` (the default), a task assigned to someone else can be
opened only once it is overdue (the stage's due_after past its arrival), or by
a user with the change-task permission: `open_refusal` (an assignee deactivated since holds nothing back).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.db import connection, transaction
from django.db.models import Q, QuerySet, prefetch_related_objects
from django.utils import timezone

from tasks_app.dedupe_keys import MISSING, resolve
from tasks_app.models import LIVE, Notification, Stage, Task, TaskEvent
from tasks_app.selectors.work import may_work_on
from tasks_app.services.errors import TaskStateError
from tasks_app.services.events import actor_for, event_record

ARRIVAL_ACTOR = "arrival"  # the actor of an arrival's `assigned` event
CHANGE_TASK = "tasks_app.change_task"
MAX_VALUE = 254  # characters of a payload's assignee value (the longest email address)
MAX_EMAILS = 100  # distinct addresses one batch of arrivals looks up
MAX_CHOICES = 500  # users the task page offers (a stage with more members is a misconfiguration)
# Django's default username characters (UnicodeUsernameValidator): no ':' or '/', so never a URL.
USERNAME = re.compile(r"[\w.@+-]+\Z")
_email = EmailValidator()


# -- the open rule ----------------------------------------------------------------------------


def assignment_open_to_all(task: Task, now: datetime) -> bool:
    """True when anyone who may work on the task's stage may open it: it is unassigned, its stage lets
    others open assigned tasks (assignee_only off), or it is overdue (not finished, past created_at +
    due_after)."""
    if task.assignee_id is None or not task.stage.assignee_only:
        return True
    due = task.due_at()
    return due is not None and task.status in LIVE and due < now


def open_refusal(task: Task, user: Any, now: datetime) -> str | None:
    """Why `user` may not open `task` because it is assigned to someone else (None: they may)."""
    if assignment_open_to_all(task, now) or task.assignee_id == user.pk or user.has_perm(CHANGE_TASK):
        return None
    if task.assignee is not None and not task.assignee.is_active:
        return None  # a deactivated assignee (someone who left) holds nothing back
    name = assignee_name(task)
    due = task.due_at()
    if due is not None:
        return f"Task {task.pk} is assigned to {name} until it is overdue at {timezone.localtime(due):%H:%M}."
    return f"Task {task.pk} is assigned to {name}; only they or a user who may change tasks can open it."


def assignment_refusals(tasks: list[Task], user: Any, now: datetime | None = None) -> None:
    """Set `open_refusal` (open_refusal's text, or None) on each of My work's rows, loading their assignees in
    one query: a row assigned to someone else says so instead of offering Open."""
    now = now or timezone.now()
    prefetch_related_objects(tasks, "assignee")
    for task in tasks:
        task.open_refusal = open_refusal(task, user, now)  # type: ignore[attr-defined]


def assignee_name(task: Task) -> str:
    return task.assignee.get_username() if task.assignee is not None else ""


# -- who may be assigned ----------------------------------------------------------------------


def _change_perm() -> Q:
    """Users holding the change-task permission directly or through a group (superusers have every one)."""
    perm = Permission.objects.filter(codename="change_task", content_type__app_label="tasks_app")
    return Q(is_superuser=True) | Q(user_permissions__in=perm) | Q(groups__permissions__in=perm)


def eligible_users(stage: Stage) -> QuerySet[Any]:
    """The active users who may work on `stage` (services.form_stages.form_stages_for's rule, from the users'
    side: its groups' members; a stage without groups, task editors), by username, bounded."""
    users = get_user_model().objects.filter(is_active=True)
    if stage.groups.exists():
        rule = Q(is_superuser=True) | Q(groups__form_stages=stage)
    else:
        rule = _change_perm()
    ids = users.filter(rule).values("pk")
    return get_user_model().objects.filter(pk__in=ids).order_by("username")[:MAX_CHOICES]


def assign_choices(user: Any, task: Task) -> list[Any] | None:
    """The task page's Assignee choices: None when `user` may not assign or the task is finished or not at a
    form stage (no form)."""
    if not user.has_perm(CHANGE_TASK) or task.status not in LIVE or task.stage.kind != Stage.Kind.FORM:
        return None
    return list(eligible_users(task.stage))


def user_for(stage: Stage, username: str) -> Any:
    """The active user `username` who may work on `stage`; a ValidationError on `assignee` otherwise."""
    user = get_user_model().objects.filter(username=username[:MAX_VALUE]).first()
    if user is None:
        raise ValidationError({"assignee": [f"No user is named '{username[:60]}'."]})
    if not user.is_active:
        raise ValidationError({"assignee": [f"User '{user.get_username()}' is inactive."]})
    if stage.kind != Stage.Kind.FORM:
        raise ValidationError({"assignee": [f"Stage '{stage.slug}' is not a form stage: nobody works its tasks."]})
    if not may_work_on(user, stage):
        raise ValidationError({"assignee": [f"User '{user.get_username()}' may not work on stage '{stage.slug}'."]})
    return user


# -- by hand ----------------------------------------------------------------------------------


def task_assign(*, task_id: int, assignee: Any | None, actor: str, now: datetime | None = None) -> Task:
    """Set (or, with None, clear) a live task's assignee, with an `assigned` event; refused once finished."""
    now = now or timezone.now()
    with transaction.atomic():
        task = Task.objects.select_related("stage", "assignee").filter(pk=task_id).first()
        if task is None:
            raise TaskStateError(f"Task {task_id} does not exist.")
        if task.status not in LIVE:
            raise TaskStateError(f"Task {task_id} is {task.status}; only a pending or open task can be assigned.")
        if assignee is not None:
            user_for(task.stage, assignee.get_username())  # active, and may work on the stage
        previous = task.assignee
        # The expected state is in the WHERE clause: a task finished (or re-assigned) since the read is not touched.
        updated = Task.objects.filter(pk=task_id, status__in=LIVE, assignee_id=task.assignee_id).update(
            assignee=assignee, updated_at=now
        )
        if updated != 1:
            current = Task.objects.filter(pk=task_id).values_list("status", flat=True).first()
            if current not in LIVE:
                raise TaskStateError(f"Task {task_id} is {current}; only a pending or open task can be assigned.")
            raise TaskStateError(f"Task {task_id} was assigned by someone else meanwhile; look again.")
        event_record(
            task_id=task_id,
            kind=TaskEvent.Kind.ASSIGNED,
            at=now,
            actor=actor,
            details={
                "assignee": assignee.get_username() if assignee is not None else None,
                "previous": previous.get_username() if previous is not None else None,
            },
        )
        if assignee is not None and assignee.email and actor != actor_for(assignee):
            # Told as of an arrival: the outbox row is drained by the workers' upkeep (services.notifications).
            Notification.objects.create(
                task_id=task_id, stage_id=task.stage_id, channel=Notification.Channel.EMAIL,
                recipient=assignee.email, due_at=now, created_at=now,
            )  # fmt: skip
        task.refresh_from_db()
    return task


# -- on arrival -------------------------------------------------------------------------------


def value_problem(value: object) -> str | None:
    """Why a payload's assignee value can't name a user (None: it may be a username or an email address)."""
    if not isinstance(value, str) or not value:
        return "not a username or email address (a non-empty string)"
    if len(value) > MAX_VALUE:
        return f"longer than {MAX_VALUE} characters"
    if USERNAME.match(value):
        return None
    try:
        _email(value)
    except ValidationError:
        return "not a username or email address"
    return None


def _matches(values: set[str]) -> dict[str, list[Any]]:
    """Each value's users: by username first, else (an address) by email, case-insensitively; all users,
    active or not, so an inactive one can be told apart from an unknown one."""
    users = list(get_user_model().objects.filter(Q(username__in=values) | _iemail(values)))
    found: dict[str, list[Any]] = {}
    for value in values:
        by_name = [u for u in users if u.get_username() == value]
        by_email = [u for u in users if "@" in value and u.email and u.email.lower() == value.lower()]
        found[value] = by_name or by_email
    return found


def _iemail(values: set[str]) -> Q:
    """Case-insensitive email matches of the values that look like addresses (the first MAX_EMAILS of a batch:
    a value past them is "no such user")."""
    q = Q(pk__in=[])
    for v in sorted(v for v in values if "@" in v)[:MAX_EMAILS]:
        q |= Q(email__iexact=v)
    return q


def _resolved(
    value: object, matches: dict[str, list[Any]], stage: Stage, allowed: dict[tuple[int, int], bool]
) -> tuple[Any | None, str]:
    """The user a payload value names at `stage`, or None and the reason."""
    problem = value_problem(value)
    if problem is not None:
        return None, problem
    assert isinstance(value, str)
    users = matches.get(value, [])
    active = [u for u in users if u.is_active]
    if not users:
        return None, "no such user"
    if not active:
        return None, "the user is inactive"
    if len(active) > 1:
        return None, f"{len(active)} active users have this email address"
    user = active[0]
    if (user.pk, stage.pk) not in allowed:
        allowed[(user.pk, stage.pk)] = may_work_on(user, stage)
    if not allowed[(user.pk, stage.pk)]:
        return None, f"the user may not work on stage '{stage.slug}'"
    return user, ""


def _stages(tasks: Sequence[Task]) -> dict[int, Stage]:
    """The tasks' stages (loaded ones as they are; the others in one query)."""
    stages = {t.stage_id: t.stage for t in tasks if Task.stage.is_cached(t)}
    missing = {t.stage_id for t in tasks} - stages.keys()
    if missing:
        stages.update(Stage.objects.in_bulk(missing))
    return stages


def arrival_assign(tasks: Sequence[Task]) -> None:
    """Set each unsaved task's assignee from its stage's assignee_from (before the INSERT); the outcome is kept
    on the instance (`_assigned`) for arrival_events."""
    stages = _stages(tasks)
    values: dict[int, object] = {}
    for i, task in enumerate(tasks):
        stage = stages.get(task.stage_id)
        if stage is None or stage.kind != Stage.Kind.FORM or not stage.assignee_from or task.assignee_id:
            continue
        value = resolve(task.payload, stage.assignee_from)
        if value is MISSING or value is None:
            continue  # optional: no field, nobody assigned, nothing to say
        values[i] = value
    if not values:
        return
    named = {v for v in values.values() if value_problem(v) is None}
    matches = _matches(named) if named else {}  # type: ignore[arg-type]
    allowed: dict[tuple[int, int], bool] = {}
    for i, value in values.items():
        task = tasks[i]
        stage = stages[task.stage_id]
        user, reason = _resolved(value, matches, stage, allowed)
        task.assignee = user
        details: dict[str, Any] = {"assignee": user.get_username() if user else None, "previous": None}
        details["from"] = stage.assignee_from
        if reason:
            details["reason"] = reason
        task._assigned = details  # type: ignore[attr-defined]


def arrival_events(tasks: Sequence[Task]) -> None:
    """The `assigned` events of the tasks arrival_assign looked at and that were actually created."""
    assert connection.in_atomic_block
    events = [
        TaskEvent(task_id=t.pk, kind=TaskEvent.Kind.ASSIGNED, at=t.created_at, actor=ARRIVAL_ACTOR, details=d)
        for t in tasks
        if not t.deduplicated and (d := getattr(t, "_assigned", None)) is not None
    ]
    if events:
        TaskEvent.objects.bulk_create(events, batch_size=1000)
