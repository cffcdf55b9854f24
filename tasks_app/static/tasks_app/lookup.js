// The top bar's lookup box: "/" anywhere outside a text field focuses it (as on GitHub and in Sidekiq Web).
(function () {
  const box = document.getElementById("lookup-q");
  if (!box) return;
  document.addEventListener("keydown", (event) => {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey || event.defaultPrevented) return;
    const target = event.target;
    if (target instanceof HTMLElement && (target.isContentEditable || target.closest("input, textarea, select"))) return;
    event.preventDefault();
    box.focus();
    box.select();
  });
})();
