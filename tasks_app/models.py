"""Stages, transitions, tasks and their history.

Nothing outside tasks_app.services writes Task.status; see services/ for the
lifecycle and the reasons behind each conditional UPDATE.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, ProhibitNullCharactersValidator
from django.db import models
from django.db.models import CharField, F, Func, Q
from django.db.models.lookups import Exact
from django.utils import timezone

from tasks_app.dedupe_keys import KEY_MAX_LENGTH, validate_dedupe_on
from tasks_app.handler_modules import is_script, validate_handler
from tasks_app.limits import (
    MAX_ATTEMPTS,
    MAX_LOCK_TIMEOUT,
    MAX_PRIORITY,
    MAX_REMINDERS,
    MAX_RUN_TIME,
    MAX_STAGE_CONCURRENCY,
    MAX_WAIT,
    MIN_PRIORITY,
    MIN_REMIND_AFTER,
    json_depth_exceeds,
    json_has_nul,
    parse_rate_limit,
)
from tasks_app.notify_rules import MAX_NOTIFY_DIGEST, validate_notify
from tasks_app.schema_rules import schema_map_problems

TYPE_MAX_LENGTH = 100
# PostgreSQL stores no U+0000 in text or jsonb; refuse it on every database alike.
NO_NUL = ProhibitNullCharactersValidator("Null characters (U+0000) are not allowed.")


def default_lock_timeout() -> int:
    return int(settings.TASKS_LOCK_TIMEOUT)


def json_kind(value: object) -> str:
    """The JSON name of a Python value's type, for error messages people read."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def validate_payload(value: object) -> None:
    if not isinstance(value, dict):
        raise ValidationError(
            "Payload must be a JSON object, not %(kind)s.",
            code="payload_not_object",
            params={"kind": json_kind(value)},
        )
    limit = int(settings.TASKS_MAX_PAYLOAD_DEPTH)
    # Before anything recursive (encoding, schema validation) sees it: a 350-deep payload broke them all.
    if json_depth_exceeds(value, limit):
        raise ValidationError(
            "Payload is nested deeper than %(max)d levels (TASKS_MAX_PAYLOAD_DEPTH).",
            code="payload_too_deep",
            params={"max": limit},
        )
    if json_has_nul(value):
        raise ValidationError(
            "Payload strings and keys must not contain the NUL character (U+0000).", code="payload_nul"
        )


def validate_no_nul(value: object) -> None:
    """No U+0000 in any string or key of a JSON value (Stage.schemas): jsonb can't store it."""
    if json_has_nul(value):
        raise ValidationError("Strings and keys must not contain the NUL character (U+0000).", code="null_characters")


