"""Pages stay small whatever the payload (issue 11, section 5).

One stored payload of 100 arrays nested 300 deep (60 KB) made the task list
36 MB and the task's page 18 MB: every row carried the indented JSON twice,
and indentation grows with the depth. Each page now shows a bounded head
of the payload, escaped, and the whole document is served as JSON by
/tasks/<id>/payload.json. The payloads are stored directly (Task.objects),
as any stored document may be whatever the entry checks of the day allowed.
"""

from __future__ import annotations

import json
import re
from html import unescape
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.template.defaultfilters import filesizeformat
from django.test import Client

from tasks_app.jsonpreview import iter_json, json_head
from tasks_app.models import Stage, Task
from tasks_app.selectors.tasks import PAGE_SIZE
from tasks_app.services import task_edit_payload
from tests.support.users import logged_in, make_user

MAX_PAGE = 300_000  # bytes: "no page exceeds a few hundred KB"
SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


DEEP = {f"k{i:02d}": nested(300) for i in range(100)}  # the payload: 60 KB, 18 MB once indented
FLAT = {"text": "x" * 200_000, "z": "END"}  # 200 KB in one string
XSS = {SCRIPT: SCRIPT, "n": 1}
PAYLOADS = {"deep": DEEP, "flat": FLAT, "xss": XSS}


def raw_size(payload: dict[str, Any]) -> int:
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())


@pytest.fixture
def amp(db: None) -> Stage:
    """A form stage (so /work/<id>/ shows its tasks) worked on by the "amp" group."""
    stage = Stage.objects.create(slug="amp", name="Amp", kind=Stage.Kind.FORM)
    stage.groups.add(Group.objects.create(name="amp"))
    return stage


def store(stage: Stage, payload: dict[str, Any], n: int = 1) -> list[Task]:
    return Task.objects.bulk_create([Task(stage=stage, type="order", payload=payload) for _ in range(n)])


def html_of(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    assert len(response.content) < MAX_PAGE, f"{url}: {len(response.content)} bytes"
    return response.content.decode()


def worker_client(stage: Stage) -> Client:
    """A person in the stage's group, without the view-task permission."""
    user = make_user("wanda")
    user.groups.add(*stage.groups.all())
    return logged_in(user)


# -- the list, its rows endpoint ---------------------------------------------------------


@pytest.mark.parametrize(("name", "n"), [("deep", 3), ("flat", PAGE_SIZE), ("xss", 1)])
def test_task_list_and_rows_stay_small_and_preview_the_payload(
    admin_client: Client, amp: Stage, name: str, n: int
) -> None:
    payload = PAYLOADS[name]
    store(amp, payload, n)
    compact = json.dumps(payload, sort_keys=True, ensure_ascii=False)

    for url in ["/tasks/?stage=amp", "/tasks/rows/?stage=amp"]:
        html = html_of(admin_client, url)
        previews = [unescape(p) for p in re.findall(r"<summary><code>(.*?)</code>", html, re.DOTALL)]
        assert len(previews) == n
        # The cell shows the head of the compact JSON (cut with "..." when longer).
        assert previews[0] == (compact if len(compact) <= 90 else compact[:87] + "...")
        # The expanded row shows the head of the indented JSON, then links to the whole.
        expanded = unescape(re.findall(r'<pre class="json">(.*?)</pre>', html, re.DOTALL)[0])
        indented = json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False)
        assert indented.startswith(expanded.removesuffix("…"))
        assert 'data-copy-url="/tasks/' in html


def test_task_list_escapes_a_script_in_a_payload_key_and_value(admin_client: Client, amp: Stage) -> None:
    store(amp, XSS)
    for url in ["/tasks/?stage=amp", "/tasks/rows/?stage=amp"]:
        html = html_of(admin_client, url)
        assert SCRIPT not in html
        assert ESCAPED_SCRIPT in html


