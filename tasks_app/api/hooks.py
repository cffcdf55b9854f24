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
"webhook"); other query parameters are added under "query".
A stage handler, if set, may transform (body, query) into (type, payload).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import AuthenticationFailed, NotFound, ParseError, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks_app import services
from tasks_app.api.errors import translate
from tasks_app.api.throttles import SharedRateThrottle
from tasks_app.models import HookReceipt, Stage

DEFAULT_TYPE = "webhook"


class HookThrottle(SharedRateThrottle):
    # Per stage and client (client_ip: X-Forwarded-For only from trusted proxies), counted across processes.
    scope = "hook"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {
            "scope": self.scope,
            "ident": f"{view.kwargs.get('slug')}:{self.get_ident(request)}",
        }


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The X-Hook-Signature value for a body sent at `timestamp` (what senders compute)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def check_secret(request: Request, secret: str, body: bytes) -> str:
    """Raise AuthenticationFailed unless the request carries the secret; returns the signature digest or ''."""
    token = request.headers.get("X-Hook-Token", "")
    if token:
        if secret and hmac.compare_digest(token.encode(), secret.encode()):
            return ""
        raise AuthenticationFailed("Wrong hook secret (X-Hook-Token).")
    signature = request.headers.get("X-Hook-Signature", "").lower()
    if not signature:
        raise AuthenticationFailed("Missing hook secret: send X-Hook-Token, or X-Hook-Timestamp and X-Hook-Signature.")
    timestamp = request.headers.get("X-Hook-Timestamp", "")
    if not timestamp.isdigit():
        raise AuthenticationFailed("A signed hook request needs X-Hook-Timestamp (unix seconds).")
    tolerance = float(settings.TASKS_HOOK_TOLERANCE)
    if abs(time.time() - int(timestamp)) > tolerance:
        raise AuthenticationFailed(f"X-Hook-Timestamp is more than {tolerance:g}s from the server's clock.")
    if not (secret and hmac.compare_digest(signature, sign(secret, timestamp, body))):
        raise AuthenticationFailed("Wrong X-Hook-Signature (sha256 HMAC of '<timestamp>.<body>').")
    return signature[len("sha256=") :]


class HookView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes = [HookThrottle]

    def get_authenticate_header(self, request: Request) -> str:
        # Makes DRF answer a wrong or missing secret with 401 (not 403).
        return 'X-Hook-Token realm="hooks"'

    @extend_schema(
        summary="Send a task out of a hook stage",
        auth=[],
        request=OpenApiTypes.OBJECT,
        parameters=[
            OpenApiParameter("type", str, description=f"Task type (default {DEFAULT_TYPE!r})."),
            OpenApiParameter("X-Hook-Token", str, OpenApiParameter.HEADER, description="The stage's secret."),
            OpenApiParameter("X-Hook-Timestamp", str, OpenApiParameter.HEADER, description="Unix seconds (signed)."),
            OpenApiParameter(
                "X-Hook-Signature", str, OpenApiParameter.HEADER, description='sha256=<HMAC of "<timestamp>.<body>">'
            ),
        ],
        responses={
            202: inline_serializer("HookAccepted", {"tasks": serializers.ListField(child=serializers.IntegerField())})
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        stage = Stage.objects.filter(slug=slug, kind=Stage.Kind.HOOK).first()
        if stage is None:
            raise NotFound(f"No hook stage '{slug}'.")
        body = request.body  # read before request.data, for the signature
        signature = check_secret(request, stage.hook_secret, body)
        data = request.data
        if not isinstance(data, dict):
            raise ParseError("The body must be a JSON object.")
        query = {k: v for k, v in request.query_params.items() if k != "type"}
        task_type = request.query_params.get("type", DEFAULT_TYPE)
        payload: Any = {**data, "query": query} if query else dict(data)
        if stage.handler.strip():
            try:
                result = import_string(stage.handler.strip())(data, query)
            except Exception as exc:  # the transform is user code: report, don't crash
                raise ValidationError(
                    {"body": [f"The hook's handler refused it: {type(exc).__name__}: {exc}"]}
                ) from exc
            task_type, payload = result if isinstance(result, tuple) else (task_type, result)
        try:
            with transaction.atomic():
                if signature:
                    remember(stage, signature)
                created = services.task_send(stage=stage, type=task_type, payload=payload, actor=f"hook:{slug}")
        except AuthenticationFailed:
            raise
        except Exception as exc:
            raise translate(exc) from exc
        return Response({"tasks": [t.pk for t in created]}, status=status.HTTP_202_ACCEPTED)


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
