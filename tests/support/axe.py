"""The accessibility audit and the phone-layout checks of a page in Chromium (a helper, not a fixture).

axe-core comes inside axe-playwright-python (its axe.min.js, pinned with the package in requirements-dev.txt):
nothing is fetched at test time. It is injected through Playwright's evaluate (DevTools, not a <script>), so the
app's strict CSP stays as it is.

    problems = axe_blocking(page) + layout_problems(page)
"""

from __future__ import annotations

from typing import Any

from axe_playwright_python.sync_playwright import Axe

AXE = Axe()
# What the audit refuses: axe's two highest impacts ("moderate" and "minor" are reported by axe, not failed here).
BLOCKING = {"critical", "serious"}
ONLY_CONTRAST = {"runOnly": {"type": "rule", "values": ["color-contrast"]}, "resultTypes": ["violations"]}


def axe_blocking(page: Any, *, contrast_only: bool = False) -> list[str]:
    """Each critical or serious axe violation on the page as "id (impact) target: help", one per element."""
    results = AXE.run(page, options=ONLY_CONTRAST if contrast_only else {"resultTypes": ["violations"]})
    return [
        f"{v['id']} ({v['impact']}) {' '.join(map(str, node['target']))}: {v['help']}"
        + (f" [{node['any'][0]['message']}]" if v["id"] == "color-contrast" and node.get("any") else "")
        for v in results.response["violations"]
        if v["impact"] in BLOCKING
        for node in v["nodes"]
    ]


# At a phone's width: nothing scrolls the whole page sideways; a table wider than the screen scrolls inside a
# box of its own (an ancestor with overflow-x auto/scroll that fits the screen), never clipped or widening the
# page; cards stack (no two cards side by side).
LAYOUT = """() => {
  const vw = window.innerWidth, problems = [];
  const name = e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
    (typeof e.className === "string" && e.className ? "." + e.className.trim().split(/\\s+/).join(".") : "");
  const shown = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const past = e => e.getBoundingClientRect().right > vw + 1;
  const scrolls = e => ["auto", "scroll"].includes(getComputedStyle(e).overflowX);
  const clipped = e => { for (let a = e.parentElement; a && a !== document.body; a = a.parentElement)
    if (getComputedStyle(a).overflowX !== "visible") return true; return false; };
  const page = document.documentElement.scrollWidth;
  if (page > vw) {  // name what reaches past the edge outside any box that scrolls or clips it
    const wide = [...document.querySelectorAll("body *")].filter(e => shown(e) && past(e) && !clipped(e))
      .slice(0, 6).map(e => name(e) + " right=" + Math.round(e.getBoundingClientRect().right));
    problems.push(`the page scrolls sideways: ${page} px wide at ${vw} px; past the edge: ${wide.join(", ")}`);
  }
  for (const table of document.querySelectorAll("main table")) {
    if (!shown(table) || table.getBoundingClientRect().width <= vw) continue;
    let box = table.parentElement;
    while (box && box !== document.body && !scrolls(box)) box = box.parentElement;
    if (!box || box === document.body) problems.push(`table ${name(table)} is wider than the screen, no scroll box`);
    else if (past(box)) problems.push(`table ${name(table)}: its scroll box ${name(box)} is wider than the screen`);
  }
  const cards = [...document.querySelectorAll("main .card")].filter(shown).map(c => [c, c.getBoundingClientRect()]);
  for (const [a, ra] of cards) for (const [b, rb] of cards) {
    if (!a.contains(b) && !b.contains(a) && ra.right <= rb.left + 1 && ra.top < rb.bottom - 1 && rb.top < ra.bottom - 1)
      problems.push(`cards side by side: ${name(a)} and ${name(b)}`);
  }
  return problems;
}"""


def layout_problems(page: Any) -> list[str]:
    """What breaks the phone layout on this page (empty if nothing)."""
    problems: list[str] = page.evaluate(LAYOUT)
    return problems
