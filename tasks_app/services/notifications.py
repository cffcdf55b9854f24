"""Notify on arrival (issue 16): the outbox written with each task, and the upkeep that delivers it.

Writing (`outbox_write`, called by services.dedupe.tasks_insert, the one
insert of every arrival path): for each task actually created (not one
folded into a live task by dedupe) at a form stage whose `notify` names
someone, one Notification row per recipient, in the creating transaction:
a rolled-back arrival leaves no row, a committed one can't lose its rows.
Recipients are resolved at arrival: the active members of the stage's groups
with an email address (notify.groups), the valid addresses at the payload's
notify.emails_from (untrusted: bounded and validated, tasks_app.notify_rules;
never a URL), and the stage's webhook. Nothing is delivered there: no mail
server or webhook is ever waited on in a request, a claim or a completion.

Delivering (`notifications_drain`, the workers' upkeep chore): the due
pending rows, grouped by (channel, recipient, stage), one transaction per
group under the NOTIFY advisory lock (one worker drains at a time; the rows
are also locked FOR UPDATE SKIP LOCKED, so even two drains never send a row
twice). A group becomes one message listing its tasks (a digest); a
recipient who got a message about the stage less than `notify_digest`
minutes ago waits until that window ends, and what arrived meanwhile goes
out together. A row is marked sent in the transaction that sent it, so a
worker that dies mid-drain leaves its rows pending and the next drain sends
them: delivery is at least once. A failed attempt is retried with backoff
(BACKOFF_BASE * 2^(attempts-1), at most BACKOFF_MAX) up to MAX_ATTEMPTS,
then the rows are marked failed. Each attempt is in every listed task's
history: `notified` or `notify_failed`.

The message shows, per task, its stage, type and id, the payload fields the
schema gives a title (the sender's schema for its type, then the stage's form
schemas: what the task page titles), bounded, and a link to its My work page
(TASKS_BASE_URL + the page's path). No other payload field is ever put in a
mail or a webhook body; the HTML part is a Django template, so everything in
it is escaped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import connection, transaction
from django.db.models import Max
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from tasks_app.models import Notification, Stage, Task, TaskEvent
from tasks_app.notify_rules import Item, payload_addresses
from tasks_app.schema_rules import schema_for
from tasks_app.services.decision_tokens import user_for_address, with_links
from tasks_app.services.locks import LockKey, advisory_xact_lock
from tasks_app.services.webhooks import webhook_post

logger = logging.getLogger("tasks_app")

ACTOR = "notifications"  # the actor of the `notified` / `notify_failed` events
MAX_ATTEMPTS = 8  # then the rows are marked failed (about 2 hours of retries with the backoff below)
BACKOFF_BASE = 60.0  # seconds before the second attempt; doubled each time
BACKOFF_MAX = 3600.0
GROUPS_PER_DRAIN = 100  # messages (recipient x stage) one drain call sends at most
ROWS_PER_MESSAGE = 10_000  # outbox rows one message settles (a burst of 5,000 is one digest)
LISTED = 50  # tasks a message lists; the rest are counted ("and 4,950 more")
MAX_GROUP_RECIPIENTS = 500  # group members told per arrival (a huge group is a misconfiguration: logged)
FIELDS_SHOWN = 5  # titled payload fields per task in a message
VALUE_CHARS = 200  # a shown value is cut to this many characters
KEEP_SETTLED = timedelta(days=2)  # sent/failed rows kept (the digest window looks back at most a day)


def backoff(attempts: int) -> timedelta:
    """The wait before the next attempt after `attempts` failed ones."""
    return timedelta(seconds=min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_MAX))


# -- writing: in the creating transaction ------------------------------------------------------


def _notifying_stages(tasks: Sequence[Task]) -> dict[int, Stage]:
    """The form stages with a notify setting among `tasks`' stages (loaded ones are used as they are)."""
    stages: dict[int, Stage] = {}
    unknown: set[int] = set()
    for task in tasks:
        if task.stage_id in stages or task.stage_id in unknown:
            continue
        if Task.stage.is_cached(task):
            stages[task.stage_id] = task.stage
        else:
            unknown.add(task.stage_id)
    if unknown:
        stages.update(Stage.objects.in_bulk(unknown))
    return {pk: s for pk, s in stages.items() if s.kind == Stage.Kind.FORM and s.notify}


