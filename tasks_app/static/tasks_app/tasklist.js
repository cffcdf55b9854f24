// The task list's filters and bulk bar (issue 14, section 2). Progressive: without it the filters stay open,
// Apply is always enabled, and the server refuses a bulk request with no action or no rows, and asks to confirm.
(function () {
  "use strict";

  // On a phone the filter form starts folded ("Filters (3)"), unless it has an error to fix.
  const box = document.getElementById("filter-box");
  if (box && !box.hasAttribute("data-keep-open") && window.matchMedia("(max-width: 700px)").matches) {
    box.open = false;
  }

  const form = document.getElementById("bulk");
  const rows = document.getElementById("task-rows");
  if (!form || !rows) return;
  const action = form.elements.namedItem("action");
  const scope = form.elements.namedItem("scope");
  const apply = form.querySelector("button[type=submit]");
  const status = document.getElementById("bulk-status");
  const pageBox = document.getElementById("select-page");
  let matching = null; // the server's count of "all matching" ({count, more, limit}), fetched once when chosen
  let counting = false;

  const number = (n) => n.toLocaleString("en-US");
  const boxes = () => Array.from(rows.querySelectorAll("input[name=ids]"));

  async function countMatching() {
    if (counting) return;
    counting = true;
    try {
      const response = await fetch(form.dataset.countUrl, { credentials: "same-origin" });
      matching = response.ok ? await response.json() : { failed: true };
    } catch (error) {
      matching = { failed: true };
    }
    update();
  }

  function allMatchingText() {
    if (matching === null) return "all matching (counting…)";
    if (matching.failed) return "all matching";
    if (matching.more) return "all " + number(matching.limit) + "+ matching (" + number(matching.limit) + " per run)";
    return "all " + number(matching.count) + " matching";
  }

  function update() {
    const all = boxes();
    const ticked = all.filter((b) => b.checked).length;
    let chosen = ticked > 0;
    if (scope.value === "all") {
      if (matching === null) countMatching();
      status.textContent = allMatchingText();
      // Unknown (counting, or the count failed): the confirmation page counts anyway.
      chosen = matching === null ? false : matching.failed || matching.count > 0;
    } else {
      status.textContent = ticked + " selected";
    }
    apply.disabled = !(action.value && chosen);
    apply.title = apply.disabled ? (action.value ? "Select rows, or choose all matching tasks" : "Choose an action") : "";
    if (pageBox) {
      pageBox.checked = all.length > 0 && ticked === all.length;
      pageBox.indeterminate = ticked > 0 && ticked < all.length;
    }
  }

  if (pageBox) {
    pageBox.hidden = false;
    pageBox.addEventListener("change", () => {
      boxes().forEach((b) => (b.checked = pageBox.checked));
      if (pageBox.checked) scope.value = "selected";
      update();
    });
  }
  rows.addEventListener("change", (event) => {
    if (event.target.name === "ids" && event.target.checked) scope.value = "selected"; // ticking a row means these rows
    update();
  });
  action.addEventListener("change", update);
  scope.addEventListener("change", update);
  new MutationObserver(update).observe(rows, { childList: true }); // the auto-refresh replaced the rows
  window.addEventListener("pageshow", update); // back from the confirmation: the browser restored the ticks
  update();
})();