# -- a task's page, the edit page, the work page -------------------------------------------


@pytest.mark.parametrize("name", ["deep", "flat"])
def test_task_page_shows_a_bounded_pretty_head_with_the_full_size_and_a_raw_link(
    admin_client: Client, amp: Stage, name: str
) -> None:
    payload = PAYLOADS[name]
    [task] = store(amp, payload)

    html = html_of(admin_client, f"/tasks/{task.pk}/")

    block = re.search(r'<pre class="json">(.*?)</pre>', html, re.DOTALL)
    assert block
    shown = unescape(re.sub(r"<[^>]+>", "", block.group(1))).removesuffix("…")
    assert 10_000 < len(shown) < len(json.dumps(payload, indent=2, sort_keys=True))
    assert json.dumps(payload, indent=2, sort_keys=True).startswith(shown)
    text = unescape(html)
    assert f"{filesizeformat(raw_size(payload))} in full" in text
    assert f'href="/tasks/{task.pk}/payload.json"' in html


def test_task_page_of_a_small_payload_shows_all_of_it_without_a_truncation_note(
    admin_client: Client, amp: Stage
) -> None:
    [task] = store(amp, XSS)

    html = html_of(admin_client, f"/tasks/{task.pk}/")

    assert SCRIPT not in html and ESCAPED_SCRIPT in html
    block = re.search(r'<pre class="json">(.*?)</pre>', html, re.DOTALL)
    assert block and unescape(re.sub(r"<[^>]+>", "", block.group(1))) == json.dumps(XSS, indent=2, sort_keys=True)
    assert "Truncated" not in html


def test_edit_page_of_a_deep_payload_offers_it_compact_and_small(admin_client: Client, amp: Stage) -> None:
    [task] = store(amp, DEEP)

    html = html_of(admin_client, f"/tasks/{task.pk}/edit/")

    area = re.search(r'<textarea name="payload"[^>]*>(.*?)</textarea>', html, re.DOTALL)
    assert area and json.loads(unescape(area.group(1))) == DEEP


def test_edit_page_of_a_payload_too_large_for_a_textarea_sends_back_to_the_task(
    admin_client: Client, amp: Stage
) -> None:
    [task] = store(amp, FLAT)

    detail = html_of(admin_client, f"/tasks/{task.pk}/")
    response = admin_client.get(f"/tasks/{task.pk}/edit/", follow=True)

    assert f"/tasks/{task.pk}/edit/" not in detail  # not offered
    assert response.redirect_chain == [(f"/tasks/{task.pk}/", 302)]
    assert "too large to edit in a page" in response.content.decode()
    task.refresh_from_db()
    assert task.payload == FLAT


@pytest.mark.parametrize("name", ["deep", "flat", "xss"])
def test_work_page_stays_small_and_escaped(amp: Stage, name: str) -> None:
    [task] = store(amp, PAYLOADS[name])

    html = html_of(worker_client(amp), f"/work/{task.pk}/")

    assert SCRIPT not in html
    if name == "xss":
        assert ESCAPED_SCRIPT in html
    else:
        assert "in full" in html
    assert f'href="/tasks/{task.pk}/payload.json"' in html


# -- the admin -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deep", "flat", "xss"])
def test_admin_changelist_and_change_page_stay_small_and_escaped(admin_client: Client, amp: Stage, name: str) -> None:
    [task] = store(amp, PAYLOADS[name])

    changelist = html_of(admin_client, "/admin/tasks_app/task/")
    change = html_of(admin_client, f"/admin/tasks_app/task/{task.pk}/change/")

    for html in (changelist, change):
        assert SCRIPT not in html
    if name == "xss":
        assert ESCAPED_SCRIPT in changelist and ESCAPED_SCRIPT in change


