// Run page: live charts (SSE), progress and ETA, log tail, attempts, artifacts with downloads and
// conversions, child evaluations/exports, cancel and retry.
"use strict";
(function () {
  const root = document.getElementById("run");
  const runId = Number(root.dataset.runId);
  const $ = (id) => document.getElementById(id);
  const series = new RunSeries();
  const charts = new Map(); // group -> {plot, keys}
  let run = null;
  let renderPending = false;
  let exportFormats = [];
  let detailPoller = null; // set below, before anything loads
  let reloadWanted = false;
  let baselinesPending = false; // a baseline of this run (or of its evaluations) is still being computed
  const reloadDetail = () => { reloadWanted = true; return detailPoller.now(); };

  function showActionError(message) { const el = $("action-error"); el.hidden = !message; el.textContent = message || ""; }

  function renderState(state) {
    run = Object.assign(run || {}, state);
    const badge = $("state");
    badge.className = `badge state-${run.state}`;
    badge.textContent = run.state + (run.cancel_requested && run.state === "running" ? " (cancelling)" : "");
    $("progress-bar").style.width = `${Lab.progressPct(run)}%`;
    const phase = run.phase;
    $("progress-text").textContent = phase
      ? `Phase: ${phase.label} ${phase.done}/${phase.total} ${phase.unit}`
      : (run.progress_total ? `${run.progress_done} / ${run.progress_total}` : "");
    $("phase-next").textContent = run.state === "running" && phase && phase.upcoming && phase.upcoming.length
      ? `then: ${phase.upcoming.join(", ")}` : "";
    let eta = "";
    if (run.state === "running" && phase) {
      // the worker's estimate: the phase's measured rate, plus the phases to come at their units' rates
      eta = phase.eta_s === null || phase.eta_s === undefined ? "ETA: measuring…" : `· ETA ${Lab.duration(phase.eta_s)}`;
    } else if (run.state === "running" && run.started_at && run.progress_done > 0 && run.progress_total) {
      const elapsed = (Date.now() - new Date(run.started_at).getTime()) / 1000;
      eta = `ETA ${Lab.duration((elapsed * (run.progress_total - run.progress_done)) / run.progress_done)}`;
    } else if (run.started_at && run.finished_at) {
      eta = `took ${Lab.duration((new Date(run.finished_at) - new Date(run.started_at)) / 1000)}`;
    }
    $("eta").textContent = eta;
    $("run-error").hidden = !run.error;
    $("run-error").textContent = run.error || "";
    $("cancel").hidden = !["queued", "running", "lost"].includes(run.state) || run.cancel_requested;
    $("retry").hidden = !["failed", "cancelled"].includes(run.state);
    const collapsed = Lab.collapsedLevels(run.last_metrics);
    $("collapse").hidden = !collapsed.length;
    $("collapse").textContent = `vocabulary collapse: ${collapsed.join(", ")}`;
  }

  async function loadWords() {
    if (!$("visual-words")) return;
    const result = await Lab.api("GET", `/runs/${runId}/words`);
    if (!result.ok) return;
    const latest = result.data.latest;
    const levels = Object.keys(result.data.levels);
    $("words-state").textContent = (levels.length ? `cached: ${levels.join(", ")}` : "no gallery yet")
      + (latest && latest.state !== "succeeded" ? ` · newest #${latest.id} ${latest.state}` : "");
    $("generate-words").textContent = levels.length ? "Regenerate visual words" : "Generate visual words";
  }

  function renderCharts() {
    renderPending = false;
    const groups = series.groups();
    const isSystem = (group) => group.startsWith("system:");
    $("no-metrics").hidden = [...groups.keys()].some((g) => !isSystem(g));
    $("no-system").hidden = [...groups.keys()].some(isSystem);
    for (const [group, keys] of groups) {
      const container = isSystem(group) ? $("sys-charts") : $("charts");
      const data = Charts.align(keys.map((k) => series.series(k)));
      const existing = charts.get(group);
      if (existing && existing.keys.join() === keys.join()) {
        existing.plot.setData(data);
        continue;
      }
      const box = existing ? existing.box : undefined;
      const plot = Charts.create(container, group, keys, data, box);
      charts.set(group, { plot, keys, box: plot.root.parentNode });
    }
  }

  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    setTimeout(renderCharts, 250);
  }

  function appendLogs(lines) {
    const pre = $("logs");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const text = lines.map((l) => `${new Date(l.time * 1000).toLocaleTimeString()} ${l.level === "info" ? "" : l.level.toUpperCase() + " "}${l.message}`).join("\n");
    pre.textContent = (pre.textContent ? pre.textContent + "\n" : "") + text;
    const all = pre.textContent.split("\n");
    if (all.length > 1000) pre.textContent = all.slice(-1000).join("\n");
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  function artifactRow(a, withConvert) {
    const convert = withConvert && exportFormats.length && ["checkpoint", "import"].includes(a.kind)
      ? `<button type="button" class="secondary convert" data-artifact="${a.id}">Convert</button>` : "";
    return `<tr><td>${Lab.esc(a.kind)}</td><td>${Lab.esc(a.name)}</td><td>${Lab.esc(a.format || "")}</td>
      <td>${Lab.bytes(a.size)}</td><td title="${a.sha256}"><code>${a.sha256.slice(0, 12)}…</code></td>
      <td><a class="download" href="${a.download_url}" download>Download</a> ${convert}</td></tr>`;
  }

  const pct = (n) => (n.unit === "%" ? `${n.value.toFixed(2)}%` : Lab.num(n.value));
  const signed = (d) => `${d >= 0 ? "+" : "−"}${Math.abs(d).toFixed(2)}`;

  function baselineText(b) {
    if (b.value !== null && b.value !== undefined) {
      return `<span class="baseline" data-features="${Lab.esc(b.features)}" data-value="${b.value}">${b.value.toFixed(2)}%</span>`
        + (b.delta !== null && b.delta !== undefined ? ` <strong class="delta ${b.delta >= 0 ? "better" : "worse"}">${signed(b.delta)}</strong>` : "")
        + (b.run_id ? ` <a href="/runs/${b.run_id}" class="muted">#${b.run_id}</a>` : "");
    }
    if (b.run_id) return `<span class="muted">${Lab.esc(b.state)} (<a href="/runs/${b.run_id}">#${b.run_id}</a>)</span>`;
    return `<span class="muted">not computed</span>`;
  }

  function checkpointText(c) {
    if (!c) return "";
    const epoch = c.epoch !== null && c.epoch !== undefined ? `epoch ${c.epoch}` : Lab.esc(c.name);
    return c.run_id ? `<a href="/runs/${c.run_id}">#${c.run_id}</a> ${epoch}` : epoch;
  }

  function renderCard(card) {
    if (!$("result-card") || !card) return;
    const hasNumbers = card.numbers.length > 0;
    $("card-pending").hidden = hasNumbers;
    $("card-pending").textContent = run && run.state === "failed" ? "The evaluation failed: no numbers."
      : "The numbers appear here when the evaluation has finished.";
    $("card-body").hidden = !hasNumbers;
    if (!hasNumbers) return;
    $("card-numbers").innerHTML = card.numbers.map((n, i) => `<div class="number${i === 0 ? " headline" : ""}" data-key="${Lab.esc(n.key)}">
      <div class="value">${pct(n)}</div><div class="label muted">${Lab.esc(n.label)}</div></div>`).join("");
    $("card-protocol").textContent = card.protocol;
    $("card-checkpoint").innerHTML = checkpointText(card.checkpoint);
    $("card-baselines-table").hidden = !card.baselines.length;
    $("card-baselines").innerHTML = card.baselines.map((b) => `<tr data-baseline="${Lab.esc(b.features)}"><td>${Lab.esc(b.label)}</td>
      <td>${b.value !== null && b.value !== undefined ? `${b.value.toFixed(2)}%` : baselineText(b)}</td>
      <td>${b.delta !== null && b.delta !== undefined ? `<strong class="delta ${b.delta >= 0 ? "better" : "worse"}">${signed(b.delta)} points</strong>` : ""}</td></tr>`).join("");
  }

  function renderEvaluations(rows) {
    const byFeatures = (c, f) => c.baselines.find((b) => b.features === f);
    $("evaluations").innerHTML = rows.map((c) => {
      const numbers = c.numbers.map((n, i) => `<span class="number${i === 0 ? " headline" : ""}" data-key="${Lab.esc(n.key)}" title="${Lab.esc(n.label)}">${Lab.esc(n.label)} <strong>${pct(n)}</strong></span>`).join(" · ");
      const vs = (f) => { const b = byFeatures(c, f); return b ? baselineText(b) : ""; };
      return `<tr data-evaluation="${c.run_id}"><td><a href="/runs/${c.run_id}">#${c.run_id}</a></td><td>${Lab.esc(c.kind)}</td>
        <td><span class="badge state-${c.state}">${c.state}</span></td><td>${numbers}</td>
        <td>${vs("raw_pixels")}</td><td>${vs("random_init")}</td><td class="muted">${Lab.esc(c.protocol)}</td>
        <td>${checkpointText(c.checkpoint)}</td></tr>`;
    }).join("") || `<tr><td colspan="8" class="muted">None yet: launch one with an Evaluate button above.</td></tr>`;
  }

  async function renderChildren(children, skip) {
    const rows = [];
    for (const c of children) {
      if (skip.has(c.id)) continue;
      let result = c.headline ? `${Lab.esc(c.headline.label)} <strong>${pct(c.headline)}</strong>` : c.result ? Object.entries(c.result).slice(0, 4).map(([k, v]) => `${k}: ${typeof v === "number" ? Lab.num(v) : Lab.esc(JSON.stringify(v)).slice(0, 40)}`).join(", ") : "";
      if (c.kind === "export" && c.state === "succeeded") {
        const arts = await Lab.api("GET", `/runs/${c.id}/artifacts`);
        if (arts.ok) result += arts.data.map((a) => ` <a class="download export-download" href="${a.download_url}" download>${Lab.esc(a.name)}</a>`).join("");
      }
      rows.push(`<tr data-child="${c.id}"><td><a href="/runs/${c.id}">#${c.id}</a></td><td>${Lab.esc(c.kind)}</td>
        <td><span class="badge state-${c.state}">${c.state}</span></td><td>${result || Lab.esc(c.error || "")}</td></tr>`);
    }
    $("children").innerHTML = rows.join("") || `<tr><td colspan="4" class="muted">None yet.</td></tr>`;
  }

  async function loadDetail() {
    const result = await Lab.api("GET", `/runs/${runId}`);
    if (!result.ok) return;
    const detail = result.data;
    renderState(detail);
    $("attempts").innerHTML = detail.attempts.map((a) => `<tr><td>${a.id}</td><td>${Lab.esc(a.worker_host)}</td><td>${Lab.esc(a.gpu || "")}</td>
      <td>${a.pid}</td><td>${Lab.when(a.started_at)}</td><td>${Lab.when(a.ended_at)}</td><td>${Lab.esc(a.outcome || "running")}${a.error ? ": " + Lab.esc(a.error) : ""}</td></tr>`).join("")
      || `<tr><td colspan="7" class="muted">Not started.</td></tr>`;
    renderProvenance(detail.attempts);
    $("artifacts").innerHTML = detail.artifacts.map((a) => artifactRow(a, true)).join("") || `<tr><td colspan="6" class="muted">None yet.</td></tr>`;
    const exportForm = $("export-form");
    if (exportForm) exportForm.hidden = !exportFormats.length || !detail.artifacts.some((a) => ["checkpoint", "import"].includes(a.kind));
    const [evals, card] = await Promise.all([
      $("evaluations") ? Lab.api("GET", `/runs/${runId}/evaluations`) : Promise.resolve({ ok: false }),
      $("result-card") ? Lab.api("GET", `/runs/${runId}/card`) : Promise.resolve(null),
    ]);
    const evalRows = evals.ok ? evals.data : [];
    const cards = evalRows.concat(card && card.ok && card.data ? [card.data] : []);
    baselinesPending = cards.some((c) => c.baselines.some((b) => b.run_id && b.value === null && !Lab.terminal(b.state)));
    if ($("evaluations")) renderEvaluations(evalRows);
    if (card && card.ok) renderCard(card.data);
    await renderChildren(detail.children, new Set(evalRows.map((c) => c.run_id)));
    await loadWords();
    return detail;
  }

  // Where and with what each attempt ran: a one-line summary, the whole record (resolved spec included) folded.
  function renderProvenance(attempts) {
    const open = new Set([...document.querySelectorAll("#provenance details[open]")].map((d) => d.dataset.attempt));
    $("provenance").innerHTML = attempts.filter((a) => a.provenance).map((a) => {
      const p = a.provenance;
      const git = p.git ? ` · git ${Lab.esc(String(p.git.commit).slice(0, 10))}${p.git.dirty ? " (modified)" : ""}` : "";
      const gpus = p.gpus && p.gpus.length ? Lab.esc(p.gpus.join(", ")) : "no GPU";
      const line = `${Lab.esc(p.package || "")} ${Lab.esc(p.version || "?")}${git} · torch ${Lab.esc(p.torch || "?")}`
        + ` · CUDA ${Lab.esc(p.cuda || "none")} · ${gpus} · ${Lab.esc(p.host || "")} · seed ${p.seed === null ? "none" : Lab.esc(String(p.seed))}`;
      return `<details class="provenance" data-attempt="${a.id}"${open.has(String(a.id)) ? " open" : ""}>
        <summary>Provenance of attempt ${a.id}: ${line}</summary><pre class="spec">${Lab.esc(JSON.stringify(p, null, 2))}</pre></details>`;
    }).join("");
  }

  async function loadHistory() {
    const result = await Lab.api("GET", `/runs/${runId}/metrics?max_points=2000`);
    if (result.ok) { series.setHistory(result.data.series); scheduleRender(); }
  }

  async function loadExportFormats() {
    if (!$("export-form")) return;
    const result = await Lab.api("GET", "/kinds");
    const exp = result.ok && result.data.find((k) => k.kind === "export");
    if (!exp) return;
    const schema = exp.json_schema;
    let fmt = schema.properties && schema.properties.format;
    while (fmt && fmt.$ref) fmt = schema.$defs[fmt.$ref.split("/").pop()];
    exportFormats = (fmt && (fmt.enum || (fmt.anyOf || []).flatMap((v) => v.enum || []))) || [];
    // which formats this run's checkpoint can take (a small-stem or narrow backbone has no torchvision twin)
    const fits = await Lab.api("GET", `/runs/${runId}/export-formats`);
    const verdict = (fits.ok && fits.data.formats) || {};
    $("export-format").innerHTML = exportFormats.map((f) => {
      const v = verdict[f] || { allowed: true };
      return `<option value="${Lab.esc(f)}" ${v.allowed ? "" : "disabled"} title="${Lab.esc(v.reason || "")}"
        data-reason="${Lab.esc(v.reason || "")}">${Lab.esc(f)}${v.allowed ? "" : " (not possible)"}</option>`;
    }).join("");
    const firstAllowed = exportFormats.find((f) => !verdict[f] || verdict[f].allowed);
    if (firstAllowed) $("export-format").value = firstAllowed;
    const refused = exportFormats.filter((f) => verdict[f] && !verdict[f].allowed);
    $("export-reason").textContent = refused.length ? `${refused.join(", ")}: ${verdict[refused[0]].reason}` : "";
    // the export's yes/no options (e.g. leave out the fc, BGR input) as checkboxes, from its schema;
    // each format shows only the options it honours (the schema's x-export-formats, the server's registry)
    const facts = schema["x-export-formats"] || {};
    const flags = Object.entries(schema.properties || {}).filter(([, p]) => p.type === "boolean");
    $("export-options").innerHTML = flags.map(([name, p]) =>
      `<label data-option-label="${Lab.esc(name)}" title="${Lab.esc(p.description || "")}"><input type="checkbox" data-option="${Lab.esc(name)}"> ${Lab.esc(p.title || name)}</label>`).join("");
    const showOptions = () => {
      const allowed = (facts[$("export-format").value] || {}).options;
      document.querySelectorAll("#export-options [data-option-label]").forEach((label) => {
        const fits = !allowed || allowed.includes(label.dataset.optionLabel);
        label.hidden = !fits;
        if (!fits) label.querySelector("input").checked = false;
      });
    };
    $("export-format").addEventListener("change", showOptions);
    showOptions();
  }

  async function startExport(artifactId) {
    showActionError("");
    const options = {};
    document.querySelectorAll("#export-options [data-option]").forEach((box) => {
      if (box.checked) options[box.dataset.option] = true;
    });
    const body = { format: $("export-format").value, options };
    if (artifactId) body.artifact_id = artifactId;
    const result = await Lab.api("POST", `/runs/${runId}/exports`, body);
    if (!result.ok) { showActionError(result.status === 401 ? "Log in to convert weights." : Lab.errorText(result)); return; }
    await reloadDetail();
  }

  function subscribe() {
    const source = new EventSource(`/api/v1/runs/${runId}/events?after=${encodeURIComponent(root.dataset.cursor)}`);
    source.addEventListener("metrics", (e) => { series.add(JSON.parse(e.data).points); scheduleRender(); });
    source.addEventListener("logs", (e) => appendLogs(JSON.parse(e.data).lines));
    source.addEventListener("state", (e) => {
      const state = JSON.parse(e.data);
      const before = run && run.state;
      renderState(state);
      if (before !== state.state) reloadDetail();
    });
    source.addEventListener("end", () => { source.close(); reloadDetail(); });
  }

  $("cancel").addEventListener("click", async () => {
    const result = await Lab.api("POST", `/runs/${runId}/cancel`);
    if (!result.ok) showActionError(result.status === 401 ? "Log in to cancel runs." : Lab.errorText(result));
    else renderState(result.data);
  });
  $("retry").addEventListener("click", async () => {
    const result = await Lab.api("POST", `/runs/${runId}/retry`);
    if (!result.ok) showActionError(result.status === 401 ? "Log in to retry runs." : Lab.errorText(result));
    else location.href = `/runs/${result.data.id}`;
  });
  if ($("generate-words")) $("generate-words").addEventListener("click", async () => {
    showActionError("");
    const result = await Lab.api("POST", `/runs/${runId}/words`, {});
    if (!result.ok) showActionError(result.status === 401 ? "Log in to generate visual words." : Lab.errorText(result));
    await reloadDetail();
  });
  const exportForm = $("export-form");
  if (exportForm) exportForm.addEventListener("submit", (e) => { e.preventDefault(); startExport(); });
  // a row's Convert converts that row's checkpoint (not the newest one)
  $("artifacts").addEventListener("click", (e) => {
    if (e.target.classList.contains("convert")) startExport(Number(e.target.dataset.artifact));
  });

  // The detail (state, attempts, artifacts, children) is only ever loaded through this poller: one request
  // chain in flight, refreshed 2 s after the previous answer while anything moves (longer when slow or
  // failing); a state change seen on the stream asks for a reload (after the one in flight, if any).
  detailPoller = Lab.poller(async () => {
    const busy = run && !Lab.terminal(run.state);
    const childBusy = [...document.querySelectorAll("#children .badge, #evaluations .badge")].some((b) => !/succeeded|failed|cancelled/.test(b.textContent));
    const wanted = reloadWanted;
    reloadWanted = false;
    let ok = true;
    if (wanted || busy || childBusy || baselinesPending) ok = Boolean(await loadDetail());
    if (series.size() > 20000) { series.byKey.clear(); await loadHistory(); }
    return ok;
  }, { interval: 2000 });

  (async () => {
    subscribe(); // from the cursor of the page's render: history and stream overlap, never leave a gap
    await loadExportFormats();
    await Promise.all([reloadDetail(), loadHistory(), Lab.api("GET", `/runs/${runId}/logs?limit=300`).then((r) => r.ok && appendLogs(r.data))]);
    window.addEventListener("resize", () => { for (const { plot, box } of charts.values()) plot.setSize({ width: box.clientWidth, height: 240 }); });
  })();
})();
