// Runs list: search (the query language of GET /runs?q=), sort, filters kept in the page's address (a
// shared link shows the same list), children grouped under their parent, paging, live refresh,
// selection for the compare page.
"use strict";
(function () {
  const body = document.getElementById("runs-body");
  const filters = document.getElementById("filters");
  const count = document.getElementById("runs-count");
  const searchError = document.getElementById("search-error");
  const prev = document.getElementById("prev"), next = document.getElementById("next");
  const compareButton = document.getElementById("compare-selected");
  const pageSize = 50;
  const selected = new Set();
  const expanded = new Set(); // parents whose children are shown
  const FIELDS = ["q", "state", "kind", "archived", "sort"];
  let offset = 0;

  // the address is the source of truth: fill the form from it once, write it back on every change
  const initial = new URLSearchParams(location.search);
  for (const name of FIELDS) if (initial.get(name) && filters.elements[name]) filters.elements[name].value = initial.get(name);
  offset = Math.max(0, Number(initial.get("offset")) || 0);

  function formState() {
    const out = {};
    for (const name of FIELDS) { const v = (filters.elements[name].value || "").trim(); if (v) out[name] = v; }
    return out;
  }

  function writeAddress() {
    const params = new URLSearchParams(formState());
    if (offset) params.set("offset", offset);
    const target = params.toString() ? `?${params}` : location.pathname;
    if (target !== location.search && !(target === location.pathname && !location.search)) history.replaceState(null, "", target);
  }

  function apiParams() {
    const state = formState();
    const params = new URLSearchParams({ limit: pageSize, offset });
    const q = [state.q || "", state.archived ? `archived:${state.archived}` : ""].filter(Boolean).join(" ");
    if (q) params.set("q", q);
    for (const k of ["state", "kind", "sort"]) if (state[k]) params.set(k, state[k]);
    // grouped unless the user searches: a search shows every match, children included
    if (!state.q && !state.state && !state.kind) params.set("top_level", "true");
    return params;
  }

  function tags(run) {
    return (run.tags || []).map((t) => `<span class="tag">${Lab.esc(t)}</span>`).join("");
  }

  function row(run, child) {
    const pct = Lab.progressPct(run);
    const checked = selected.has(run.id) ? "checked" : "";
    const collapsed = Lab.collapsedLevels(run.last_metrics);
    const toggle = run.child_count ? `<button type="button" class="expand secondary" data-parent="${run.id}"
      aria-expanded="${expanded.has(run.id)}" title="show its ${run.child_count} child runs">${expanded.has(run.id) ? "▾" : "▸"} ${run.child_count}</button>` : "";
    return `<tr data-run-id="${run.id}" class="${child ? "child" : ""}">
      <td><input type="checkbox" class="pick" value="${run.id}" ${checked} aria-label="select run ${run.id}"></td>
      <td>${toggle}<a href="/runs/${run.id}">${run.id}</a></td>
      <td><a href="/runs/${run.id}">${Lab.esc(run.name)}</a> ${tags(run)}${run.archived_at ? ' <span class="badge archived">archived</span>' : ""}</td>
      <td>${Lab.esc(run.kind)}</td>
      <td><span class="badge state-${Lab.esc(run.state)}">${Lab.esc(run.state)}</span>${collapsed.length ? ` <span class="badge collapse" title="vocabulary collapse: ${Lab.esc(collapsed.join(", "))}">collapse</span>` : ""}</td>
      <td>${Lab.esc(run.project)}</td>
      <td><div class="progress" title="${run.progress_done}/${run.progress_total}"><div style="width:${pct}%"></div></div></td>
      <td class="headline">${Lab.esc(Lab.headline(run))}</td>
      <td class="muted">${Lab.esc(run.launched_by || "")}</td>
      <td class="muted">${Lab.when(run.created_at)}</td></tr>`;
  }

  async function children(parentId) {
    const result = await Lab.api("GET", `/runs?${new URLSearchParams({ parent_id: parentId, limit: 500 })}`);
    return result.ok ? result.data.items : [];
  }

  async function refresh() {
    writeAddress();
    const result = await Lab.api("GET", `/runs?${apiParams()}`);
    if (!result.ok) {
      searchError.hidden = false;
      searchError.textContent = Lab.errorText(result);
      return result.status === 422; // a bad query is an answer, not a failure to back off from
    }
    searchError.hidden = true;
    const page = result.data;
    const open = page.items.filter((r) => r.child_count && expanded.has(r.id));
    const kids = new Map(await Promise.all(open.map(async (r) => [r.id, await children(r.id)])));
    body.innerHTML = page.items.length
      ? page.items.map((r) => row(r, false) + (kids.get(r.id) || []).map((c) => row(c, true)).join("")).join("")
      : `<tr><td colspan="10" class="muted">No runs${Object.keys(formState()).length ? " match" : ". <a href=\"/runs/new\">Launch one.</a>"}</td></tr>`;
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
  body.addEventListener("click", (event) => {
    const button = event.target.closest("button.expand");
    if (!button) return;
    const id = Number(button.dataset.parent);
    expanded.has(id) ? expanded.delete(id) : expanded.add(id);
    poller.now();
  });
  document.querySelectorAll("button.sort").forEach((button) => button.addEventListener("click", () => {
    const key = button.dataset.sort, current = filters.elements.sort.value;
    filters.elements.sort.value = current === key ? `-${key}` : key;
    offset = 0;
    poller.now();
  }));
  compareButton.addEventListener("click", () => { location.href = `/compare?ids=${[...selected].join(",")}`; });
  filters.addEventListener("change", (event) => { if (event.target.name !== "q") { offset = 0; poller.now(); } });
  filters.addEventListener("submit", (event) => { event.preventDefault(); offset = 0; poller.now(); });
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
