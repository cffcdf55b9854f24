"""JSON 404s for API paths that no route matches (workflowsite.urls.handler404).

`/api/tasks/1.5/complete/` or `/hooks/<not a slug>/` never reach a DRF view,
so Django answered its HTML page; an API client (and the OpenAPI schema,
which documents JSON errors) expects `{"detail": ...}` like every other 404.
Other paths keep Django's page.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found

API_PREFIXES = ("/api/", "/hooks/")


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if request.path.startswith(API_PREFIXES):
        return JsonResponse({"detail": "Not found."}, status=404)
    return page_not_found(request, exception)
