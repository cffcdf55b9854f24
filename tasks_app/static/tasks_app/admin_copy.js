// Admin: a Copy button copies the value of the input named by data-copy-from
// (a hook stage's secret). A static file: the CSP forbids inline scripts.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy-from]");
  if (!button) return;
  const input = document.getElementById(button.dataset.copyFrom);
  if (!input) return;
  await navigator.clipboard.writeText(input.value);
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy"), 1500);
});
