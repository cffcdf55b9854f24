"""Outbound webhooks of Stage.notify (issue 16): a Slack/Teams-compatible JSON POST, signed, to public hosts only.

The body is {"text": ..., "tasks": [...]}: Slack's and Teams' incoming
webhooks show `text` (a line per task with its My work link); other receivers
read `tasks` (id, type, stage, url and the schema-titled fields: nothing else
from the payload, as in a mail).

Signed as the inbound hooks are checked (api/hooks.py): X-Tasks-Timestamp
(Unix seconds) and X-Tasks-Signature: sha256=<HMAC-SHA256 of
"<timestamp>." + body, keyed with TASKS_WEBHOOK_SECRET>. Without a secret the
attempt fails (and is retried): an unsigned notification is never sent.

Where it may go: the URL is the stage's (never a payload's), https only. Its
host is resolved and every address must be global (not private, loopback,
link-local, multicast, reserved...): one that is not refuses the request
before any connection. The connection then goes to the checked address (a
second lookup can't swap in another: DNS rebinding), with TLS verified for
the URL's host name. Redirects are never followed (http.client follows
none): a 3xx is a failed attempt. WEBHOOK_TIMEOUT bounds the connect and
each read.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings

from tasks_app.notify_rules import Item

if TYPE_CHECKING:
    from tasks_app.models import Stage

WEBHOOK_TIMEOUT = 5.0  # seconds
MAX_RESPONSE_BYTES = 64 * 1024


class WebhookRefused(Exception):
    """The webhook's URL may not be called (not https, or a host that is not public)."""


def webhook_body(stage: Stage, items: list[Item], *, reminder: bool = False) -> bytes:
    lines = [f"{len(items)} task(s) wait at {stage.name}:" if len(items) != 1 else f"A task waits at {stage.name}:"]
    if reminder:  # services.reminders: the tasks still wait, nobody has taken them
        lines[0] = "Reminder: " + lines[0].replace(" wait", " still wait")
    lines += [f"<{item.url}|Task #{item.id}> ({item.type})" for item in items[:50]]
    if len(items) > 50:
        lines.append(f"...and {len(items) - 50} more.")
    tasks = [{"id": i.id, "type": i.type, "stage": i.stage, "url": i.url, "fields": dict(i.fields)} for i in items[:50]]
    kind = "reminder" if reminder else "arrival"
    return json.dumps({"text": "\n".join(lines), "tasks": tasks, "count": len(items), "kind": kind}).encode()


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def public_address(host: str, port: int) -> str:
    """An address of `host` to connect to, if every address it resolves to is global; else WebhookRefused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookRefused(f"cannot resolve {host!r}: {exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses:
        raise WebhookRefused(f"{host!r} has no address")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise WebhookRefused(f"{host!r} resolves to {address}, which is not a public address")
    return addresses[0]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address, with SNI and certificate checks for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=WEBHOOK_TIMEOUT, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), WEBHOOK_TIMEOUT)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def tls_context() -> ssl.SSLContext:
    """Certificates checked against the system's CAs, for the URL's host name (tests trust their own)."""
    return ssl.create_default_context()


def webhook_post(
    url: str, stage: Stage, items: list[Item], *, now: float | None = None, reminder: bool = False
) -> None:
    """POST the notification to `url`; raises on anything but a 2xx answer (the drain retries)."""
    secret: str = settings.TASKS_WEBHOOK_SECRET
    if not secret:
        raise WebhookRefused("TASKS_WEBHOOK_SECRET is not set: outbound webhooks are always signed")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise WebhookRefused("a webhook URL must be https://host/...")
    port = parts.port or 443
    address = public_address(parts.hostname, port)
    body = webhook_body(stage, items, reminder=reminder)
    timestamp = int(now if now is not None else time.time())
    headers: dict[str, Any] = {
        "Content-Type": "application/json",
        "User-Agent": "workflowsite-notifications",
        "X-Tasks-Timestamp": str(timestamp),
        "X-Tasks-Signature": webhook_signature(secret, timestamp, body),
    }
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = _PinnedHTTPSConnection(parts.hostname, port, address, tls_context())
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        if not 200 <= response.status < 300:
            raise RuntimeError(f"webhook answered HTTP {response.status} (redirects are not followed)")
    finally:
        conn.close()
