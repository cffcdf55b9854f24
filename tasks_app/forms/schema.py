"""Django form fields from a JSON Schema's top-level properties (a form stage's buttons).

Only what people fill in by hand: strings (enum -> a choice), numbers,
integers, booleans; anything else is edited as JSON. The full schema is
still checked by the send service, so a field this mapping can't express
(patterns, nested rules) is enforced there and its message shown.

The schema is whatever is stored, so nothing here trusts its shape: a
keyword of the wrong type (draft-03's `required: true`, a string where a
number belongs, a list where an object belongs) is ignored, and a property
this mapping can't turn into a field is edited as JSON. A page that can't
be drawn would leave the task locked to the person who opened it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from django import forms

# Strings longer than this get a text area.
LONG_TEXT = 200


def _number(value: object) -> int | float | None:
    """A JSON number usable as a bound, else None (booleans and non-finite floats are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _count(value: object) -> int | None:
    """A non-negative integer usable as a length, else None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def label(name: str, spec: dict[str, Any]) -> str:
    return _text(spec.get("title")) or name.replace("_", " ").capitalize()


def button_label(schema: object, type: str) -> str:
    """A button's label: the schema's "title" ("Approve"), else the type."""
    title = schema.get("title") if isinstance(schema, dict) else None
    return _text(title) or type.replace("_", " ").capitalize()


def _typed_field(spec: dict[str, Any], common: dict[str, Any]) -> forms.Field:
    kind = spec.get("type")
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        choices = [(json.dumps(v), str(v)) for v in enum]
        if not common["required"]:
            choices = [("", "—"), *choices]
        if common["initial"] is not None:
            common["initial"] = json.dumps(common["initial"])
        return forms.TypedChoiceField(choices=choices, coerce=json.loads, empty_value=None, **common)
    if kind == "boolean":
        return forms.BooleanField(**{**common, "required": False})
    if kind in ("integer", "number"):
        field = forms.IntegerField if kind == "integer" else forms.FloatField
        # stubs: IntegerField's bounds may be floats ("minimum": 1.5), as Django's validators compare any number.
        return field(min_value=_number(spec.get("minimum")), max_value=_number(spec.get("maximum")), **common)  # type: ignore[arg-type]
    if kind == "string":
        max_length = _count(spec.get("maxLength"))
        long = (max_length or 0) > LONG_TEXT or spec.get("format") == "textarea"
        return forms.CharField(
            max_length=max_length,
            min_length=_count(spec.get("minLength")),
            widget=forms.Textarea(attrs={"rows": 3}) if long else forms.TextInput,
            strip=True,
            **common,
        )
    return forms.JSONField(widget=forms.Textarea(attrs={"rows": 3}), **common)


def _field(name: str, spec: dict[str, Any], required: bool, initial: Any) -> forms.Field:
    common: dict[str, Any] = {
        "label": label(name, spec),
        "help_text": _text(spec.get("description")),
        "required": required,
        "initial": initial if initial is not None else spec.get("default"),
    }
    try:
        return _typed_field(spec, dict(common))
    except (TypeError, ValueError):
        # Keywords this mapping can't use: the person edits the value as JSON, the send's schema check decides.
        return forms.JSONField(widget=forms.Textarea(attrs={"rows": 3}), **common)


def _required(schema: dict[str, Any]) -> set[str]:
    names = schema.get("required")
    # A list of names from draft-04 on; draft-03's `required: true` (or any other shape) requires nothing here.
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def schema_form(schema: object, *, data: Any = None, payload: object, prefix: str) -> forms.Form:
    """A form with one field per property of `schema`, filled from the task's payload."""
    form = forms.Form(data=data, prefix=prefix)
    if not isinstance(schema, dict):
        return form
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return form
    values = payload if isinstance(payload, dict) else {}
    required = _required(schema)
    for name, spec in properties.items():
        if isinstance(spec, dict):
            form.fields[name] = _field(name, spec, name in required, values.get(name))
    return form


def form_fields(form: forms.Form) -> dict[str, Any]:
    """The payload fields a valid form sets: empty optional answers are left out, not sent as ""."""
    return {
        name: value
        for name, value in form.cleaned_data.items()
        if (value is not None and value != "") or isinstance(form.fields[name], forms.BooleanField)
    }
