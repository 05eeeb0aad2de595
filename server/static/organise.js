// Run page, organising: edit name/project/tags/note (PATCH /runs/{id}), archive or unarchive, the disk
// usage of the run with its children, and delete with a confirmation that says what goes.
"use strict";
(function () {
  const root = document.getElementById("organise");
  if (!root) return;
  const runId = Number(root.dataset.runId);
  const $ = (id) => document.getElementById(id);
  const form = $("organise-form");
  let archived = root.dataset.archived === "yes";

  function plural(n, word) { return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`; }

  function show(run) {
    $("run-name").textContent = run.name;
    document.title = `#${run.id} ${run.name} · OBoW Lab`;
    $("run-project").textContent = run.project || "—";
    $("run-tags").innerHTML = (run.tags || []).map((t) => `<span class="tag">${Lab.esc(t)}</span>`).join("");
    $("run-note").innerHTML = run.note_html; // rendered by the server: raw HTML escaped, unsafe links dropped
    archived = Boolean(run.archived_at);
    $("archived-badge").hidden = !archived;
    if ($("archive-run")) $("archive-run").textContent = archived ? "Unarchive" : "Archive";
  }

  async function loadUsage() {
    const result = await Lab.api("GET", `/runs/${runId}/usage`);
    if (!result.ok) return null;
    const u = result.data;
    const others = u.run_ids.length - 1;
    $("run-usage").textContent = `${Lab.bytes(u.bytes)} in ${plural(u.files, "file")}`
      + (others ? ` (with ${plural(others, "child run")})` : "");
    return u;
  }

  if ($("edit-run")) {
    $("edit-run").addEventListener("click", () => { form.hidden = !form.hidden; if (!form.hidden) form.elements.name.focus(); });
    $("edit-cancel").addEventListener("click", () => { form.hidden = true; });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {
        name: form.elements.name.value,
        project: form.elements.project.value,
        tags: form.elements.tags.value.split(/[\s,]+/).filter(Boolean),
        note: form.elements.note.value,
      };
      const result = await Lab.api("PATCH", `/runs/${runId}`, body);
      $("organise-error").hidden = result.ok;
      if (!result.ok) { $("organise-error").textContent = Lab.errorText(result); return; }
      show(result.data);
      form.hidden = true;
    });
    $("archive-run").addEventListener("click", async () => {
      const result = await Lab.api("PATCH", `/runs/${runId}`, { archived: !archived });
      if (result.ok) show(result.data);
      else { $("organise-error").hidden = false; $("organise-error").textContent = Lab.errorText(result); form.hidden = false; }
    });
    const dialog = $("delete-dialog");
    $("delete-run").addEventListener("click", async () => {
      $("delete-summary").textContent = "Counting…";
      $("delete-error").hidden = true;
      $("delete-confirm").disabled = true;
      dialog.showModal();
      const u = await loadUsage();
      if (!u) { $("delete-summary").textContent = "Could not read what this run holds."; return; }
      const others = u.run_ids.length - 1;
      $("delete-summary").textContent = `This removes the run${others ? ` and ${plural(others, "child run")} (#${u.run_ids.slice(1).join(", #")})` : ""}, `
        + `${plural(u.metric_points, "metric point")}, ${plural(u.log_lines, "log line")} and ${plural(u.files, "file")} `
        + `(${Lab.bytes(u.bytes)}) from the disk. It cannot be undone.`;
      if (u.active.length) {
        $("delete-error").hidden = false;
        $("delete-error").textContent = `Run(s) #${u.active.join(", #")} are not finished: cancel them first.`;
      } else {
        $("delete-confirm").disabled = false;
      }
    });
    $("delete-cancel").addEventListener("click", () => dialog.close());
    $("delete-confirm").addEventListener("click", async () => {
      $("delete-confirm").disabled = true;
      const result = await Lab.api("DELETE", `/runs/${runId}`);
      if (result.ok) { location.href = "/"; return; }
      $("delete-error").hidden = false;
      $("delete-error").textContent = Lab.errorText(result);
    });
  }
  loadUsage();
})();
