"""One-click decision links (issue 16): the signed token, and which of a form's buttons get one.

A link is `/work/decide/<token>/`, where the token is django.core.signing's
timestamped, signed JSON (salt SALT, keyed with SECRET_KEY and its fallbacks) of
the task id, the user the mail went to, the decision (a task type the form's
button sends) and a random nonce. Nothing is stored when a link is made: the
signature says it is ours, its timestamp when it expires
(TASKS_DECISION_LINK_MAX_AGE), and the nonce, stored in DecisionLinkUse by the
transaction that acts on it (services.decision_links), makes it single-use.

A button gets a link only if deciding needs no input (`needs_no_input`):
- its form on the task page (forms.schema.schema_form, the same fields My work
  draws) has no required field, and
- the task's payload, sent on unchanged, matches the button's schema (what the
  send checks): a required name the form can't draw, a `minProperties`, a
  value the payload holds that the schema refuses all leave the link out.
A link's decision sends the payload unchanged: optional fields stay as they are
(My work leaves an empty optional answer out the same way).

This module sits below services.notifications (which puts the links in mails)
and so can't import services.form_stages (form_stages -> complete -> dedupe ->
notifications): the caller gives the form's buttons (outgoing types), and the
checks of a person and a task when a link is used are services.decision_links'.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.urls import reverse

from tasks_app.forms.schema import button_label, schema_form
from tasks_app.models import Task
from tasks_app.notify_rules import Item
from tasks_app.schema_rules import payload_errors, schema_for

SALT = "tasks_app.decision-link"  # a token signed for anything else never reads as a decision link
NONCE_BYTES = 16  # 22 URL-safe characters (DecisionLinkUse.nonce holds 64)


class LinkInvalid(Exception):
    """The token is not one of ours, or was changed."""


class LinkExpired(Exception):
    """The token is ours but older than TASKS_DECISION_LINK_MAX_AGE."""


@dataclass(frozen=True)
class Link:
    """What a token says: who may decide which task how; the nonce makes it single-use."""

    task_id: int
    user_id: int
    type: str
    nonce: str


@dataclass(frozen=True)
class Button:
    """A decision a link can make: the type sent and the button's label ("Approve")."""

    type: str
    label: str


@dataclass
class LinkedItem(Item):
    """A task as a mail lists it, with its one-click links: (label, absolute URL) per qualifying button."""

    links: list[tuple[str, str]] = field(default_factory=list)


class _Signer(signing.TimestampSigner):
    """A TimestampSigner that can sign at a given time (tests make links that are already old)."""

    def __init__(self, at: float | None = None) -> None:
        super().__init__(salt=SALT)
        self.at = at

    def timestamp(self) -> str:
        return signing.b62_encode(int(self.at if self.at is not None else time.time()))


def link_token(*, task_id: int, user_id: int, type: str, now: datetime | None = None) -> str:
    """A new signed token for one decision (a fresh nonce each time)."""
    payload = {"t": task_id, "u": user_id, "d": type, "n": secrets.token_urlsafe(NONCE_BYTES)}
    return _Signer(now.timestamp() if now else None).sign_object(payload, compress=True)


def link_url(*, task_id: int, user_id: int, type: str, now: datetime | None = None) -> str:
    """The absolute URL of a new link (TASKS_BASE_URL + the confirmation page's path)."""
    token = link_token(task_id=task_id, user_id=user_id, type=type, now=now)
    return settings.TASKS_BASE_URL.rstrip("/") + reverse("tasks_app:decision-link", args=[token])


def link_read(token: str) -> Link:
    """The link a token holds; LinkInvalid if it is not ours or was changed, LinkExpired if too old."""
    try:
        data = _Signer().unsign_object(token, max_age=settings.TASKS_DECISION_LINK_MAX_AGE)
    except signing.SignatureExpired:
        raise LinkExpired() from None
    except (signing.BadSignature, ValueError):  # ValueError: a signed value that isn't our JSON
        raise LinkInvalid() from None
    if not isinstance(data, dict):
        raise LinkInvalid()
    task_id, user_id, type, nonce = _an_id(data.get("t")), _an_id(data.get("u")), data.get("d"), data.get("n")
    if not (task_id and user_id and isinstance(type, str) and type and isinstance(nonce, str)):
        raise LinkInvalid()
    if not 0 < len(nonce) <= 64:
        raise LinkInvalid()
    return Link(task_id=task_id, user_id=user_id, type=type, nonce=nonce)


def _an_id(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def needs_no_input(task: Task, type: str) -> Button | None:
    """The button for `type` if it can be decided with one click (see the module's docstring), else None."""
    schema = schema_for(task.stage.schemas, type)
    form = schema_form(schema, payload=task.payload, prefix="link")
    if any(f.required for f in form.fields.values()):
        return None
    if schema is not None and payload_errors(schema, task.payload):
        return None
    return Button(type=type, label=button_label(schema, type))


def one_click_buttons(task: Task, outgoing: list[str]) -> list[Button]:
    """The buttons among `outgoing` (the form's, in order) that can be decided with one click."""
    return [b for type in outgoing if (b := needs_no_input(task, type)) is not None]


def user_for_address(address: str) -> Any:
    """The one active user with this email address (compared without case), else None (none, or several)."""
    if not address:
        return None
    users = list(get_user_model().objects.filter(email__iexact=address, is_active=True)[:2])
    return users[0] if len(users) == 1 else None


def with_links(item: Item, task: Task, user: Any, outgoing: list[str], *, now: datetime | None = None) -> LinkedItem:
    """`item` with a link per one-click button of `task` for `user` (a task no longer waiting gets none)."""
    links: list[tuple[str, str]] = []
    if task.status in (Task.Status.PENDING, Task.Status.LOCKED):
        links = [
            (b.label, link_url(task_id=task.pk, user_id=user.pk, type=b.type, now=now))
            for b in one_click_buttons(task, outgoing)
        ]
    return LinkedItem(id=item.id, type=item.type, stage=item.stage, url=item.url, fields=item.fields, links=links)
