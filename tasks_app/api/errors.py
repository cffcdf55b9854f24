"""Turning service errors into HTTP answers: 400 with field messages, 409 for
state conflicts, 413 for over-size payloads and request bodies."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from tasks_app import services
from tasks_app.api.parsers import RequestTooLarge
from tasks_app.services.routing import TOO_LARGE


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The task is not in a state that allows this."
    default_code = "conflict"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Payload too large."
    default_code = TOO_LARGE


def _codes(codes: Any) -> set[str]:
    if isinstance(codes, dict):
        return set().union(*(_codes(v) for v in codes.values())) if codes else set()
    if isinstance(codes, list):
        return set().union(*(_codes(v) for v in codes)) if codes else set()
    return {str(codes)}


def translate(exc: Exception) -> Exception:
    """Map a service or database error to a DRF exception (others pass through)."""
    if isinstance(exc, services.NoRouteError):
        return exceptions.ValidationError({"type": [str(exc)], "accepted_types": exc.accepted})
    if isinstance(exc, services.TaskLockLost | services.TaskStateError):
        return Conflict(str(exc))
    if isinstance(exc, ProtectedError | IntegrityError):
        return Conflict(f"Conflicting change: {exc}")
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        codes = {e.code for errors in getattr(exc, "error_dict", {}).values() for e in errors}
        if TOO_LARGE in codes:
            return PayloadTooLarge(detail)
        return exceptions.ValidationError(detail)
    return exc


def request_error(exc: Exception) -> Exception:
    """Django's refusals of a request's size (SuspiciousOperation) as JSON answers, not its HTML 400 page.

    Raised where a view first reads the body or the query (request.body past
    DATA_UPLOAD_MAX_MEMORY_SIZE, more fields than DATA_UPLOAD_MAX_NUMBER_FIELDS).
    """
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return RequestTooLarge(f"Request body too large; the limit is {limit} bytes.")
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return exceptions.ParseError(str(exc) or "Too many fields.")
    return exc


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    exc = translate(request_error(exc))
    if isinstance(exc, exceptions.ValidationError) and TOO_LARGE in _codes(exc.get_codes()):
        exc = PayloadTooLarge(exc.detail)
    return exception_handler(exc, context)
