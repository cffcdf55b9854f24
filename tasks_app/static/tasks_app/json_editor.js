// Admin JSON editor: says at once whether the text is a JSON object, and formats it.
(function () {
  function check(area, status) {
    try {
      const value = JSON.parse(area.value || "{}");
      const ok = value !== null && typeof value === "object" && !Array.isArray(value);
      status.textContent = ok ? "valid JSON object" : "must be a JSON object, like {\"key\": 1}";
      status.className = "json-status " + (ok ? "ok" : "bad");
      return ok ? value : null;
    } catch (error) {
      status.textContent = error.message;
      status.className = "json-status bad";
      return null;
    }
  }
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll(".json-editor-wrap").forEach((wrap) => {
      const area = wrap.querySelector("textarea");
      const status = wrap.querySelector(".json-status");
      if (!area) return;
      area.addEventListener("input", () => check(area, status));
      wrap.querySelector(".json-format").addEventListener("click", () => {
        const value = check(area, status);
        if (value) area.value = JSON.stringify(value, null, 2);
      });
      check(area, status);
    });
  });
})();
