"""Cancel over HTTP (issue 15): `POST /api/tasks/{id}/cancel/` and `POST /api/tasks/bulk-cancel/`.

A mixin of TaskViewSet (api.tasks), so the routes sit with the other task verbs.
Both need the change-task permission (api.permissions.ACTION_PERMS). A pending or
failed task is cancelled at once; a locked one gets a cancel request (its worker
learns it at its next heartbeat, and its completion ends it cancelled, sending
nothing); anything else is refused with 409 and nothing changes.
"""

from __future__ import annotations

from typing import Any

from django.http import QueryDict
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from tasks_app.api.errors import translate
from tasks_app.filters import TaskFilter
from tasks_app.models import Task
from tasks_app.services import TaskStateError
from tasks_app.services.cancel import MAX_REASON, task_cancel
from tasks_app.services.events import actor_for
from tasks_app.values import DB_INT_MAX

# The most tasks one bulk cancel names (as bulk create and bulk complete).
MAX_BULK_CANCEL = 1000


class CancelSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=MAX_REASON, help_text="Why: recorded in the task's history.")
    cascade = serializers.BooleanField(
        default=False, help_text="Also cancel the task's pending descendants (the tasks it sent, theirs, ...)."
    )


class BulkCancelSerializer(CancelSerializer):
    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=DB_INT_MAX),
        allow_empty=False,
        max_length=MAX_BULK_CANCEL,
        required=False,
        help_text=f"Task ids, at most {MAX_BULK_CANCEL}. Give ids or filter, not both.",
    )
    filter = serializers.DictField(
        required=False,
        help_text="The task list's filters (GET /api/tasks/), as an object: "
        '{"stage": ["review"], "status": ["pending", "failed"], "type": "order"}. The first '
        f"{MAX_BULK_CANCEL} matching tasks by id are cancelled; `more` says whether others match.",
    )

    def validate_filter(self, value: dict[str, Any]) -> QueryDict:
        unknown = sorted(set(value) - set(TaskFilter.base_filters))
        if unknown:
            raise serializers.ValidationError(f"Unknown filter(s): {', '.join(unknown)}.")
        if not value:
            raise serializers.ValidationError("Name at least one filter: an empty one would match every task.")
        query = QueryDict(mutable=True)
        for key, given in value.items():
            for item in given if isinstance(given, list) else [given]:
                if not isinstance(item, str | int) or isinstance(item, bool):
                    raise serializers.ValidationError(f"{key}: give a string or a number (or a list of them).")
                query.appendlist(key, str(item))
        return query

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("ids" in attrs) == ("filter" in attrs):
            raise serializers.ValidationError({"ids": ["Give ids or filter (exactly one of them)."]})
        return attrs


CANCEL_RESULT = inline_serializer(
    "CancelResult",
    {
        "id": serializers.IntegerField(),
        "outcome": serializers.ChoiceField(
            choices=["cancelled", "requested"],
            help_text="cancelled: at once (it was pending or failed); requested: it is locked, and ends "
            "cancelled when its worker completes it (its sends are dropped).",
        ),
        "cascaded": serializers.ListField(child=serializers.IntegerField(), help_text="Descendants cancelled."),
    },
)

BULK_CANCEL_RESULT = inline_serializer(
    "BulkCancelResult",
    {
        "results": inline_serializer(
            "BulkCancelItemResult",
            {
                "id": serializers.IntegerField(),
                "outcome": serializers.ChoiceField(choices=["cancelled", "requested", "refused"]),
                "cascaded": serializers.ListField(child=serializers.IntegerField(), required=False),
                "error": serializers.CharField(required=False),
            },
            many=True,
        ),
        "more": serializers.BooleanField(help_text=f"With filter: more than {MAX_BULK_CANCEL} tasks matched."),
    },
)


def _answer(result: Any) -> dict[str, Any]:
    return {"id": result.task_id, "outcome": result.outcome, "cascaded": result.cascaded}


class CancelActions:
    """The cancel verbs of TaskViewSet."""

    get_object: Any  # TaskViewSet's

    @extend_schema(
        summary="Cancel a task",
        description="Pending or failed: cancelled at once. Locked: a cancel request (the worker's next heartbeat "
        "reports it; its completion then ends the task cancelled and sends nothing). Completed or cancelled: 409.",
        request=CancelSerializer,
        responses={200: CANCEL_RESULT},
        tags=["tasks"],
    )
    @action(detail=True, methods=["post"], pagination_class=None, filter_backends=[])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel one task (or request its cancel), optionally with its pending descendants."""
        data = CancelSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        task = self.get_object()
        try:
            result = task_cancel(
                task_id=task.pk,
                actor=actor_for(request.user),
                reason=data.validated_data["reason"],
                cascade=data.validated_data["cascade"],
            )
        except Exception as exc:
            raise translate(exc) from exc
        return Response(_answer(result))

    @extend_schema(
        summary="Cancel tasks in bulk",
        description="By `ids`, or by `filter` (the list's filters: the first 1,000 matching tasks by id). One "
        "result per task, each in its own transaction: cancelled, requested, or refused (with why: finished "
        "already, a cancel already requested, or no such task).",
        request=BulkCancelSerializer,
        responses={200: BULK_CANCEL_RESULT},
        tags=["tasks"],
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="bulk-cancel",
        url_name="bulk-cancel",
        pagination_class=None,
        filter_backends=[],
    )
    def bulk_cancel(self, request: Request) -> Response:
        """Cancel many tasks by id; answers one result per id."""
        data = BulkCancelSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        actor = actor_for(request.user)
        more = False
        if "filter" in v:
            chosen = TaskFilter(data=v["filter"], queryset=Task.objects.all())
            if not chosen.is_valid():
                raise ValidationError({"filter": chosen.errors})
            ids = list(chosen.qs.order_by("id").values_list("id", flat=True)[: MAX_BULK_CANCEL + 1])
            ids, more = ids[:MAX_BULK_CANCEL], len(ids) > MAX_BULK_CANCEL
        else:
            ids = v["ids"]
        results = []
        for task_id in dict.fromkeys(ids):  # each id once, in the order given
            try:
                result = task_cancel(task_id=task_id, actor=actor, reason=v["reason"], cascade=v["cascade"])
            except TaskStateError as exc:
                results.append({"id": task_id, "outcome": "refused", "error": str(exc)})
                continue
            except Exception as exc:
                raise translate(exc) from exc
            results.append(_answer(result))
        return Response({"results": results, "more": more})
