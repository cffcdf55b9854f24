"""Dark mode: the app's colours are CSS variables, swapped under prefers-color-scheme: dark."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from tasks_app.models import Stage
from tasks_app.services import task_create
from tests.support.chromium import DESKTOP, PHONE, chromium_page, needs_chromium
from tests.support.users import make_user

APP_CSS = Path(str(finders.find("tasks_app/app.css")))


def custom_properties(block: str) -> dict[str, str]:
    return dict(re.findall(r"(--[\w-]+):\s*([^;]+);", block))


def test_the_stylesheet_has_a_dark_scheme_for_every_colour() -> None:
    css = APP_CSS.read_text()
    light = custom_properties(css.split("@media (prefers-color-scheme: dark)")[0])
    dark_block = re.search(r"@media \(prefers-color-scheme: dark\) \{\s*:root \{([^}]*)\}", css)
    assert dark_block, "no dark :root block"
    dark = custom_properties(dark_block.group(1))
    assert {"--bg", "--fg", "--surface", "--line", "--muted", "--accent"} <= set(dark)
    assert all(dark[name] != light[name] for name in dark), "a dark value equal to the light one"
    assert set(dark) <= set(light)  # every variable it swaps exists in the light scheme
    assert "color-scheme: light dark" in css  # form controls and scrollbars follow too


def test_pages_declare_both_schemes(client: Client, db: None) -> None:
    html = client.get("/accounts/login/").content.decode()
    assert '<meta name="color-scheme" content="light dark">' in html


# -- in a browser ------------------------------------------------------------------------


def colours(page: Any, selector: str) -> tuple[str, str]:
    return page.eval_on_selector(selector, "el => [getComputedStyle(el).backgroundColor, getComputedStyle(el).color]")  # type: ignore[no-any-return]


@needs_chromium
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_pages_follow_the_system_colour_scheme(live_server: Any, world: dict[str, Stage], viewport: Any) -> None:
    user = make_user("boss", superuser=True)
    task = task_create(stage=world["review"], type="order", payload={"n": 1})
    seen: dict[str, dict[str, tuple[str, str]]] = {}
    for scheme in ["light", "dark"]:
        with chromium_page(live_server.url, viewport=viewport, color_scheme=scheme, user=user) as page:
            seen[scheme] = {}
            for path, selector in [("/tasks/", "body"), (f"/tasks/{task.pk}/", "body"), ("/overview/", ".card")]:
                page.goto(page.base + path)
                seen[scheme][path] = colours(page, selector)
            assert page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches") is (scheme == "dark")
    for key, (light_bg, light_fg) in seen["light"].items():
        dark_bg, dark_fg = seen["dark"][key]
        assert dark_bg != light_bg and dark_fg != light_fg, key
    # Dark means dark: the page's background is darker than its text.
    assert luminance(seen["dark"]["/tasks/"][0]) < luminance(seen["dark"]["/tasks/"][1])
    assert luminance(seen["light"]["/tasks/"][0]) > luminance(seen["light"]["/tasks/"][1])


def luminance(css_colour: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css_colour)[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
