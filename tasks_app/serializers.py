"""API serializers: output ModelSerializers, and small input serializers per action."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tasks_app.dedupe_keys import validate_dedupe_on
from tasks_app.limits import MAX_DELAY, MAX_LOCK_TIMEOUT, MAX_PRIORITY, MIN_PRIORITY, NUL
from tasks_app.models import JOIN_FIELDS, NO_NUL, TYPE_MAX_LENGTH, Stage, Task, TaskEvent, Transition, json_kind
from tasks_app.services import MAX_CLAIM_BATCH, validate_task_input
from tasks_app.services.waiting import SEND_ON_FIELDS, send_on_route_problems
from tasks_app.values import DB_INT_MAX

# -- output -----------------------------------------------------------------


@extend_schema_field(OpenApiTypes.OBJECT)
class ObjectJSONField(serializers.JSONField):
    """A JSONField whose value is always an object (payload, schemas, details): typed so in the OpenAPI schema."""


class ModelSerializer(serializers.ModelSerializer):
    # The model's JSON fields keep ModelSerializer's validators and encoders; only their schema type changes.
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.JSONField: ObjectJSONField,
    }


class SlugRelatedField(serializers.SlugRelatedField):
    """Refuses a NUL character before looking it up: PostgreSQL can't even be asked about one (DataError, 500)."""

    default_error_messages = {**serializers.SlugRelatedField.default_error_messages, "null": NO_NUL.message}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and NUL in data:
            self.fail("null")
        return super().to_internal_value(data)


class StageSerializer(ModelSerializer):
    groups = SlugRelatedField(
        slug_field="name", many=True, required=False, queryset=Group.objects.all(), help_text="Form stages."
    )
    # Dedupe (issue 15): a typed list for the schema; validate_dedupe_on's messages for anything else.
    dedupe_on = serializers.ListField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        required=False,
        validators=[validate_dedupe_on],
        help_text=Stage._meta.get_field("dedupe_on").help_text,
    )

    class Meta:
        model = Stage
        fields = [
            "slug", "name", "kind", "handler", "lock_timeout", "max_attempts", "max_run_time", "max_wait", "on_timeout",
            "max_concurrency", "rate_limit",
            "is_paused", "description", "schedule", "schemas", "groups", "created_at", "updated_at",
            "default_priority", "priority_from", "dedupe_on", "notify", "notify_digest",
            "assignee_from", "assignee_only",
            "remind_after", "remind_max", "due_after", "on_overdue",
            "join_rule", "join_key", "join_count", "join_timeout", "join_type",
        ]  # fmt: skip
        read_only_fields = ["created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # Stage.clean's rules (job stages and schedules), on the stage as it would be saved.
        stage = Stage(**{**self._current(), **{k: v for k, v in attrs.items() if k != "groups"}})
        try:
            stage.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        # An on_timeout or on_overdue type set or changed here must pass one of the stage's transitions (as in a
        # workflow file); one already set is left alone (a PATCH of the name doesn't trip on a route deleted since).
        changed = {
            name: attrs[name]
            for name in SEND_ON_FIELDS
            if attrs.get(name) and (self.instance is None or attrs[name] != getattr(self.instance, name))
        }
        if changed:
            types = Transition.objects.filter(source=self.instance).values_list("task_type", flat=True)
            slug = attrs.get("slug") or (self.instance.slug if self.instance is not None else "")
            problems = send_on_route_problems(slug, changed, types if self.instance is not None else [])
            if problems:
                raise serializers.ValidationError(problems)
        return attrs

    def _current(self) -> dict[str, Any]:
        if self.instance is None:
            return {}
        current = {"kind": self.instance.kind, "schedule": self.instance.schedule}
        # Join stages (Stage._clean_join) relate the kind, the handler and the join fields.
        current |= {f: getattr(self.instance, f) for f in ("handler", *JOIN_FIELDS)}
        current["notify"] = self.instance.notify  # only form stages notify (Stage.clean)
        current["assignee_from"] = self.instance.assignee_from  # form stages only (Stage._clean_people)
        # Form stages only, and on_overdue needs a due_after (Stage._clean_people).
        current |= {f: getattr(self.instance, f) for f in ("remind_after", "due_after", "on_overdue")}
        return {**current, "max_wait": self.instance.max_wait, "on_timeout": self.instance.on_timeout}


class TransitionSerializer(ModelSerializer):
    # stubs: a declared field is popped from the class by SerializerMetaclass, so it never shadows Field.source.
    source = SlugRelatedField(slug_field="slug", queryset=Stage.objects.all())  # type: ignore[assignment]
    target = SlugRelatedField(slug_field="slug", queryset=Stage.objects.all())
    # Blank passes every type, so leaving it out means exactly that.
    task_type = serializers.CharField(max_length=TYPE_MAX_LENGTH, allow_blank=True, default="")

    class Meta:
        model = Transition
        fields = ["id", "source", "target", "task_type"]


class TaskSerializer(ModelSerializer):
    stage: serializers.SlugRelatedField[Stage] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    # allow_null only tells the schema: a task created directly (not sent) has no source stage.
    source_stage: serializers.SlugRelatedField[Stage] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True
    )
    # Assign (issue 16): the assignee's username; set with POST /api/tasks/{id}/assign/ (api.assign).
    assignee: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="The username of the user this task is assigned to (null: nobody).",
    )
    # Dedupe (issue 15): true in the answer to an arrival (create, bulk, send, complete) that found this
    # live task holding its dedupe key instead of creating one; false everywhere else.
    deduplicated = serializers.BooleanField(
        read_only=True,
        help_text="True when this answer's request created nothing: a live task at the stage already had "
        "the payload's dedupe key (the stage's dedupe_on), and this is that task.",
    )

    class Meta:
        model = Task
        fields = [
            "id", "stage", "type", "payload", "status", "attempts", "created_at", "updated_at",
            "available_at", "priority", "locked_by", "locked_at", "locked_until", "completed_at", "last_error",
            "parent", "source_stage", "idempotency_key", "cancel_requested", "dedupe_key", "deduplicated",
            "fanout_id", "fanout_size", "assignee",
        ]  # fmt: skip
        read_only_fields = fields


