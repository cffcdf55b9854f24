"""Stage.notify: who is told when a task arrives at a form stage (issue 16), and its validation.

The value is a JSON object with up to three keys, each optional:

    {"groups": true,                      # the active members of the stage's groups with an email address
     "emails_from": "/requester/email",   # a JSON pointer: an address, or a list of them, in the payload
     "webhook": "https://hooks.example/x"} # an outbound webhook (https only)

{} (the default) notifies nobody. Only form stages notify (Stage.clean).

An address read from a payload is untrusted data: at most MAX_PAYLOAD_ADDRESSES
are taken, each must be a valid email address of at most MAX_ADDRESS_LENGTH
characters, and anything else there is skipped (services.notifications logs
it). A payload never names a URL the server fetches: the webhook is the
stage's, set by whoever may change the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator, URLValidator

from tasks_app.dedupe_keys import MISSING, pointer_problem, resolve

NOTIFY_KEYS = ("groups", "emails_from", "webhook")
MAX_WEBHOOK_LENGTH = 2000
MAX_PAYLOAD_ADDRESSES = 20
MAX_ADDRESS_LENGTH = 254
# Stage.notify_digest, in minutes: a day.
MAX_NOTIFY_DIGEST = 24 * 60

_email = EmailValidator()
_https = URLValidator(schemes=["https"])


def notify_problems(value: object) -> list[str]:
    """Every problem of a Stage.notify value ([] if none)."""
    if not isinstance(value, dict):
        return [f'notify must be an object like {{"groups": true}}, not {type(value).__name__}']
    problems = [
        f"notify has an unknown key {str(k)[:40]!r} (known: {', '.join(NOTIFY_KEYS)})"
        for k in value
        if k not in NOTIFY_KEYS
    ]
    if "groups" in value and not isinstance(value["groups"], bool):
        problems.append("notify.groups must be true or false")
    if "emails_from" in value:
        pointer = value["emails_from"]
        if not isinstance(pointer, str) or pointer == "":
            problems.append("notify.emails_from must be a JSON pointer into the payload, like '/requester_email'")
        elif why := pointer_problem(pointer):
            problems.append(f"notify.emails_from: {why}")
    if "webhook" in value:
        url = value["webhook"]
        if not isinstance(url, str) or len(url) > MAX_WEBHOOK_LENGTH:
            problems.append(f"notify.webhook must be an https URL of at most {MAX_WEBHOOK_LENGTH} characters")
        else:
            try:
                _https(url)
            except ValidationError:
                problems.append("notify.webhook must be an https URL, like https://hooks.example.com/...")
    return problems


def validate_notify(value: object) -> None:
    problems = notify_problems(value)
    if problems:
        raise ValidationError(problems, code="bad_notify")


def payload_addresses(notify: dict[str, Any], payload: object) -> tuple[list[str], int]:
    """The valid addresses at notify's emails_from in `payload` (lower-cased domain, deduplicated, bounded),
    and how many values there were skipped as not an address."""
    pointer = notify.get("emails_from")
    if not pointer:
        return [], 0
    found = resolve(payload, pointer)
    if found is MISSING or found is None:
        return [], 0
    values = found if isinstance(found, list) else [found]
    good: list[str] = []
    skipped = max(0, len(values) - MAX_PAYLOAD_ADDRESSES)
    for value in values[:MAX_PAYLOAD_ADDRESSES]:
        if not isinstance(value, str) or len(value) > MAX_ADDRESS_LENGTH or any(c in value for c in "\r\n\x00,;<>"):
            skipped += 1
            continue
        try:
            _email(value)
        except ValidationError:
            skipped += 1
            continue
        local, _, domain = value.strip().rpartition("@")
        address = f"{local}@{domain.lower()}"
        if address not in good:
            good.append(address)
    return good, skipped


@dataclass
class Item:
    """One task as a notification (mail or webhook) lists it: services.notifications builds them."""

    id: int
    type: str
    stage: str
    url: str
    fields: list[tuple[str, str]]  # (title, value): only the payload fields the schema titles
