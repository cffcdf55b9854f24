"""POST /hooks/<slug>/: an outside system sends a task out of a hook stage.

No user account: the request proves itself with the stage's secret, either
as `X-Hook-Token: <secret>` or as `X-Hook-Signature: sha256=<hex HMAC-SHA256
of the raw body keyed with the secret>` (what GitHub and Stripe style senders
do). The JSON body (an object) becomes the payload; `?type=` names the task
type (default "webhook"); other query parameters are added under "query".
A stage handler, if set, may transform (body, query) into (type, payload).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from django.utils.module_loading import import_string
from rest_framework import status
from rest_framework.exceptions import AuthenticationFailed, NotFound, ParseError, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from tasks_app import services
from tasks_app.api.errors import translate
from tasks_app.models import Stage

DEFAULT_TYPE = "webhook"


class HookThrottle(SimpleRateThrottle):
    scope = "hook"

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {
            "scope": self.scope,
            "ident": f"{view.kwargs.get('slug')}:{self.get_ident(request)}",
        }


def authentic(request: Request, secret: str, body: bytes) -> bool:
    token = request.headers.get("X-Hook-Token", "")
    if token:
        return hmac.compare_digest(token.encode(), secret.encode())
    signature = request.headers.get("X-Hook-Signature", "")
    if signature.startswith("sha256="):
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(signature[len("sha256=") :].lower(), expected)
    return False


class HookView(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes = [HookThrottle]

    def get_authenticate_header(self, request: Request) -> str:
        # Makes DRF answer a wrong or missing secret with 401 (not 403).
        return 'X-Hook-Token realm="hooks"'

    def post(self, request: Request, slug: str) -> Response:
        stage = Stage.objects.filter(slug=slug, kind=Stage.Kind.HOOK).first()
        if stage is None:
            raise NotFound(f"No hook stage '{slug}'.")
        body = request.body  # read before request.data, for the signature
        if not stage.hook_secret or not authentic(request, stage.hook_secret, body):
            raise AuthenticationFailed("Missing or wrong hook secret (X-Hook-Token or X-Hook-Signature).")
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
            created = services.task_send(stage=stage, type=task_type, payload=payload, actor=f"hook:{slug}")
        except Exception as exc:
            raise translate(exc) from exc
        return Response({"tasks": [t.pk for t in created]}, status=status.HTTP_202_ACCEPTED)
