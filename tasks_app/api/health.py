"""GET /api/health/: no authentication, for load balancers and uptime checks."""

from __future__ import annotations

from django.db import DatabaseError
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks_app.api.throttles import AnonRateThrottle
from tasks_app.models import Task
from tasks_app.selectors.overview import live_totals
from tasks_app.selectors.workers import live_workers


class HealthView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonRateThrottle]

    @extend_schema(
        summary="Health",
        description="ok when the database answers; pending and locked task counts, live workers. No login.",
        tags=["health"],
        responses={
            200: inline_serializer(
                "Health",
                {
                    "status": serializers.ChoiceField(choices=["ok"]),
                    "database": serializers.CharField(),
                    "pending": serializers.IntegerField(),
                    "locked": serializers.IntegerField(),
                    "workers_alive": serializers.IntegerField(),
                },
            ),
            503: inline_serializer(
                "HealthError",
                {"status": serializers.ChoiceField(choices=["error"]), "database": serializers.CharField()},
            ),
        },
    )
    def get(self, request: Request) -> Response:
        try:
            # Counts over the claim index only (pending and locked): cheap on any table size.
            counts = live_totals()
            alive = live_workers().count()
        except DatabaseError as exc:
            return Response({"status": "error", "database": f"unreachable: {type(exc).__name__}"}, status=503)
        return Response(
            {
                "status": "ok",
                "database": "ok",
                "pending": counts[Task.Status.PENDING],
                "locked": counts[Task.Status.LOCKED],
                "workers_alive": alive,
            }
        )
