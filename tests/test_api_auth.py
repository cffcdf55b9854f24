"""REST API: authentication, the permission matrix, throttling, health, schema and docs.

Every endpoint is called by every role (anonymous, viewer, operator, admin)
in a state where the call would succeed; a refused call must write nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import OperationalError, transaction
from django.utils import timezone
from rest_framework.settings import api_settings
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from tasks_app.api import health
from tasks_app.models import Stage, Task, TaskEvent, Transition, WorkerProcess
from tasks_app.services import task_complete
from tests.support.api import call, post
from tests.support.processes import ROOT
from tests.support.users import ROLES, make_user
from tests.support.world import claim_one, create, nothing_written


@dataclass
class Scene:
    world: dict[str, Stage]
    pending: Task  # at intake
    claimed: Task  # at review, lock_token set
    completed: Task  # at review

    def transition(self, source: str, target: str) -> Transition:
        return Transition.objects.get(source__slug=source, target__slug=target)


@pytest.fixture
def scene(world: dict[str, Stage]) -> Scene:
    pending = create(world["intake"], customer_id=1)
    create(world["review"], "order")
    done = claim_one(world["review"])
    task_complete(task_id=done.pk, lock_token=done.lock_token)
    create(world["review"], "order")
    claimed = claim_one(world["review"])
    return Scene(world=world, pending=pending, claimed=claimed, completed=Task.objects.get(pk=done.pk))


@dataclass(frozen=True)
class Endpoint:
    kind: str  # read | task (task writes and actions) | config (stage/transition writes) | public
    method: str
    url: Callable[[Scene], str]
    body: Callable[[Scene], Any] = lambda s: None
    ok: int = 200


ENDPOINTS: dict[str, Endpoint] = {
    "health": Endpoint("public", "get", lambda s: "/api/health/"),
    "stage-list": Endpoint("read", "get", lambda s: "/api/stages/"),
    "stage-detail": Endpoint("read", "get", lambda s: "/api/stages/review/"),
    "transition-list": Endpoint("read", "get", lambda s: "/api/transitions/"),
    "transition-detail": Endpoint("read", "get", lambda s: f"/api/transitions/{s.transition('intake', 'review').pk}/"),
    "task-list": Endpoint("read", "get", lambda s: "/api/tasks/"),
    "task-detail": Endpoint("read", "get", lambda s: f"/api/tasks/{s.pending.pk}/"),
    "task-events": Endpoint("read", "get", lambda s: f"/api/tasks/{s.pending.pk}/events/"),
    "stage-create": Endpoint("config", "post", lambda s: "/api/stages/", lambda s: {"slug": "new", "name": "New"}, 201),
    "stage-update": Endpoint("config", "patch", lambda s: "/api/stages/review/", lambda s: {"is_paused": True}),
    "stage-delete": Endpoint("config", "delete", lambda s: "/api/stages/notify/", ok=204),
    "transition-create": Endpoint(
        "config",
        "post",
        lambda s: "/api/transitions/",
        lambda s: {"source": "ship", "target": "notify", "task_type": "x"},
        201,
    ),
    "transition-update": Endpoint(
        "config",
        "patch",
        lambda s: f"/api/transitions/{s.transition('intake', 'review').pk}/",
        lambda s: {"task_type": "y"},
    ),
    "transition-delete": Endpoint(
        "config", "delete", lambda s: f"/api/transitions/{s.transition('intake', 'review').pk}/", ok=204
    ),
    "stage-send": Endpoint("task", "post", lambda s: "/api/stages/intake/send/", lambda s: {"type": "order"}, 201),
    "stage-claim": Endpoint("task", "post", lambda s: "/api/stages/intake/claim/", lambda s: {"limit": 5}),
    "task-create": Endpoint("task", "post", lambda s: "/api/tasks/", lambda s: {"stage": "intake", "type": "t"}, 201),
    "task-bulk": Endpoint(
        "task", "post", lambda s: "/api/tasks/bulk/", lambda s: {"tasks": [{"stage": "intake", "type": "t"}]}, 201
    ),
    "task-complete": Endpoint(
        "task", "post", lambda s: f"/api/tasks/{s.claimed.pk}/complete/", lambda s: {"lock_token": s.claimed.lock_token}
    ),
    "task-release": Endpoint(
        "task", "post", lambda s: f"/api/tasks/{s.claimed.pk}/release/", lambda s: {"lock_token": s.claimed.lock_token}
    ),
    "task-heartbeat": Endpoint(
        "task",
        "post",
        lambda s: f"/api/tasks/{s.claimed.pk}/heartbeat/",
        lambda s: {"lock_token": s.claimed.lock_token},
    ),
    "task-bulk-complete": Endpoint(
        "task",
        "post",
        lambda s: "/api/tasks/bulk-complete/",
        lambda s: {"tasks": [{"id": s.claimed.pk, "lock_token": s.claimed.lock_token}]},
    ),
    "task-retry": Endpoint("task", "post", lambda s: f"/api/tasks/{s.completed.pk}/retry/"),
}


def expected(role: str, kind: str, ok: int) -> int:
    if kind == "public":
        return ok
    if role == "anonymous":
        return 401
    if kind == "read":
        return ok
    allowed = {"viewer": set(), "operator": {"task"}, "admin": {"task", "config"}}[role]
    return ok if kind in allowed else 403


@pytest.mark.parametrize("name", list(ENDPOINTS))
def test_permission_matrix_allows_or_refuses_each_endpoint_per_role(
    name: str, scene: Scene, clients: dict[str, APIClient]
) -> None:
    endpoint = ENDPOINTS[name]
    request = (endpoint.method, endpoint.url(scene), endpoint.body(scene))
    for role in ROLES:
        want = expected(role, endpoint.kind, endpoint.ok)
        # Each role starts from the same state: successful calls are rolled back.
        with transaction.atomic():
            if want in (401, 403):
                with nothing_written():
                    response = call(clients[role], *request)
            else:
                response = call(clients[role], *request)
            transaction.set_rollback(True)
        assert response.status_code == want, (role, name, response.content)


def test_anonymous_gets_401_with_a_token_challenge(scene: Scene, anon: APIClient) -> None:
    response = anon.get("/api/tasks/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_an_unknown_token_gets_401_and_writes_nothing(scene: Scene) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    with nothing_written():
        assert client.get("/api/tasks/").status_code == 401
        assert post(client, "/api/tasks/", {"stage": "intake", "type": "t"}).status_code == 401


def test_an_inactive_users_token_gets_401(scene: Scene, users: dict[str, Any], clients: dict[str, APIClient]) -> None:
    users["operator"].is_active = False
    users["operator"].save()
    assert clients["operator"].get("/api/tasks/").status_code == 401


def test_session_authentication_reads_and_writes(scene: Scene, users: dict[str, Any]) -> None:
    client = APIClient()
    client.force_login(users["operator"])
    assert client.get("/api/tasks/").status_code == 200
    response = post(client, "/api/tasks/", {"stage": "intake", "type": "t"})
    assert response.status_code == 201
    assert TaskEvent.objects.get(task_id=response.data["id"]).actor == "user:operator"


def test_session_writes_without_a_csrf_token_are_refused(scene: Scene, users: dict[str, Any]) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(users["admin"])
    with nothing_written():
        response = post(client, "/api/tasks/", {"stage": "intake", "type": "t"})
    assert response.status_code == 403
    assert "CSRF" in str(response.data["detail"])


def test_superuser_without_a_token_or_session_is_still_anonymous(scene: Scene) -> None:
    make_user("root", superuser=True)
    assert APIClient().get("/api/stages/").status_code == 401


# -- health -----------------------------------------------------------------------


def test_health_needs_no_authentication_and_counts_pending_locked_and_live_workers(scene: Scene) -> None:
    now = timezone.now()
    WorkerProcess.objects.create(worker_id="alive", host="h", pid=1, last_heartbeat=now)
    WorkerProcess.objects.create(worker_id="silent", host="h", pid=2, last_heartbeat=now - timedelta(days=1))
    WorkerProcess.objects.create(worker_id="stopped", host="h", pid=3, last_heartbeat=now, stopped_at=now)
    response = APIClient().get("/api/health/")
    assert response.status_code == 200
    assert response.data == {"status": "ok", "database": "ok", "pending": 1, "locked": 1, "workers_alive": 1}


def test_health_ignores_a_bad_token(scene: Scene) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token nonsense")
    assert client.get("/api/health/").status_code == 200


def test_health_answers_503_when_the_database_is_unreachable(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr(health.Task.objects, "filter", down)
    response = APIClient().get("/api/health/")
    assert response.status_code == 503
    assert response.data["status"] == "error" and "unreachable" in response.data["database"]


# -- throttling ---------------------------------------------------------------------


@pytest.fixture
def tiny_rates(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Rates of 3/minute. Overriding REST_FRAMEWORK reloads api_settings, but
    SimpleRateThrottle copied DEFAULT_THROTTLE_RATES into a class attribute at
    import, so that attribute is patched too. Throttle history lives in the
    default (local memory) cache: cleared before and after."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"user": "3/minute", "anon": "3/minute"},
    }
    assert api_settings.DEFAULT_THROTTLE_RATES["user"] == "3/minute"
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", api_settings.DEFAULT_THROTTLE_RATES)
    cache.clear()
    yield
    cache.clear()


def test_token_client_over_its_rate_gets_429_with_retry_after(
    scene: Scene, tiny_rates: None, operator: APIClient, admin: APIClient
) -> None:
    for _ in range(3):
        assert operator.get("/api/stages/").status_code == 200
    response = operator.get("/api/stages/")
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    with nothing_written():
        assert post(operator, "/api/tasks/", {"stage": "intake", "type": "t"}).status_code == 429
    # The rate is per user: another token still gets through.
    assert admin.get("/api/stages/").status_code == 200


def test_anonymous_health_checks_over_the_anon_rate_get_429(scene: Scene, tiny_rates: None) -> None:
    client = APIClient()
    for _ in range(3):
        assert client.get("/api/health/").status_code == 200
    assert client.get("/api/health/").status_code == 429


def test_default_rates_let_a_busy_client_through(scene: Scene, operator: APIClient) -> None:
    for _ in range(20):
        assert operator.get("/api/stages/").status_code == 200


# -- schema and docs ------------------------------------------------------------------


def test_openapi_schema_describes_every_endpoint(scene: Scene, viewer: APIClient) -> None:
    response = viewer.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    assert {
        "/api/stages/",
        "/api/stages/{slug}/",
        "/api/stages/{slug}/send/",
        "/api/stages/{slug}/claim/",
        "/api/transitions/",
        "/api/transitions/{id}/",
        "/api/tasks/",
        "/api/tasks/{id}/",
        "/api/tasks/{id}/events/",
        "/api/tasks/bulk/",
        "/api/tasks/bulk-complete/",
        "/api/tasks/{id}/complete/",
        "/api/tasks/{id}/release/",
        "/api/tasks/{id}/heartbeat/",
        "/api/tasks/{id}/retry/",
        "/api/health/",
    } <= paths
    task_list_params = {p["name"] for p in schema["paths"]["/api/tasks/"]["get"]["parameters"]}
    assert {"stage", "status", "type", "created_after", "created_before", "parent", "source_stage"} <= task_list_params
    assert {"payload", "id", "ordering", "cursor"} <= task_list_params
    assert "tokenAuth" in schema["components"]["securitySchemes"]


@pytest.mark.parametrize("url", ["/api/schema/", "/api/docs/"])
def test_schema_and_docs_need_authentication_like_every_endpoint_but_health(
    scene: Scene, anon: APIClient, url: str
) -> None:
    assert anon.get(url).status_code == 401


def test_docs_page_loads_swagger_ui_from_local_static_files_only(scene: Scene, viewer: APIClient) -> None:
    response = viewer.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html.lower()
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""["'](https?://[^"']+|//[^"']+)["']""", html)
    assert any("/static/drf_spectacular_sidecar/swagger-ui-dist/" in u for u in urls), urls
    external = [u for u in urls if u.startswith(("http://", "https://", "//"))]
    assert external == [], f"docs reference external hosts: {external}"
    # No inline script (the content security policy allows none): the start-up
    # script is a file of its own, which points Swagger UI at the schema.
    assert "<script>" not in html
    script = viewer.get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    code = script.content.decode()
    assert "/api/schema/" in code
    # The script embeds a random CSRF token, which may spell "cdn" by chance: drop it first.
    text = re.sub(r'"X-CSRFTOKEN"\] = "[^"]*"', "", html + code).lower()
    for host in ("cdn", "jsdelivr", "unpkg", "cdnjs"):
        assert host not in text


# -- module structure -------------------------------------------------------------------------


def test_drf_views_can_be_imported_before_the_urlconf() -> None:
    # DEFAULT_PERMISSION_CLASSES names tasks_app.api.permissions; importing it
    # must not import the API's views (and so DRF's views) half-way through
    # DRF's own import. A fresh interpreter, since this process has the URLs loaded.
    code = "import django; django.setup(); import rest_framework.views, drf_spectacular.views"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "workflowsite.settings"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-600:]
