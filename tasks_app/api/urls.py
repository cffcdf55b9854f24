"""Routes of the REST API under /api/."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
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
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("", include(router.urls)),
]
