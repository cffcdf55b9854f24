"""Assign over HTTP (issue 16): `POST /api/tasks/{id}/assign/` with {"assignee": "alice"} or {"assignee": null}.

A mixin of TaskViewSet (api.tasks), as the cancel verbs are. It needs the
change-task permission (api.permissions.ACTION_PERMS). An unknown or inactive
user, or one who may not work on the task's stage, is a 400 on `assignee`; a
finished task is a 409 (services.assign.task_assign).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from tasks_app.api.errors import translate
from tasks_app.models import Stage
from tasks_app.serializers import TaskSerializer
from tasks_app.services.assign import MAX_VALUE, task_assign, user_for
from tasks_app.services.events import actor_for


class AssignSerializer(serializers.Serializer):
    assignee = serializers.CharField(
        max_length=MAX_VALUE,
        allow_null=True,
        help_text="The username of an active user who may work on the task's stage; null clears the assignee.",
    )


class AssignActions:
    """The assign verb of TaskViewSet."""

    get_object: Any  # TaskViewSet's
    get_queryset: Any

    @extend_schema(
        summary="Assign a task",
        description="Set (a username) or clear (null) the assignee of a pending or open task, with an `assigned` "
        "event in its history. 400 for an unknown or inactive user or one who may not work on the stage; 409 "
        "for a finished task. The new assignee is told by mail as of an arrival.",
        request=AssignSerializer,
        responses={200: TaskSerializer},
        tags=["tasks"],
    )
    @action(detail=True, methods=["post"], pagination_class=None, filter_backends=[])
    def assign(self, request: Request, pk: str | None = None) -> Response:
        """Set or clear a live task's assignee."""
        data = AssignSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        task = self.get_object()
        name = data.validated_data["assignee"]
        try:
            user = user_for(task.stage, name) if name is not None else None
            task_assign(task_id=task.pk, assignee=user, actor=actor_for(request.user))
        except Exception as exc:
            raise translate(exc) from exc
        return Response(TaskSerializer(self.get_queryset().get(pk=task.pk)).data)


def assignee_for(stage: Stage, name: str | None) -> Any:
    """A create's `assignee` as a user (None for none); a ValidationError on `assignee` otherwise."""
    return user_for(stage, name) if name else None