def validate_task_type(value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("Type must be a non-empty string.", code="type_empty")
    if len(value) > TYPE_MAX_LENGTH:
        raise ValidationError(
            "Type must be at most %(max)d characters (got %(len)d).",
            code="type_too_long",
            params={"max": TYPE_MAX_LENGTH, "len": len(value)},
        )
    NO_NUL(value)


# A schedule must fire at least this often. The sparsest useful one, 29 February,
# is at most 8 years apart (2096 -> 2104).
CRON_MAX_YEARS_BETWEEN = 10


def validate_cron(value: str) -> None:
    if not value:
        return
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValidationError(
            "'%(value)s' is not a 5-field cron expression (minute hour day-of-month month day-of-week).",
            code="bad_cron",
            params={"value": value},
        )
    # A well-formed expression can still name no date ("0 0 30 2 *", 30 February):
    # every scheduler would then fail to compute its due time on every pass.
    try:
        croniter(value, timezone.now(), max_years_between_matches=CRON_MAX_YEARS_BETWEEN).get_next(datetime)
    except (ValueError, KeyError, OverflowError):  # croniter's CroniterBadDateError is a ValueError
        raise ValidationError(
            "'%(value)s' never fires: no date matches it within %(years)d years (is it a day the month doesn't "
            "have, like 30 February?).",
            code="cron_never_fires",
            params={"value": value, "years": CRON_MAX_YEARS_BETWEEN},
        ) from None


def validate_rate_limit(value: str) -> None:
    """Stage.rate_limit: blank, or N/second, N/minute, N/hour (tasks_app.limits.parse_rate_limit)."""
    try:
        parse_rate_limit(value)
    except ValueError as exc:
        raise ValidationError(str(exc), code="bad_rate_limit") from None


def validate_schema_map(value: object) -> None:
    problems = schema_map_problems(value)
    if problems:
        raise ValidationError(problems, code="bad_schema")


# Join stages (issue 15; services.join): the two rules, and the bound of a group's size.
JOIN_SIBLINGS = "siblings"
JOIN_COUNT = "count"
JOIN_RULES = [(JOIN_SIBLINGS, "All siblings of a fan-out"), (JOIN_COUNT, "N arrivals with the same key")]
MAX_JOIN_COUNT = 10_000
JOIN_FIELDS = ("join_rule", "join_key", "join_count", "join_timeout", "join_type")
JOIN_TIMEOUT_TYPE = "join_timeout"  # the type a timed-out group is sent on as


def validate_json_pointer(value: str) -> None:
    """Stage.join_key: blank, or an RFC 6901 JSON pointer ('/order_id', '/customer/id')."""
    if not value:
        return
    if not value.startswith("/"):
        raise ValidationError("A JSON pointer starts with '/', e.g. /order_id.", code="bad_pointer")
    if "~" in value.replace("~0", "").replace("~1", ""):
        raise ValidationError("In a JSON pointer '~' must be followed by 0 or 1 (RFC 6901).", code="bad_pointer")
    NO_NUL(value)


class JSONTypeOf(Func):
    """JSON type name of a value ('object', 'array', ...) on SQLite and PostgreSQL."""

    function = "JSON_TYPE"
    output_field = CharField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return super().as_sql(compiler, connection, function="JSONB_TYPEOF", **extra)


# Stage fields only form stages may set (issue 16; Stage._clean_people). remind_max and assignee_only have
# defaults every stage carries, unused elsewhere.
PEOPLE_FIELDS = ("remind_after", "due_after", "on_overdue", "assignee_from")


class Stage(models.Model):
    class Kind(models.TextChoices):
        SCRIPT = "script", "Script"
        FORM = "form", "Form"
        HOOK = "hook", "Hook"
        JOB = "job", "Job"
        JOIN = "join", "Join"

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200, validators=[NO_NUL])
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.SCRIPT)
    handler = models.CharField(
        max_length=255,
        blank=True,
        # Who may name code: only callables defined in modules TASKS_HANDLER_MODULES lists.
        validators=[validate_handler],
        help_text="Dotted path of a Python callable: handler(task) for script stages, handler(context) for "
        "job stages, transform(body, query) for hook stages. Only callables defined in the modules that "
        "TASKS_HANDLER_MODULES lists are allowed. Script and job stages may instead name a script file "
        "(a path ending in .py, run top to bottom with tasks_app.abstra's task API) inside a directory "
        "TASKS_SCRIPT_DIRS lists.",
    )
    # Bounds: tasks_app.limits (and the check constraints below, for raw SQL).
    lock_timeout = models.PositiveIntegerField(
        default=default_lock_timeout,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_LOCK_TIMEOUT)],
        help_text=f"Seconds a claimed task stays locked before it is retried (1 to {MAX_LOCK_TIMEOUT}, a week).",
    )
    max_attempts = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_ATTEMPTS)],
        help_text=f"Attempts before a task fails (1 to {MAX_ATTEMPTS}); blank means retry forever.",
    )
    max_run_time = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_RUN_TIME)],
        help_text=f"Seconds a handler may run before the worker abandons it and releases the task (1 to "
        f"{MAX_RUN_TIME}, a week); blank means no limit (heartbeats keep long handlers' locks alive).",
    )
    # Waiting-time limit (issue 15; services.waiting): a pending task older than this is overdue; with
    # on_timeout it is completed and that type is sent on through the stage's transitions.
    max_wait = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_WAIT)],
        help_text=f"Seconds a task may wait here, pending, from its arrival (1 to {MAX_WAIT}, a year); past it "
        "the task is overdue. Blank means no limit.",
    )
    on_timeout = models.CharField(
        max_length=TYPE_MAX_LENGTH,
        blank=True,
        default="",
        db_default="",
        validators=[validate_task_type],
        help_text="A task type: an overdue task is completed and this type is sent on through the stage's "
        "transitions (escalation). Blank: overdue tasks stay pending.",
    )
    # Flow control (issue 15; services.flow_limits): enforced inside the claim, across every worker and
    # API client, under the stage's gate row (StageGate).
    max_concurrency = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_STAGE_CONCURRENCY)],
        help_text=f"Most tasks locked at this stage at once, across every worker and API client (1 to "
        f"{MAX_STAGE_CONCURRENCY}). Blank means no cap.",
    )
    rate_limit = models.CharField(
        max_length=30,
        blank=True,
        default="",
        db_default="",
        validators=[validate_rate_limit],
        help_text="Most tasks claimed at this stage per second, minute or hour, across every worker and API "
        "client: N/second, N/minute or N/hour (a fixed window). Blank means no limit.",
    )
    # Priority (issue 15): higher runs first. A task created at this stage (not sent by a task, which
    # passes its own on) takes the integer in its payload's `priority_from` field, clamped to the range,
    # else default_priority (services.routing.stage_priority).
    default_priority = models.IntegerField(
        default=0,
        db_default=0,
        validators=[MinValueValidator(MIN_PRIORITY), MaxValueValidator(MAX_PRIORITY)],
        help_text=f"Priority of tasks created at this stage ({MIN_PRIORITY} to {MAX_PRIORITY}, higher runs "
        "first); tasks sent by a task inherit the sender's.",
    )
    priority_from = models.CharField(
        max_length=100,
        blank=True,
        default="",
        db_default="",
        validators=[NO_NUL],
        help_text="A payload field holding the priority of tasks created at this stage (an integer, clamped "
        f"to {MIN_PRIORITY}..{MAX_PRIORITY}); anything else there falls back to the default priority.",
    )
    # Dedupe (issue 15; tasks_app.dedupe_keys, services.dedupe): a task arriving here whose key (the values
    # at these JSON pointers) equals a pending or locked task's is not created: the arrival returns that task.
    dedupe_on = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_dedupe_on],
        help_text='JSON pointers into the payload, e.g. ["/order_id"]: a task arriving while a pending or locked '
        "task here has the same values is not created; the arrival gets that task. Empty: no dedupe.",
    )
    # Join (issue 15; services.join): a join stage holds its arrivals until a group is complete (all the
    # siblings of a fan-out, or join_count arrivals with the same join_key), or join_timeout seconds after
    # the group's first arrival, then completes them and sends one merged task on.
    join_rule = models.CharField(
        max_length=10,
        blank=True,
        default="",
        db_default="",
        choices=JOIN_RULES,
        help_text="Join stages: 'siblings' (every task of a fan-out) or 'count' (join_count arrivals with the "
        "same join_key).",
    )
    join_key = models.CharField(
        max_length=200,
        blank=True,
        default="",
        db_default="",
        validators=[validate_json_pointer],
        help_text="Join stages, rule 'count': a JSON pointer into the payload, e.g. /order_id; arrivals with "
        "equal values there form a group. Blank: all arrivals do.",
    )
    join_count = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_JOIN_COUNT)],
        help_text=f"Join stages, rule 'count': arrivals that make a group (1 to {MAX_JOIN_COUNT}).",
    )
    join_timeout = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_WAIT)],
        help_text=f"Join stages: seconds after a group's first arrival (1 to {MAX_WAIT}) after which what arrived "
        "is sent on as a join_timeout task. Blank: a group waits until it is complete.",
    )
    join_type = models.CharField(
        max_length=TYPE_MAX_LENGTH,
        blank=True,
        default="",
        db_default="",
        validators=[validate_task_type],
        help_text="Join stages: the type of the merged task. Blank: the type of the group's first arrival.",
    )
    # Notify on arrival (issue 16; tasks_app.notify_rules, services.notifications): who is told when a task
    # arrives at this form stage. Written to the outbox with the task; the workers' upkeep delivers.
    notify = models.JSONField(
        default=dict,
        blank=True,
        db_default={},
        validators=[validate_notify],
        help_text='Form stages: who is told when a task arrives, e.g. {"groups": true, "emails_from": '
        '"/requester_email", "webhook": "https://..."}. Empty: nobody.',
    )
    notify_digest = models.PositiveIntegerField(
        default=0,
        db_default=0,
        validators=[MaxValueValidator(MAX_NOTIFY_DIGEST)],
        help_text=f"Form stages: minutes (0 to {MAX_NOTIFY_DIGEST}) between two mails to one person about this "
        "stage; arrivals in between are listed in one digest. 0: mail at each upkeep pass.",
    )
    # Remind and escalate (issue 16; services.reminders, services.waiting): form stages only.
    remind_after = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(MIN_REMIND_AFTER), MaxValueValidator(MAX_WAIT)],
        help_text=f"Form stages: seconds ({MIN_REMIND_AFTER} to {MAX_WAIT}) after which, and again after each such "
        "period, the people told of an arrival are reminded while the task still waits (pending). Blank: no "
        "reminders.",
    )
    remind_max = models.PositiveIntegerField(
        default=3,
        db_default=3,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_REMINDERS)],
        help_text=f"Form stages: most reminders per task (1 to {MAX_REMINDERS}).",
    )
    due_after = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_WAIT)],
        help_text=f"Form stages: seconds (1 to {MAX_WAIT}) from a task's arrival until it is due; past it, while "
        "not completed (pending, or open in someone's hands), it is overdue. Blank: no due time.",
    )
    on_overdue = models.CharField(
        max_length=TYPE_MAX_LENGTH,
        blank=True,
        default="",
        db_default="",
        validators=[validate_task_type],
        help_text="Form stages: a task type: an overdue task is completed (reason 'overdue') and this type is sent "
        "on through the stage's transitions (escalation). Blank: overdue tasks stay.",
    )
    # Assign (issue 16; services.assign): a task's assignee is read from this payload field on arrival.
    assignee_from = models.CharField(
        max_length=200,
        blank=True,
        default="",
        db_default="",
        validators=[validate_json_pointer],
        help_text="Form stages: a JSON pointer into the payload, e.g. /approver, holding the username or email "
        "address of the user a task arriving here is assigned to. Blank: tasks arrive unassigned.",
    )
    assignee_only = models.BooleanField(
        default=True,
        db_default=True,
        help_text="Form stages: a task assigned to someone can be opened by others only once it is overdue, or by "
        "users with the change-task permission. Off: anyone who may work on the stage may open it.",
    )
    is_paused = models.BooleanField(default=False, help_text="A paused stage hands out no tasks.")
    hook_secret = models.CharField(
        max_length=128,
        blank=True,
        help_text="Hook stages: requests to /hooks/<slug>/ must carry it (X-Hook-Token, or an "
        "X-Hook-Signature: sha256=<HMAC of the body>). Generated when left blank.",
    )
    schedule = models.CharField(
        max_length=100,
        blank=True,
        validators=[validate_cron],
        help_text="Job stages: a 5-field cron expression (minute hour day month weekday), in TIME_ZONE.",
    )
    schemas = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_schema_map, validate_no_nul],
        help_text='JSON Schema per task type for the tasks this stage sends out, e.g. {"order": {...}}; '
        '"*" applies to types without their own.',
    )
    groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="form_stages",
        help_text="Form stages: the groups whose members may work on its tasks "
        "(none: anyone with the change-task permission).",
    )
    description = models.TextField(blank=True, validators=[NO_NUL])
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(
                condition=Q(lock_timeout__gte=1, lock_timeout__lte=MAX_LOCK_TIMEOUT), name="stage_lock_timeout_range"
            ),
            models.CheckConstraint(
                condition=Q(max_attempts__isnull=True) | Q(max_attempts__gte=1, max_attempts__lte=MAX_ATTEMPTS),
                name="stage_max_attempts_range",
            ),
            models.CheckConstraint(
                condition=Q(max_run_time__isnull=True) | Q(max_run_time__gte=1, max_run_time__lte=MAX_RUN_TIME),
                name="stage_max_run_time_range",
            ),
            models.CheckConstraint(
                condition=Q(max_wait__isnull=True) | Q(max_wait__gte=1, max_wait__lte=MAX_WAIT),
                name="stage_max_wait_range",
            ),
            models.CheckConstraint(
                condition=Q(default_priority__gte=MIN_PRIORITY, default_priority__lte=MAX_PRIORITY),
                name="stage_default_priority_range",
            ),
            models.CheckConstraint(
                condition=Q(join_count__isnull=True) | Q(join_count__gte=1, join_count__lte=MAX_JOIN_COUNT),
                name="stage_join_count_range",
            ),
            models.CheckConstraint(
                condition=Q(join_timeout__isnull=True) | Q(join_timeout__gte=1, join_timeout__lte=MAX_WAIT),
                name="stage_join_timeout_range",
            ),
            models.CheckConstraint(
                condition=Q(notify_digest__gte=0, notify_digest__lte=MAX_NOTIFY_DIGEST),
                name="stage_notify_digest_range",
            ),
            models.CheckConstraint(
                condition=Q(remind_after__isnull=True)
                | Q(remind_after__gte=MIN_REMIND_AFTER, remind_after__lte=MAX_WAIT),
                name="stage_remind_after_range",
            ),
            models.CheckConstraint(
                condition=Q(remind_max__gte=1, remind_max__lte=MAX_REMINDERS), name="stage_remind_max_range"
            ),
            models.CheckConstraint(
                condition=Q(due_after__isnull=True) | Q(due_after__gte=1, due_after__lte=MAX_WAIT),
                name="stage_due_after_range",
            ),
            models.CheckConstraint(
                condition=Q(max_concurrency__isnull=True)
                | Q(max_concurrency__gte=1, max_concurrency__lte=MAX_STAGE_CONCURRENCY),
                name="stage_max_concurrency_range",
            ),
        ]

    def __str__(self) -> str:
        return self.slug

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.kind == self.Kind.HOOK and not self.hook_secret:
            self.hook_secret = secrets.token_urlsafe(32)
        super().save(*args, **kwargs)

    def clean(self) -> None:
        if self.kind == self.Kind.JOB and not self.schedule:
            raise ValidationError({"schedule": "A job stage needs a schedule."})
        if self.schedule and self.kind != self.Kind.JOB:
            raise ValidationError({"schedule": "Only job stages have a schedule."})
        if self.on_timeout and self.max_wait is None:
            raise ValidationError({"on_timeout": "An on_timeout type needs a max_wait to time out after."})
        if self.notify and self.kind != self.Kind.FORM:
            raise ValidationError({"notify": "Only form stages notify: people work their tasks."})
        self._clean_people()
        self._clean_join()
        if self.kind not in (self.Kind.SCRIPT, self.Kind.JOB) and is_script(self.handler):
            raise ValidationError(
                {"handler": "Only script and job stages run a script file (a handler ending in .py)."}
            )

    def _clean_people(self) -> None:
        """Reminders, due times and assignees (issue 16) are for form stages, whose tasks people work."""
        if self.kind != self.Kind.FORM:
            given = [f for f in PEOPLE_FIELDS if getattr(self, f) not in ("", None)]
            if given:
                raise ValidationError({f: "Only form stages have this: people work their tasks." for f in given})
        if self.on_overdue and self.due_after is None:
            raise ValidationError({"on_overdue": "An on_overdue type needs a due_after to be overdue after."})

    def _clean_join(self) -> None:
        """A join stage's rule and its fields; other kinds have none of them."""
        if self.kind != self.Kind.JOIN:
            given = [f for f in JOIN_FIELDS if getattr(self, f) not in ("", None)]
            if given:
                raise ValidationError({f: "Only join stages have join settings." for f in given})
            return
        if self.handler:
            raise ValidationError({"handler": "A join stage runs no handler; leave it empty."})
        if self.on_timeout:
            raise ValidationError({"on_timeout": "A join stage times groups out with join_timeout, not on_timeout."})
        if not self.join_rule:
            raise ValidationError({"join_rule": "A join stage needs a rule: 'siblings' or 'count'."})
        if self.join_rule == JOIN_COUNT and self.join_count is None:
            raise ValidationError({"join_count": "The 'count' rule needs a join_count."})
        if self.join_rule == JOIN_SIBLINGS and (self.join_count is not None or self.join_key):
            field = "join_count" if self.join_count is not None else "join_key"
            raise ValidationError({field: "The 'siblings' rule counts a fan-out's tasks; it takes no count or key."})


