"""A small JSON editor for the admin: monospace, live validation, a Format button."""

from __future__ import annotations

from typing import Any

from django import forms


class JSONEditorWidget(forms.Textarea):
    template_name = "tasks_app/widgets/json_editor.html"

    class Media:
        css = {"all": ["tasks_app/json_editor.css"]}
        js = ["tasks_app/json_editor.js"]

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs={"rows": 14, "cols": 80, "class": "json-editor", "spellcheck": "false", **(attrs or {})})


class SecretInput(forms.TextInput):
    """A secret shown in clear (to those allowed to change it) with a Copy button; the script is a static file."""

    template_name = "tasks_app/widgets/secret_input.html"

    class Media:
        js = ["tasks_app/admin_copy.js"]

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs={"autocomplete": "off", "spellcheck": "false", "size": 50, **(attrs or {})})
