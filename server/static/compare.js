// Compare page: chosen runs side by side (spec differences, final metrics, results, evaluations) and one
// metric of every run overlaid, on a chosen x axis, with smoothing and log scale. Everything chosen is in
// the URL (runs, key, x, smooth, log), so the address is the share link.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const root = $("compare");
  const form = $("compare-form");
  const maxRuns = Number(root.dataset.maxRuns) || 12;
  const params = new URLSearchParams(location.search);
  const AXIS_LABELS = { step: "step", epoch: "epoch", time: "wall time (s)", images: "images seen" };
  let table = null, tableFor = "";     // the /compare answer and the ids it is for
  let series = null, seriesFor = "";   // the /compare/series answer and what it is for
  let generation = 0;                  // answers to an older choice are dropped
  let plot = null;

  // the URL's choice first (a shared link), then the controls
  $("compare-x").value = AXIS_LABELS[params.get("x")] ? params.get("x") : "step";
  const smooth0 = Number(params.get("smooth"));
  $("compare-smooth").value = isFinite(smooth0) && smooth0 >= 0 && smooth0 < 1 ? String(smooth0) : "0";
  $("compare-log").checked = params.get("log") === "1";
  let wantedKey = params.get("key") || "";

  // chosen runs in the order they were picked (a shared link's order first): the table's columns and the
  // chart's colours stay put when one more run is ticked
  let order = (params.get("runs") || params.get("ids") || "").split(",").map(Number).filter((n) => n > 0);
  function chosen() {
    const checked = [...form.querySelectorAll('input[name="run"]:checked')].map((i) => Number(i.value));
    order = order.filter((id) => checked.includes(id)).concat(checked.filter((id) => !order.includes(id)));
    return order.slice();
  }
  function smoothing() { return Number($("compare-smooth").value) || 0; }
  function showError(message) { $("compare-error").hidden = !message; $("compare-error").textContent = message || ""; }

  function currentUrl() {
    const q = new URLSearchParams();
    const ids = chosen();
    if (ids.length) q.set("runs", ids.join(","));
    const key = $("compare-key").value || wantedKey;
    if (key) q.set("key", key);
    if ($("compare-x").value !== "step") q.set("x", $("compare-x").value);
    if (smoothing() > 0) q.set("smooth", String(smoothing()));
    if ($("compare-log").checked) q.set("log", "1");
    const text = q.toString().replace(/%2C/g, ",");
    return `/compare${text ? "?" + text : ""}`;
  }

  function writeUrl() {
    const url = currentUrl();
    history.replaceState(null, "", url);
    $("share-link").value = location.origin + url;
    $("compare-smooth-value").textContent = smoothing().toFixed(2);
  }

  // -- the table ----------------------------------------------------------------------------------------
  function shown(value, section) {
    if (typeof value === "number") {
      return section === "spec" ? Lab.esc(String(value)) : `<span title="${Lab.esc(String(value))}">${Lab.esc(Lab.num(value))}</span>`;
    }
    if (typeof value === "string") return Lab.esc(value);
    return `<code>${Lab.esc(JSON.stringify(value))}</code>`;
  }

  function rowsHtml(rows, section) {
    return rows.map((row) => {
      const cells = row.values.map((value, i) => {
        if (!row.present[i]) return `<td class="missing" title="not in this run">—</td>`;
        const source = row.sources && row.sources[i] ? ` <a class="muted" href="/runs/${row.sources[i]}">#${row.sources[i]}</a>` : "";
        return `<td>${shown(value, section)}${source}</td>`;
      }).join("");
      return `<tr data-key="${Lab.esc(row.key)}"><th scope="row">${Lab.esc(row.key)}</th>${cells}</tr>`;
    }).join("");
  }

  function sectionHtml(title, rows, section, span, emptyText) {
    const head = `<tr class="section"><th colspan="${span}">${Lab.esc(title)}</th></tr>`;
    return head + (rows.length ? rowsHtml(rows, section) : `<tr class="empty"><td colspan="${span}" class="muted">${Lab.esc(emptyText)}</td></tr>`);
  }

  function renderTable() {
    const card = $("compare-table-card");
    card.hidden = !table;
    if (!table) return;
    const span = table.runs.length + 1;
    $("compare-head").innerHTML = `<tr><th></th>${table.runs.map((r) => `<th>
      <a href="/runs/${r.id}">#${r.id} ${Lab.esc(r.name)}</a><br><small class="muted">${Lab.esc(r.kind)} · ${Lab.esc(r.state)}</small><br>
      <small>metrics: <a class="download" href="/api/v1/runs/${r.id}/metrics.csv" download>CSV</a>
      <a class="download" href="/api/v1/runs/${r.id}/metrics.json" download>JSON</a></small></th>`).join("")}</tr>`;
    const differ = table.spec_diff.length;
    $("spec-diff").innerHTML = sectionHtml(
      `Spec: ${differ} key${differ === 1 ? "" : "s"} differ, ${table.same_spec_keys} the same`, table.spec_diff, "spec", span,
      table.runs.length > 1 ? "The specs are the same." : "Choose another run to see what differs.");
    $("final-metrics").innerHTML = sectionHtml("Final metrics (latest value)", table.metrics, "metric", span, "No metrics.");
    $("run-results").innerHTML = sectionHtml("Results", table.results, "result", span, "No results.");
    $("evaluations").innerHTML = sectionHtml("Evaluations (newest succeeded of each kind)", table.evaluations, "evaluation", span, "No evaluations.");
    const q = `runs=${table.runs.map((r) => r.id).join(",")}`;
    $("table-csv").href = `/api/v1/compare.csv?${q}`;
    $("table-json").href = `/api/v1/compare.json?${q}`;
  }

  function renderKeys() {
    const keys = new Set();
    (table ? table.runs : []).forEach((r) => r.metric_keys.forEach((k) => keys.add(k)));
    const sorted = [...keys].sort();
    const current = $("compare-key").value || wantedKey;
    const key = sorted.includes(current) ? current
      : sorted.find((k) => /^loss_total$/.test(k)) || sorted.find((k) => /^loss/.test(k)) || sorted[0] || "";
    $("compare-key").innerHTML = sorted.map((k) => `<option ${k === key ? "selected" : ""}>${Lab.esc(k)}</option>`).join("");
    $("compare-key").value = key;
  }

  // -- the chart ----------------------------------------------------------------------------------------
  function drawChart() {
    const container = $("compare-chart");
    if (plot) { plot.destroy(); plot = null; }
    container.innerHTML = "";
    const runs = table ? table.runs : [];
    const key = $("compare-key").value;
    const notes = [];
    const withPoints = [];
    if (series) {
      series.runs.forEach((s) => {
        const run = runs.find((r) => r.id === s.run_id);
        if (s.x.length) withPoints.push({ run, s });
        else if (s.note && run) notes.push(`#${run.id}: ${s.note}`);
      });
    }
    $("compare-notes").hidden = !notes.length;
    $("compare-notes").textContent = notes.join(" · ");
    $("compare-empty").hidden = Boolean(withPoints.length);
    if (!withPoints.length) {
      $("compare-empty").textContent = !runs.length ? "Pick runs and a metric." : key ? `None of these runs has '${key}' on this axis.` : "These runs have no metrics yet.";
      root.dataset.drawn = "";
      return;
    }
    const weight = smoothing();
    const tables = withPoints.map(({ s }) => {
      const order = s.x.map((_, i) => i).sort((a, b) => s.x[a] - s.x[b]);
      return [order.map((i) => s.x[i]), Charts.ema(order.map((i) => s.y[i]), weight)];
    });
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    const axis = series.x_axis;
    plot = Charts.create(container, key, withPoints.map(({ run }) => `#${run.id} ${run.name}`), data, undefined, {
      xLabel: series.x_label, yLabel: key, integerX: axis === "step" || axis === "images", log: $("compare-log").checked,
    });
    root.dataset.drawn = JSON.stringify({ key, x: axis, smooth: weight, log: $("compare-log").checked });
  }

  // -- loading --------------------------------------------------------------------------------------------
  async function refresh() {
    const mine = ++generation;
    const ids = chosen();
    showError("");
    if (ids.length > maxRuns) showError(`At most ${maxRuns} runs can be compared at once.`);
    const idText = ids.slice(0, maxRuns).join(",");
    if (!idText) {
      table = null; series = null; tableFor = seriesFor = "";
      renderKeys(); renderTable(); drawChart(); writeUrl();
      return;
    }
    if (tableFor !== idText) {
      const result = await Lab.api("GET", `/compare?runs=${idText}`);
      if (mine !== generation) return;
      if (!result.ok) { showError(Lab.errorText(result)); return; }
      table = result.data; tableFor = idText;
      renderKeys(); renderTable();
    }
    const key = $("compare-key").value;
    wantedKey = key || wantedKey;
    const x = $("compare-x").value;
    const want = `${idText}|${key}|${x}`;
    if (key && seriesFor !== want) {
      const result = await Lab.api("GET", `/compare/series?runs=${idText}&key=${encodeURIComponent(key)}&x=${x}&max_points=2000`);
      if (mine !== generation) return;
      if (!result.ok) { showError(Lab.errorText(result)); return; }
      series = result.data; seriesFor = want;
    } else if (!key) {
      series = null; seriesFor = "";
    }
    writeUrl();
    drawChart();
  }

  form.addEventListener("change", (event) => {
    if (event.target.id === "compare-smooth" || event.target.id === "compare-log") { writeUrl(); drawChart(); return; }
    refresh();
  });
  $("compare-smooth").addEventListener("input", () => { writeUrl(); drawChart(); });
  form.addEventListener("submit", (event) => event.preventDefault());
  $("copy-link").addEventListener("click", async () => {
    const input = $("share-link");
    try { await navigator.clipboard.writeText(input.value); } catch (_) { input.select(); document.execCommand("copy"); }
    $("copy-link").textContent = "Copied";
    setTimeout(() => { $("copy-link").textContent = "Copy link"; }, 1500);
  });
  window.addEventListener("resize", () => { if (plot) plot.setSize({ width: plot.root.parentNode.clientWidth, height: 240 }); });
  writeUrl();
  refresh();
})();