class Transition(models.Model):
    source = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="outgoing")
    target = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="incoming")
    task_type = models.CharField(
        max_length=TYPE_MAX_LENGTH,
        blank=True,
        validators=[NO_NUL],
        help_text="Only tasks of this type pass; blank passes every type.",
    )

    class Meta:
        ordering = ["source__slug", "task_type", "target__slug"]
        constraints = [
            models.UniqueConstraint(fields=["source", "target", "task_type"], name="transition_unique_route"),
        ]

    def __str__(self) -> str:
        return f"{self.source.slug} -[{self.task_type or '*'}]-> {self.target.slug}"

    def accepts(self, task_type: str) -> bool:
        return self.task_type == "" or self.task_type == task_type


class TaskQuerySet(models.QuerySet["Task"]):
    def pending(self) -> TaskQuerySet:
        return self.filter(status=Task.Status.PENDING)

    def locked(self) -> TaskQuerySet:
        return self.filter(status=Task.Status.LOCKED)

    def for_stage(self, stage: Stage | int) -> TaskQuerySet:
        return self.filter(stage=stage)

    def lock_expired(self, now: datetime) -> TaskQuerySet:
        return self.filter(status=Task.Status.LOCKED, locked_until__lt=now)

    def claimable(self, now: datetime) -> TaskQuerySet:
        """What a claim may take: pending and due, or locked with an expired lock (no reaper delay) and attempts left.

        An expired lock on its stage's last attempt is the expiry sweep's to
        fail, so a reclaim never runs a task beyond max_attempts; one whose
        cancel was requested is the sweep's to cancel. The claim's
        SQL spelling is services.claim.CLAIMABLE_WHERE; tests/test_lifecycle_rules.py
        holds the two to the same rows on both databases.
        """
        attempts_left = Q(stage__max_attempts__isnull=True) | Q(attempts__lt=F("stage__max_attempts"))
        return self.filter(
            Q(status=Task.Status.PENDING, available_at__lte=now)
            | (Q(status=Task.Status.LOCKED, locked_until__lt=now, cancel_requested=False) & attempts_left)
        )


