from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from tasks_app.api.hooks import HookView
from tasks_app.views.favicon import favicon
from tasks_app.views.prometheus import metrics

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="tasks_app:overview", permanent=False)),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("tasks_app.urls")),
    path("admin/", admin.site.urls),
    path("api/", include("tasks_app.api.urls")),
    path("hooks/<slug:slug>/", HookView.as_view(), name="hook"),
    path("metrics", metrics, name="metrics"),
    path("favicon.ico", favicon, name="favicon"),
]

# API paths no route matches answer JSON, like the API's own 404s (HTML elsewhere).
handler404 = "tasks_app.api.fallback.not_found"
