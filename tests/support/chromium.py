"""Debian's Chromium driven by Playwright, for browser tests outside test_browser.py (a helper, not a fixture).

with chromium_page(live_server.url, viewport=DESKTOP, color_scheme="dark", user=user) as page:
    page.goto(page.base + "/")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

CHROMIUM = "/usr/bin/chromium"
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium"
)


def session_cookie(user: Any, base: str) -> dict[str, str]:
    """A logged-in session of `user` as a browser cookie (no login form to fill)."""
    client = Client()
    client.force_login(user)
    return {"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
            "url": base}  # fmt: skip


@contextmanager
def chromium_page(
    base: str,
    *,
    viewport: dict[str, int] = DESKTOP,
    color_scheme: str = "light",
    user: Any = None,
    timezone_id: str | None = None,
) -> Iterator[Any]:
    """A page of a fresh browser at `viewport` under `color_scheme`, logged in as `user` if given; `page.base`
    is the live server's URL. Closes the browser and (PostgreSQL) the live server's connections afterwards."""
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop vs the ORM in this thread
    cookies = [session_cookie(user, base)] if user is not None else []
    # This thread's connection under Playwright's loop is kept apart by asgiref (see test_browser's fixture).
    connection.close()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            # timezone_id: the zone the browser reports (Intl, so tz.js), e.g. "Europe/Paris"; None: the host's.
            zone = {"timezone_id": timezone_id} if timezone_id else {}
            context = browser.new_context(viewport=viewport, color_scheme=color_scheme, **zone)
            if cookies:
                context.add_cookies(cookies)
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("dialog", lambda dialog: dialog.accept())
            page.base = base
            try:
                yield page
            finally:
                browser.close()
    finally:
        if connection.vendor == "postgresql":
            # The live server's request threads may still hold connections to the test database.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
