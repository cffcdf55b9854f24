"""The viewer's time zone and the task page's times and links (issue 14, section 4).

tz.js puts the browser's zone in the "tz" cookie; tasks_app.middleware activates
it for the request (a name the host doesn't know means settings.TIME_ZONE,
never an error). The task page shows its times in that zone with the zone
named and no microseconds, links the task that sent it, and sends a person to
the decision page of a task waiting at a form stage.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.utils import timezone

from tasks_app.middleware import ViewerTimezoneMiddleware
from tasks_app.models import Stage, Task
from tasks_app.services import task_claim, task_create, task_release
from tasks_app.templatetags.people import local_text
from tests.support.pages import page
from tests.support.users import logged_in, make_user
from tests.support.work import form_world, sent_order

pytestmark = pytest.mark.django_db

SUMMER = datetime(2026, 7, 1, 12, 0, 5, 417088, tzinfo=UTC)  # CEST in Paris, EDT in New York
WINTER = datetime(2026, 12, 8, 12, 22, 0, tzinfo=UTC)


def zone_seen(cookie: str | None) -> str:
    """The zone a view sees (get_current_timezone_name) when the request carries `cookie` as "tz"."""
    seen: list[str] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(timezone.get_current_timezone_name())
        return HttpResponse("ok")

    request = RequestFactory().get("/")
    if cookie is not None:
        request.COOKIES["tz"] = cookie
    assert ViewerTimezoneMiddleware(view)(request).status_code == 200
    return seen[0]


# -- the middleware ---------------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/Argentina/Buenos_Aires", "Asia/Kolkata", "UTC"])
def test_a_known_zone_in_the_cookie_is_the_requests_zone(zone: str) -> None:
    assert zone_seen(zone) == zone
    # Only for that request: the thread's next one starts from the settings' zone.
    assert timezone.get_current_timezone_name() == "UTC"


@pytest.mark.parametrize(
    "cookie", [None, "", "Mars/Olympus_Mons", "../../etc/passwd", "europe/paris", "Europe/Paris\x00", "A" * 5000, "%2F"]
)
def test_a_missing_or_unknown_zone_means_the_settings_zone(cookie: str | None, settings: object) -> None:
    assert zone_seen(cookie) == "UTC"


def test_the_settings_zone_is_the_fallback_whatever_it_is(settings: object) -> None:
    settings.TIME_ZONE = "Asia/Tokyo"  # type: ignore[attr-defined]

    assert zone_seen("Not/AZone") == "Asia/Tokyo"


def test_a_view_that_raises_leaves_no_zone_behind() -> None:
    def broken(request: HttpRequest) -> HttpResponse:
        raise RuntimeError("boom")

    request = RequestFactory().get("/")
    request.COOKIES["tz"] = "Asia/Tokyo"
    with pytest.raises(RuntimeError):
        ViewerTimezoneMiddleware(broken)(request)
    assert timezone.get_current_timezone_name() == "UTC"


# -- the task page's times ----------------------------------------------------------------------


def details(html: str) -> dict[str, str]:
    pairs = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", html, re.DOTALL)
    return {dt: " ".join(re.sub(r"<[^>]+>", " ", dd).split()) for dt, dd in pairs}


def test_task_page_times_are_in_the_cookies_zone_with_the_zone_named() -> None:
    stage = Stage.objects.create(slug="ship", name="Ship", handler="tests.handlers.noop")
    task = task_create(stage=stage, type="order", payload={}, now=SUMMER)
    client = logged_in(make_user("vic", "view_task"))

    client.cookies["tz"] = "Europe/Paris"
    paris = client.get(f"/tasks/{task.pk}/").content.decode()
    client.cookies["tz"] = "America/New_York"
    new_york = client.get(f"/tasks/{task.pk}/").content.decode()

    assert details(paris)["Created"].startswith("1 Jul 2026, 14:00:05 CEST (")
    assert details(new_york)["Created"].startswith("1 Jul 2026, 08:00:05 EDT (")
    assert "Times in Europe/Paris." in paris
    assert '<time datetime="2026-07-01T14:00:05+02:00">1 Jul 2026, 14:00:05 CEST</time>' in paris  # the history
    assert "ago)" in details(paris)["Created"]  # and how long ago


def test_an_unknown_cookie_is_ignored_and_the_page_is_in_utc() -> None:
    stage = Stage.objects.create(slug="ship", name="Ship", handler="tests.handlers.noop")
    task = task_create(stage=stage, type="order", payload={}, now=WINTER)
    client = logged_in(make_user("vic", "view_task"))
    client.cookies["tz"] = "Mars/Olympus_Mons"

    response = client.get(f"/tasks/{task.pk}/")

    assert response.status_code == 200
    assert details(response.content.decode())["Created"].startswith("8 Dec 2026, 12:22:00 UTC (")


def test_a_zone_without_an_abbreviation_is_named_by_its_offset() -> None:
    stage = Stage.objects.create(slug="ship", name="Ship", handler="tests.handlers.noop")
    task = task_create(stage=stage, type="order", payload={}, now=WINTER)
    client = logged_in(make_user("vic", "view_task"))
    client.cookies["tz"] = "Asia/Dubai"  # the tz database calls it "+04"

    created = details(client.get(f"/tasks/{task.pk}/").content.decode())["Created"]

    assert created.startswith("8 Dec 2026, 16:22:00 UTC+04 (")


def test_no_time_on_the_task_page_has_microseconds_or_raw_iso_text() -> None:
    stage = Stage.objects.create(slug="ship", name="Ship", handler="tests.handlers.noop", max_attempts=5)
    task_create(stage=stage, type="order", payload={}, now=SUMMER)
    [claim] = task_claim(stage=stage, worker_id="w1")
    released = task_release(task_id=claim.pk, lock_token=claim.lock_token, error="ValueError: no", retry_in=30)
    client = logged_in(make_user("vic", "view_task"))

    response = client.get(f"/tasks/{claim.pk}/")

    text = page(response).text
    assert not re.search(r"\d\d:\d\d:\d\d\.\d", text)  # no fractions of a second anywhere
    assert released.available_at.isoformat() not in text  # the retry time was raw ISO
    assert f"retry at {local_text(released.available_at, seconds=True)} (in " in text


# -- the task page's links ------------------------------------------------------------------------


def test_sent_by_links_the_parent_task() -> None:
    world = form_world()
    order = sent_order(world, {"order_id": 1})
    client = logged_in(world.vera)

    response = client.get(f"/tasks/{order.pk}/")

    assert details(response.content.decode())["Sent by"] == f"task {order.parent_id} at intake"
    assert re.search(
        rf'<dt>Sent by</dt><dd><a href="/tasks/{order.parent_id}/">task {order.parent_id}</a>',
        response.content.decode(),
    )


def test_a_task_nobody_sent_says_so() -> None:
    stage = Stage.objects.create(slug="ship", name="Ship", handler="tests.handlers.noop")
    task = task_create(stage=stage, type="order", payload={})

    response = logged_in(make_user("vic", "view_task")).get(f"/tasks/{task.pk}/")

    assert details(response.content.decode())["Sent by"] == "—"


def test_a_pending_task_at_a_form_stage_links_its_decision_page() -> None:
    world = form_world()
    order = sent_order(world, {"order_id": 1})

    response = logged_in(world.vera).get(f"/tasks/{order.pk}/")

    assert f"/work/{order.pk}/" in page(response).hrefs()
    assert "Open it in My work" in page(response).text


def test_no_decision_link_for_those_who_may_not_decide_or_when_it_is_done() -> None:
    world = form_world()
    order = sent_order(world, {"order_id": 1})
    outsider = logged_in(make_user("otto", "view_task"))  # may view tasks, is in no group of review
    done = world.intake.tasks.get()  # the intake task that sent it: completed, and not at a form stage

    assert f"/work/{order.pk}/" not in page(outsider.get(f"/tasks/{order.pk}/")).hrefs()
    assert not any(re.match(r"/work/\d+/", h) for h in page(logged_in(world.vera).get(f"/tasks/{done.pk}/")).hrefs())
    Task.objects.filter(pk=order.pk).update(status=Task.Status.COMPLETED, completed_at=timezone.now())
    assert f"/work/{order.pk}/" not in page(logged_in(world.vera).get(f"/tasks/{order.pk}/")).hrefs()


def test_a_lock_held_for_a_week_shows_its_date_on_the_task_page() -> None:
    world = form_world()
    order = sent_order(world, {"order_id": 1})
    client = logged_in(world.vera)
    client.post(f"/work/{order.pk}/open/")
    locked = Task.objects.get(pk=order.pk)
    assert locked.locked_until - timezone.now() > timedelta(days=6)

    until = details(client.get(f"/tasks/{order.pk}/").content.decode())["Lock until"]

    assert until.startswith(local_text(locked.locked_until, seconds=True) + " (in 7 d)")