def group_addresses(stage: Stage) -> list[str]:
    """The email addresses of the active members of the stage's groups (bounded, in a stable order)."""
    users = (
        get_user_model()
        .objects.filter(groups__form_stages=stage, is_active=True)
        .exclude(email="")
        .order_by("email")
        .values_list("email", flat=True)
        .distinct()
    )
    found = list(users[: MAX_GROUP_RECIPIENTS + 1])
    if len(found) > MAX_GROUP_RECIPIENTS:
        logger.warning(
            "stage %s notifies its groups, which have over %d members with an address: only the first are told",
            stage.slug,
            MAX_GROUP_RECIPIENTS,
        )
    return found[:MAX_GROUP_RECIPIENTS]


def task_recipients(stage: Stage, task: Task, members: list[str]) -> list[tuple[str, str]]:
    """Who is told about `task` at `stage`: (channel, recipient) pairs, for its arrival and its reminders.

    The one resolution both the arrival (outbox_write) and the reminders (services.reminders) use: `members`
    is group_addresses(stage) when the stage notifies its groups (read once per stage by the caller), else [].
    Assign (issue 16): a task's active assignee with an email address is told instead of the groups (the
    payload's addresses and the webhook still are); select_related("assignee") saves a query per task.
    """
    assignee = task.assignee if task.assignee_id is not None else None
    addresses = [assignee.email] if assignee is not None and assignee.is_active and assignee.email else list(members)
    found, skipped = payload_addresses(stage.notify, task.payload)
    if skipped:
        logger.warning(
            "task %s: %d value(s) at %s are not email addresses; not notified",
            task.pk,
            skipped,
            stage.notify.get("emails_from"),
            extra={"task_id": task.pk, "stage": stage.slug},
        )
    addresses += [a for a in found if a not in addresses]
    out = [(str(Notification.Channel.EMAIL), a) for a in addresses]
    if stage.notify.get("webhook"):
        out.append((str(Notification.Channel.WEBHOOK), stage.notify["webhook"]))
    return out


def stage_members(stage: Stage) -> list[str]:
    """The group addresses a stage's notifications go to ([] when it does not notify its groups)."""
    return group_addresses(stage) if stage.notify.get("groups") else []


def outbox_write(tasks: Sequence[Task]) -> int:
    """Outbox rows for `tasks` (just inserted, in the caller's transaction) at notifying form stages."""
    if not tasks:
        return 0
    assert connection.in_atomic_block, "the outbox is written with the tasks it is about"
    stages = _notifying_stages(tasks)
    if not stages:
        return 0
    members = {pk: stage_members(s) for pk, s in stages.items()}
    rows: list[Notification] = []
    for task in tasks:
        stage = stages.get(task.stage_id)
        if stage is None:
            continue
        now = task.created_at
        rows += [
            Notification(task_id=task.pk, stage_id=stage.pk, channel=channel, recipient=to, due_at=now, created_at=now)
            for channel, to in task_recipients(stage, task, members[stage.pk])
        ]
    Notification.objects.bulk_create(rows, batch_size=1000)
    return len(rows)


# -- delivering: the workers' upkeep ------------------------------------------------------------


@dataclass
class Drain:
    """What one drain did."""

    sent: int = 0  # messages delivered
    failed: int = 0  # attempts that failed (retried later, or given up)
    deferred: int = 0  # rows moved to the end of their recipient's digest window
    rows: int = 0  # outbox rows settled as sent
    backlog: bool = False  # more due groups than one call takes: drain again soon


def notifications_drain(*, now: datetime | None = None, groups_limit: int = GROUPS_PER_DRAIN) -> Drain | None:
    """Deliver the due outbox rows, one message per (channel, recipient, stage); None if another worker drains."""
    now = now or timezone.now()
    result = Drain()
    due = (
        Notification.objects.filter(status=Notification.Status.PENDING, due_at__lte=now)
        .values_list("channel", "recipient", "stage_id", "kind")
        .order_by("channel", "recipient", "stage_id", "kind")
        .distinct()
    )
    keys = list(due[: groups_limit + 1])
    result.backlog = len(keys) > groups_limit
    for channel, recipient, stage_id, kind in keys[:groups_limit]:
        with transaction.atomic():
            if not advisory_xact_lock(LockKey.NOTIFY):
                return None if not (result.sent or result.failed or result.deferred) else result
            _deliver_group(channel, recipient, stage_id, now, result, kind=kind)
    if not result.backlog:
        _forget_settled(now)
    return result


