// Runs list: filters, paging, live refresh, selection for the compare page.
"use strict";
(function () {
  const body = document.getElementById("runs-body");
  const filters = document.getElementById("filters");
  const count = document.getElementById("runs-count");
  const prev = document.getElementById("prev"), next = document.getElementById("next");
  const compareButton = document.getElementById("compare-selected");
  const pageSize = 50;
  const selected = new Set();
  let offset = 0;

  function row(run) {
    const pct = Lab.progressPct(run);
    const checked = selected.has(run.id) ? "checked" : "";
    return `<tr data-run-id="${run.id}">
      <td><input type="checkbox" class="pick" value="${run.id}" ${checked} aria-label="select run ${run.id}"></td>
      <td><a href="/runs/${run.id}">${run.id}</a></td>
      <td><a href="/runs/${run.id}">${Lab.esc(run.name)}</a></td>
      <td>${Lab.esc(run.kind)}</td>
      <td><span class="badge state-${run.state}">${run.state}</span>${Lab.collapsedLevels(run.last_metrics).length ? ` <span class="badge collapse" title="vocabulary collapse: ${Lab.collapsedLevels(run.last_metrics).join(", ")}">collapse</span>` : ""}</td>
      <td><div class="progress" title="${run.progress_done}/${run.progress_total}"><div style="width:${pct}%"></div></div></td>
      <td class="headline">${Lab.esc(Lab.headline(run))}</td>
      <td class="muted">${Lab.when(run.created_at)}</td></tr>`;
  }

  async function refresh() {
    const params = new URLSearchParams({ limit: pageSize, offset });
    const data = new FormData(filters);
    for (const [k, v] of data) if (v) params.set(k, v);
    const result = await Lab.api("GET", `/runs?${params}`);
    if (!result.ok) { count.textContent = Lab.errorText(result); return false; }
    const page = result.data;
    body.innerHTML = page.items.length ? page.items.map(row).join("")
      : `<tr><td colspan="8" class="muted">No runs. <a href="/runs/new">Launch one.</a></td></tr>`;
    count.textContent = page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "";
    prev.disabled = offset === 0;
    next.disabled = offset + pageSize >= page.total;
    return true;
  }
  // one list request in flight at a time, every 3 s after the last answer, backing off when slow or failing
  const poller = Lab.poller(refresh, { interval: 3000 });

  body.addEventListener("change", (event) => {
    if (!event.target.classList.contains("pick")) return;
    const id = Number(event.target.value);
    event.target.checked ? selected.add(id) : selected.delete(id);
    compareButton.disabled = selected.size === 0;
  });
  compareButton.addEventListener("click", () => { location.href = `/compare?ids=${[...selected].join(",")}`; });
  filters.addEventListener("change", () => { offset = 0; poller.now(); });
  prev.addEventListener("click", () => { offset = Math.max(0, offset - pageSize); poller.now(); });
  next.addEventListener("click", () => { offset += pageSize; poller.now(); });
  const importForm = document.getElementById("import-form");
  if (importForm) {
    importForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const file = document.getElementById("import-file").files[0];
      const name = document.getElementById("import-name").value;
      const status = document.getElementById("import-status");
      if (!file) return;
      status.textContent = "Uploading…";
      const response = await fetch(`/api/v1/imports?name=${encodeURIComponent(name)}`, {
        method: "POST", body: file, credentials: "same-origin",
        headers: { "Content-Type": "application/octet-stream", "X-CSRF-Token": Lab.csrf },
      });
      let data = null;
      try { data = await response.json(); } catch (_) { data = null; }
      if (response.ok) { location.href = `/runs/${data.id}`; return; }
      status.textContent = Lab.errorText({ status: response.status, data });
    });
  }
  poller.now();
})();