class Task(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        LOCKED = "locked", "Locked"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    # Django's index on stage_id stays: the list's and API's stage filter, a stage's finished tasks when
    # it is deleted, and the foreign key's check then. Not (stage_id, id): with statistics that saw an
    # empty table the completion (id = ANY(...)) walked such an index whole (tests/test_complete_plan_pg.py).
    # parent and source_stage: db_index=False, Meta.indexes has partial ones (task_parent_idx,
    # task_source_stage_idx; docs/scaling.md, "Indexes of the task table").
    stage = models.ForeignKey(Stage, on_delete=models.PROTECT, related_name="tasks")
    type = models.CharField(max_length=TYPE_MAX_LENGTH, validators=[validate_task_type])
    payload = models.JSONField(default=dict, validators=[validate_payload])
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    available_at = models.DateTimeField(default=timezone.now, help_text="Not claimable before this time.")
    # Higher first: the claim serves priority DESC, id (task_claim_idx); db_default for raw INSERTs.
    priority = models.IntegerField(
        default=0,
        db_default=0,
        validators=[MinValueValidator(MIN_PRIORITY), MaxValueValidator(MAX_PRIORITY)],
        help_text=f"Higher runs first ({MIN_PRIORITY} to {MAX_PRIORITY}); ties run oldest first.",
    )
    attempts = models.PositiveIntegerField(default=0)
    lock_token = models.CharField(max_length=64, blank=True)
    locked_by = models.CharField(max_length=200, blank=True)
    locked_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    # Set by each claim: whose expired lock it took over ('' if the task was pending). The event that
    # ends the claim reads it with locked_by, locked_at and attempts (services.events.attempt_details);
    # a claim writes no history of its own. Not indexed: nothing looks tasks up by it.
    reclaimed_from = models.CharField(max_length=200, blank=True, default="", db_default="")
    completed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # Someone asked to cancel this task while a worker held it (services.cancel): the next heartbeat
    # tells the worker, and the completion that ends the claim cancels it instead and sends nothing.
    cancel_requested = models.BooleanField(default=False, db_default=False)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children", db_index=False
    )
    source_stage = models.ForeignKey(
        Stage, null=True, blank=True, on_delete=models.SET_NULL, related_name="sent_tasks", db_index=False
    )
    idempotency_key = models.CharField(
        max_length=200,
        blank=True,
        default="",
        db_default="",  # raw INSERTs (bulk loads, benchmarks) need not name it
        help_text="Set by clients that retry creates: a second create with the same key at the "
        "same stage returns this task instead of creating another.",
    )

    # Dedupe (issue 15): the key of the payload at arrival, under the stage's dedupe_on then ('' : none).
    # Unique per stage among live tasks (task_dedupe_live); db_default for raw INSERTs.
    dedupe_key = models.CharField(max_length=KEY_MAX_LENGTH, blank=True, default="", db_default="", editable=False)
    # Not a column: True on the instance an arrival returns when it found a live task with its dedupe key.
    deduplicated = False

    # Assign (issue 16; services.assign): the person this task is for, if any (set from the stage's
    # assignee_from on arrival, on the task page, over the API). Partial index: task_assignee_idx.
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_tasks",
        db_index=False,
    )
    # Reminders queued for this task so far (issue 16; services.reminders): the next is due at
    # created_at + (reminders + 1) * stage.remind_after, and none past stage.remind_max.
    reminders = models.PositiveIntegerField(default=0, db_default=0, editable=False)

    # Join (issue 15; services.join): the fan-out this task belongs to. A completion (or a send) that creates
    # two or more tasks makes a fan-out: each gets the sender's id (a parentless send: a negative random
    # number) and how many were created; a task created alone inherits its sender's. Not indexed: a join
    # pass reads them from the join stage's pending tasks (task_claim_idx).
    fanout_id = models.BigIntegerField(null=True, blank=True, editable=False)
    fanout_size = models.PositiveIntegerField(null=True, blank=True, editable=False)

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        # Every claim and completion changes status, which task_claim_idx's predicate reads, so neither
        # can be a HOT update: each new row version gets an entry in every full index below, and in each
        # partial one whose predicate it meets. Hence few full indexes, and partial ones where a query
        # needs only some statuses. The audit (each index, the queries that need it, what went and why)
        # is docs/scaling.md, "Indexes of the task table"; tests/test_task_indexes_pg.py holds the set.
        indexes = [
            # Used by the claim (services.claim.CLAIMABLE_WHERE): WHERE stage_id = ?
            # AND ((pending AND due) OR (locked AND lock expired AND attempts left))
            # ORDER BY priority DESC, id LIMIT n; PostgreSQL proves this predicate from that OR.
            # Completed and failed tasks (the bulk of a long-lived table) are not
            # in it, so it stays small and hot. Also the overview's live counts,
            # the task list's stage + pending/locked filters, and "My work".
            # INCLUDE: the overview's live counts (per stage and status, retries,
            # oldest) are an index-only scan; no column a heartbeat writes, so
            # heartbeats stay HOT, and claims and completions already write an
            # entry here (migration 0016 says what it costs).
            # Keys (stage, priority DESC, id): migration 0017 (issue 15's priority).
            models.Index(
                fields=["stage", "-priority", "id"],
                condition=Q(status__in=["pending", "locked"]),
                include=["status", "attempts", "created_at"],
                name="task_claim_idx",
            ),
            # Locked tasks only, by id: the expiry sweep (services.lifecycle.tasks_expire_locks: locked,
            # lock passed, ORDER BY id), unclaiming a worker's orphans, the list's "locked" filter.
            # Not on locked_until: a heartbeat changes only locked_until and updated_at, and with no
            # index on either it can be a HOT update.
            models.Index(fields=["id"], condition=Q(status="locked"), name="task_locked_idx"),
            # Failed tasks only, by id: retention's failed batches (status failed, updated_at < cutoff,
            # ORDER BY id DESC) and the list's "failed" filter, however rare failures are.
            models.Index(fields=["id"], condition=Q(status="failed"), name="task_failed_idx"),
            # The list's and API's type filter (exact): a rare or absent type would walk the table.
            models.Index(fields=["type"], name="task_type_idx"),
            # The list's and API's created_after/created_before filters and the sort by created (keyset on
            # (created_at, id): an incremental sort orders each instant's few tasks by id). Not (created_at,
            # id): with statistics that saw an empty table, the completion's id = ANY(...) walked it whole.
            models.Index(fields=["created_at"], name="task_created_idx"),
            # The list's sorts by updated (selectors.tasks._rows), for finished tasks: live ones are read
            # apart (task_claim_idx) and merged. Partial: a claim, a release or a create writes no entry,
            # only a completion or a failure. Its cost: updated_at is indexed, so a heartbeat
            # (locked_until, updated_at) is never a HOT update (3 % were, docs/scaling.md).
            models.Index(
                fields=["updated_at", "id"],
                condition=Q(status__in=["completed", "failed", "cancelled"]),
                name="task_finished_updated_idx",
            ),
            # The same sorts for live tasks (pending, locked): without it the list sorted by updated over
            # all tasks read every live task for a top-N sort (350-480 ms at 1M, bench/pages.py); with
            # it, each side is an index walk that stops after a page. Its cost: a claim, a release, a
            # heartbeat and a create each write an entry (a completion's new row version is not live).
            models.Index(
                fields=["updated_at", "id"],
                condition=Q(status__in=["pending", "locked"]),
                name="task_live_updated_idx",
            ),
            # Cancelled tasks only, by id: retention's cancelled batches (as task_failed_idx for failed
            # ones) and the list's "cancelled" filter. Only a cancel writes an entry.
            models.Index(fields=["id"], condition=Q(status="cancelled"), name="task_cancelled_idx"),
            # The overview's throughput (completions in the last hour) and retention's completed batches.
            models.Index(
                fields=["completed_at"], condition=Q(completed_at__isnull=False), name="task_completed_at_idx"
            ),
            # A task's children (task page, API parent filter), retention clearing the parent link of
            # the children of the tasks it deletes, and the foreign key's check on each of those
            # deletes. Roots (tasks nobody sent) are not in it: parent_id = ? implies NOT NULL.
            models.Index(fields=["parent"], condition=Q(parent__isnull=False), name="task_parent_idx"),
            # The list's and API's "sent by" filter, and deleting a stage (Django sets source_stage to
            # NULL in the tasks it sent; the foreign key's check). Roots are not in it.
            models.Index(
                fields=["source_stage"], condition=Q(source_stage__isnull=False), name="task_source_stage_idx"
            ),
            # A user's assigned tasks (My work's "Assigned to me", the list's and API's assignee filter) and
            # deleting a user (SET_NULL). Unassigned tasks (nearly all) have no entry.
            models.Index(fields=["assignee"], condition=Q(assignee__isnull=False), name="task_assignee_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "locked", "completed", "failed", "cancelled"]),
                name="task_status_valid",
            ),
            models.UniqueConstraint(
                fields=["stage", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="task_idempotency_key_per_stage",
            ),
            # Dedupe (issue 15; services.dedupe): one live task per (stage, key). Tasks without a key have no
            # entry, so a claim or completion of one writes none here; a deduplicated arrival's INSERT names
            # this index in ON CONFLICT. Only a retry (or a payload edit) can make a finished task live again
            # against it: services.operator refuses that with the live task's id.
            models.UniqueConstraint(
                fields=["stage", "dedupe_key"],
                condition=Q(status__in=["pending", "locked"]) & ~Q(dedupe_key=""),
                name="task_dedupe_live",
            ),
            models.CheckConstraint(condition=~Q(type=""), name="task_type_not_empty"),
            # The services validate payloads first; this guards raw SQL and bulk loads.
            models.CheckConstraint(condition=Exact(JSONTypeOf("payload"), "object"), name="task_payload_is_object"),
            models.CheckConstraint(
                condition=~Q(status="locked") | (~Q(lock_token="") & Q(locked_until__isnull=False)),
                name="task_locked_has_token_and_deadline",
            ),
            models.CheckConstraint(
                condition=~Q(status="completed") | Q(completed_at__isnull=False),
                name="task_completed_has_completed_at",
            ),
        ]

    def __str__(self) -> str:
        return f"Task {self.pk} ({self.type}) at {self.stage.slug}"  # the admin's breadcrumbs: the slug, not its id

    def due_at(self) -> datetime | None:
        """When this task becomes overdue, if not finished by then: its stage's due_after after its arrival
        (issue 16; services.due holds the rule, services.assign the open rule); None without a due time."""
        due_after = self.stage.due_after
        return self.created_at + timedelta(seconds=due_after) if due_after else None

    def is_lock_expired(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.status == self.Status.LOCKED and self.locked_until is not None and self.locked_until < now


# The statuses a task waits or runs in, and those it ends in, spelled once: a stage delete that kept its
# own copy (completed and failed) refused stages whose tasks had been cancelled.
LIVE = (Task.Status.PENDING, Task.Status.LOCKED)
FINISHED = (Task.Status.COMPLETED, Task.Status.FAILED, Task.Status.CANCELLED)


class TaskEvent(models.Model):
    class Kind(models.TextChoices):
        CREATED = "created", "Created"
        CLAIMED = "claimed", "Claimed"
        COMPLETED = "completed", "Completed"
        RELEASED = "released", "Released"
        LOCK_EXTENDED = "lock_extended", "Lock extended"
        LOCK_EXPIRED = "lock_expired", "Lock expired"
        FAILED = "failed", "Failed"
        RETRIED = "retried", "Retried"
        FORCE_RELEASED = "force_released", "Force-released"
        MARKED_COMPLETED = "marked_completed", "Marked completed"
        DUPLICATED = "duplicated", "Duplicated"
        EDITED = "edited", "Payload edited"
        CANCEL_REQUESTED = "cancel_requested", "Cancel requested"
        CANCELLED = "cancelled", "Cancelled"
        WAIT_EXCEEDED = "wait_exceeded", "Wait exceeded"
        DEDUPLICATED = "deduplicated", "Deduplicated"
        JOINED = "joined", "Joined"
        JOIN_TIMED_OUT = "join_timed_out", "Join timed out"
        NOTIFIED = "notified", "Notified"
        NOTIFY_FAILED = "notify_failed", "Notification failed"
        REMINDED = "reminded", "Reminder queued"
        OVERDUE = "overdue", "Overdue"
        ASSIGNED = "assigned", "Assigned"

    # The (task, id) index below serves lookups by task, so the FK needs no index
    # of its own. No database-level FK either: events are only ever written by
    # the services, for the task row they just changed, and the per-row
    # referential-integrity trigger was a large part of the cost of a claim.
    # Deleting a task still deletes its history (Django's on_delete cascade).
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events", db_index=False, db_constraint=False)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=200, blank=True, help_text="Worker id, or user:<username> for people.")
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["task", "id"]
        indexes = [models.Index(fields=["task", "id"], name="taskevent_task_idx")]

    def __str__(self) -> str:
        return f"{self.kind} of task {self.task_id} at {self.at:%Y-%m-%d %H:%M:%S}"


class WorkerProcess(models.Model):
    """One run of `manage.py run_worker`: the registry behind the Workers page."""

    worker_id = models.CharField(max_length=200, unique=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    stages = models.JSONField(default=list, blank=True, help_text="Slugs served; empty means every script stage.")
    concurrency = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    tasks_done = models.PositiveIntegerField(default=0)
    tasks_failed = models.PositiveIntegerField(default=0)
    # Attempts whose handler raised (or overran max_run_time) and went back to pending to retry: a
    # worker in a retry loop shows here while its done and failed counts stand still.
    tasks_released = models.PositiveIntegerField(default=0, db_default=0)
    current_tasks = models.JSONField(default=list, blank=True, help_text="Ids of the tasks it holds now.")
    metrics = models.JSONField(
        default=dict,
        blank=True,
        help_text="Cumulative duration histograms of this process (claim, handler), summed by /metrics.",
    )

    class Meta:
        ordering = ["-started_at"]
        verbose_name_plural = "worker processes"  # not Django's "worker processs"
        indexes = [models.Index(fields=["last_heartbeat"], name="workerprocess_heartbeat_idx")]

    def __str__(self) -> str:
        return self.worker_id

    def is_alive(self, now: datetime | None = None) -> bool:
        """Running and heard from within TASKS_WORKER_DEAD_AFTER seconds."""
        if self.stopped_at is not None:
            return False
        now = now or timezone.now()
        return (now - self.last_heartbeat).total_seconds() <= settings.TASKS_WORKER_DEAD_AFTER


class JobRun(models.Model):
    """One run of a job stage for one due time: the row that makes it run once.

    Every scheduler inserts the (stage, due_at) row before running the job; the
    unique constraint lets exactly one of them succeed.
    """

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    stage = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="job_runs")
    due_at = models.DateTimeField()
    missed = models.PositiveIntegerField(default=0, help_text="Earlier due times folded into this run (downtime).")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    worker_id = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    tasks_processed = models.PositiveIntegerField(default=0)
    tasks_sent = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-due_at"]
        constraints = [models.UniqueConstraint(fields=["stage", "due_at"], name="jobrun_once_per_due_time")]

    def __str__(self) -> str:
        return f"{self.stage.slug} @ {self.due_at:%Y-%m-%d %H:%M}"


class HookReceipt(models.Model):
    """A signature a hook stage accepted; a second request with it is a replay."""

    stage = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="hook_receipts")
    signature = models.CharField(max_length=64)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["stage", "signature"], name="hookreceipt_signature_once")]

    def __str__(self) -> str:
        return f"{self.stage_id}:{self.signature[:12]}"


