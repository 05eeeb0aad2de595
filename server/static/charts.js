// Metric charts on uPlot: series kept per key (step -> value), grouped into charts by what they measure.
"use strict";
const Charts = {
  // Chart a key belongs to: by what it measures; per-epoch summaries ("epoch/...") get their own charts.
  groupOf(key) {
    if (key.startsWith("sys/")) return Charts.systemGroup(key.slice(4));
    const summary = key.startsWith("epoch/");
    const name = summary ? key.slice(6) : key;
    let group = "other";
    if (/^words_used/.test(name)) group = "words used";
    else if (/^usage_entropy_norm/.test(name)) group = "usage entropy (normalised)";
    else if (/^usage_entropy/.test(name)) group = "usage entropy";
    else if (/^queue_age/.test(name)) group = "queue age";
    else if (/^temperature_mu/.test(name)) group = "temperature μ";
    else if (/^collapse_/.test(name)) group = "vocabulary collapse";
    else if (/perplex|ppl|^perp_/i.test(name)) group = "perplexity";
    else if (/acc|knn|top1|top5|map/i.test(name)) group = "accuracy";
    else if (/loss/i.test(name)) group = "loss";
    else if (/^lr$|^lr[_/]|learning_rate/i.test(name)) group = "learning rate";
    return summary ? `${group} (epoch means)` : group;
  },

  // System metrics (sampled by the worker on a wall-time axis): their own charts, by unit.
  systemGroup(name) {
    if (/_mb$/.test(name)) return "system: memory (MiB) by seconds";
    if (/util|percent/.test(name)) return "system: utilisation (%) by seconds";
    return "system: other by seconds";
  },

  colors: ["#2f6fdf", "#e4572e", "#29a36a", "#a23bec", "#f2a541", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"],

  // [[steps], [values of key 1], [values of key 2], ...] on the union of steps, gaps as null.
  align(seriesList) {
    const tables = seriesList.map((s) => [s.steps, s.values]);
    if (!tables.length) return [[]];
    if (tables.length === 1) return tables[0];
    return uPlot.join(tables);
  },

  // A new chart box in `container`, or a fresh plot in an existing box (when its series changed).
  create(container, title, labels, data, box) {
    if (box) {
      if (box.plot) box.plot.destroy();
    } else {
      box = document.createElement("div");
      box.className = "chart";
      box.dataset.title = title;
      box.innerHTML = `<h3>${Lab.esc(title)}</h3>`;
      container.appendChild(box);
    }
    const width = Math.max(320, box.clientWidth || container.clientWidth || 480);
    const options = {
      width, height: 240,
      scales: { x: { time: false } },
      axes: [{ label: "step" }, {}],
      series: [{ label: "step" }].concat(labels.map((label, i) => ({
        label, stroke: Charts.colors[i % Charts.colors.length], width: 1.5, spanGaps: true,
        value: (_, v) => (v === null || v === undefined ? "" : Lab.num(v)),
      }))),
    };
    box.plot = new uPlot(options, data, box);
    return box.plot;
  },
};

// Live series of one run: history from the REST API, new points from the SSE stream.
class RunSeries {
  constructor() { this.byKey = new Map(); }

  // The REST history, with the live points already received on top: the stream may have delivered
  // steps newer than the history's read before its answer arrived, and they will not come again.
  setHistory(series) {
    for (const s of series) {
      const map = new Map();
      s.steps.forEach((step, i) => map.set(step, s.values[i]));
      for (const [step, value] of this.byKey.get(s.key) || []) map.set(step, value);
      this.byKey.set(s.key, map);
    }
  }

  add(points) { // [[key, step, value, time], ...]
    for (const [key, step, value] of points) {
      if (!this.byKey.has(key)) this.byKey.set(key, new Map());
      this.byKey.get(key).set(step, value);
    }
  }

  size() { let n = 0; for (const m of this.byKey.values()) n += m.size; return n; }

  series(key) {
    const entries = [...this.byKey.get(key).entries()].sort((a, b) => a[0] - b[0]);
    return { key, steps: entries.map((e) => e[0]), values: entries.map((e) => e[1]) };
  }

  groups() {
    const out = new Map();
    for (const key of [...this.byKey.keys()].sort()) {
      const group = Charts.groupOf(key);
      if (!out.has(group)) out.set(group, []);
      out.get(group).push(key);
    }
    return out;
  }
}
