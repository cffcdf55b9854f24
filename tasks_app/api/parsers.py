"""The API's JSON parser: bounded request size and nesting depth, both answered before any view runs.

Depth: a body nested deeper than limits.MAX_DOCUMENT_DEPTH is refused here
(400), because the serializers' own code recurses over what they are given;
fields have tighter limits of their own (TASKS_MAX_PAYLOAD_DEPTH for payloads),
checked by their validators with a message that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser

from tasks_app.limits import MAX_DOCUMENT_DEPTH, json_depth_exceeds


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "request_too_large"


class BoundedJSONParser(JSONParser):
    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        request = (parser_context or {}).get("request")
        limit = int(settings.API_MAX_REQUEST_BYTES)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            length = 0
        if length > limit:
            raise RequestTooLarge(f"Request body is {length} bytes; the limit is {limit}.")
        too_deep = f"JSON parse error - nested deeper than {MAX_DOCUMENT_DEPTH} levels."
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:  # json itself recurses: thousands of levels never parse
            raise exceptions.ParseError(too_deep) from None
        if json_depth_exceeds(data, MAX_DOCUMENT_DEPTH):
            raise exceptions.ParseError(too_deep)
        return data