class StageGate(models.Model):
    """A stage's flow-control gate (services.flow_limits): one row per capped or rate-limited stage.

    A claim at such a stage locks this row first, so those claims take turns; the row holds the
    rate limit's current window (its start and how many tasks were claimed in it) and how many
    claims the cap or the rate limit cut short (tasks_throttled_total in /metrics). The running
    count is not kept here: each claim counts the stage's locked tasks under the lock, so there
    is nothing to drift.
    """

    stage = models.OneToOneField(Stage, on_delete=models.CASCADE, primary_key=True, related_name="gate")
    window_start = models.DateTimeField(null=True, blank=True)
    window_count = models.PositiveIntegerField(default=0)
    throttled = models.BigIntegerField(default=0)
    throttled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"gate of stage {self.stage_id}"


class StageCounter(models.Model):
    """A monotonic count per stage and event kind (created, completed, ...) for /metrics.

    Counted incrementally from the task history (CounterCursor marks how far),
    so the numbers keep growing when old tasks and their history are pruned.
    """

    stage = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="counters")
    kind = models.CharField(max_length=20)
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["stage", "kind"], name="stagecounter_unique")]

    def __str__(self) -> str:
        return f"{self.stage_id}:{self.kind}={self.value}"


class CounterCursor(models.Model):
    """The last TaskEvent id folded into StageCounter (one row)."""

    last_event_id = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"counted up to event {self.last_event_id}"