def _deliver_group(
    channel: str, recipient: str, stage_id: int, now: datetime, result: Drain, *, kind: str = Notification.Kind.ARRIVAL
) -> None:
    # Reminders (issue 16, services.reminders) are grouped apart from arrivals: their own message and window.
    rows = list(
        Notification.objects.filter(
            status=Notification.Status.PENDING,
            due_at__lte=now,
            channel=channel,
            recipient=recipient,
            stage_id=stage_id,
            kind=kind,
        )
        .order_by("id")
        .select_for_update(skip_locked=True)[:ROWS_PER_MESSAGE]
    )
    if not rows:
        return  # another drain took them
    stage = Stage.objects.get(pk=stage_id)
    ids = [r.pk for r in rows]
    if stage.notify_digest:
        last = Notification.objects.filter(
            status=Notification.Status.SENT, channel=channel, recipient=recipient, stage_id=stage_id, kind=kind
        ).aggregate(last=Max("sent_at"))["last"]
        window_end = last + timedelta(minutes=stage.notify_digest) if last else None
        if window_end and window_end > now:
            Notification.objects.filter(pk__in=ids).update(due_at=window_end)
            result.deferred += len(ids)
            return
    tasks = {
        t.pk: t for t in Task.objects.filter(pk__in={r.task_id for r in rows}).select_related("stage", "source_stage")
    }
    # A task deleted (retention) or finished since it arrived needs nobody: its rows go, unsent.
    # A reminder is for a task still waiting: one taken since (opened, completed, cancelled) reminds nobody.
    wanted = (Task.Status.PENDING,) if kind == Notification.Kind.REMINDER else (Task.Status.PENDING, Task.Status.LOCKED)
    live = [r for r in rows if r.task_id in tasks and tasks[r.task_id].status in wanted]
    kept = {r.pk for r in live}
    gone = [r.pk for r in rows if r.pk not in kept]
    if gone:
        Notification.objects.filter(pk__in=gone).delete()
        if kind == Notification.Kind.REMINDER:
            logger.info(
                "dropped %d reminder(s) to %s at %s: their tasks were taken",
                len(gone),
                recipient if channel == Notification.Channel.EMAIL else "a webhook",
                stage.slug,
            )
    if not live:
        return
    listed = _items([tasks[r.task_id] for r in live])
    if channel == Notification.Channel.EMAIL:  # read here: no query in the try below
        listed = _with_decision_links(recipient, listed, tasks)
    attempt = max(r.attempts for r in live) + 1
    try:
        # No query in here: a database error caught below would leave PostgreSQL's transaction aborted.
        said = {"reminder": True} if kind == Notification.Kind.REMINDER else {}  # the message says it reminds
        if channel == Notification.Channel.EMAIL:
            send_digest_mail(recipient, stage, listed, **said)
        else:
            webhook_post(recipient, stage, listed, **said)
    except Exception as exc:  # any backend's error: retried later, and said in the history
        error = f"{type(exc).__name__}: {exc}"[:500]
        gave_up = attempt >= MAX_ATTEMPTS
        retry_at = now + backoff(attempt)
        Notification.objects.filter(pk__in=[r.pk for r in live]).update(
            attempts=attempt,
            last_error=error,
            due_at=retry_at,
            status=Notification.Status.FAILED if gave_up else Notification.Status.PENDING,
        )
        details = {"error": error, "retry_at": None if gave_up else retry_at.isoformat(), "gave_up": gave_up}
        _events(live, TaskEvent.Kind.NOTIFY_FAILED, now, channel, recipient, attempt, details)
        logger.warning(
            "notifying %s about %d task(s) at %s failed (attempt %d): %s",
            recipient if channel == Notification.Channel.EMAIL else "a webhook",  # its URL may hold a token
            len(live),
            stage.slug,
            attempt,
            error,
        )
        result.failed += 1
        return
    Notification.objects.filter(pk__in=[r.pk for r in live]).update(
        attempts=attempt, status=Notification.Status.SENT, sent_at=now, last_error=""
    )
    _events(live, TaskEvent.Kind.NOTIFIED, now, channel, recipient, attempt, {"digest": len(live), "kind": kind})
    result.sent += 1
    result.rows += len(live)


def _events(
    rows: list[Notification],
    kind: str,
    now: datetime,
    channel: str,
    recipient: str,
    attempt: int,
    extra: dict[str, Any],
) -> None:
    TaskEvent.objects.bulk_create(
        [
            TaskEvent(
                task_id=r.task_id,
                kind=kind,
                at=now,
                actor=ACTOR,
                details={
                    "channel": channel,
                    "to": recipient if channel == "email" else "webhook",
                    "attempt": attempt,
                    **extra,
                },
            )
            for r in rows
        ],
        batch_size=1000,
    )


def _forget_settled(now: datetime) -> None:
    """Delete sent and failed rows past KEEP_SETTLED (their events stay in the tasks' histories).

    Rows go in in id order, so the oldest are the lowest ids: a read of the first few through the primary
    key, not a scan of the table (a row still pending there, retrying, is kept and looked at again).
    """
    head = Notification.objects.order_by("id").values_list("id", "created_at", "status")[:1000]
    old = [pk for pk, created, status in head if created < now - KEEP_SETTLED and status != "pending"]
    if old:
        Notification.objects.filter(pk__in=old).delete()


