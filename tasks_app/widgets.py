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