class StageHour(models.Model):
    """What happened at a stage in one hour (UTC), rolled up from the history by the counters' fold.

    The workflow's figures and history charts read these rows, never the task table
    (services.rollups says what each column counts). One row per stage and hour with
    any event; rows older than services.rollups.RETENTION are deleted by the fold.
    """

    stage = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="hours", db_index=False)
    hour = models.DateTimeField(help_text="The hour's start (UTC).")
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    retried = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    # Completions that sent nothing: the workflow ended here for them (shares of transitions).
    ended = models.PositiveIntegerField(default=0)
    # Fixed-bucket histograms (services.rollups.BUCKETS): counts per bucket, summed across hours.
    wait_buckets = models.JSONField(default=list)
    work_buckets = models.JSONField(default=list)
    # Completed tasks' time at the stage (created -> completed), summed, in seconds.
    stage_seconds = models.FloatField(default=0.0)
    # The slowest finished tasks of the hour: [[task id, seconds at the stage, outcome], ...], longest first.
    slowest = models.JSONField(default=list)

    class Meta:
        ordering = ["stage", "hour"]
        constraints = [models.UniqueConstraint(fields=["stage", "hour"], name="stagehour_unique")]
        # The unique index serves one stage's hours; this one the overview's window of every stage
        # and the fold's retention delete.
        indexes = [models.Index(fields=["hour"], name="stagehour_hour_idx")]

    def __str__(self) -> str:
        return f"{self.stage_id} @ {self.hour:%Y-%m-%d %H:00}"


