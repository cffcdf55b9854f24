// Small progressive enhancements; every page works without them.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});
// Copy buttons copy their data-copy text, or the document at data-copy-url
// (a task's whole payload: the page carries only its head).
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  let text = button.dataset.copy;
  if (text === undefined) {
    const response = await fetch(button.dataset.copyUrl, { credentials: "same-origin" });
    if (!response.ok) return;
    text = await response.text();
  }
  await navigator.clipboard.writeText(text);
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy"), 1500);
});

// Task list auto-refresh: replaces only the table body, so filters (in the
// URL) and the scroll position stay; pauses while rows are selected or a
// payload is expanded, and remembers on/off across pages.
(function () {
  const toggle = document.getElementById("auto-refresh");
  const rows = document.getElementById("task-rows");
  if (!toggle || !rows) return;
  toggle.checked = localStorage.getItem("tasks.autoRefresh") !== "off";
  toggle.addEventListener("change", () => localStorage.setItem("tasks.autoRefresh", toggle.checked ? "on" : "off"));
  setInterval(async () => {
    if (!toggle.checked || document.hidden) return;
    if (rows.querySelector("input[type=checkbox]:checked, details[open]")) return;
    const response = await fetch(toggle.dataset.rowsUrl, { credentials: "same-origin" });
    if (response.ok) rows.innerHTML = await response.text();
  }, 5000);
})();
