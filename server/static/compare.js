// Compare page: one metric of several runs overlaid on one chart; the choice is kept in the URL.
"use strict";
(function () {
  const form = document.getElementById("compare-form");
  const keySelect = document.getElementById("compare-key");
  const container = document.getElementById("compare-chart");
  const empty = document.getElementById("compare-empty");
  const params = new URLSearchParams(location.search);
  let plot = null;

  function chosen() { return [...form.querySelectorAll('input[name="run"]:checked')].map((i) => Number(i.value)); }

  async function updateKeys() {
    const ids = chosen();
    const keys = new Set();
    const runs = await Promise.all(ids.map((id) => Lab.api("GET", `/runs/${id}`)));
    runs.forEach((r) => r.ok && r.data.metric_keys.forEach((k) => keys.add(k)));
    const wanted = keySelect.value || params.get("key") || [...keys].find((k) => /^loss/.test(k)) || [...keys][0] || "";
    keySelect.innerHTML = [...keys].sort().map((k) => `<option ${k === wanted ? "selected" : ""}>${Lab.esc(k)}</option>`).join("");
    return runs.filter((r) => r.ok).map((r) => r.data);
  }

  async function draw() {
    const runs = await updateKeys();
    const key = keySelect.value;
    history.replaceState(null, "", `/compare?ids=${runs.map((r) => r.id).join(",")}${key ? "&key=" + encodeURIComponent(key) : ""}`);
    if (plot) { plot.destroy(); plot = null; container.innerHTML = ""; }
    empty.hidden = Boolean(runs.length && key);
    if (!runs.length || !key) return;
    const withKey = runs.filter((r) => r.metric_keys.includes(key));
    const series = await Promise.all(withKey.map(async (r) => {
      const result = await Lab.api("GET", `/runs/${r.id}/metrics?keys=${encodeURIComponent(key)}&max_points=1000`);
      const s = result.ok ? result.data.series[0] : { steps: [], values: [] };
      return { steps: s.steps, values: s.values };
    }));
    if (!series.length) { empty.hidden = false; empty.textContent = `None of these runs has '${key}'.`; return; }
    plot = Charts.create(container, key, withKey.map((r) => `#${r.id} ${r.name}`), Charts.align(series));
  }

  form.addEventListener("change", draw);
  draw();
})();
