"""Stages and transitions over HTTP, plus the two stage-level task verbs: send and claim."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from tasks_app import services
from tasks_app.api.arrivals import arrival_status, arrivals_data
from tasks_app.api.errors import Conflict, translate
from tasks_app.models import Stage, Task, Transition
from tasks_app.serializers import (
    ClaimedTaskSerializer,
    ClaimSerializer,
    SendItemSerializer,
    StageSerializer,
    TaskSerializer,
    TransitionSerializer,
    scheduled_at,
)
from tasks_app.services.events import actor_for
from tasks_app.services.flow_limits import retry_after
from tasks_app.services.stages import stage_delete


def attach_source_stages(tasks: list[Task]) -> None:
    """One query for all the source stages the output shows, not one per task."""
    stages = Stage.objects.in_bulk({t.source_stage_id for t in tasks if t.source_stage_id})
    for t in tasks:
        if t.source_stage_id:
            t.source_stage = stages.get(t.source_stage_id)


@extend_schema(tags=["stages"])
@extend_schema_view(
    list=extend_schema(summary="List stages", description="Every stage, by slug (limit/offset pages)."),
    create=extend_schema(summary="Create a stage"),
    retrieve=extend_schema(summary="Get a stage"),
    partial_update=extend_schema(summary="Change a stage", description="Only the fields sent change."),
    destroy=extend_schema(
        summary="Delete a stage",
        description="Refused (409) while the stage has pending or locked tasks; its finished tasks go with it.",
    ),
)
class StageViewSet(viewsets.ModelViewSet):
    queryset = Stage.objects.order_by("slug")
    serializer_class = StageSerializer
    lookup_field = "slug"
    lookup_value_regex = "[-a-zA-Z0-9_]+"  # a SlugField's characters: "a%00b" is a 404, not a PostgreSQL DataError
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        stage = self.get_object()
        try:
            stage_delete(stage=stage)  # the admin's delete calls the same policy
        except Exception as exc:
            raise translate(exc) from exc
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Send a task out of a stage",
        request=SendItemSerializer,
        responses={
            201: TaskSerializer(many=True),
            200: OpenApiResponse(
                TaskSerializer(many=True),
                "Nothing created: at every target a live task had the payload's dedupe key (`deduplicated` true).",
            ),
        },
    )
    # The answer is the created tasks, a plain list: not paged.
    @action(detail=True, methods=["post"], pagination_class=None)
    def send(self, request: Request, slug: str | None = None) -> Response:
        """Send a task out of this stage through its transitions (one task per target; a target's live task
        with the payload's dedupe key answers instead, `deduplicated` true)."""
        stage = self.get_object()
        data = SendItemSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            created = services.task_send(
                stage=stage,
                type=data.validated_data["type"],
                payload=data.validated_data["payload"],
                actor=actor_for(request.user),
                priority=data.validated_data.get("priority"),
                available_at=scheduled_at(data.validated_data),
            )
        except Exception as exc:
            raise translate(exc) from exc
        return Response(arrivals_data(created), status=arrival_status(created))

    @extend_schema(
        summary="Claim tasks of a stage",
        request=ClaimSerializer,
        responses={200: ClaimedTaskSerializer(many=True)},
        parameters=[
            # A response header: only on a claim the stage's cap or rate limit cut short (maybe to none).
            OpenApiParameter(
                "Retry-After",
                int,
                location=OpenApiParameter.HEADER,
                response=[200],
                description="Sent when the stage's `max_concurrency` or `rate_limit` cut this claim short "
                "while tasks were waiting: whole seconds (at least 1) before a claim is worth trying again.",
            )
        ],
        # Swagger UI sends its example as is: a short lock, not the maximum (7 days).
        examples=[OpenApiExample("Claim one task for 30 s", value={"limit": 1, "lock_timeout": 30}, request_only=True)],
    )
    @action(detail=True, methods=["post"], pagination_class=None)
    def claim(self, request: Request, slug: str | None = None) -> Response:
        """Claim up to `limit` tasks of this stage; each comes with the lock_token that completes it.

        A stage's `max_concurrency` and `rate_limit` hold here as for workers: a claim they cut short
        returns fewer tasks (maybe none) and a `Retry-After` header (whole seconds) saying when to try again.
        """
        stage = self.get_object()  # a form stage's group rule: api.permissions
        if stage.kind == Stage.Kind.JOB:
            # A claim would take the task away from the job's next run, which would never see it.
            raise Conflict(
                f"Stage '{stage.slug}' is a job stage: its tasks are taken by the scheduler's runs, "
                "not claimed over the API."
            )
        if stage.kind == Stage.Kind.JOIN:
            # Its arrivals wait for their group; the join pass completes them (services.join).
            raise Conflict(
                f"Stage '{stage.slug}' is a join stage: its tasks wait for their group and are merged by the "
                "workers' join pass, not claimed."
            )
        data = ClaimSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tasks = services.task_claim(
            stage=stage,
            worker_id=f"api:{request.user.get_username()}",
            limit=data.validated_data["limit"],
            lock_timeout=data.validated_data.get("lock_timeout"),
        )
        attach_source_stages(tasks)
        response = Response(ClaimedTaskSerializer(tasks, many=True).data)
        wait = retry_after(stage.pk)  # the cap or the rate limit held this claim back
        if wait is not None:
            response["Retry-After"] = str(wait)
        return response


@extend_schema(tags=["transitions"])
@extend_schema_view(
    list=extend_schema(summary="List transitions", description="Every transition (limit/offset pages)."),
    create=extend_schema(
        summary="Create a transition",
        description="Tasks of `task_type` sent out of `source` go to `target`; a blank type routes every type.",
    ),
    retrieve=extend_schema(summary="Get a transition"),
    partial_update=extend_schema(summary="Change a transition"),
    destroy=extend_schema(summary="Delete a transition"),
)
class TransitionViewSet(viewsets.ModelViewSet):
    queryset = Transition.objects.select_related("source", "target").order_by("id")
    serializer_class = TransitionSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
