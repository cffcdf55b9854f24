"""Rendered pages read like a browser: the one HTML parser (Page), the pages' URLs and messages."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from django.http import HttpResponse, QueryDict
from django.test import Client

LOGIN_URL = "/accounts/login/"
LOGOUT_URL = "/accounts/logout/"
LIST_URL = "/tasks/"
TASK_URL = "/admin/tasks_app/task/"
STAGE_URL = "/admin/tasks_app/stage/"
TRANSITION_URL = "/admin/tasks_app/transition/"
SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"


class Page(HTMLParser):
    """A rendered page: its forms (and what each would submit), links, inputs, text and task table."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict[str, str]] = []  # method, action, id
        self.links: list[tuple[str, str]] = []  # (href, rel)
        self.inputs: list[dict[str, str]] = []
        self.headers: list[str] = []  # the text of every <th>, in order
        self._text: list[str] = []
        # What a browser submits, per <form id=...>: name -> values.
        self._fields: dict[str, dict[str, list[str]]] = {}
        self._form: str | None = None  # the id of the form being read
        self._textarea: tuple[str, str] | None = None  # (form id, name)
        self._textarea_text: list[str] = []
        self._select: tuple[str, str] | None = None  # (form id, name)
        self._options: list[tuple[str, bool]] = []  # (value, selected)
        # Task rows (<tr id="task-N">) as cell texts; paired with the headers when asked (rows).
        self._rows: list[tuple[int, list[str]]] = []
        self._th: list[str] | None = None
        self._row: int | None = None
        self._cells: list[str] = []
        self._cell: list[str] | None = None
        self.feed(html)
        self.close()

    # -- what the page shows ---------------------------------------------------------

    @property
    def text(self) -> str:
        return " ".join("".join(self._text).split())

    def post_actions(self) -> list[str]:
        return [f["action"] for f in self.forms if f["method"] == "post"]

    def hrefs(self) -> list[str]:
        return [href for href, _ in self.links]

    def csrf_token(self) -> str:
        return next(i["value"] for i in self.inputs if i.get("name") == "csrfmiddlewaretoken")

    def submitted(self, form_id: str) -> dict[str, list[str]]:
        """What a browser would submit from <form id=form_id>: name -> values."""
        return self._fields.get(form_id, {})

    @property
    def rows(self) -> dict[int, dict[str, str]]:
        """Per task id, the text of each column of the task table."""
        return {pk: dict(zip(self.headers, cells, strict=True)) for pk, cells in self._rows}

    @property
    def order(self) -> list[int]:
        """The task ids of the table, top to bottom."""
        return [pk for pk, _ in self._rows]

    # -- parsing -----------------------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"method": a.get("method", "get").lower(), "action": a.get("action", ""), **a})
            if "id" in a:
                self._form = a["id"]
        elif tag == "a" and "href" in a:
            self.links.append((a["href"], a.get("rel", "")))
        elif tag in ("input", "textarea", "select"):
            self.inputs.append({"tag": tag, **a})
        self._start_field(tag, a)
        self._start_cell(tag, a)

    def handle_data(self, data: str) -> None:
        self._text.append(data)
        if self._textarea is not None:
            self._textarea_text.append(data)
        if self._th is not None:
            self._th.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._end_field(tag)
        self._end_cell(tag)

    def _start_field(self, tag: str, a: dict[str, str]) -> None:
        if self._form is None or "name" not in a:
            if tag == "option" and self._select is not None:
                self._options.append((a.get("value", ""), "selected" in a))
            return
        name = a["name"]
        if tag == "input":
            kind = a.get("type", "text")
            if kind in ("submit", "button", "file", "image", "reset"):
                return
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            self._submit(self._form, name, [a.get("value", "on" if kind == "checkbox" else "")])
        elif tag == "textarea":
            self._textarea, self._textarea_text = (self._form, name), []
        elif tag == "select":
            self._select, self._options = (self._form, name), []

    def _end_field(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "textarea" and self._textarea is not None:
            # Browsers drop the one newline that follows <textarea>.
            self._submit(*self._textarea, ["".join(self._textarea_text).removeprefix("\n")])
            self._textarea = None
        elif tag == "select" and self._select is not None:
            chosen = [v for v, selected in self._options if selected] or [v for v, _ in self._options[:1]]
            self._submit(*self._select, chosen)
            self._select = None

    def _submit(self, form: str, name: str, values: list[str]) -> None:
        self._fields.setdefault(form, {}).setdefault(name, []).extend(values)

    def _start_cell(self, tag: str, a: dict[str, str]) -> None:
        if tag == "th":
            self._th = []
        elif tag == "tr" and (row_id := a.get("id", "")).startswith("task-") and row_id[5:].isdigit():
            self._row, self._cells = int(row_id[5:]), []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def _end_cell(self, tag: str) -> None:
        if tag == "th" and self._th is not None:
            self.headers.append(" ".join("".join(self._th).split()))
            self._th = None
        elif tag == "td" and self._cell is not None:
            self._cells.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._rows.append((self._row, self._cells))
            self._row = None


def page(response: HttpResponse) -> Page:
    return Page(response.content.decode())


def form_fields(client: Client, url: str, form_id: str = "task_form") -> dict[str, Any]:
    """GET `url` and return what a browser would submit from its <form id=form_id>."""
    response = client.get(url)
    assert response.status_code == 200
    data = page(response).submitted(form_id)
    assert data, f"no <form id={form_id}> fields on {url}"
    # A <select> with no options (an empty autocomplete) submits nothing; a name given once is one value.
    return {name: values if len(values) > 1 else values[0] for name, values in data.items() if values}


def shown_messages(response: HttpResponse) -> list[tuple[str, str]]:
    """The messages a followed response displayed, as (level tag, text)."""
    return [(m.level_tag, str(m)) for m in response.context["messages"]]


def login_redirect(path: str) -> str:
    """Where the login wall sends a request for `path`."""
    query = QueryDict(mutable=True)
    query["next"] = path
    return f"{LOGIN_URL}?{query.urlencode(safe='/')}"