class ClaimedTaskSerializer(TaskSerializer):
    """A claimed task carries its lock token: the client needs it to complete, release or heartbeat."""

    class Meta(TaskSerializer.Meta):
        fields = [*TaskSerializer.Meta.fields, "lock_token"]
        read_only_fields = fields


class TaskEventSerializer(ModelSerializer):
    class Meta:
        model = TaskEvent
        fields = ["id", "kind", "at", "actor", "details"]
        read_only_fields = fields


# -- input ------------------------------------------------------------------


@extend_schema_field(OpenApiTypes.OBJECT)
class PayloadField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError(f"Payload must be a JSON object, not {json_kind(value)}.")
        try:
            validate_task_input(type="-", payload=value)  # serialisable, and within the size limit
        except DjangoValidationError as exc:
            errors = exc.error_dict.get("payload", [])
            code = errors[0].code if errors else None
            raise serializers.ValidationError([m for e in errors for m in e.messages], code=code) from None
        return value


class TypeField(serializers.CharField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=TYPE_MAX_LENGTH, allow_blank=False, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if not value.strip():
            raise serializers.ValidationError("Type must be a non-empty string.")
        return value


class ScheduleSerializer(serializers.Serializer):
    """A new task's priority and when it may first run (issue 15): create, bulk, a stage's or a completion's send."""

    priority = serializers.IntegerField(
        min_value=MIN_PRIORITY,
        max_value=MAX_PRIORITY,
        required=False,
        help_text="Higher runs first. Default: a sent task's sender's; otherwise the stage's "
        "(default_priority, or the payload field its priority_from names).",
    )
    available_at = serializers.DateTimeField(
        required=False,
        help_text="Not claimed before this time (at most a year ahead; a past time means now). Not with delay.",
    )
    delay = serializers.FloatField(
        min_value=0,
        max_value=MAX_DELAY,
        required=False,
        help_text=f"Seconds from now before the task may be claimed (0 to {MAX_DELAY}). Not with available_at.",
    )

    def validate_delay(self, value: float) -> float:
        if not math.isfinite(value):  # "NaN" passes min/max validators
            raise serializers.ValidationError("A valid number is required.")
        return value

    def validate_available_at(self, value: datetime) -> datetime:
        if value > timezone.now() + timedelta(seconds=MAX_DELAY):
            raise serializers.ValidationError("At most a year ahead.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "available_at" in attrs and "delay" in attrs:
            raise serializers.ValidationError({"delay": ["Give available_at or delay, not both."]})
        return attrs


def scheduled_at(data: dict[str, Any], now: datetime | None = None) -> datetime | None:
    """When a validated ScheduleSerializer's task may first run (None: now)."""
    if "delay" in data:
        return (now or timezone.now()) + timedelta(seconds=data["delay"])
    at: datetime | None = data.get("available_at")
    return at


class SendItemSerializer(ScheduleSerializer):
    type = TypeField()
    payload = PayloadField(default=dict)


class TaskCreateSerializer(ScheduleSerializer):
    stage = SlugRelatedField(slug_field="slug", queryset=Stage.objects.all())
    type = TypeField()
    payload = PayloadField(default=dict)
    idempotency_key = serializers.CharField(max_length=200, required=False, allow_blank=False)
    assignee = serializers.CharField(
        max_length=254,
        required=False,
        allow_null=True,
        help_text="Single creates: the username of an active user who may work on the (form) stage. Null or "
        "left out: the stage's assignee_from decides.",
    )


class BulkCreateSerializer(serializers.Serializer):
    # stubs: many=True passes max_length on to the ListSerializer (DRF 3.15+).
    tasks = TaskCreateSerializer(many=True, allow_empty=False, max_length=1000)  # type: ignore[call-arg]

    def validate_tasks(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any("idempotency_key" in item for item in value):
            raise serializers.ValidationError("idempotency_key is only accepted by single creates.")
        if any(item.get("assignee") for item in value):
            raise serializers.ValidationError("assignee is only accepted by single creates.")
        return value


class ClaimSerializer(serializers.Serializer):
    limit = serializers.IntegerField(min_value=1, max_value=MAX_CLAIM_BATCH, default=1)
    lock_timeout = serializers.IntegerField(
        min_value=1, max_value=MAX_LOCK_TIMEOUT, required=False, help_text="Seconds; default: the stage's lock_timeout."
    )


class CompleteSerializer(serializers.Serializer):
    lock_token = serializers.CharField(max_length=64)
    # stubs: many=True passes max_length on to the ListSerializer (DRF 3.15+).
    send = SendItemSerializer(many=True, default=list, max_length=1000)  # type: ignore[call-arg]


class BulkCompleteItemSerializer(CompleteSerializer):
    id = serializers.IntegerField(min_value=1, max_value=DB_INT_MAX)  # sqlite3 can't bind an int beyond 64 bits


class BulkCompleteSerializer(serializers.Serializer):
    # stubs: many=True passes max_length on to the ListSerializer (DRF 3.15+).
    tasks = BulkCompleteItemSerializer(many=True, allow_empty=False, max_length=1000)  # type: ignore[call-arg]


class FiniteFloatField(serializers.FloatField):
    """A float that is a number: "NaN" passes min/max validators (every comparison with it is false)."""

    def to_internal_value(self, data: Any) -> float:
        value = super().to_internal_value(data)
        if not math.isfinite(value):
            self.fail("invalid")
        return value


class ReleaseSerializer(serializers.Serializer):
    lock_token = serializers.CharField(max_length=64)
    error = serializers.CharField(allow_blank=True, default="", max_length=100_000)
    retry_in = FiniteFloatField(min_value=0, max_value=365 * 24 * 3600, required=False)


class HeartbeatSerializer(serializers.Serializer):
    lock_token = serializers.CharField(max_length=64)
    lock_timeout = serializers.IntegerField(min_value=1, max_value=MAX_LOCK_TIMEOUT, required=False)
