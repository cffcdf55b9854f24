"""The viewer's time zone: every page shows times where the person reading it is.

tasks_app/static/tasks_app/tz.js (loaded by base.html) puts the browser's IANA
zone (Intl.DateTimeFormat().resolvedOptions().timeZone) in the "tz" cookie;
this middleware activates it for the request, so `timezone.localtime`, the
`date` filter and `get_current_timezone()` (the task list's date pickers) all
use it. A missing, unknown or malformed cookie means settings.TIME_ZONE, never
an error: the cookie is the client's to write.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from functools import cache

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

TZ_COOKIE = "tz"
MAX_ZONE_NAME = 64  # the longest IANA name is 32 characters; anything longer isn't one


@cache
def known_zones() -> frozenset[str]:
    """The IANA names this host's tz database has (read once: available_timezones() walks the files)."""
    return frozenset(zoneinfo.available_timezones())


def zone_named(name: str | None) -> zoneinfo.ZoneInfo | None:
    """The zone a cookie names, or None if it names none this host knows."""
    if not name or len(name) > MAX_ZONE_NAME or name not in known_zones():
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # a name listed but unreadable
        return None


class ViewerTimezoneMiddleware:
    """Activate the zone of the "tz" cookie for one request (settings.TIME_ZONE without a valid one)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        zone = zone_named(request.COOKIES.get(TZ_COOKIE))
        if zone is not None:
            timezone.activate(zone)
        else:
            timezone.deactivate()
        try:
            return self.get_response(request)
        finally:
            # The zone is this request's: the thread's next request starts from settings.TIME_ZONE.
            timezone.deactivate()
