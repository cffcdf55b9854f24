// The viewer's time zone, for the server to render times in: tasks_app.middleware reads the "tz" cookie
// (and ignores a name it doesn't know). Set on every page, so the next page is in the reader's zone.
(function () {
  "use strict";
  let zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (error) {
    return;
  }
  // IANA names only ("Europe/Paris", "America/Argentina/Buenos_Aires", "Etc/GMT+5"): nothing to escape.
  if (!/^[A-Za-z0-9_+\-/]{1,64}$/.test(zone)) return;
  if (document.cookie.split("; ").includes("tz=" + zone)) return;
  const secure = location.protocol === "https:" ? "; secure" : "";
  document.cookie = "tz=" + zone + "; path=/; max-age=31536000; samesite=lax" + secure;
})();
