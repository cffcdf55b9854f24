"""The task filters, shared by the REST API and the monitoring pages."""

from __future__ import annotations

from typing import Any

from django import forms
from django.db import connection
from django.db.models import F, QuerySet
from django.db.models.fields.json import KeyTransform
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from tasks_app.models import Stage, Task
from tasks_app.values import DB_INT_MAX, DB_INT_MIN, NotStorable, check_json, loads_bounded, to_utc


class JSONObjectField(forms.CharField):
    """A JSON object typed as text: `{"customer_id": 12345}` or `customer_id=12345`.

    Only values a query can carry: no NaN/Infinity, no integer beyond 64 bits, no NUL
    character (values.loads_bounded), so the database never sees what it refuses.
    """

    # Any, not dict | None: a CharField (text handling, widget, schema) whose Python value is the parsed object.
    def to_python(self, value: Any) -> Any:
        value = super().to_python(value)
        if not value:
            return None
        text = value.strip()
        try:
            if not text.startswith("{") and "=" in text:
                # key=value shorthand; the value is JSON when it parses (12345, true, "x"), else a string.
                key, _, raw = text.partition("=")
                try:
                    parsed: Any = loads_bounded(raw)
                except NotStorable:
                    raise
                except ValueError:
                    parsed = raw
                parsed = {key.strip(): parsed}
                check_json(parsed)
                return parsed
            parsed = loads_bounded(text)
        except NotStorable as exc:
            raise forms.ValidationError(f"Not a value a query can match: {exc}.") from None
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise forms.ValidationError('Must be a JSON object, like {"customer_id": 12345}.')
        return parsed


class JSONContainsFilter(filters.Filter):
    field_class = JSONObjectField

    def filter(self, qs: QuerySet[Task], value: dict[str, Any] | None) -> QuerySet[Task]:
        if not value:
            return qs
        if connection.vendor == "postgresql":
            return qs.filter(payload__contains=value)  # jsonb @>
        # SQLite has no JSON containment: match each leaf by its key path (a
        # list must then be equal rather than contained).
        # Key transforms, not "payload__<key>" lookups: a key may be named like a
        # lookup ("contains", "in", "gt") and must still mean the key.
        for i, (path, leaf) in enumerate(_leaves(value)):
            expr: Any = F("payload")
            for key in path:
                expr = KeyTransform(key, expr)
            qs = qs.alias(**{f"_payload_leaf_{i}": expr}).filter(**{f"_payload_leaf_{i}": leaf})
        return qs


def _leaves(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, (*prefix, str(key)))
        else:
            out.append(((*prefix, str(key)), value))
    return out


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
        ]
