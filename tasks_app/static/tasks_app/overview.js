// The overview: pan and zoom the workflow graph, and keep its figures fresh, saying how old each is.
// The page works without this file: the graph scales to fit the card and the figures are as of the page load.
(function () {
  "use strict";

  // "3 s", "4 min", "2 h": the same steps as views/overview.py ago().
  function ago(seconds) {
    const s = Math.max(0, seconds);
    if (s < 90) return Math.round(s) + " s";
    if (s < 90 * 60) return Math.round(s / 60) + " min";
    return Math.round(s / 3600) + " h";
  }

  // -- pan and zoom ---------------------------------------------------------------------------
  // Each drawing's viewBox is its view: zooming shrinks it around its centre (never past the whole
  // graph), panning moves it (never off the graph). Buttons, drag, and keys while focus is in the card.
  function graphControls(card) {
    const tools = card.querySelector(".graph-tools");
    const svgs = Array.from(card.querySelectorAll("svg[data-view]"));
    if (!tools || !svgs.length) return;
    tools.hidden = false;
    const views = new Map();
    for (const svg of svgs) {
      const [x, y, w, h] = svg.dataset.view.split(" ").map(Number);
      views.set(svg, { base: { x, y, w, h }, x, y, w, h });
    }
    const shown = () => svgs.find((svg) => svg.getBoundingClientRect().width > 0);

    function set(svg, v) {
      const b = v.base;
      v.w = Math.min(Math.max(v.w, b.w / 8), b.w);
      v.h = (v.w * b.h) / b.w;
      v.x = Math.min(Math.max(v.x, b.x), b.x + b.w - v.w);
      v.y = Math.min(Math.max(v.y, b.y), b.y + b.h - v.h);
      svg.setAttribute("viewBox", `${v.x} ${v.y} ${v.w} ${v.h}`);
      svg.classList.toggle("zoomed", v.w < b.w - 0.5);
    }
    function zoom(svg, factor) {
      const v = views.get(svg);
      const cx = v.x + v.w / 2, cy = v.y + v.h / 2;
      v.w *= factor;
      v.h = (v.w * v.base.h) / v.base.w;
      v.x = cx - v.w / 2;
      v.y = cy - v.h / 2;
      set(svg, v);
    }
    function reset(svg) {
      const v = views.get(svg);
      Object.assign(v, v.base);
      set(svg, v);
    }
    function pan(svg, dx, dy) {  // in fractions of the view
      const v = views.get(svg);
      v.x += dx * v.w;
      v.y += dy * v.h;
      set(svg, v);
    }

    tools.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-zoom]");
      const svg = shown();
      if (!button || !svg) return;
      const how = button.dataset.zoom;
      if (how === "in") zoom(svg, 0.8);
      else if (how === "out") zoom(svg, 1.25);
      else reset(svg);
    });

    card.addEventListener("keydown", (event) => {
      const svg = shown();
      if (!svg || event.altKey || event.ctrlKey || event.metaKey) return;
      const zoomed = svg.classList.contains("zoomed");
      const steps = { ArrowLeft: [-0.1, 0], ArrowRight: [0.1, 0], ArrowUp: [0, -0.1], ArrowDown: [0, 0.1] };
      if (steps[event.key] && zoomed) pan(svg, ...steps[event.key]);
      else if (event.key === "+" || event.key === "=") zoom(svg, 0.8);
      else if (event.key === "-") zoom(svg, 1.25);
      else if (event.key === "0") reset(svg);
      else return;
      event.preventDefault();
    });

    for (const svg of svgs) {
      let drag = null;
      let moved = false;
      svg.addEventListener("pointerdown", (event) => {
        if (event.button !== 0) return;
        drag = { x: event.clientX, y: event.clientY, id: event.pointerId };
        moved = false;
      });
      svg.addEventListener("pointermove", (event) => {
        if (!drag || event.pointerId !== drag.id) return;
        const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
        if (!moved && Math.hypot(dx, dy) < 4) return;
        if (!moved) svg.setPointerCapture(event.pointerId);
        moved = true;
        const rect = svg.getBoundingClientRect();
        pan(svg, -dx / rect.width, -dy / rect.height);
        drag.x = event.clientX;
        drag.y = event.clientY;
      });
      const end = () => { drag = null; };
      svg.addEventListener("pointerup", end);
      svg.addEventListener("pointercancel", end);
      // A drag that ends on a stage box does not open the stage.
      svg.addEventListener("click", (event) => { if (moved) { event.preventDefault(); moved = false; } }, true);
    }
  }

  // -- live figures -----------------------------------------------------------------------------
  // Poll counts.json every few seconds while the tab is visible; each figure's "as of" ticks every second
  // against the server's clock (the skew is measured at each poll).
  function liveFigures(box) {
    const url = box.dataset.countsUrl;
    const every = Number(box.dataset.poll || 5) * 1000;
    let skew = Number(box.dataset.now) - Date.now();
    let timer = null;

    function tick() {
      const now = Date.now() + skew;
      for (const el of box.querySelectorAll("[data-at]")) {
        const at = Number(el.dataset.at);
        if (at) el.textContent = `as of ${ago((now - at) / 1000)} ago`;
      }
    }
    function show(data) {
      skew = data.now - Date.now();
      for (const [kind, at] of Object.entries(data.as_of)) {
        const el = box.querySelector(`[data-age-of="${kind}"]`);
        if (el && at) el.dataset.at = at;
      }
      for (const el of document.querySelectorAll("[data-stage]")) {
        const stage = data.stages[el.dataset.stage];
        if (!stage) continue;
        for (const n of el.querySelectorAll("[data-count]")) {
          const text = stage.text[n.dataset.count];
          if (text !== undefined && n.textContent !== text) n.textContent = text;
        }
        const retries = el.querySelector(".retries");
        if (retries) retries.classList.toggle("warn", stage.retrying > 0);
        // A capped or rate-limited stage: its "3/3 running · throttled" line warns while claims are held back.
        for (const flow of el.querySelectorAll(".flow")) flow.classList.toggle("warn", Boolean(stage.throttled));
      }
    }
    async function poll() {
      try {
        const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
        const json = (response.headers.get("content-type") || "").includes("json");
        if (!response.ok || !json) throw new Error(`counts: ${response.status}`);
        show(await response.json());
        box.classList.remove("stale");
      } catch (error) {
        box.classList.add("stale");  // the ages keep growing: the page says how old the figures are
      }
      tick();
    }
    function start() { if (timer === null) timer = setInterval(poll, every); }
    function stop() { clearInterval(timer); timer = null; }
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) stop();
      else { poll(); start(); }
    });
    setInterval(tick, 1000);
    tick();
    if (!document.hidden) start();
  }

  const card = document.getElementById("graph");
  if (card) graphControls(card);
  const ages = document.getElementById("figures-age");
  if (ages) liveFigures(ages);
})();