def test_admin_edits_a_payload_that_fits_and_shows_a_too_large_one_read_only(admin_client: Client, amp: Stage) -> None:
    deep, flat = store(amp, DEEP)[0], store(amp, FLAT)[0]

    deep_page = admin_client.get(f"/admin/tasks_app/task/{deep.pk}/change/")
    flat_page = admin_client.get(f"/admin/tasks_app/task/{flat.pk}/change/")

    assert "payload" in deep_page.context["adminform"].form.fields  # 60 KB compact: editable
    assert "payload" not in flat_page.context["adminform"].form.fields
    html = flat_page.content.decode()
    assert f"{filesizeformat(raw_size(FLAT))} in full" in unescape(html)
    assert f'href="/tasks/{flat.pk}/payload.json"' in html


def test_admin_history_of_an_edited_task_shows_the_payloads_bounded(admin_client: Client, amp: Stage) -> None:
    # An edit records the payload before and after in its event: the admin lists events under the task.
    [task] = store(amp, FLAT)
    task_edit_payload(task_id=task.pk, payload={"small": 1}, actor="user:admin")

    html = html_of(admin_client, f"/admin/tasks_app/task/{task.pk}/change/")

    assert "x" * 1000 not in html  # the 200 KB before-payload of the edit event
    assert '"small": 1' in unescape(html)


# -- the whole document -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deep", "flat", "xss"])
def test_raw_payload_is_the_exact_document_as_json_never_html(admin_client: Client, amp: Stage, name: str) -> None:
    [task] = store(amp, PAYLOADS[name])

    response = admin_client.get(f"/tasks/{task.pk}/payload.json")
    download = admin_client.get(f"/tasks/{task.pk}/payload.json?download=1")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"] == f'inline; filename="task-{task.pk}-payload.json"'
    assert download["Content-Disposition"] == f'attachment; filename="task-{task.pk}-payload.json"'
    assert json.loads(response.content) == PAYLOADS[name]


def test_raw_payload_needs_a_login_and_the_view_permission_or_the_stages_group(amp: Stage) -> None:
    [task] = store(amp, XSS)
    url = f"/tasks/{task.pk}/payload.json"
    outsider = make_user("olga")  # no permission, in no group
    viewer = make_user("vera", "view_task")

    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
    as_outsider = Client()
    as_outsider.force_login(outsider)
    assert as_outsider.get(url).status_code == 403
    as_viewer = Client()
    as_viewer.force_login(viewer)
    assert json.loads(as_viewer.get(url).content) == XSS
    assert json.loads(worker_client(amp).get(url).content) == XSS  # the work page shows it to them
    assert Client().get("/tasks/999999/payload.json").status_code == 302
    assert as_viewer.get("/tasks/999999/payload.json").status_code == 404


# -- the bounded encoder ----------------------------------------------------------------------

TRICKY = [
    {},
    {"a": [], "b": {}, "c": [[], {}], "é": "ü\u2028\x00\"\\\n<&>'", "n": [0, -1, 2**70, 1.5, -0.0, 1e300, None]},
    {"z": True, "a": False, "m": {"y": [1, [2, [3, {"k": "v"}]]], "b": ""}},
    {"float": [float("nan"), float("inf"), float("-inf")]},
    {"deep": nested(50), "wide": list(range(100))},
]


@pytest.mark.parametrize("value", TRICKY)
@pytest.mark.parametrize("indent", [None, 2])
def test_iter_json_writes_what_json_dumps_writes(value: Any, indent: int | None) -> None:
    expected = json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False)
    assert "".join(iter_json(value, indent=indent)) == expected


def test_json_head_of_a_document_deeper_than_the_recursion_limit_is_its_first_characters() -> None:
    value = {"d": nested(5000)}  # json's own encoders raise RecursionError on it

    assert json_head(value, 100) == ('{"d": ' + "[" * 94, True)
    text, cut = json_head(value, 20_000, indent=2)
    assert cut and len(text) == 20_000 and text.startswith('{\n  "d": [\n    [\n      [')
