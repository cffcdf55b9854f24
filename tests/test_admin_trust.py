"""The admin and its trust boundaries (issue 11, section 6): hook secrets, help texts, the CSP.

- A hook secret lets anyone post tasks into the workflow: only staff who may
  change the stage see it (with a Copy button, a static script); staff who
  may only view it see it masked, and the secret is nowhere in their page.
- The admin renders help texts as HTML, so "/hooks/<slug>/" lost its
  placeholder: the hook secret's help names this stage's real URL, escaped.
- The CSP (style-src 'self') blocks style="" attributes: the status badges
  use classes from a stylesheet (the browser check is in test_browser.py).
"""

from __future__ import annotations

import re

import pytest
from django.test import Client

from tasks_app.models import Stage
from tests.support.pages import STAGE_URL, TASK_URL
from tests.support.users import logged_in, make_user
from tests.support.world import make_tasks_in_every_state


def staff_client(username: str, *codenames: str) -> Client:
    return logged_in(make_user(username, *codenames, staff=True))


@pytest.fixture
def hook(db: None) -> Stage:
    stage = Stage.objects.create(slug="orders", name="Orders", kind=Stage.Kind.HOOK)
    assert len(stage.hook_secret) > 20  # generated on save
    return stage


def change_page(client: Client, stage: Stage) -> str:
    response = client.get(f"{STAGE_URL}{stage.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


# -- the hook secret ------------------------------------------------------------------------


def test_view_only_staff_sees_the_hook_secret_masked_and_nowhere_in_the_page(hook: Stage) -> None:
    viewer = staff_client("viewer", "view_stage")

    html = change_page(viewer, hook)

    assert hook.hook_secret not in html
    assert "••••••••" in html
    assert "only users who may change this stage see it" in html
    assert "/hooks/orders/" in html  # where to post is no secret
    assert hook.hook_secret not in viewer.get(STAGE_URL).content.decode()
    assert hook.hook_secret not in viewer.get(f"{STAGE_URL}{hook.pk}/history/").content.decode()


def test_staff_who_may_change_the_stage_see_the_secret_with_a_copy_button(hook: Stage) -> None:
    editor = staff_client("editor", "view_stage", "change_stage")

    html = change_page(editor, hook)

    assert re.search(rf'<input type="text" name="hook_secret" value="{re.escape(hook.hook_secret)}"', html)
    assert '<button type="button" class="copy-secret" data-copy-from="id_hook_secret">Copy</button>' in html
    assert re.search(r'<script src="[^"]*tasks_app/admin_copy\.js"', html)
    # The CSP forbids inline scripts: every script of the page is a file.
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", html))


def test_a_superuser_sees_the_secret(admin_client: Client, hook: Stage) -> None:
    assert hook.hook_secret in change_page(admin_client, hook)


def test_hook_secret_help_names_the_stages_real_hook_url(admin_client: Client, hook: Stage) -> None:
    html = change_page(admin_client, hook)

    help_text = re.search(r'<div class="help" id="id_hook_secret_helptext">\s*<div>(.*?)</div>', html, re.DOTALL)
    assert help_text
    assert "requests to /hooks/orders/ must carry it" in help_text.group(1)
    assert "/hooks//" not in html
    # Placeholders are escaped, so the browser shows them instead of dropping them as tags.
    assert "X-Hook-Signature: sha256=&lt;HMAC-SHA256 of the body&gt;" in help_text.group(1)


def test_add_page_help_names_the_hook_url_pattern(admin_client: Client, db: None) -> None:
    html = admin_client.get(f"{STAGE_URL}add/").content.decode()

    assert "requests to /hooks/&lt;slug&gt;/ must carry it" in html
    assert "/hooks//" not in html


# -- status badges without inline styles ----------------------------------------------------


def test_admin_task_pages_have_no_style_attribute_and_badges_use_classes(
    admin_client: Client, world: dict[str, Stage]
) -> None:
    tasks = make_tasks_in_every_state(world)

    changelist = admin_client.get(TASK_URL).content.decode()
    pages = [changelist] + [admin_client.get(f"{TASK_URL}{t.pk}/change/").content.decode() for t in tasks.values()]

    for html in pages:
        assert not re.search(r"\sstyle\s*=", html, re.IGNORECASE)
    for state, label in [
        ("pending", "Pending"),
        ("locked", "Locked"),
        ("expired", "Locked (lock expired)"),
        ("completed", "Completed"),
        ("failed", "Failed"),
    ]:
        assert f'<b class="task-status task-status-{state}">{label}</b>' in changelist
    assert re.search(r'<link href="[^"]*tasks_app/admin\.css" media="all" rel="stylesheet">', changelist)
