"""GET /favicon.ico: browsers ask for it on every first visit (the admin's and the API docs' pages
too, which don't link one), and a 404 there fills the logs. Pages link the SVG in static files."""

from __future__ import annotations

from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

ICON = Path(__file__).resolve().parent.parent / "static" / "tasks_app" / "favicon.ico"
ICON_BYTES = ICON.read_bytes()  # 200 bytes, read once


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(ICON_BYTES, content_type="image/x-icon")
    response["Cache-Control"] = "public, max-age=86400"
    return response
