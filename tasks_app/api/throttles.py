"""Rate limits that hold behind a proxy and across processes.

DRF's throttles keep their counters in the default cache (each gunicorn
process's own memory, so N processes allowed N times the rate) and, unless
NUM_PROXIES is set, tell clients apart by the X-Forwarded-For header the
client itself sends (a new value per request escaped every limit). These
classes count in the "throttle" cache (settings.CACHES: a database table, or
Redis) and identify the client with client_ip(), which django-axes' login
lockout uses too.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, cast

from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.management import call_command
from django.http import HttpRequest
from django.utils.connection import ConnectionProxy
from rest_framework import throttling
from rest_framework.request import Request

logger = logging.getLogger("tasks_app.throttle")


def client_ip(request: HttpRequest | Request) -> str:
    """The client's address: REMOTE_ADDR, or with NUM_PROXIES trusted proxies the hop the outermost one added.

    Each proxy appends the address it got the request from to X-Forwarded-For,
    so with n proxies the n-th address from the right is the one the first of
    them saw; anything left of it is whatever the client wrote. Same rule as
    DRF's NUM_PROXIES (a header with fewer hops than proxies gives its first).
    """
    remote = request.META.get("REMOTE_ADDR", "") or ""
    proxies = settings.NUM_PROXIES or 0
    if proxies <= 0:
        return remote
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [hop for hop in hops if hop]
    if not hops:
        return remote
    # A proxy writes an address (some add a port). Anything else was written by a
    # client that reached gunicorn directly, and then REMOTE_ADDR is that client.
    return _address(hops[-min(proxies, len(hops))]) or remote


def _address(hop: str) -> str:
    """`hop` as an IP address ("1.2.3.4", "1.2.3.4:80", "[::1]:80" → without the port), or ''."""
    candidates = [hop]
    if hop.startswith("[") and "]" in hop:
        candidates.append(hop[1 : hop.index("]")])
    elif hop.count(":") == 1:
        candidates.append(hop.partition(":")[0])
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return ""


class SharedCounters:
    """Mixin for SimpleRateThrottle subclasses: shared cache, client_ip identity.

    If the cache can't be reached (the table missing because `createcachetable`
    was not run, Redis down), the request is let through and the error logged:
    a broken rate limiter must not take the API and the hooks down with it.
    """

    # Looked up on each use, in the calling thread, as django.core.cache.cache is for "default".
    cache = cast(BaseCache, ConnectionProxy(caches, "throttle"))

    def get_ident(self, request: Request) -> str:
        return client_ip(request)

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)  # type: ignore[misc]
        except Exception:  # the cache backend's own errors: DatabaseError, redis errors
            logger.exception(
                "throttle cache unavailable, request let through (run `manage.py createcachetable`?)"
            )
            return True


class SharedRateThrottle(SharedCounters, throttling.SimpleRateThrottle):
    """Base for scoped throttles (hooks) with shared counters."""


class UserRateThrottle(SharedCounters, throttling.UserRateThrottle):
    pass


class AnonRateThrottle(SharedCounters, throttling.AnonRateThrottle):
    pass


def create_cache_tables(*, using: str, **kwargs: Any) -> None:
    """post_migrate: `createcachetable` (it skips tables that exist and caches that aren't in the database)."""
    call_command("createcachetable", database=using, verbosity=0)
