"""The task filters, shared by the REST API and the monitoring pages."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.utils import timezone
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from tasks_app import payload_query
from tasks_app.models import Stage, Task
from tasks_app.services.waiting import scheduled_q
from tasks_app.values import DB_INT_MAX, DB_INT_MIN, to_utc


class JSONObjectField(forms.CharField):
    """A payload query typed as text: `{"customer_id": 12345}`, `customer_id=12345` or `customer.email:x@y`.

    Its Python value is the query's leaves (tasks_app.payload_query, which says what matches).
    Only values a query can carry: no NaN/Infinity, no integer beyond 64 bits, no NUL
    character (values.loads_bounded), so the database never sees what it refuses.
    """

    # Any, not list[Leaf] | None: a CharField (text handling, widget, schema) whose Python value is parsed.
    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if not value:
            return None
        try:
            return payload_query.parse(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class JSONContainsFilter(filters.Filter):
    """The payload filter, the same on both databases (payload_query: arrays are looked into)."""

    field_class = JSONObjectField

    def filter(self, qs: QuerySet[Task], value: list[payload_query.Leaf] | None) -> QuerySet[Task]:
        if not value:
            return qs
        return qs.filter(payload_query.PayloadMatches(value))


class DBIntegerField(forms.IntegerField):
    """A whole number a database integer column can hold (sqlite3 can't bind one beyond 64 bits)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", DB_INT_MIN)
        kwargs.setdefault("max_value", DB_INT_MAX)
        super().__init__(*args, **kwargs)


@extend_schema_field(OpenApiTypes.INT64)
class IntegerFilter(filters.NumberFilter):
    """Every numeric filter: whole numbers in the 64-bit range ("1e999", "-1e100" and NaN are refused)."""

    # stubs: field_class is any form field; types-django-filter pins NumberFilter's to DecimalField.
    field_class = DBIntegerField  # type: ignore[assignment]


class IntegerInFilter(filters.BaseInFilter, IntegerFilter):
    """Comma-separated whole numbers, each bounded like IntegerFilter."""


class DBDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time whose instant has a UTC date the databases can store."""

    def to_python(self, value: Any) -> Any:
        result = super().to_python(value)
        if result is None:
            return None
        try:
            return to_utc(result, name="The date-time")
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class DateTimeFilter(filters.IsoDateTimeFilter):
    field_class = DBDateTimeField


@extend_schema_field(OpenApiTypes.STR)
class StageSlugsFilter(filters.ModelMultipleChoiceFilter):
    """Stages by slug (repeat the parameter for several); a string in the OpenAPI schema.

    Matched by stage_id, not by a join on the slug: the planner then knows how many tasks
    the stage has, and reads a small one through the stage_id index instead of walking the whole primary
    key (1.2 s at a million tasks for a stage with five).
    """

    def get_filter_predicate(self, v: Stage) -> dict[str, Any]:
        return {f"{self.field_name}_id": v.pk}


class TaskFilter(filters.FilterSet):
    # distinct=False: both match one value per task (a task has one stage, one
    # status), so no row can repeat; django-filter's default SELECT DISTINCT
    # over whole rows (payload included) costs hundreds of ms on a big table.
    stage = StageSlugsFilter(
        field_name="stage", to_field_name="slug", queryset=Stage.objects.all(), label="Stage", distinct=False
    )
    status = filters.MultipleChoiceFilter(choices=Task.Status.choices, distinct=False)
    type = filters.CharFilter(field_name="type")
    created_after = DateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = DateTimeFilter(field_name="created_at", lookup_expr="lt")
    parent = IntegerFilter(field_name="parent_id")
    source_stage = filters.ModelChoiceFilter(
        field_name="source_stage", to_field_name="slug", queryset=Stage.objects.all()
    )
    payload = JSONContainsFilter(label="Payload contains")
    id = IntegerInFilter(field_name="id", lookup_expr="in", label="Ids (comma-separated)")
    # The stage page's "matching tasks" link of an error group (with the stage and statuses, so it reads
    # the stage's live tasks and the failed ones through their partial indexes, not the whole table).
    error = filters.CharFilter(field_name="last_error", lookup_expr="icontains", label="Last error contains")
    # With status=pending: the tasks waiting to retry (the overview's and stage page's "retrying" links).
    attempts_min = IntegerFilter(field_name="attempts", lookup_expr="gte", label="Attempts at least")
    # Issue 15's run-at: pending tasks held back until a future available_at that no attempt has failed
    # yet (those are retries: attempts_min); the list says "Scheduled for 14:00 (in 2 h)" for them.
    # A choice, not a BooleanFilter: that reads "maybe" as no filter at all, where a 400 is due.
    scheduled = filters.ChoiceFilter(
        choices=[("true", "Yes"), ("false", "No")], method="filter_scheduled", label="Scheduled for later"
    )

    # Assign (issue 16): a username, or "none" for the unassigned tasks, or "any" for the assigned ones.
    # A username goes through the users' unique index to an id, so the list reads task_assignee_idx.
    assignee = filters.CharFilter(method="filter_assignee", max_length=150, label="Assignee (username, none, any)")

    def filter_assignee(self, queryset: QuerySet[Task], name: str, value: str) -> QuerySet[Task]:
        if not value:
            return queryset
        if value == "none":
            return queryset.filter(assignee__isnull=True)
        if value == "any":
            return queryset.filter(assignee__isnull=False)
        if "\x00" in value:  # no username holds one (and PostgreSQL can't be asked about it)
            return queryset.none()
        user_id = get_user_model().objects.filter(username=value).values_list("pk", flat=True).first()
        return queryset.filter(assignee_id=user_id) if user_id is not None else queryset.none()

    def filter_scheduled(self, queryset: QuerySet[Task], name: str, value: str) -> QuerySet[Task]:
        if not value:
            return queryset
        scheduled = scheduled_q(timezone.now())  # the one rule: /metrics' tasks_scheduled reads it too
        return queryset.filter(scheduled) if value == "true" else queryset.exclude(scheduled)

    class Meta:
        model = Task
        fields = [
            "stage",
            "status",
            "type",
            "created_after",
            "created_before",
            "parent",
            "source_stage",
            "payload",
            "id",
            "error",
            "attempts_min",
            "scheduled",
            "assignee",
        ]
