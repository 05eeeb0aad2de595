// The live sweep page: trials table, best trial, objective by trial number (uPlot), a parallel-coordinates
// plot of params -> objective (SVG drawn here), Optuna's importances as bars. Polls the sweep with one
// request in flight while it runs. `document.body.dataset.rendered` names the trial count drawn last
// (the browser benchmark waits for it).
"use strict";
(function () {
  const root = document.getElementById("sweep");
  const sweepId = root.dataset.sweepId;
  const $ = (id) => document.getElementById(id);
  let plot = null;
  let inFlight = false;
  const SVG = "http://www.w3.org/2000/svg";

  function stateClass(state) {
    return { finished: "succeeded", complete: "succeeded", pruned: "cancelled", running: "running" }[state] || state;
  }

  function fmt(v) { return typeof v === "number" ? Lab.num(v) : Lab.esc(v === null || v === undefined ? "" : v); }

  function summary(s) {
    const counts = Object.entries(s.counts).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(", ");
    const obj = s.objective.source === "trial" ? s.objective.metric : `${s.objective.metric} of a ${s.objective.source} evaluation`;
    const pruner = s.pruner.type === "none" ? "no early stopping" : `${s.pruner.type} pruning on ${s.pruner.metric}`;
    $("summary").textContent = `${s.method}, ${s.trials.length}/${s.budget} trials (${counts || "none yet"}), ` +
      `${s.parallel} at once, ${s.direction} ${obj}, ${pruner}; ${s.kind}${s.preset ? " " + s.preset : ""}`;
    const badge = $("state");
    badge.textContent = s.state;
    badge.className = `badge state-${stateClass(s.state)}`;
    if (s.best) {
      const params = Object.entries(s.best.params).map(([k, v]) => `${k} = ${fmt(v)}`).join(", ");
      $("best").innerHTML = `Best so far: <b>trial ${s.best.number}</b>, ${Lab.esc(s.objective.metric)} = <b>${fmt(s.best.value)}</b> ` +
        `(${params}) <a href="/runs/${s.best.run_id}">run #${s.best.run_id}</a>`;
      const promote = $("promote");
      promote.hidden = !s.best.run_id;
      promote.href = `/runs/new?from_run=${s.best.run_id}`;
    } else {
      $("best").textContent = "No complete trial yet.";
    }
    const cancel = $("cancel");
    if (cancel) cancel.hidden = s.state !== "running";
  }

  function table(s) {
    const keys = Object.keys(s.space);
    $("trials-head").innerHTML = `<tr><th>#</th><th>State</th><th>${Lab.esc(s.objective.metric)}</th><th>Duration</th>` +
      keys.map((k) => `<th title="${Lab.esc(k)}">${Lab.esc(k.split(".").pop())}</th>`).join("") + "<th>Run</th><th>Note</th></tr>";
    const best = s.best ? s.best.number : -1;
    $("trials-body").innerHTML = s.trials.map((t) => `<tr class="${t.number === best ? "best" : ""}">
      <td>${t.number}</td><td><span class="badge state-${stateClass(t.state)}">${Lab.esc(t.state)}</span></td>
      <td>${fmt(t.value)}</td><td>${t.duration_s === null ? "" : Lab.duration(t.duration_s)}</td>
      ${keys.map((k) => `<td>${fmt(t.params[k])}</td>`).join("")}
      <td>${t.run_id ? `<a href="/runs/${t.run_id}">#${t.run_id}</a>` : ""}${t.eval_run_id ? ` <a href="/runs/${t.eval_run_id}">eval #${t.eval_run_id}</a>` : ""}</td>
      <td class="muted">${Lab.esc(t.note || "")}</td></tr>`).join("");
  }

  function objectiveChart(s) {
    const done = s.trials.filter((t) => t.value !== null);
    const xs = done.map((t) => t.number);
    const ys = done.map((t) => t.value);
    const sign = s.direction === "maximize" ? 1 : -1;
    let best = null;
    const bests = ys.map((v) => (best = best === null || sign * v > sign * best ? v : best));
    const data = [xs, ys, bests];
    const box = $("objective-chart");
    if (plot && plot.series.length === 3) { plot.setData(data); return; }
    plot = new uPlot({
      width: Math.max(320, box.clientWidth || 480), height: 240,
      scales: { x: { time: false } }, axes: [{ label: "trial" }, {}],
      series: [{ label: "trial" },
        { label: s.objective.metric, stroke: "#2f6fdf", paths: () => null, points: { show: true, size: 7, fill: "#2f6fdf" } },
        { label: "best so far", stroke: "#29a36a", width: 1.5 }],
    }, data, box);
  }

  function importance(s) {
    const box = $("importance");
    if (!s.importance || !Object.keys(s.importance).length) {
      box.textContent = s.counts.complete >= 2 ? "Cannot be computed yet (a parameter that never varied?)." : "Needs 2 complete trials.";
      return;
    }
    box.className = "";
    box.innerHTML = Object.entries(s.importance).sort((a, b) => b[1] - a[1]).map(([k, v]) =>
      `<div class="bar-row" title="${Lab.esc(k)}"><span class="bar-label">${Lab.esc(k)}</span>` +
      `<span class="bar" style="width:${Math.max(1, 100 * v).toFixed(1)}%"></span><span>${v.toFixed(2)}</span></div>`).join("");
  }

  // One vertical axis per param and one for the objective; each complete trial is a polyline coloured by
  // its objective (blue: worst, red: best). Choice axes space their values evenly; loguniform axes are log.
  function parallel(s) {
    const keys = Object.keys(s.space);
    const done = s.trials.filter((t) => t.value !== null && t.state === "complete");
    const box = $("parallel");
    const width = Math.max(480, box.clientWidth || 800), height = 300, pad = { l: 60, r: 60, t: 24, b: 28 };
    const axes = keys.map((k) => {
      const dim = s.space[k];
      if (dim.type === "choice") {
        const vals = dim.values.map(String);
        return { name: k, pos: (v) => (vals.length === 1 ? 0.5 : vals.indexOf(String(v)) / (vals.length - 1)), ticks: vals.map((v, i) => [v, vals.length === 1 ? 0.5 : i / (vals.length - 1)]) };
      }
      const log = dim.type === "loguniform" || dim.log;
      const f = (v) => (log ? Math.log(v) : v);
      const lo = f(dim.low), hi = f(dim.high);
      return { name: k, pos: (v) => (hi === lo ? 0.5 : (f(v) - lo) / (hi - lo)), ticks: [[Lab.num(dim.low), 0], [Lab.num(dim.high), 1]] };
    });
    const values = done.map((t) => t.value);
    const vmin = Math.min(...values), vmax = Math.max(...values);
    axes.push({ name: s.objective.metric, pos: (v) => (vmax === vmin ? 0.5 : (v - vmin) / (vmax - vmin)),
      ticks: done.length ? [[Lab.num(vmin), 0], [Lab.num(vmax), 1]] : [] });
    const x = (i) => pad.l + (axes.length === 1 ? 0 : (i * (width - pad.l - pad.r)) / (axes.length - 1));
    const y = (p) => height - pad.b - p * (height - pad.t - pad.b);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "parallel coordinates of the trials' params and objective");
    const parts = [];
    const sign = s.direction === "maximize" ? 1 : -1;
    const ordered = done.slice().sort((a, b) => sign * (a.value - b.value)); // best drawn last, on top
    for (const t of ordered) {
      const q = vmax === vmin ? 1 : (sign > 0 ? (t.value - vmin) : (vmax - t.value)) / (vmax - vmin);
      const color = `hsl(${(220 * (1 - q)).toFixed(0)}, 75%, 48%)`;
      const pts = axes.map((a, i) => `${x(i).toFixed(1)},${y(a.pos(i < keys.length ? t.params[a.name] : t.value)).toFixed(1)}`);
      parts.push(`<polyline fill="none" stroke="${color}" stroke-width="1.5" stroke-opacity="0.8" points="${pts.join(" ")}"><title>trial ${t.number}: ${Lab.esc(Lab.num(t.value))}</title></polyline>`);
    }
    axes.forEach((a, i) => {
      parts.push(`<line x1="${x(i)}" x2="${x(i)}" y1="${y(0)}" y2="${y(1)}" stroke="#555"/>`);
      parts.push(`<text x="${x(i)}" y="${pad.t - 8}" text-anchor="middle" font-size="12">${Lab.esc(a.name.split(".").pop())}</text>`);
      for (const [label, p] of a.ticks) parts.push(`<text x="${x(i) + 4}" y="${y(p) + 4}" font-size="10" fill="#666">${Lab.esc(label)}</text>`);
    });
    svg.innerHTML = parts.join("");
    box.replaceChildren(svg);
  }

  function render(s) {
    summary(s);
    table(s);
    objectiveChart(s);
    importance(s);
    parallel(s);
    document.body.dataset.renderedMs = performance.now().toFixed(1); // since navigation start
    document.body.dataset.rendered = String(s.trials.length);
  }

  async function refresh() {
    if (inFlight) return;
    inFlight = true;
    const result = await Lab.api("GET", `/sweeps/${sweepId}`);
    inFlight = false;
    if (!result.ok) {
      $("message").hidden = false;
      $("message").textContent = Lab.errorText(result);
      setTimeout(refresh, 5000);
      return;
    }
    $("message").hidden = true;
    render(result.data);
    if (result.data.state === "running") setTimeout(refresh, 2000);
  }

  const cancel = $("cancel");
  if (cancel) cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    const result = await Lab.api("POST", `/sweeps/${sweepId}/cancel`);
    cancel.disabled = false;
    if (!result.ok) { $("message").hidden = false; $("message").textContent = Lab.errorText(result); return; }
    render(result.data);
  });
  refresh();
})();