# -- what a message says ------------------------------------------------------------------------


def task_url(task_id: int) -> str:
    """The absolute URL of the task's My work page (TASKS_BASE_URL + its path)."""
    return settings.TASKS_BASE_URL.rstrip("/") + reverse("tasks_app:work-task", args=[task_id])


def _outgoing(stage: Stage, task_type: str, cache: dict[tuple[int, str], list[str]]) -> list[str]:
    key = (stage.pk, task_type)
    if key not in cache:
        # The form's buttons, as services.form_stages.outgoing_types lists them (importing it would be a cycle:
        # form_stages -> complete -> dedupe -> here).
        seen: list[str] = []
        for transition_type in stage.outgoing.order_by("id").values_list("task_type", flat=True):
            if (transition_type or task_type) not in seen:
                seen.append(transition_type or task_type)
        cache[key] = seen
    return cache[key]


def titled_fields(task: Task, outgoing: list[str]) -> list[tuple[str, str]]:
    """The payload fields the schema gives a title (as the task page titles them), bounded; nothing else."""
    schemas: list[object] = []
    if task.source_stage is not None:
        schemas.append(schema_for(task.source_stage.schemas, task.type))
    schemas.extend(schema_for(task.stage.schemas, t) for t in outgoing)
    titles: dict[str, str] = {}
    for schema in schemas:
        props = schema.get("properties") if isinstance(schema, dict) else None
        if isinstance(props, dict):
            for name, spec in props.items():
                title = spec.get("title") if isinstance(spec, dict) else None
                if isinstance(name, str) and isinstance(title, str) and title and name not in titles:
                    titles[name] = title
    payload = task.payload if isinstance(task.payload, dict) else {}
    shown: list[tuple[str, str]] = []
    for name, title in titles.items():
        value = payload.get(name)
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            continue  # missing, null, or nested: not in a mail
        if len(text) > VALUE_CHARS:
            text = text[: VALUE_CHARS - 1] + "…"
        shown.append((title[:VALUE_CHARS], text))
        if len(shown) >= FIELDS_SHOWN:
            break
    return shown


def _items(tasks: list[Task]) -> list[Item]:
    cache: dict[tuple[int, str], list[str]] = {}
    return [
        Item(
            id=t.pk,
            type=t.type,
            stage=t.stage.name,
            url=task_url(t.pk),
            fields=titled_fields(t, _outgoing(t.stage, t.type, cache)),
        )
        for t in tasks
    ]


def _subject(stage: Stage, items: list[Item], *, reminder: bool = False) -> str:
    still = "still " if reminder else ""
    if len(items) == 1:
        item = items[0]
        title = f": {item.fields[0][1]}" if item.fields else ""
        text = f"Task #{item.id} {still}waits for you at {stage.name}{title}"
    else:
        text = f"{len(items)} tasks {still}wait for you at {stage.name}"
    text = f"Reminder: {text}" if reminder else text
    return " ".join(text.split())[:200]  # one line: no header injection


def send_digest_mail(recipient: str, stage: Stage, items: list[Item], *, reminder: bool = False) -> None:
    """One mail (plain text and HTML) to `recipient` listing `items` (at most LISTED, the rest counted).

    reminder: the tasks still wait (services.reminders): the subject and the first line say so.
    """
    context = {
        "reminder": reminder,
        "stage": stage,
        "items": items[:LISTED],
        "more": max(0, len(items) - LISTED),
        "count": len(items),
        "work_url": settings.TASKS_BASE_URL.rstrip("/") + reverse("tasks_app:my-work"),
    }
    text = render_to_string("tasks_app/email/arrival.txt", context)
    html = render_to_string("tasks_app/email/arrival.html", context)
    with get_connection(fail_silently=False) as mail:
        subject = _subject(stage, items, reminder=reminder)
        message = EmailMultiAlternatives(subject=subject, body=text, to=[recipient], connection=mail)
        message.attach_alternative(html, "text/html")
        message.send()


def _with_decision_links(recipient: str, items: list[Item], tasks: dict[int, Task]) -> list[Item]:
    """The listed tasks with their one-click decision links (services.decision_tokens) when the recipient is
    the one active user with that address; an address no user (or several) has gets none, as does a webhook."""
    user = user_for_address(recipient)
    if user is None:
        return items
    cache: dict[tuple[int, str], list[str]] = {}
    linked: list[Item] = []
    for item in items[:LISTED]:
        task = tasks[item.id]
        linked.append(with_links(item, task, user, _outgoing(task.stage, task.type, cache)))
    return linked + items[LISTED:]
