"""Form fields for JSON documents that people paste: bounded nesting, never a RecursionError.

Django's forms.JSONField catches only JSONDecodeError, so a few thousand
nested brackets in the admin's payload or schemas box raised RecursionError
(a 500), and a document a little shallower reached code that recurses over it.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput

from tasks_app.limits import MAX_DOCUMENT_DEPTH, json_depth_exceeds

TOO_DEEP = f"Nested deeper than {MAX_DOCUMENT_DEPTH} levels."


class JSONDocumentField(forms.JSONField):
    def to_python(self, value: Any) -> Any:
        try:
            converted = super().to_python(value)
        except RecursionError:  # json recurses: thousands of levels never parse
            raise ValidationError(TOO_DEEP, code="too_deep") from None
        if json_depth_exceeds(converted, MAX_DOCUMENT_DEPTH):
            raise ValidationError(TOO_DEEP, code="too_deep")
        return converted

    def bound_data(self, data: Any, initial: Any) -> Any:
        # Redisplaying the refused text must not parse it again into a RecursionError.
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return InvalidJSONInput(data)