class TransitionHour(models.Model):
    """How many tasks took a transition in one hour (UTC), rolled up like StageHour."""

    transition = models.ForeignKey(Transition, on_delete=models.CASCADE, related_name="hours", db_index=False)
    hour = models.DateTimeField(help_text="The hour's start (UTC).")
    taken = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["transition", "hour"]
        constraints = [models.UniqueConstraint(fields=["transition", "hour"], name="transitionhour_unique")]
        indexes = [models.Index(fields=["hour"], name="transitionhour_hour_idx")]

    def __str__(self) -> str:
        return f"{self.transition_id} @ {self.hour:%Y-%m-%d %H:00}: {self.taken}"


class Notification(models.Model):
    """The notification outbox (issue 16; services.notifications): one row per task and recipient.

    Written in the transaction that creates the task at a notifying form stage
    (services.dedupe.tasks_insert), so a rolled-back arrival leaves none and a
    committed one can't lose its rows; delivered by the workers' upkeep, one
    worker at a time, and kept pending (retried with backoff) until delivered.
    """

    class Channel(models.TextChoices):
        EMAIL = "email", "Email"
        WEBHOOK = "webhook", "Webhook"

    class Kind(models.TextChoices):
        ARRIVAL = "arrival", "Arrival"
        REMINDER = "reminder", "Reminder"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"  # gave up after services.notifications.MAX_ATTEMPTS

    # No database FK (as TaskEvent): retention deletes tasks with raw SQL; the drain drops rows whose task is gone.
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="notifications", db_constraint=False)
    stage = models.ForeignKey(Stage, on_delete=models.CASCADE, related_name="notifications", db_index=False)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.ARRIVAL, db_default=Kind.ARRIVAL)
    recipient = models.CharField(max_length=2000, help_text="An email address, or the webhook's URL.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    due_at = models.DateTimeField(help_text="When the next attempt may be made (digest window, retry backoff).")
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["id"]
        indexes = [
            # The drain's scan: pending rows that are due.
            models.Index(fields=["due_at"], condition=Q(status="pending"), name="notification_due_idx"),
            # The digest window: when this recipient last got a mail about this stage.
            models.Index(
                fields=["recipient", "stage", "sent_at"], condition=Q(status="sent"), name="notification_sent_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} to {self.recipient} about task {self.task_id} ({self.status})"


class DecisionLinkUse(models.Model):
    """A one-click decision link that has been used (issue 16; services.decision_links): links are single-use.

    The link itself is signed and expiring (django.core.signing) and stored
    nowhere; its nonce is inserted here in the transaction that acts on it, so a
    second use hits the unique constraint and is refused.
    """

    nonce = models.CharField(max_length=64, unique=True)
    task_id = models.BigIntegerField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, db_index=False)
    used_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"link {self.nonce[:8]} for task {self.task_id}"
