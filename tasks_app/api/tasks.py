"""Tasks over HTTP: list and filter, create (single, idempotent, bulk), history,
and the lock verbs a remote worker needs: complete, release, heartbeat."""

from __future__ import annotations

from typing import Any, cast

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import DateTimeField, IntegerField, QuerySet
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.filters import OrderingFilter
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from tasks_app import services
from tasks_app.api.arrivals import arrival_status, arrivals_data
from tasks_app.api.assign import AssignActions
from tasks_app.api.cancel import CancelActions
from tasks_app.api.errors import translate
from tasks_app.filters import TaskFilter
from tasks_app.models import Task
from tasks_app.serializers import (
    BulkCompleteSerializer,
    BulkCreateSerializer,
    CompleteSerializer,
    HeartbeatSerializer,
    ReleaseSerializer,
    TaskCreateSerializer,
    TaskEventSerializer,
    TaskSerializer,
    scheduled_at,
)
from tasks_app.services.assign import task_assign, user_for
from tasks_app.services.complete import task_extend_lock_reporting
from tasks_app.services.events import actor_for
from tasks_app.services.form_stages import form_tasks_refusal
from tasks_app.services.routing import NewTask, Send
from tasks_app.values import parse_db_datetime, parse_db_int


def refusal_text(exc: Exception) -> str:
    """One line for an item's refusal: the schema's messages, or the routing error."""
    if isinstance(exc, DjangoValidationError):
        return "; ".join(exc.messages)
    return str(exc)


def bulk_result(outcome: services.ItemOutcome) -> dict[str, Any]:
    """One item of bulk-complete's answer: completed (with the tasks it sent), lock_lost, or error.

    `deduplicated` (with `sent`): the sent ids that are a live task holding the send's dedupe key, not a
    new task (issue 15: the API says so, as the single complete's `deduplicated` flags do).
    """
    if outcome.status == "refused":
        assert outcome.error is not None
        return {"id": outcome.task_id, "status": "error", "error": refusal_text(outcome.error)}
    result: dict[str, Any] = {"id": outcome.task_id, "status": outcome.status}
    if outcome.successors:
        result["sent"] = [child.pk for child in outcome.successors]
        result["deduplicated"] = [child.pk for child in outcome.successors if child.deduplicated]
    return result


BAD_CURSOR = "Not a page cursor: follow the next or previous link, or leave cursor out."


class TaskCursorPagination(CursorPagination):
    """Keyset pages: as fast on page 10,000 of millions of rows as on page 1."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 1000

    def get_ordering(self, request: Request, queryset: QuerySet[Any], view: Any) -> tuple[str, ...]:
        """The chosen ordering, then id in the same direction: tasks created in one bulk share created_at,
        and without a tie-breaker the database may return ties in a different order for each page."""
        ordering = tuple(super().get_ordering(request, queryset, view))
        first = ordering[0]
        if first.lstrip("-") == "id":
            return ordering
        return (*ordering, "-id" if first.startswith("-") else "id")

    def decode_cursor(self, request: Request) -> Cursor | None:
        """DRF's decoding, then the position parsed as the ordering field's type, within the databases' bounds.

        DRF answers an undecodable cursor with 404 and hands any position to the
        query as it is ("p=abc" on an id ordering was a 500): both are a 400 here.
        """
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise ValidationError({"cursor": [BAD_CURSOR]}) from None
        if cursor is None or cursor.position is None:
            return cursor
        field = Task._meta.get_field(self.ordering[0].lstrip("-"))
        text = cast(str, cursor.position)  # the query string's text (the stubs say int: what it is once parsed)
        try:
            if isinstance(field, DateTimeField):
                position: Any = parse_db_datetime(text, name="The cursor's position")
            elif isinstance(field, IntegerField):
                position = parse_db_int(text, name="The cursor's position")
            else:
                position = cursor.position
        except ValueError as exc:
            raise ValidationError({"cursor": [f"{exc} {BAD_CURSOR}"]}) from None
        return cursor._replace(position=position)


def _sends(items: list[dict[str, Any]]) -> list[Send]:
    """A completion's sends; a delay counts from the completion (routing.Send)."""
    return [
        Send(item["type"], item["payload"], item.get("priority"), item.get("available_at"), item.get("delay"))
        for item in items
    ]


BULK_COMPLETE_RESULT = inline_serializer(
    "BulkCompleteResult",
    {
        "results": inline_serializer(
            "BulkCompleteItemResult",
            {
                "id": serializers.IntegerField(),
                "status": serializers.ChoiceField(choices=["completed", "cancelled", "lock_lost", "error"]),
                "sent": serializers.ListField(
                    child=serializers.IntegerField(), required=False, help_text="The tasks the completion sent."
                ),
                "deduplicated": serializers.ListField(
                    child=serializers.IntegerField(),
                    required=False,
                    help_text="With `sent`: those of them that are a live task holding the send's dedupe key "
                    "(nothing was created for them).",
                ),
                "error": serializers.CharField(required=False),
            },
            many=True,
        )
    },
)


