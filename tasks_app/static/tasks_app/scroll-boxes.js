// A box that scrolls sideways (a wide table's .table-scroll, a long line of code) must be reachable from the
// keyboard, or its hidden columns are for mouse and touch only. Each one that scrolls now becomes a tab stop
// and a named region (its table's caption, else the heading before it); one that fits gets no useless stop.
// Checked on load, when the window changes size (a phone turned sideways) and when a <details> opens.
(function () {
  const SELECTOR = ".table-scroll, main pre";
  function name(box) {
    const caption = box.querySelector("caption");
    if (caption) return caption.textContent.trim();
    for (let e = box.previousElementSibling; e; e = e.previousElementSibling) {
      if (/^H[1-6]$/.test(e.tagName)) return e.textContent.trim();
    }
    const heading = box.closest("section, .card")?.querySelector("h1, h2, h3");
    return heading ? heading.textContent.trim() : box.tagName === "PRE" ? "Code" : "Table";
  }
  function mark() {
    for (const box of document.querySelectorAll(SELECTOR)) {
      const scrolls = box.scrollWidth > box.clientWidth + 1 || box.scrollHeight > box.clientHeight + 1;
      if (scrolls && !box.hasAttribute("tabindex")) {
        const added = ["tabindex"];  // what to take back if it fits again
        box.tabIndex = 0;
        if (!box.hasAttribute("role")) {
          box.setAttribute("role", "region");
          added.push("role");
        }
        if (!box.hasAttribute("aria-label")) {
          box.setAttribute("aria-label", name(box));
          added.push("aria-label");
        }
        box.dataset.scrollBox = added.join(" ");
      } else if (!scrolls && box.dataset.scrollBox) {
        for (const attribute of box.dataset.scrollBox.split(" ")) box.removeAttribute(attribute);
        delete box.dataset.scrollBox;
      }
    }
  }
  mark();
  document.addEventListener("toggle", mark, true);
  let pending = 0;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(mark, 150);
  });
})();
