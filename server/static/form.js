// New-run form, generated from the kind's JSON schema (pydantic), filled from presets, validated inline:
// bounds are checked as you type, and the server's 422 answers are shown next to the fields they name.
"use strict";
(function () {
  const schemas = JSON.parse(document.getElementById("schemas").textContent);
  // per kind: queue, weights_field (filled by the server from the parent run), upload_field, path_fields
  const kindInfo = JSON.parse(document.getElementById("kind-info").textContent);
  function weightsField(kind) { return (kindInfo[kind] || {}).weights_field; }
  const kindSelect = document.getElementById("kind");
  const presetSelect = document.getElementById("preset");
  const presetLabel = document.getElementById("preset-label");
  const form = document.getElementById("spec-form");
  const fields = document.getElementById("fields");
  const formError = document.getElementById("form-error");
  const parentSelect = document.getElementById("parent");
  const parentLabel = document.getElementById("parent-label");
  let constants = {};
  const evalBox = document.getElementById("eval-defaults");
  const costText = document.getElementById("cost");
  const notesText = document.getElementById("defaults-notes");
  // /runs/new?from_run=<id> (a sweep's "Promote best"): that run's full spec, on top of the defaults
  const fromSpec = JSON.parse((document.getElementById("from-spec") || {}).textContent || "null");
  let keepValues = Boolean(fromSpec); // the first render keeps the promoted spec instead of the parent's defaults
  let costTimer = null;
  let costSeq = 0;

  function showCost(cost) {
    evalBox.hidden = false;
    costText.textContent = `Expected cost: ${cost.text}`;
    costText.title = cost.parts.join(" + ");
    costText.dataset.images = cost.images === null ? "" : String(cost.images);
  }

  // An evaluation of a run: its data, view and normalisation plus CPU-sized settings (server-side, from the
  // parent's spec), and the expected cost of what the form holds, before launch.
  async function loadEvaluationDefaults(apply) {
    const kind = kindSelect.value, parent = parentSelect.value;
    const seq = ++costSeq;
    if (!weightsField(kind) || !parent) { evalBox.hidden = true; return; }
    const result = await Lab.api("GET", `/runs/${encodeURIComponent(parent)}/evaluation-defaults?kind=${encodeURIComponent(kind)}`);
    if (seq !== costSeq) return; // the kind or the parent changed meanwhile
    if (!result.ok) { evalBox.hidden = true; return; } // not an evaluation kind (export, words)
    if (apply) applyValues(result.data.spec, "");
    notesText.textContent = result.data.notes.join(" · ");
    showCost(result.data.cost);
    if (!apply) refreshCost();
  }

  function quietSpec() {
    const spec = {};
    for (const [path, value] of Object.entries(constants)) setNested(spec, path, value);
    form.querySelectorAll("[data-mode]").forEach((input) => {
      try { const value = readInput(input); if (value !== undefined) setNested(spec, input.dataset.path, value); }
      catch (_) { /* shown by the inline check */ }
    });
    return spec;
  }

  async function refreshCost() {
    if (evalBox.hidden || !parentSelect.value) return;
    const seq = ++costSeq;
    const result = await Lab.api("POST", `/runs/${encodeURIComponent(parentSelect.value)}/evaluation-cost`,
      { kind: kindSelect.value, spec: quietSpec() });
    if (seq !== costSeq) return;
    if (result.ok) showCost(result.data);
    else costText.textContent = `Expected cost: unknown until the fields are valid (${Lab.errorText(result)})`;
  }

  function resolve(node, root) {
    while (node && node.$ref) node = root.$defs[node.$ref.split("/").pop()];
    return node || {};
  }

  function variantsOf(node, root) {
    node = resolve(node, root);
    const list = node.anyOf || node.oneOf;
    if (!list) return { variants: [node], nullable: false };
    const variants = list.map((v) => resolve(v, root)).filter((v) => v.type !== "null");
    return { variants, nullable: variants.length < list.length };
  }

  function modeOf(variants) {
    if (variants.length !== 1) return "json";
    const v = variants[0];
    if (v.const !== undefined) return "const";
    if (v.enum) return "enum";
    if (v.type === "object" && v.properties) return "object";
    return { boolean: "bool", integer: "int", number: "num", string: "str" }[v.type] || "json";
  }

  function title(name, node) { return node.title || name; }

  function buildFields(container, schemaNode, root, path) {
    const props = schemaNode.properties || {};
    const required = new Set(schemaNode.required || []);
    for (const [name, rawProp] of Object.entries(props)) {
      const fieldPath = path ? `${path}.${name}` : name;
      if (!path && name === weightsField(kindSelect.value)) continue; // the server fills it from the parent run
      const { variants, nullable } = variantsOf(rawProp, root);
      const mode = modeOf(variants);
      const prop = Object.assign({}, variants[0], rawProp);
      if (mode === "const") { constants[fieldPath] = variants[0].const; continue; }
      if (mode === "object") {
        const set = document.createElement("fieldset");
        set.dataset.path = fieldPath;
        if ("default" in rawProp) set.dataset.default = JSON.stringify(rawProp.default);
        set.innerHTML = `<legend>${Lab.esc(rawProp.title || name)}</legend><div class="field-error" data-error-for="${fieldPath}"></div>`;
        buildFields(set, variants[0], root, fieldPath);
        container.appendChild(set);
        continue;
      }
      const wrap = document.createElement("div");
      wrap.className = "field";
      const id = `f-${fieldPath.replace(/\./g, "-")}`;
      let input;
      if (mode === "enum") {
        input = document.createElement("select");
        const options = (nullable ? [""] : []).concat(variants[0].enum);
        input.innerHTML = options.map((o) => `<option value="${Lab.esc(o)}">${o === "" ? "(none)" : Lab.esc(o)}</option>`).join("");
      } else if (mode === "bool") {
        input = document.createElement("input");
        input.type = "checkbox";
      } else {
        input = document.createElement("input");
        input.type = mode === "int" || mode === "num" ? "number" : "text";
        if (mode === "int") input.step = "1";
        if (mode === "num") input.step = "any";
        if (mode === "json") input.placeholder = "JSON, e.g. [1, 2] or 0.5";
      }
      input.id = id;
      input.name = fieldPath;
      Object.assign(input.dataset, { path: fieldPath, mode, nullable: nullable ? "1" : "", required: required.has(name) ? "1" : "" });
      input.dataset.bounds = JSON.stringify({
        min: variants[0].minimum, max: variants[0].maximum, xmin: variants[0].exclusiveMinimum, xmax: variants[0].exclusiveMaximum,
      });
      if ("default" in rawProp) input.dataset.default = JSON.stringify(rawProp.default);
      const help = prop.description ? `<div class="help">${Lab.esc(prop.description)}</div>` : "";
      wrap.innerHTML = `<label for="${id}">${Lab.esc(title(name, prop))}</label>`;
      wrap.appendChild(input);
      wrap.insertAdjacentHTML("beforeend", `${help}<div class="field-error" data-error-for="${fieldPath}"></div>`);
      container.appendChild(wrap);
    }
  }

  // The few fields people change, by their last path segment (any kind), in this order and with these
  // names; everything else goes into the folded "Advanced" section, in its original nesting.
  const BASIC = {
    name: "Name", dataset: "Dataset", dataset_name: "Dataset", data_dir: "Data directory", num_epochs: "Epochs",
    epochs: "Epochs", batch_size: "Batch size", lr: "Learning rate", num_processes: "GPUs (processes)",
  };
  const BASIC_ORDER = Object.keys(BASIC);
  const lastPart = (input) => input.dataset.path.split(".").pop();

  function groupFields() {
    const inputs = [...fields.querySelectorAll("[data-mode]")];
    const basic = inputs.filter((i) => lastPart(i) in BASIC)
      .sort((a, b) => BASIC_ORDER.indexOf(lastPart(a)) - BASIC_ORDER.indexOf(lastPart(b)));
    if (!basic.length || basic.length === inputs.length) return; // nothing to fold away
    const basicBox = document.createElement("div");
    basicBox.id = "basic-fields";
    for (const input of basic) {
      const wrap = input.closest(".field");
      const label = wrap.querySelector("label");
      label.textContent = BASIC[lastPart(input)];
      if (input.dataset.path.includes(".")) label.insertAdjacentHTML("beforeend", `<span class="path">${Lab.esc(input.dataset.path)}</span>`);
      basicBox.appendChild(wrap);
    }
    const advanced = document.createElement("details");
    advanced.className = "advanced";
    advanced.id = "advanced";
    advanced.innerHTML = "<summary>Advanced</summary>";
    while (fields.firstChild) advanced.appendChild(fields.firstChild);
    // a section whose fields all moved up stays (its defaults apply) but shows nothing
    advanced.querySelectorAll("fieldset").forEach((set) => { set.hidden = !set.querySelector("[data-mode]"); });
    fields.append(basicBox, advanced);
  }

  // After a refused launch: the first field with an error (in page order) is scrolled to and focused,
  // the Advanced section opened if it is in there; errors no field holds, the summary.
  function revealFirstError() {
    const slot = [...form.querySelectorAll(".field-error")].find((e) => e.textContent);
    const target = slot ? slot.closest(".field") || slot.closest("fieldset") || slot : formError;
    const folded = target.closest("details");
    if (folded) folded.open = true;
    target.scrollIntoView({ block: "center" });
    const input = slot && target.querySelector("[data-mode]");
    if (input) input.focus({ preventScroll: true });
  }

  function setInput(input, value) {
    const mode = input.dataset.mode;
    if (mode === "bool") input.checked = Boolean(value);
    else if (value === null || value === undefined) input.value = "";
    else if (mode === "json") input.value = JSON.stringify(value);
    else input.value = String(value);
  }

  function inputAt(path) { return form.querySelector(`[data-path="${CSS.escape(path)}"]:not(fieldset)`); }

  function applyValues(values, prefix) {
    for (const [key, value] of Object.entries(values || {})) {
      const path = prefix ? `${prefix}.${key}` : key;
      const input = inputAt(path);
      if (input) setInput(input, value);
      else if (value && typeof value === "object" && !Array.isArray(value)) applyValues(value, path);
    }
  }

  function readInput(input) {
    const { mode, nullable } = input.dataset;
    const raw = input.value.trim();
    if (mode === "bool") return input.checked;
    if (raw === "") {
      if (nullable) return null;
      if (mode === "str" && !input.dataset.default) return "";
      return undefined; // left empty: the server applies the default (or names the missing field)
    }
    if (mode === "int" || mode === "num") {
      const value = Number(raw);
      if (!isFinite(value)) throw new Error("must be a number");
      if (mode === "int" && !Number.isInteger(value)) throw new Error("must be a whole number");
      const b = JSON.parse(input.dataset.bounds || "{}");
      if (b.min !== undefined && value < b.min) throw new Error(`must be ≥ ${b.min}`);
      if (b.max !== undefined && value > b.max) throw new Error(`must be ≤ ${b.max}`);
      if (b.xmin !== undefined && value <= b.xmin) throw new Error(`must be > ${b.xmin}`);
      if (b.xmax !== undefined && value >= b.xmax) throw new Error(`must be < ${b.xmax}`);
      return value;
    }
    if (mode === "json") {
      try { return JSON.parse(raw); } catch (_) { return raw; }
    }
    return raw;
  }

  function setNested(target, path, value) {
    const keys = path.split(".");
    let node = target;
    for (const key of keys.slice(0, -1)) node = node[key] = node[key] || {};
    node[keys[keys.length - 1]] = value;
  }

  function showError(path, message) {
    let p = path;
    while (p) {
      const slot = form.querySelector(`[data-error-for="${CSS.escape(p)}"]`);
      if (slot) {
        slot.textContent = slot.textContent ? `${slot.textContent}; ${message}` : message;
        const field = slot.closest(".field");
        if (field) field.classList.add("invalid");
        return true;
      }
      p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "";
    }
    return false;
  }

  function clearErrors() {
    form.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
    form.querySelectorAll(".field.invalid").forEach((e) => e.classList.remove("invalid"));
    formError.hidden = true;
    formError.textContent = "";
  }

  function summary(message) {
    formError.hidden = false;
    formError.textContent = formError.textContent ? `${formError.textContent}; ${message}` : message;
  }

  function collect() {
    const spec = {};
    let ok = true;
    for (const [path, value] of Object.entries(constants)) setNested(spec, path, value);
    form.querySelectorAll("[data-mode]").forEach((input) => {
      try {
        const value = readInput(input);
        if (value !== undefined) setNested(spec, input.dataset.path, value);
      }
      catch (err) { ok = false; showError(input.dataset.path, err.message); }
    });
    return ok ? spec : null;
  }

  function resetDefaults() {
    form.querySelectorAll("[data-mode]").forEach((input) => {
      setInput(input, input.dataset.default !== undefined ? JSON.parse(input.dataset.default) : null);
    });
    form.querySelectorAll("fieldset[data-default]").forEach((set) => {
      applyValues(JSON.parse(set.dataset.default), set.dataset.path);
    });
  }

  async function applyPreset() {
    resetDefaults();
    const name = presetSelect.value;
    if (!name) return;
    const result = await Lab.api("GET", `/presets/${name}`);
    if (!result.ok) { summary(Lab.errorText(result)); return; }
    applyValues(result.data, "");
    const nameInput = inputAt("name");
    if (nameInput && !result.data.name) nameInput.value = name;
  }

  function render() {
    const kind = kindSelect.value;
    const schema = schemas[kind];
    constants = {};
    fields.innerHTML = "";
    clearErrors();
    buildFields(fields, schema, schema, "");
    groupFields();
    presetLabel.hidden = kind !== "pretrain";
    parentLabel.hidden = !weightsField(kind);
    if (kind !== "pretrain") presetSelect.value = "";
    resetDefaults();
    if (presetSelect.value) applyPreset();
    loadEvaluationDefaults(!keepValues);
    keepValues = false;
  }

  // validate as you type (not on blur: a layout change under the pointer would swallow the click on Launch)
  form.addEventListener("input", (event) => {
    const input = event.target;
    if (!input.dataset || !input.dataset.mode) return;
    const slot = form.querySelector(`[data-error-for="${CSS.escape(input.dataset.path)}"]`);
    if (slot) slot.textContent = "";
    input.closest(".field").classList.remove("invalid");
    try { readInput(input); } catch (err) { showError(input.dataset.path, err.message); }
    clearTimeout(costTimer);
    costTimer = setTimeout(refreshCost, 300);
  });
  form.addEventListener("change", () => { clearTimeout(costTimer); costTimer = setTimeout(refreshCost, 300); });
  parentSelect.addEventListener("change", () => loadEvaluationDefaults(true));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const spec = collect();
    if (spec === null) { summary("Fix the fields marked in red."); revealFirstError(); return; }
    const body = { kind: kindSelect.value, spec };
    if (presetSelect.value) body.preset = presetSelect.value;
    const project = document.getElementById("run-project").value.trim();
    const tags = document.getElementById("run-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
    const note = document.getElementById("run-note").value;
    if (project) body.project = project;
    if (tags.length) body.tags = tags;
    if (note.trim()) body.note = note;
    if (!parentLabel.hidden) {
      if (!parentSelect.value) { summary("Choose the run to start from."); parentSelect.focus(); return; }
      body.parent_id = Number(parentSelect.value);
    }
    const button = document.getElementById("launch");
    button.disabled = true;
    const result = await Lab.api("POST", "/runs", body);
    button.disabled = false;
    if (result.ok) { location.href = `/runs/${result.data.id}`; return; }
    if (result.status === 422 && Array.isArray(result.data.detail)) {
      for (const item of result.data.detail) {
        const loc = item.loc.slice(item.loc[1] === "spec" ? 2 : 1).join(".");
        if (item.loc[1] !== "spec" || !showError(loc, item.msg)) summary(`${loc || "spec"}: ${item.msg}`);
      }
      summary("The run was not created: fix the fields marked in red.");
    } else {
      summary(Lab.errorText(result));
    }
    revealFirstError();
  });

  kindSelect.addEventListener("change", render);
  presetSelect.addEventListener("change", () => { clearErrors(); applyPreset(); });
  render();
  if (fromSpec) applyValues(fromSpec, "");
})();
