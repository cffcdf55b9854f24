"""The overview in Chromium (issue 14, section 3), at 1440x900 and then 390x844 in the same browser: the graph
fits its card (every stage box inside it, no sideways page scroll, edge labels apart), the zoom buttons, keys
and a drag change the view, a paused stage shows its badge, and the counts move by themselves after a task
changes (overview.js polls counts.json, not while the tab is hidden) and say how old they are; axe finds nothing
critical or serious.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from django.db import connection

from tasks_app.demo import SAMPLE_ORDERS, load_demo
from tasks_app.models import Stage
from tasks_app.services import task_create
from tests.support.axe import axe_blocking
from tests.support.chromium import DESKTOP, PHONE, chromium_page, needs_chromium
from tests.support.users import make_user

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]

# Every stage box, every edge label and the card, in CSS pixels, for the drawing on screen.
GEOMETRY = """() => {
  const svg = [...document.querySelectorAll("#graph svg")].find(s => s.getBoundingClientRect().width > 0);
  const r = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
  return {
    layout: svg.getAttribute("class"),
    card: r(document.getElementById("graph")),
    boxes: [...svg.querySelectorAll("g.stage > rect.box")].map(r),
    labels: [...svg.querySelectorAll(".edge-label rect")].map(r),
    texts: [...svg.querySelectorAll(".edge-label")].map(g => [g.querySelector("text").getBBox().width,
                                                               g.querySelector("rect").getBBox().width]),
    overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    viewBox: svg.getAttribute("viewBox"),
  };
}"""


# The page's visibility as the tab would set it (headless Chromium's tab is never hidden).
HIDE = """() => {
  Object.defineProperty(document, "hidden", { value: HIDDEN, configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def apart(a: list[float], b: list[float]) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def check_fit(page: Any, layout: str) -> dict[str, Any]:
    g = page.evaluate(GEOMETRY)
    assert g["layout"] == f"graph-{layout}"
    assert g["overflow"] <= 0, f"the page scrolls {g['overflow']} px sideways"
    left, top, right, bottom = g["card"]
    assert len(g["boxes"]) == 7
    for box in g["boxes"]:  # inside the card (no hidden stage behind a scroll)
        assert left - 0.5 <= box[0] and box[2] <= right + 0.5 and top - 0.5 <= box[1] and box[3] <= bottom + 0.5
    for a, b in itertools.combinations(g["labels"], 2):
        assert apart(a, b), (a, b)
    for text, rect in g["texts"]:  # the estimate of a label's width holds in the real font
        assert text <= rect
    return g


def view_width(page: Any) -> float:
    return float(page.evaluate(GEOMETRY)["viewBox"].split()[2])


def test_the_overview_graph_fits_zooms_and_its_counts_live_on_desktop_and_phone(live_server: Any) -> None:
    stages = load_demo()  # its three sample orders wait at check-stock
    Stage.objects.filter(slug="invoice").update(is_paused=True)
    user = make_user("boss", superuser=True)

    with chromium_page(live_server.url, viewport=DESKTOP, user=user) as page:
        connection.close()  # a fresh connection for this thread under Playwright's loop (see test_browser_failures)
        for viewport, layout in ((DESKTOP, "wide"), (PHONE, "tall")):
            page.set_viewport_size(viewport)
            page.goto(page.base + "/overview/")
            g = check_fit(page, layout)
            assert axe_blocking(page) == []  # among them nested-interactive: one link per box, nothing inside
            visible = f"#graph svg.graph-{layout}"

            # Zoom: the buttons, then keys with the focus in the graph, then a drag; Reset fits it all again.
            full = view_width(page)
            page.locator("button[data-zoom=in]").click()
            page.locator("button[data-zoom=in]").click()
            assert view_width(page) == pytest.approx(full * 0.64, rel=0.01)
            before = page.evaluate(GEOMETRY)["viewBox"]
            page.keyboard.press("ArrowRight" if layout == "wide" else "ArrowDown")
            assert page.evaluate(GEOMETRY)["viewBox"] != before
            box = page.locator(visible).bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + min(box["height"], 300) / 2
            before = page.evaluate(GEOMETRY)["viewBox"]
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x - 60, y - 40, steps=4)
            page.mouse.up()
            assert page.evaluate(GEOMETRY)["viewBox"] != before
            assert page.url.endswith("/overview/")  # a drag that ends on a box does not open the stage
            page.locator("button[data-zoom=out]").click()
            assert view_width(page) > full * 0.64
            page.locator("button[data-zoom=reset]").click()
            assert page.evaluate(GEOMETRY)["viewBox"] == g["viewBox"]

            # The paused stage: its badge is on screen.
            badge = page.locator(f'{visible} g.stage[data-stage="invoice"] .paused-badge')
            assert badge.is_visible() and badge.text_content() == "Paused"

            # The counts move after a task changes, without a reload, and say how old they are.
            pending = page.locator(f'{visible} g.stage[data-stage="check-stock"] [data-count=pending]')
            before_count = int(pending.text_content() or "")
            task_create(stage=stages["check-stock"], type="order", payload=SAMPLE_ORDERS[0])
            page.wait_for_function(
                "([sel, n]) => document.querySelector(sel).textContent === String(n)",
                arg=[f'{visible} g.stage[data-stage="check-stock"] [data-count=pending]', before_count + 1],
                timeout=15_000,
            )
            assert page.locator('tr[data-stage="check-stock"] [data-count=pending]').inner_text() == str(
                before_count + 1
            )
            age = page.locator("[data-age-of=live]").inner_text()
            assert age.startswith("as of ") and age.endswith(" s ago"), age

        # A hidden tab does not poll; shown again, it polls at once.
        polls: list[str] = []
        page.on("request", lambda r: polls.append(r.url) if "counts.json" in r.url else None)
        page.evaluate(HIDE.replace("HIDDEN", "true"))
        page.wait_for_timeout(6_000)  # longer than the 5 s between polls
        assert polls == []
        page.evaluate(HIDE.replace("HIDDEN", "false"))
        page.wait_for_timeout(500)
        assert len(polls) == 1
