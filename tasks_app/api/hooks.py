"""POST /hooks/<slug>/: an outside system sends a task out of a hook stage.

No user account: the request proves itself with the stage's secret, either
as `X-Hook-Token: <secret>` or, better, signed (Stripe style) with
`X-Hook-Timestamp: <unix seconds>` and `X-Hook-Signature: sha256=<hex
HMAC-SHA256, keyed with the secret, of "<timestamp>." + the raw body>`.
A signed request is refused when its timestamp is more than
TASKS_HOOK_TOLERANCE seconds away from now, and when its signature was
already accepted (a HookReceipt row, written in the send's transaction):
a captured request can't be replayed, now or later. The JSON body (an
object) becomes the payload; `?type=` names the task type (default
"webhook"); `?delay=` (seconds) holds the task back that long; other query
parameters are added under "query".
A stage handler, if set, may transform (body, query) into (type, payload)
(the call is part of the handler contract, tasks_app.services.handlers);
what it raises is logged under a request id and never shown to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import (
    APIException,
    AuthenticationFailed,
    NotFound,
    ParseError,
    UnsupportedMediaType,
    ValidationError,
)
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks_app import services
from tasks_app.api.errors import translate
from tasks_app.api.parsers import BoundedJSONParser
from tasks_app.api.throttles import SharedRateThrottle
from tasks_app.limits import MAX_DELAY
from tasks_app.models import HookReceipt, Stage
from tasks_app.services.handlers import HandlerImportError, call_transform, resolve_handler

DEFAULT_TYPE = "webhook"

logger = logging.getLogger("tasks_app.hooks")


class HookThrottle(SharedRateThrottle):
    # Per stage and client (client_ip: X-Forwarded-For only from trusted proxies), counted across processes.
    scope = "hook"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {
            "scope": self.scope,
            "ident": f"{view.kwargs.get('slug')}:{self.get_ident(request)}",
        }


# What a signed request's headers may hold, checked before any arithmetic or comparison:
# ASCII digits only ("²".isdigit() is True, int("²") raises; thousands of digits overflow
# float or exceed int()'s limit), and a lowercase hex digest (compare_digest raises
# TypeError on non-ASCII str). 12 digits reach the year 33658.
TIMESTAMP = re.compile(r"[0-9]{1,12}")
SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")


@sensitive_variables()  # a traceback page must never show the secret (nor the key in hmac's frames)
def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The X-Hook-Signature value for a body sent at `timestamp` (what senders compute)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@sensitive_variables()
def check_secret(request: Request, secret: str, body: bytes) -> str:
    """Raise AuthenticationFailed unless the request carries the secret; returns the signature digest or ''.

    Every malformed header is a 401 like a wrong one: nothing a caller sends reaches int() or compare_digest unchecked.
    """
    token = request.headers.get("X-Hook-Token", "")
    if token:
        if secret and hmac.compare_digest(token.encode(), secret.encode()):
            return ""
        raise AuthenticationFailed("Wrong hook secret (X-Hook-Token).")
    signature = request.headers.get("X-Hook-Signature", "").lower()
    if not signature:
        raise AuthenticationFailed("Missing hook secret: send X-Hook-Token, or X-Hook-Timestamp and X-Hook-Signature.")
    timestamp = request.headers.get("X-Hook-Timestamp", "")
    if not TIMESTAMP.fullmatch(timestamp):
        raise AuthenticationFailed("A signed hook request needs X-Hook-Timestamp: unix seconds, in digits 0-9.")
    tolerance = float(settings.TASKS_HOOK_TOLERANCE)
    if abs(time.time() - int(timestamp)) > tolerance:
        raise AuthenticationFailed(f"X-Hook-Timestamp is more than {tolerance:g}s from the server's clock.")
    if not SIGNATURE.fullmatch(signature):
        raise AuthenticationFailed("X-Hook-Signature must be sha256=<64 hex digits>.")
    if not (secret and hmac.compare_digest(signature.encode(), sign(secret, timestamp, body).encode())):
        raise AuthenticationFailed("Wrong X-Hook-Signature (sha256 HMAC of '<timestamp>.<body>').")
    return signature[len("sha256=") :]


class HookView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes = [HookThrottle]
    # JSON only: form and multipart bodies made payloads of lists ({"a": ["1"]}); they are a 415 now.
    parser_classes = [BoundedJSONParser]

    def get_authenticate_header(self, request: Request) -> str:
        # Makes DRF answer a wrong or missing secret with 401 (not 403).
        return 'X-Hook-Token realm="hooks"'

    @extend_schema(
        summary="Send a task out of a hook stage",
        description=(
            "No login: the request carries the stage's secret (X-Hook-Token), or is signed with it "
            "(X-Hook-Timestamp and X-Hook-Signature). The JSON object body becomes the payload."
        ),
        tags=["hooks"],
        auth=[],
        request=OpenApiTypes.OBJECT,
        parameters=[
            OpenApiParameter("type", str, description=f"Task type (default {DEFAULT_TYPE!r})."),
            OpenApiParameter(
                "delay", float, description=f"Seconds before the task may run (0 to {MAX_DELAY}); default: at once."
            ),
            OpenApiParameter("X-Hook-Token", str, OpenApiParameter.HEADER, description="The stage's secret."),
            OpenApiParameter("X-Hook-Timestamp", str, OpenApiParameter.HEADER, description="Unix seconds (signed)."),
            OpenApiParameter(
                "X-Hook-Signature", str, OpenApiParameter.HEADER, description='sha256=<HMAC of "<timestamp>.<body>">'
            ),
        ],
        responses={
            202: inline_serializer(
                "HookAccepted",
                {
                    "tasks": serializers.ListField(child=serializers.IntegerField()),
                    # Dedupe (issue 15): those of `tasks` that were live already with the payload's dedupe key.
                    "deduplicated": serializers.ListField(child=serializers.IntegerField()),
                },
            ),
            401: OpenApiResponse(description="No secret, a wrong one, a stale timestamp or a replayed signature."),
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        stage = Stage.objects.filter(slug=slug, kind=Stage.Kind.HOOK).first()
        if stage is None:
            raise NotFound(f"No hook stage '{slug}'.")
        body = request.body  # read before request.data, for the signature (over the limit: a JSON 413, api.errors)
        signature = check_secret(request, stage.hook_secret, body)
        if request.content_type and self.get_content_negotiator().select_parser(request, self.get_parsers()) is None:
            # DRF would parse an empty form body into an empty QueryDict rather than refuse it.
            raise UnsupportedMediaType(request.content_type)
        data = request.data
        if not isinstance(data, dict):
            raise ParseError("The body must be a JSON object.")
        query = {k: v for k, v in request.query_params.dict().items() if k not in ("type", "delay")}
        task_type = request.query_params.get("type", DEFAULT_TYPE)
        delay = hook_delay(request.query_params.get("delay"))
        payload: Any = {**data, "query": query} if query else dict(data)
        if stage.handler.strip():
            task_type, payload = run_transform(stage, data, query, task_type)
        try:
            with transaction.atomic():
                if signature:
                    remember(stage, signature)
                created = services.task_send(
                    stage=stage, type=task_type, payload=payload, actor=f"hook:{slug}", delay=delay
                )
        except AuthenticationFailed:
            raise
        except Exception as exc:
            raise translate(exc) from exc
        return Response(
            {"tasks": [t.pk for t in created], "deduplicated": [t.pk for t in created if t.deduplicated]},
            status=status.HTTP_202_ACCEPTED,
        )


def hook_delay(text: str | None) -> float | None:
    """?delay=: seconds, 0 to MAX_DELAY (a year); a 400 naming the parameter for anything else."""
    if text is None or text == "":
        return None
    try:
        delay = float(text)
    except ValueError:
        delay = math.nan
    if not (math.isfinite(delay) and 0 <= delay <= MAX_DELAY):
        raise ValidationError({"delay": [f"Seconds from 0 to {MAX_DELAY} (a year), not {text[:40]!r}."]})
    return delay


def remember(stage: Stage, signature: str) -> None:
    """Record an accepted signature (refused if it was seen) and forget expired ones.

    Receipts older than twice the tolerance can go: their timestamps are
    refused anyway.
    """
    now = timezone.now()
    horizon = now - timedelta(seconds=2 * float(settings.TASKS_HOOK_TOLERANCE))
    try:
        with transaction.atomic():
            HookReceipt.objects.create(stage=stage, signature=signature, received_at=now)
    except IntegrityError as exc:
        raise AuthenticationFailed("This signature was already used: a replayed request.") from exc
    HookReceipt.objects.filter(stage=stage, received_at__lt=horizon).delete()


# -- the stage's transform (user code) -----------------------------------------------------------


class TransformFailed(APIException):
    """The transform raised (or returned something unusable); the details are in the log, not here."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    default_code = "transform_failed"
    message = "The hook's handler could not process this request; the server log has the details under request_id."

    def __init__(self, request_id: str) -> None:
        super().__init__({"detail": self.message, "request_id": request_id})


class TransformUnavailable(TransformFailed):
    """The stored handler may not run (TASKS_HANDLER_MODULES) or doesn't import: nothing ran."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "transform_unavailable"
    message = "This hook cannot take requests now (its handler cannot run); the server log has the details."


def run_transform(stage: Stage, data: dict[str, Any], query: dict[str, str], task_type: str) -> tuple[Any, Any]:
    """The stage's transform of (body, query) into (type, payload), or a bare payload keeping `task_type`.

    Its errors are never echoed: they may carry anything the code can read
    (files, the environment). The caller gets a fixed message and a request
    id; the log gets the id with the traceback.
    """
    request_id = uuid.uuid4().hex
    context = {"stage": stage.slug, "request_id": request_id}
    try:
        transform = resolve_handler(stage)
    except HandlerImportError as exc:
        logger.error("hook %s: request %s refused: %s", stage.slug, request_id, exc, extra=context)
        raise TransformUnavailable(request_id) from exc
    try:
        return call_transform(transform, data, query, task_type)
    except Exception as exc:  # SystemExit and the like come out as HandlerAborted; a bad result as TypeError
        logger.error("hook %s: transform failed (request %s)", stage.slug, request_id, exc_info=exc, extra=context)
        raise TransformFailed(request_id) from exc
