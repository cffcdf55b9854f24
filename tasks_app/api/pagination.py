"""Limit/offset pages for the small lists (stages, transitions), bounded.

DRF's LimitOffsetPagination takes any limit and offset: `?limit=10**35` made
SQLite answer "datatype mismatch", and an offset past 64 bits overflows either
database. The limit is capped (as DRF caps it: silently, to max_limit) and an
offset past MAX_OFFSET is refused with a 400. Task lists use keyset pages
(tasks_app.api.tasks.TaskCursorPagination), which take no offset.
"""

from __future__ import annotations

from typing import Any

from rest_framework import pagination
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    max_limit = MAX_LIMIT

    def get_offset(self, request: Request) -> int:
        offset = super().get_offset(request)
        if offset > MAX_OFFSET:
            raise ValidationError({self.offset_query_param: [f"Ensure this value is at most {MAX_OFFSET}."]})
        return offset

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = {p["name"]: p for p in super().get_schema_operation_parameters(view)}
        # A larger limit is capped, not refused: documented as a cap, not as a maximum.
        limit = parameters[self.limit_query_param]
        limit["description"] = f"Number of results to return per page (at most {MAX_LIMIT}; a larger limit is capped)."
        limit["schema"] = {**limit["schema"], "minimum": 1}
        offset = parameters[self.offset_query_param]
        offset["schema"] = {**offset["schema"], "minimum": 0, "maximum": MAX_OFFSET}
        return list(parameters.values())
