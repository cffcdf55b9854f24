"""Routes of the REST API under /api/."""

from __future__ import annotations

from csp.decorators import csp_update
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from tasks_app.api.health import HealthView
from tasks_app.api.stages import StageViewSet, TransitionViewSet
from tasks_app.api.tasks import TaskViewSet

router = DefaultRouter()
router.register("stages", StageViewSet, basename="stage")
router.register("transitions", TransitionViewSet, basename="transition")
router.register("tasks", TaskViewSet, basename="task")

urlpatterns = [
    path("health/", HealthView.as_view(), name="api-health"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file, so the page
    # needs no inline script; only its small inline <style> is let through.
    path(
        "docs/",
        csp_update({"style-src": ["'unsafe-inline'"]})(SpectacularSwaggerSplitView.as_view(url_name="api-schema")),
        name="api-docs",
    ),
    path("", include(router.urls)),
]
