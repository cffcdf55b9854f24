"""JSON requests to the REST API and the checks its tests share."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.utils.dateparse import parse_datetime
from rest_framework.response import Response
from rest_framework.test import APIClient

from tests.support.world import nothing_written


def call(client: APIClient, method: str, url: str, body: Any = None) -> Response:
    """One JSON request; `body` None sends no body."""
    if method in ("get", "head", "delete") and body is None:
        return getattr(client, method)(url)
    return getattr(client, method)(url, body, format="json")


def post(client: APIClient, url: str, body: Any = None) -> Response:
    return call(client, "post", url, {} if body is None else body)


def get(client: APIClient, url: str, params: dict[str, Any] | None = None) -> Response:
    return client.get(url, params or {})


def raw_post(client: APIClient, url: str, text: str) -> Response:
    return client.generic("POST", url, text, content_type="application/json")


def at(text: str) -> datetime:
    """A timestamp from a response."""
    value = parse_datetime(text)
    assert value is not None, text
    return value


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [row["id"] for row in rows]


def list_ids(client: APIClient, params: dict[str, Any] | None = None) -> list[int]:
    """Ids of every task GET /api/tasks/ lists with these parameters, across all pages."""
    response = client.get("/api/tasks/", params or {})
    assert response.status_code == 200, response.content
    out = ids(response.data["results"])
    while response.data["next"]:
        response = client.get(response.data["next"])
        assert response.status_code == 200, response.content
        out += ids(response.data["results"])
    return out


def payload_of_size(size: int) -> dict[str, str]:
    """A payload whose compact JSON is exactly `size` bytes."""
    overhead = len(json.dumps({"blob": ""}, separators=(",", ":")))
    return {"blob": "x" * (size - overhead)}


def assert_refused(
    client: APIClient, url: str, cases: list[tuple[Any, str | None]], *, status: int = 400, method: str = "post"
) -> None:
    """Each (body, field) case answers `status`, names `field` (if given) and writes nothing."""
    for body, field in cases:
        with nothing_written():
            response = call(client, method, url, body)
        assert response.status_code == status, (body, response.content)
        if field is not None:
            assert field in response.data, (body, response.data)
