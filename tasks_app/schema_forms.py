"""Django form fields from a JSON Schema's top-level properties (a form stage's buttons).

Only what people fill in by hand: strings (enum -> a choice), numbers,
integers, booleans; anything else is edited as JSON. The full schema is
still checked by the send service, so a field this mapping can't express
(patterns, nested rules) is enforced there and its message shown.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms


def _field(name: str, spec: dict[str, Any], required: bool, initial: Any) -> forms.Field:
    kind = spec.get("type")
    common: dict[str, Any] = {
        "label": spec.get("title") or name.replace("_", " ").capitalize(),
        "help_text": spec.get("description", ""),
        "required": required,
        "initial": initial if initial is not None else spec.get("default"),
    }
    if "enum" in spec:
        choices = [(json.dumps(v), str(v)) for v in spec["enum"]]
        if not required:
            choices = [("", "—"), *choices]
        if common["initial"] is not None:
            common["initial"] = json.dumps(common["initial"])
        return forms.TypedChoiceField(choices=choices, coerce=json.loads, empty_value=None, **common)
    if kind == "boolean":
        return forms.BooleanField(**{**common, "required": False})
    if kind == "integer":
        return forms.IntegerField(min_value=spec.get("minimum"), max_value=spec.get("maximum"), **common)
    if kind == "number":
        return forms.FloatField(min_value=spec.get("minimum"), max_value=spec.get("maximum"), **common)
    if kind == "string":
        long = spec.get("maxLength", 0) > 200 or spec.get("format") == "textarea"
        return forms.CharField(
            max_length=spec.get("maxLength"),
            min_length=spec.get("minLength"),
            widget=forms.Textarea(attrs={"rows": 3}) if long else forms.TextInput,
            strip=True,
            **common,
        )
    return forms.JSONField(widget=forms.Textarea(attrs={"rows": 3}), **common)


def schema_form(schema: dict[str, Any] | None, *, data: Any = None, payload: dict[str, Any], prefix: str) -> forms.Form:
    """A form with one field per property of `schema`, filled from the task's payload."""
    form = forms.Form(data=data, prefix=prefix)
    if not schema:
        return form
    required = set(schema.get("required", []))
    for name, spec in (schema.get("properties") or {}).items():
        if isinstance(spec, dict):
            form.fields[name] = _field(name, spec, name in required, payload.get(name))
    return form


def form_fields(form: forms.Form) -> dict[str, Any]:
    """The payload fields a valid form sets: empty optional answers are left out, not sent as ""."""
    return {
        name: value
        for name, value in form.cleaned_data.items()
        if (value is not None and value != "") or isinstance(form.fields[name], forms.BooleanField)
    }