@extend_schema(tags=["tasks"])
@extend_schema_view(
    list=extend_schema(
        summary="List tasks",
        description=(
            "Newest first, in cursor pages: follow `next` and `previous` (no total count, so page 10,000 "
            "costs what page 1 does). `ordering` picks id, created_at or updated_at (prefix - for descending)."
        ),
        parameters=[
            OpenApiParameter(
                "payload",
                str,
                description='Payload contains this JSON object, e.g. {"customer_id": 12345}; or key=value.',
            ),
            OpenApiParameter("parent", int, description="Tasks sent by this task."),
        ],
    ),
    retrieve=extend_schema(summary="Get a task"),
)
class TaskViewSet(AssignActions, CancelActions, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = TaskSerializer
    filter_backends = [DjangoFilterBackend, OrderingFilter]
    filterset_class = TaskFilter
    ordering_fields = ["id", "created_at", "updated_at"]
    ordering = ["-id"]
    pagination_class = TaskCursorPagination

    def get_queryset(self) -> QuerySet[Task]:
        return Task.objects.select_related("stage", "source_stage", "assignee")

    def _out(self, task_ids: list[int], code: int = status.HTTP_200_OK) -> Response:
        tasks = self.get_queryset().filter(pk__in=task_ids).order_by("id")
        data = TaskSerializer(tasks, many=True).data
        return Response(data, status=code)

    @extend_schema(
        summary="Create a task",
        request=TaskCreateSerializer,
        responses={
            201: TaskSerializer,
            200: OpenApiResponse(
                TaskSerializer,
                "Nothing created: a retry (the task the idempotency key made), or a duplicate arrival "
                "(`deduplicated` true: the live task with the payload's dedupe key).",
            ),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Create a pending task; with an idempotency_key a retried request returns the first task (200).

        A live task at the stage with the payload's dedupe key (the stage's dedupe_on) is returned instead
        of a new one: 200, `deduplicated` true.
        """
        data = TaskCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        try:
            # Assign (issue 16): a given assignee is checked first and set in the creating transaction.
            assignee = user_for(v["stage"], v["assignee"]) if v.get("assignee") else None
            with transaction.atomic():
                if v.get("idempotency_key"):
                    task, created = services.task_create_idempotent(
                        stage=v["stage"], type=v["type"], payload=v["payload"],
                        idempotency_key=v["idempotency_key"], actor=actor_for(request.user),
                        priority=v.get("priority"), available_at=scheduled_at(v),
                    )  # fmt: skip
                else:
                    task, created = (
                        services.task_create(
                            stage=v["stage"], type=v["type"], payload=v["payload"], actor=actor_for(request.user),
                            priority=v.get("priority"), available_at=scheduled_at(v),
                        ),
                        True,
                    )  # fmt: skip
                    created = not task.deduplicated  # dedupe: the live task with the payload's key (200)
                if assignee is not None and created:
                    task_assign(task_id=task.pk, assignee=assignee, actor=actor_for(request.user))
        except Exception as exc:
            raise translate(exc) from exc
        deduplicated = task.deduplicated
        task = self.get_queryset().get(pk=task.pk)
        task.deduplicated = deduplicated
        return Response(TaskSerializer(task).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        summary="Create tasks in bulk",
        request=BulkCreateSerializer,
        responses={
            201: TaskSerializer(many=True),
            200: OpenApiResponse(
                TaskSerializer(many=True), "Nothing created: every item found a live task with its dedupe key."
            ),
        },
    )
    # The answers of the actions below are plain lists (or one object), neither paged nor filtered.
    @action(detail=False, methods=["post"], url_path="bulk", url_name="bulk", pagination_class=None, filter_backends=[])
    def bulk_create(self, request: Request) -> Response:
        """Create up to 1,000 tasks in one transaction: all of them, or none.

        One task per item, in order; an item whose dedupe key a live task holds (or an earlier item's)
        answers that task with `deduplicated` true.
        """
        data = BulkCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        now = timezone.now()
        items = [
            NewTask(t["stage"], t["type"], t["payload"], t.get("priority"), scheduled_at(t, now))
            for t in data.validated_data["tasks"]
        ]
        try:
            created = services.tasks_create_bulk(items=items, actor=actor_for(request.user))
        except Exception as exc:
            raise translate(exc) from exc
        return Response(arrivals_data(created), status=arrival_status(created))

    @extend_schema(summary="A task's history", responses={200: TaskEventSerializer(many=True)})
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def events(self, request: Request, pk: str | None = None) -> Response:
        """The task's history, oldest first."""
        task = self.get_object()
        return Response(TaskEventSerializer(task.events.order_by("id"), many=True).data)

    @extend_schema(
        summary="Complete a claimed task", request=CompleteSerializer, responses={200: TaskSerializer(many=True)}
    )
    @action(detail=True, methods=["post"], pagination_class=None, filter_backends=[])
    def complete(self, request: Request, pk: str | None = None) -> Response:
        """Complete a task you claimed, sending its successors; answers with the tasks it sent.

        A send whose dedupe key a live task holds answers that task, `deduplicated` true.
        """
        data = CompleteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        task = self.get_object()
        try:
            created = services.task_complete(
                task_id=task.pk, lock_token=data.validated_data["lock_token"], send=_sends(data.validated_data["send"])
            )
        except Exception as exc:
            raise translate(exc) from exc
        return Response(arrivals_data(created))

    @extend_schema(summary="Release a claimed task", request=ReleaseSerializer, responses={200: TaskSerializer})
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: str | None = None) -> Response:
        """Give a claimed task back after a failure: pending after retry_in (default backoff), or failed."""
        data = ReleaseSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        task = self.get_object()
        try:
            services.task_release(
                task_id=task.pk,
                lock_token=data.validated_data["lock_token"],
                error=data.validated_data["error"],
                retry_in=data.validated_data.get("retry_in"),
            )
        except Exception as exc:
            raise translate(exc) from exc
        return Response(TaskSerializer(self.get_queryset().get(pk=task.pk)).data)

    @extend_schema(
        summary="Extend a claim's lock",
        request=HeartbeatSerializer,
        examples=[OpenApiExample("Keep the lock 30 s more", value={"lock_token": "<lock_token>", "lock_timeout": 30},
                                 request_only=True)],
        responses={200: inline_serializer("HeartbeatResult", {"id": serializers.IntegerField(),
                                                         "locked_until": serializers.DateTimeField(),
                                                         "cancel_requested": serializers.BooleanField()})},
    )  # fmt: skip
    @action(detail=True, methods=["post"])
    def heartbeat(self, request: Request, pk: str | None = None) -> Response:
        """Extend a held lock to now + lock_timeout (default: the stage's)."""
        data = HeartbeatSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        task = self.get_object()
        try:
            until, cancel_requested = task_extend_lock_reporting(
                task_id=task.pk,
                lock_token=data.validated_data["lock_token"],
                lock_timeout=data.validated_data.get("lock_timeout"),
            )
        except Exception as exc:
            raise translate(exc) from exc
        # cancel_requested: someone asked to cancel it (services.cancel); stop early if you can, then
        # complete: the completion ends it cancelled and sends nothing.
        until_text = serializers.DateTimeField().to_representation(until)
        return Response({"id": task.pk, "locked_until": until_text, "cancel_requested": cancel_requested})

    @extend_schema(summary="Complete claimed tasks in bulk", request=BulkCompleteSerializer,
                   description="One result per item. An item whose send nothing routes or whose payload breaks "
                   "a schema answers `error` and stays locked; the other items complete. A completed item "
                   "lists the tasks it sent (`sent`) and, of those, the live tasks a send's dedupe key found "
                   "(`deduplicated`).",
                   responses={200: BULK_COMPLETE_RESULT})  # fmt: skip
    @action(detail=False, methods=["post"], url_path="bulk-complete", url_name="bulk-complete")
    def bulk_complete(self, request: Request) -> Response:
        """Complete many claimed tasks; answers one result per item (completed, lock lost, or an error)."""
        data = BulkCompleteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        items = [services.Completion(t["id"], t["lock_token"], _sends(t["send"])) for t in data.validated_data["tasks"]]
        refusal = form_tasks_refusal(request.user, [item.task_id for item in items])
        if refusal:
            raise PermissionDenied(refusal)  # as complete: a form stage's tasks are its groups'
        results: dict[int, dict[str, Any]] = {}
        try:
            # One item sending a type nothing routes or a payload its schema refuses fails alone (as in the worker).
            for outcome in services.tasks_complete_each(items=items):
                results[outcome.task_id] = bulk_result(outcome)
        except Exception as exc:
            raise translate(exc) from exc
        return Response({"results": [results[item.task_id] for item in items]})

    @extend_schema(summary="Retry a finished task", request=None, responses={200: TaskSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Send a completed or failed task back to pending (operators)."""
        task = self.get_object()
        try:
            services.task_retry(task_id=task.pk, actor=actor_for(request.user))
        except Exception as exc:
            raise translate(exc) from exc
        return Response(TaskSerializer(self.get_queryset().get(pk=task.pk)).data)
